#pragma once
// The CPU executor's microkernel: dot products of up to 4 fp32 activation rows with up to 3
// weight rows (float, bf16 or fp16, widened to fp32 as they are loaded; bf16 → fp32 is a 16-bit
// shift, fp16 uses F16C), over a reduction dimension that is contiguous in both. Weights are
// stored [out, in] with `in` contiguous, so the dot-product form reads them as they lie.
//
// Summation order of every dot, fixed whatever else is in the block: eight lane sums over
// k ≡ lane (mod 8) with FMAs, a fixed tree over the lanes, then the tail k >= 8·⌊n/8⌋ one by
// one. The portable fallback (no AVX2/FMA) sums k in order: the same value up to fp32
// summation order, not the same bits.

#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/float16.hpp"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define MOEKIT_CPU_GEMM_AVX2 1
#else
#define MOEKIT_CPU_GEMM_AVX2 0
#endif

MOEKIT_NAMESPACE_BEGIN
namespace cpu::detail {

inline constexpr int gemm_rows = 4;     // activation rows per block
inline constexpr int gemm_columns = 3;  // weight rows (outputs) per block

[[nodiscard]] inline float widen_weight(float v) noexcept { return v; }
[[nodiscard]] inline float widen_weight(bf16_t v) noexcept { return v.to_float(); }
[[nodiscard]] inline float widen_weight(fp16_t v) noexcept { return v.to_float(); }

#if MOEKIT_CPU_GEMM_AVX2
[[nodiscard]] inline __m256 load8(float const* p) noexcept { return _mm256_loadu_ps(p); }
[[nodiscard]] inline __m256 load8(bf16_t const* p) noexcept {
  __m128i const v = _mm_loadu_si128(reinterpret_cast<__m128i const*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}
[[nodiscard]] inline __m256 load8(fp16_t const* p) noexcept {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<__m128i const*>(p)));
}
// ((l0+l4) + (l2+l6)) + ((l1+l5) + (l3+l7)).
[[nodiscard]] inline float sum8(__m256 v) noexcept {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
#endif

// c[r * ldc + j] = Σ_k a[r * lda + k] · w[j * ldw + k], k < n, for r < R, j < J.
template <int R, int J, class W>
void dot_block(float const* a, std::int64_t lda, W const* w, std::int64_t ldw, std::int64_t n, float* c,
               std::int64_t ldc) noexcept {
  float s[R][J];
  std::int64_t k = 0;
#if MOEKIT_CPU_GEMM_AVX2
  __m256 acc[R][J];
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < J; ++j) {
      acc[r][j] = _mm256_setzero_ps();
    }
  }
  // 4×3 accumulators + 3 weight vectors + 1 activation vector: exactly the 16 ymm registers.
  for (; k + 8 <= n; k += 8) {
    __m256 wv[J];
    for (int j = 0; j < J; ++j) {
      wv[j] = load8(w + j * ldw + k);
    }
    for (int r = 0; r < R; ++r) {
      __m256 const x = _mm256_loadu_ps(a + r * lda + k);
      for (int j = 0; j < J; ++j) {
        acc[r][j] = _mm256_fmadd_ps(x, wv[j], acc[r][j]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < J; ++j) {
      s[r][j] = sum8(acc[r][j]);
    }
  }
#else
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < J; ++j) {
      s[r][j] = 0.0f;
    }
  }
#endif
  for (; k < n; ++k) {
    for (int j = 0; j < J; ++j) {
      float const wk = widen_weight(w[j * ldw + k]);
      for (int r = 0; r < R; ++r) {
        s[r][j] += a[r * lda + k] * wk;
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < J; ++j) {
      c[r * ldc + j] = s[r][j];
    }
  }
}

template <int R, class W>
void dot_block_rows(int columns, float const* a, std::int64_t lda, W const* w, std::int64_t ldw, std::int64_t n,
                    float* c, std::int64_t ldc) noexcept {
  switch (columns) {
    case 1: dot_block<R, 1>(a, lda, w, ldw, n, c, ldc); break;
    case 2: dot_block<R, 2>(a, lda, w, ldw, n, c, ldc); break;
    default: dot_block<R, 3>(a, lda, w, ldw, n, c, ldc); break;
  }
}

