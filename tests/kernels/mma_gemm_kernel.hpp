#pragma once
// Sample kernel: C = A * B on tensor cores, bf16 in, fp32 out, for M, N multiples of 64 and K
// a multiple of 32 (the foundation's 64x64x64 check; general shapes come with the grouped
// GEMM). One block of 4 warps computes a 64x64 tile of C, each warp 32x32; K advances in
// 32-wide tiles through a 2-stage cp.async pipeline; operands reach the tensor cores through
// ldmatrix; mma.sync m16n8k16 accumulates in fp32.
//   A: M x K row-major.  Bt: N x K row-major (B column-major).  C: M x N row-major.

#include <cstdint>

#include "moekit/arch/arch.hpp"
#include "moekit/core/float16.hpp"

namespace moekit_samples {

struct MmaGemmShape {
  static constexpr int block_m = 64, block_n = 64, block_k = 32;
  static constexpr int warps = 4, threads = warps * 32;
  static constexpr int stages = 2;
  static constexpr int row_pad = 8;                   // +16 bytes a row: spreads ldmatrix rows over banks
  static constexpr int smem_row = block_k + row_pad;  // elements of one shared-memory row
};

struct MmaGemmStorage {
  using S = MmaGemmShape;
  alignas(128) moekit::arch::SharedArray<moekit::bf16_t, S::stages * S::block_m * S::smem_row> a;
  alignas(128) moekit::arch::SharedArray<moekit::bf16_t, S::stages * S::block_n * S::smem_row> b;
};

[[nodiscard]] inline bool mma_gemm_can_implement(std::int64_t m, std::int64_t n, std::int64_t k) {
  using S = MmaGemmShape;
  return m > 0 && n > 0 && k > 0 && m % S::block_m == 0 && n % S::block_n == 0 && k % S::block_k == 0;
}

// PlantedRace drops the barrier that keeps the pipeline from refilling a stage other warps
// still read: the test that racecheck catches a real pipeline bug.
template <bool PlantedRace = false>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(MmaGemmShape::threads, 1)
    mma_gemm_kernel(moekit::bf16_t const* a, moekit::bf16_t const* bt, float* c, std::int64_t m, std::int64_t n,
                    std::int64_t k) {
  namespace arch = moekit::arch;
  using S = MmaGemmShape;
  auto& smem = arch::shared_storage<MmaGemmStorage>();
  unsigned const tid = arch::thread_rank();
  unsigned const lane = tid % 32;
  unsigned const warp = tid / 32;
  std::int64_t const tile_m = std::int64_t{arch::block_idx().y} * S::block_m;
  std::int64_t const tile_n = std::int64_t{arch::block_idx().x} * S::block_n;
  int const warp_m = static_cast<int>(warp / 2) * 32;
  int const warp_n = static_cast<int>(warp % 2) * 32;
  std::int64_t const k_tiles = k / S::block_k;
  (void)m;

  // Each 64 x 32 bf16 tile is 256 chunks of 16 bytes: two chunks per thread per operand.
  auto load_tile = [&](std::int64_t kt, int stage) {
    for (unsigned chunk = tid; chunk < 256; chunk += S::threads) {
      unsigned const row = chunk / 4, col = (chunk % 4) * 8;
      std::int64_t const kk = kt * S::block_k + col;
      std::size_t const s = (static_cast<std::size_t>(stage) * S::block_m + row) * S::smem_row + col;
      arch::cp_async<16>(smem.a.data() + s, a + (tile_m + row) * k + kk);
      arch::cp_async<16>(smem.b.data() + s, bt + (tile_n + row) * k + kk);
    }
    arch::cp_async_commit();
  };

  float acc[2][4][4] = {};  // [m16 tile][n8 tile][fragment element]
  load_tile(0, 0);
  for (std::int64_t kt = 0; kt < k_tiles; ++kt) {
    int const stage = static_cast<int>(kt % S::stages);
    if (kt + 1 < k_tiles) {
      load_tile(kt + 1, (stage + 1) % S::stages);
      arch::cp_async_wait_group<1>();  // tile kt has landed; tile kt+1 may still be in flight
    } else {
      arch::cp_async_wait_group<0>();
    }
    arch::sync_threads();
    moekit::bf16_t const* sa = smem.a.data() + static_cast<std::size_t>(stage) * S::block_m * S::smem_row;
    moekit::bf16_t const* sb = smem.b.data() + static_cast<std::size_t>(stage) * S::block_n * S::smem_row;
    for (int k16 = 0; k16 < S::block_k; k16 += 16) {
      // Lanes 8j..8j+7 address the rows of 8x8 matrix j.
      unsigned const j = lane / 8, r = lane % 8;
      std::uint32_t fa[2][4];
      for (int mt = 0; mt < 2; ++mt) {
        int const row = warp_m + mt * 16 + static_cast<int>(r + 8 * (j & 1));
        int const col = k16 + static_cast<int>(8 * (j >> 1));
        arch::ldmatrix_x4(fa[mt], sa + row * S::smem_row + col);
      }
      std::uint32_t fb[4][2];
      for (int np = 0; np < 2; ++np) {  // two n8 tiles per ldmatrix.x4
        int const row = warp_n + np * 16 + static_cast<int>(r + 8 * (j >> 1));
        int const col = k16 + static_cast<int>(8 * (j & 1));
        std::uint32_t regs[4];
        arch::ldmatrix_x4(regs, sb + row * S::smem_row + col);
        fb[2 * np][0] = regs[0];
        fb[2 * np][1] = regs[1];
        fb[2 * np + 1][0] = regs[2];
        fb[2 * np + 1][1] = regs[3];
      }
      for (int mt = 0; mt < 2; ++mt) {
        for (int nt = 0; nt < 4; ++nt) {
          arch::mma_m16n8k16_bf16(acc[mt][nt], fa[mt], fb[nt], acc[mt][nt]);
        }
      }
    }
    if constexpr (!PlantedRace) {
      arch::sync_threads();  // everyone is done with this stage before it is refilled
    }
  }

  unsigned const g = lane / 4, t = lane % 4;
  for (int mt = 0; mt < 2; ++mt) {
    for (int nt = 0; nt < 4; ++nt) {
      for (int i = 0; i < 4; ++i) {
        std::int64_t const row = tile_m + warp_m + mt * 16 + g + 8 * (i >> 1);
        std::int64_t const col = tile_n + warp_n + nt * 8 + 2 * t + (i & 1);
        c[row * n + col] = acc[mt][nt][i];
      }
    }
  }
}

}  // namespace moekit_samples
