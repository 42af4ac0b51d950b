#pragma once
// Opt-in CUDA spellings for code written against the CUDA runtime's built-ins, so a kernel
// in plain CUDA style (threadIdx.x, __syncthreads(), __shfl_sync) runs under the emulator.
// moekit's own kernels call arch:: wrappers instead; include this only in host builds of
// your own kernels, never from a header that nvcc also compiles.

#include "moekit/config.hpp"

#if MOEKIT_CUDA_COMPILER
#error "moekit/emu/cuda_names.hpp is for host (emulated) builds only; nvcc has the real built-ins"
#endif

#include "moekit/arch/arch.hpp"

#define threadIdx (::moekit::arch::thread_idx())
#define blockIdx (::moekit::arch::block_idx())
#define blockDim (::moekit::arch::block_dim())
#define gridDim (::moekit::arch::grid_dim())
#define warpSize 32
#define __global__ inline
#define __device__ inline
#define __host__
#define __forceinline__ inline

// NOLINTBEGIN(bugprone-reserved-identifier): these are CUDA's own names
inline void __syncthreads(std::source_location w = std::source_location::current()) { moekit::arch::sync_threads(w); }
inline int __syncthreads_count(int p, std::source_location w = std::source_location::current()) {
  return moekit::arch::sync_threads_count(p != 0, w);
}
inline int __syncthreads_and(int p, std::source_location w = std::source_location::current()) {
  return moekit::arch::sync_threads_and(p != 0, w) ? 1 : 0;
}
inline int __syncthreads_or(int p, std::source_location w = std::source_location::current()) {
  return moekit::arch::sync_threads_or(p != 0, w) ? 1 : 0;
}
inline void __syncwarp(unsigned mask = 0xffffffffu, std::source_location w = std::source_location::current()) {
  moekit::arch::sync_warp(mask, w);
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32, std::source_location w = std::source_location::current()) {
  return moekit::arch::shfl_sync(mask, v, src, width, w);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned d, int width = 32,
                 std::source_location w = std::source_location::current()) {
  return moekit::arch::shfl_up_sync(mask, v, d, width, w);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned d, int width = 32,
                   std::source_location w = std::source_location::current()) {
  return moekit::arch::shfl_down_sync(mask, v, d, width, w);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int m, int width = 32, std::source_location w = std::source_location::current()) {
  return moekit::arch::shfl_xor_sync(mask, v, m, width, w);
}
inline unsigned __ballot_sync(unsigned mask, int p, std::source_location w = std::source_location::current()) {
  return moekit::arch::ballot_sync(mask, p != 0, w);
}
inline int __any_sync(unsigned mask, int p, std::source_location w = std::source_location::current()) {
  return moekit::arch::any_sync(mask, p != 0, w) ? 1 : 0;
}
inline int __all_sync(unsigned mask, int p, std::source_location w = std::source_location::current()) {
  return moekit::arch::all_sync(mask, p != 0, w) ? 1 : 0;
}
template <class T>
unsigned __match_any_sync(unsigned mask, T v, std::source_location w = std::source_location::current()) {
  return moekit::arch::match_any_sync(mask, v, w);
}
inline unsigned __reduce_add_sync(unsigned mask, unsigned v, std::source_location w = std::source_location::current()) {
  return moekit::arch::reduce_add_sync(mask, v, w);
}
inline unsigned __activemask() { return moekit::arch::active_mask(); }
inline void __threadfence() { moekit::arch::thread_fence(); }
inline void __threadfence_block() { moekit::arch::thread_fence_block(); }
template <class T>
T atomicAdd(T* p, T v) {
  return moekit::arch::atomic_add(p, v);
}
template <class T>
T atomicMin(T* p, T v) {
  return moekit::arch::atomic_min(p, v);
}
template <class T>
T atomicMax(T* p, T v) {
  return moekit::arch::atomic_max(p, v);
}
template <class T>
T atomicCAS(T* p, T expected, T desired) {
  return moekit::arch::atomic_cas(p, expected, desired);
}
template <class T>
T atomicExch(T* p, T v) {
  return moekit::arch::atomic_exch(p, v);
}
// NOLINTEND(bugprone-reserved-identifier)
