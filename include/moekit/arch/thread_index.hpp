#pragma once
// threadIdx, blockIdx, blockDim, gridDim and warp/lane numbers, for kernel code.

#include "moekit/arch/config.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace arch {
MOEKIT_ARCH_NAMESPACE_BEGIN

inline constexpr unsigned warp_size = 32;

#if MOEKIT_EMULATION
using Dim3 = emu::Dim3;
inline Dim3 thread_idx() { return detail::me("threadIdx").index; }
inline Dim3 block_idx() { return detail::me("blockIdx").block->index; }
inline Dim3 block_dim() {
  (void)detail::me("blockDim");
  return detail::runtime().config.block;
}
inline Dim3 grid_dim() {
  (void)detail::me("gridDim");
  return detail::runtime().config.grid;
}
// Linear index of the thread in its block (x fastest), the numbering warps are cut from.
inline unsigned thread_rank() { return detail::me("thread_rank").linear; }
inline unsigned lane_id() { return detail::me("lane_id").lane; }
#else
MOEKIT_DEVICE MOEKIT_FORCEINLINE uint3 thread_idx() { return threadIdx; }
MOEKIT_DEVICE MOEKIT_FORCEINLINE uint3 block_idx() { return blockIdx; }
MOEKIT_DEVICE MOEKIT_FORCEINLINE dim3 block_dim() { return blockDim; }
MOEKIT_DEVICE MOEKIT_FORCEINLINE dim3 grid_dim() { return gridDim; }
MOEKIT_DEVICE MOEKIT_FORCEINLINE unsigned thread_rank() {
  return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}
MOEKIT_DEVICE MOEKIT_FORCEINLINE unsigned lane_id() { return thread_rank() % warp_size; }
#endif

MOEKIT_DEVICE MOEKIT_FORCEINLINE unsigned warp_id() { return thread_rank() / warp_size; }
MOEKIT_DEVICE MOEKIT_FORCEINLINE unsigned block_rank() {
  auto const b = block_idx();
  auto const g = grid_dim();
  return b.x + g.x * (b.y + g.y * b.z);
}

MOEKIT_ARCH_NAMESPACE_END
}  // namespace arch
MOEKIT_NAMESPACE_END
