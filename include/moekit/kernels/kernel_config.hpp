#pragma once
// KernelConfig: the compile-time tile shape of the expert GEMMs. A block computes a block_m ×
// block_n tile of one expert's output with warps_m × warps_n warps (each a warp_m × warp_n
// piece of m16n8k16 tensor-core tiles), stepping through K in block_k slices held in a
// `stages`-deep cp.async pipeline in shared memory.
//
// Shipped configurations:
//   Prefill  64 × 64 × 32, 2 × 2 warps, 3 stages: the general case.
//   Decode   16 × 64 × 64, 1 × 4 warps, 3 stages: few rows per expert (T ≲ 64): a 16-row tile
//            wastes little on padding, and a deeper K slice keeps the weight stream going.

#include <cstddef>

#include "moekit/config.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace kernels {

template <int BlockM, int BlockN, int BlockK, int WarpsM, int WarpsN, int Stages>
struct KernelConfig {
  static constexpr int block_m = BlockM;
  static constexpr int block_n = BlockN;
  static constexpr int block_k = BlockK;
  static constexpr int warps_m = WarpsM;
  static constexpr int warps_n = WarpsN;
  static constexpr int stages = Stages;
  static constexpr int warps = WarpsM * WarpsN;
  static constexpr int threads = warps * 32;
  static constexpr int warp_m = BlockM / WarpsM;
  static constexpr int warp_n = BlockN / WarpsN;
  static constexpr int m_tiles = warp_m / 16;  // m16 tiles per warp
  static constexpr int n_tiles = warp_n / 8;   // n8 tiles per warp
  // +8 elements (16 bytes) a shared-memory row: consecutive rows start in different banks, so
  // the 8 row addresses of one ldmatrix hit 8 distinct 16-byte bank groups.
  static constexpr int smem_row = BlockK + 8;

  static_assert(BlockM % WarpsM == 0 && warp_m % 16 == 0, "warp_m must be a multiple of 16 (m16 MMA tiles)");
  static_assert(BlockN % WarpsN == 0 && warp_n % 16 == 0, "warp_n must be a multiple of 16 (ldmatrix.x4 loads two n8)");
  static_assert(BlockK % 16 == 0, "block_k must be a multiple of 16 (k16 MMA steps)");
  static_assert(Stages >= 2, "the cp.async pipeline needs at least 2 stages");
  static_assert(threads <= 1024, "at most 1024 threads a block");
};

using PrefillConfig = KernelConfig<64, 64, 32, 2, 2, 3>;
using DecodeConfig = KernelConfig<16, 64, 64, 1, 4, 3>;

}  // namespace kernels
MOEKIT_NAMESPACE_END