// c[r * ldc + j] = Σ_k a[r * lda + k] · w[j * ldw + k] for r < rows, j < columns (any sizes):
// blocks of 3 weight rows outside (they stay in L1 while every block of 4 activation rows of
// the tile passes), blocks of 4 rows inside.
template <class W>
void gemm_nt(std::int64_t rows, std::int64_t columns, std::int64_t n, float const* a, std::int64_t lda, W const* w,
             std::int64_t ldw, float* c, std::int64_t ldc) noexcept {
  for (std::int64_t j = 0; j < columns; j += gemm_columns) {
    int const jn = static_cast<int>(columns - j < gemm_columns ? columns - j : gemm_columns);
    for (std::int64_t r = 0; r < rows; r += gemm_rows) {
      float const* ar = a + r * lda;
      W const* wj = w + j * ldw;
      float* cr = c + r * ldc + j;
      switch (rows - r < gemm_rows ? rows - r : gemm_rows) {
        case 1: dot_block_rows<1>(jn, ar, lda, wj, ldw, n, cr, ldc); break;
        case 2: dot_block_rows<2>(jn, ar, lda, wj, ldw, n, cr, ldc); break;
        case 3: dot_block_rows<3>(jn, ar, lda, wj, ldw, n, cr, ldc); break;
        default: dot_block_rows<4>(jn, ar, lda, wj, ldw, n, cr, ldc); break;
      }
    }
  }
}

// Elements per K-block of gemm_nt_dequantized's weight panel: 3 rows × 512 floats = 6 KiB on the
// stack beside the activations' L1 working set (a multiple of every group size and of 8).
inline constexpr std::int64_t dequant_block = 512;

// gemm_nt over weights that exist only as codes: per block of 3 weight rows and K-block of
// dequant_block, dequant(j, k0, kn, out) writes row j's elements k0 .. k0+kn−1 as fp32 into a
// stack panel, which every block of 4 activation rows then consumes (rows is a tile: ≤ 16, so
// the panel is reused up to 4 times). The panel lives on the calling thread's stack, like the
// executor's other per-item scratch: no allocation, one panel per thread whatever the pool size.
// n must be a multiple of 8. Summation order: dot_block's within a K-block, then the K-blocks'
// partial sums added in ascending k (a single block for n ≤ dequant_block: gemm_nt's order).
template <class Dequant>
void gemm_nt_dequantized(std::int64_t rows, std::int64_t columns, std::int64_t n, float const* a, std::int64_t lda,
                         Dequant const& dequant, float* c, std::int64_t ldc) noexcept {
  float panel[gemm_columns * dequant_block];
  float part[gemm_rows * gemm_columns];
  for (std::int64_t j = 0; j < columns; j += gemm_columns) {
    int const jn = static_cast<int>(columns - j < gemm_columns ? columns - j : gemm_columns);
    for (std::int64_t k0 = 0; k0 < n; k0 += dequant_block) {
      std::int64_t const kn = n - k0 < dequant_block ? n - k0 : dequant_block;
      for (int jj = 0; jj < jn; ++jj) {
        dequant(j + jj, k0, kn, panel + jj * dequant_block);
      }
      for (std::int64_t r = 0; r < rows; r += gemm_rows) {
        int const rn = static_cast<int>(rows - r < gemm_rows ? rows - r : gemm_rows);
        float const* ar = a + r * lda + k0;
        float* cr = c + r * ldc + j;
        float* dst = k0 == 0 ? cr : part;
        std::int64_t const ldd = k0 == 0 ? ldc : gemm_columns;
        switch (rn) {
          case 1: dot_block_rows<1>(jn, ar, lda, panel, dequant_block, kn, dst, ldd); break;
          case 2: dot_block_rows<2>(jn, ar, lda, panel, dequant_block, kn, dst, ldd); break;
          case 3: dot_block_rows<3>(jn, ar, lda, panel, dequant_block, kn, dst, ldd); break;
          default: dot_block_rows<4>(jn, ar, lda, panel, dequant_block, kn, dst, ldd); break;
        }
        if (k0 > 0) {
          for (int rr = 0; rr < rn; ++rr) {
            for (int jj = 0; jj < jn; ++jj) {
              cr[rr * ldc + jj] += part[rr * gemm_columns + jj];
            }
          }
        }
      }
    }
  }
}

}  // namespace cpu::detail
MOEKIT_NAMESPACE_END
