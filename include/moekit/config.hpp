#pragma once
// Compiler detection, qualifier macros and the namespace macros every moekit header uses.
//
// One kernel source is compiled two ways (DESIGN.md §4):
//  - by nvcc: MOEKIT_CUDA_COMPILER is 1; inside device code __CUDA_ARCH__ is set;
//  - by a host compiler: MOEKIT_EMULATION is 1 and kernels run on the CPU through moekit/emu.
// Kernel code never tests these macros itself: it calls arch/ wrappers, which do.

#include "moekit/version.hpp"

#if defined(__CUDACC__)
#define MOEKIT_CUDA_COMPILER 1
#define MOEKIT_EMULATION 0
#else
#define MOEKIT_CUDA_COMPILER 0
#define MOEKIT_EMULATION 1
#endif

#if defined(__CUDA_ARCH__)
#define MOEKIT_DEVICE_PASS 1
#else
#define MOEKIT_DEVICE_PASS 0
#endif

#if MOEKIT_CUDA_COMPILER
#define MOEKIT_HOST __host__
#define MOEKIT_DEVICE __device__
#define MOEKIT_HOST_DEVICE __host__ __device__
#define MOEKIT_FORCEINLINE __forceinline__
// Full unrolling where register arrays are indexed by the loop counter (else they go to local memory).
#define MOEKIT_UNROLL _Pragma("unroll")
// Hidden visibility: two shared libraries holding the same weak kernel symbol can otherwise
// launch each other's kernel, or none (cccl#166, cutlass#1027).
#define MOEKIT_KERNEL __global__ __attribute__((visibility("hidden")))
#define MOEKIT_LAUNCH_BOUNDS(max_threads, min_blocks) __launch_bounds__(max_threads, min_blocks)
#else
#define MOEKIT_HOST
#define MOEKIT_DEVICE
#define MOEKIT_HOST_DEVICE
#define MOEKIT_FORCEINLINE inline __attribute__((always_inline))
#define MOEKIT_UNROLL
// Under emulation a kernel is an ordinary inline function that emu::launch runs once per thread.
#define MOEKIT_KERNEL inline __attribute__((visibility("hidden")))
#define MOEKIT_LAUNCH_BOUNDS(max_threads, min_blocks)
#endif

// moekit::v<MAJOR>_<MINOR>. An embedder may wrap everything in a namespace of its own by
// defining MOEKIT_WRAPPED_NAMESPACE (then moekit:: becomes <that>::moekit::).
#define MOEKIT_DETAIL_CAT2(a, b) a##b
#define MOEKIT_DETAIL_CAT(a, b) MOEKIT_DETAIL_CAT2(a, b)
#define MOEKIT_ABI_NAMESPACE \
  MOEKIT_DETAIL_CAT(MOEKIT_DETAIL_CAT(MOEKIT_DETAIL_CAT(v, MOEKIT_VERSION_MAJOR), _), MOEKIT_VERSION_MINOR)

#if defined(MOEKIT_WRAPPED_NAMESPACE)
#define MOEKIT_NAMESPACE_BEGIN \
  namespace MOEKIT_WRAPPED_NAMESPACE { \
  namespace moekit { \
  inline namespace MOEKIT_ABI_NAMESPACE {
#define MOEKIT_NAMESPACE_END \
  } \
  } \
  }
#else
#define MOEKIT_NAMESPACE_BEGIN \
  namespace moekit { \
  inline namespace MOEKIT_ABI_NAMESPACE {
#define MOEKIT_NAMESPACE_END \
  } \
  }
#endif

// Code whose body differs between the nvcc and the host build (arch/, kernels/) sits in a
// further inline namespace, so a program linking a .cu and a .cpp that both include it never
// merges the two definitions under the ODR (llnl/axom#1182).
#if MOEKIT_CUDA_COMPILER
#define MOEKIT_ARCH_NAMESPACE_BEGIN inline namespace cuda {
#else
#define MOEKIT_ARCH_NAMESPACE_BEGIN inline namespace emu_host {
#endif
#define MOEKIT_ARCH_NAMESPACE_END }
