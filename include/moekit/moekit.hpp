#pragma once
// moekit's umbrella header: everything a user of moekit::moekit needs, with no dependency
// beyond the standard library (the emulator, which needs Boost.Context, is moekit/emu/emu.hpp;
// kernel code includes moekit/arch/arch.hpp).

#include "moekit/config.hpp"
#include "moekit/core/dtypes.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/core/workspace.hpp"
#include "moekit/version.hpp"
