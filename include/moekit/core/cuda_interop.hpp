#pragma once
// Bit-exact conversions between moekit's element types and the CUDA headers' (__nv_bfloat16, __half,
// __nv_fp8_e4m3, __nv_fp8_e5m2), for sharing buffers and values with cuBLAS, PyTorch and other CUDA code.
//
// Active under nvcc, or in host code that defines MOEKIT_WITH_CUDA_TYPES and has the CUDA toolkit's include
// directory on its path; MOEKIT_HAS_CUDA_TYPES then is 1, otherwise 0 and this header declares nothing.

#include "moekit/config.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/float8.hpp"

#if MOEKIT_CUDA_COMPILER || defined(MOEKIT_WITH_CUDA_TYPES)
#if __has_include(<cuda_bf16.h>) && __has_include(<cuda_fp16.h>) && __has_include(<cuda_fp8.h>)
#define MOEKIT_HAS_CUDA_TYPES 1
#elif defined(MOEKIT_WITH_CUDA_TYPES)
#error \
    "MOEKIT_WITH_CUDA_TYPES is defined but <cuda_bf16.h>, <cuda_fp16.h> or <cuda_fp8.h> (CUDA >= 11.8) is not on the include path: add the CUDA toolkit's include directory (CUDA::toolkit in CMake), or do not define MOEKIT_WITH_CUDA_TYPES"
#else
#define MOEKIT_HAS_CUDA_TYPES 0
#endif
#else
#define MOEKIT_HAS_CUDA_TYPES 0
#endif

#if MOEKIT_HAS_CUDA_TYPES
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

MOEKIT_NAMESPACE_BEGIN

// to_cuda(x) / from_cuda(y): the same bits, reinterpreted; no rounding, NaN payloads kept.
[[nodiscard]] MOEKIT_HOST_DEVICE inline __nv_bfloat16 to_cuda(bf16_t x) noexcept {
  __nv_bfloat16_raw raw;
  raw.x = x.bits;
  return __nv_bfloat16(raw);
}
[[nodiscard]] MOEKIT_HOST_DEVICE inline bf16_t from_cuda(__nv_bfloat16 x) noexcept {
  return bf16_t::from_bits(static_cast<__nv_bfloat16_raw>(x).x);
}

[[nodiscard]] MOEKIT_HOST_DEVICE inline __half to_cuda(fp16_t x) noexcept {
  __half_raw raw;
  raw.x = x.bits;
  return __half(raw);
}
[[nodiscard]] MOEKIT_HOST_DEVICE inline fp16_t from_cuda(__half x) noexcept {
  return fp16_t::from_bits(static_cast<__half_raw>(x).x);
}

[[nodiscard]] MOEKIT_HOST_DEVICE inline __nv_fp8_e4m3 to_cuda(fp8_e4m3_t x) noexcept {
  __nv_fp8_e4m3 r;
  r.__x = x.bits;
  return r;
}
[[nodiscard]] MOEKIT_HOST_DEVICE inline fp8_e4m3_t from_cuda(__nv_fp8_e4m3 x) noexcept {
  return fp8_e4m3_t::from_bits(x.__x);
}

[[nodiscard]] MOEKIT_HOST_DEVICE inline __nv_fp8_e5m2 to_cuda(fp8_e5m2_t x) noexcept {
  __nv_fp8_e5m2 r;
  r.__x = x.bits;
  return r;
}
[[nodiscard]] MOEKIT_HOST_DEVICE inline fp8_e5m2_t from_cuda(__nv_fp8_e5m2 x) noexcept {
  return fp8_e5m2_t::from_bits(x.__x);
}

// Same size and alignment as the CUDA types, so buffers pass between moekit and CUDA libraries unchanged.
static_assert(sizeof(bf16_t) == sizeof(__nv_bfloat16) && alignof(bf16_t) == alignof(__nv_bfloat16));
static_assert(sizeof(fp16_t) == sizeof(__half) && alignof(fp16_t) == alignof(__half));
static_assert(sizeof(fp8_e4m3_t) == sizeof(__nv_fp8_e4m3) && alignof(fp8_e4m3_t) == alignof(__nv_fp8_e4m3));
static_assert(sizeof(fp8_e5m2_t) == sizeof(__nv_fp8_e5m2) && alignof(fp8_e5m2_t) == alignof(__nv_fp8_e5m2));

MOEKIT_NAMESPACE_END

#endif  // MOEKIT_HAS_CUDA_TYPES
