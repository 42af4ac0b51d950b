#pragma once
// Block barriers (__syncthreads and its _count/_and/_or forms), memory fences and the
// grid-wide barrier of cooperative launches.

#include "moekit/arch/config.hpp"

#if MOEKIT_CUDA_COMPILER
#include <cooperative_groups.h>
#else
#include <atomic>
#endif

MOEKIT_NAMESPACE_BEGIN
namespace arch {
MOEKIT_ARCH_NAMESPACE_BEGIN

#if MOEKIT_EMULATION
using BarrierOp = emu::detail::Runtime::BarrierOp;

inline void sync_threads(std::source_location where = std::source_location::current()) {
  auto& t = detail::me("__syncthreads");
  (void)detail::runtime().block_barrier(t, BarrierOp::sync, false, "__syncthreads", where);
}
inline int sync_threads_count(bool predicate, std::source_location where = std::source_location::current()) {
  auto& t = detail::me("__syncthreads_count");
  return static_cast<int>(
      detail::runtime().block_barrier(t, BarrierOp::count, predicate, "__syncthreads_count", where));
}
inline bool sync_threads_and(bool predicate, std::source_location where = std::source_location::current()) {
  auto& t = detail::me("__syncthreads_and");
  return detail::runtime().block_barrier(t, BarrierOp::all, predicate, "__syncthreads_and", where) != 0;
}
inline bool sync_threads_or(bool predicate, std::source_location where = std::source_location::current()) {
  auto& t = detail::me("__syncthreads_or");
  return detail::runtime().block_barrier(t, BarrierOp::any, predicate, "__syncthreads_or", where) != 0;
}
// Fences order this thread's memory accesses; under emulation they are also scheduling points.
inline void thread_fence() {
  auto& t = detail::me("__threadfence");
  std::atomic_thread_fence(std::memory_order_seq_cst);
  detail::runtime().yield(t);
}
inline void thread_fence_block() { thread_fence(); }
// All threads of a cooperative launch; also orders shared memory like a block barrier.
inline void grid_sync(std::source_location where = std::source_location::current()) {
  auto& t = detail::me("grid sync");
  detail::runtime().grid_barrier(t, where);
}
#else
MOEKIT_DEVICE MOEKIT_FORCEINLINE void sync_threads() { __syncthreads(); }
MOEKIT_DEVICE MOEKIT_FORCEINLINE int sync_threads_count(bool predicate) { return __syncthreads_count(predicate); }
MOEKIT_DEVICE MOEKIT_FORCEINLINE bool sync_threads_and(bool predicate) { return __syncthreads_and(predicate) != 0; }
MOEKIT_DEVICE MOEKIT_FORCEINLINE bool sync_threads_or(bool predicate) { return __syncthreads_or(predicate) != 0; }
MOEKIT_DEVICE MOEKIT_FORCEINLINE void thread_fence() { __threadfence(); }
MOEKIT_DEVICE MOEKIT_FORCEINLINE void thread_fence_block() { __threadfence_block(); }
MOEKIT_DEVICE MOEKIT_FORCEINLINE void grid_sync() { cooperative_groups::this_grid().sync(); }
#endif

MOEKIT_ARCH_NAMESPACE_END
}  // namespace arch
MOEKIT_NAMESPACE_END
