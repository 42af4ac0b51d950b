#pragma once
// The CUDA emulator: run moekit kernels on the CPU (see emu/launch.hpp) on a virtual device.

#include "moekit/emu/device.hpp"
#include "moekit/emu/diagnostics.hpp"
#include "moekit/emu/launch.hpp"
#include "moekit/emu/launch_config.hpp"
#include "moekit/emu/tensor_core.hpp"
