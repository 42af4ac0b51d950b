#pragma once
// Every element type in one include: bf16_t, fp16_t, fp8_e4m3_t, fp8_e5m2_t, int4x2_t, the int8/int4 quantisers,
// and the DType enum with its compile-time mapping. (CUDA interop is opt-in: moekit/core/cuda_interop.hpp.)

#include "moekit/config.hpp"
#include "moekit/core/dtype.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/float8.hpp"
#include "moekit/core/int4.hpp"
