#pragma once
// The CPU executor's dequantiser: experts::dequantize_run to fp32, with an AVX2 path for the
// widths that decode in one 32-bit lane shift (b = 1, 2, 3, 4: eight codes in b bytes) or one
// byte widening (b = 8). Each element is the same single fma(step, q, offset) with the same
// (step, offset) from experts::group_affine, so every path gives dequantize_run's bits; b = 5..7
// (and builds without AVX2) call dequantize_run itself. The scalar form decodes ~1.5 cycles per
// weight, which made decode-size batches compute-bound (docs/quantized_experts.md).
//
// gemv_dequantized: the single-row (decode) case of gemm_nt_dequantized with the codes decoded
// straight into the FMAs' registers, the same bits as the panel path.

#include <cstdint>
#include <cstring>

#include "moekit/config.hpp"
#include "moekit/cpu/detail/expert_gemm.hpp"
#include "moekit/experts/dequantize.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace cpu::detail {

#if MOEKIT_CPU_GEMM_AVX2
// Codes i .. i+7 of a B-bit row as eight 32-bit lanes (B ∈ {1, 2, 3, 4, 8}; i a multiple of 8).
template <int B>
[[nodiscard]] inline __m256i decode8_avx2(std::uint8_t const* row, std::int64_t i) noexcept {
  static_assert(B == 8 || (B >= 1 && B <= 4), "eight codes must fit one 32-bit lane, or be bytes");
  if constexpr (B == 8) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<__m128i const*>(row + i)));
  } else {
    std::uint32_t word = 0;  // the B bytes of codes i .. i+7, little-endian
    std::memcpy(&word, row + i / 8 * B, B);
    __m256i const shifts = _mm256_setr_epi32(0, B, 2 * B, 3 * B, 4 * B, 5 * B, 6 * B, 7 * B);
    return _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), shifts),
                            _mm256_set1_epi32((1 << B) - 1));
  }
}

// fma(step, q, offset) for codes i .. i+7.
template <int B>
[[nodiscard]] inline __m256 dequantize8_avx2(std::uint8_t const* row, std::int64_t i, __m256 step,
                                             __m256 offset) noexcept {
  return _mm256_fmadd_ps(step, _mm256_cvtepi32_ps(decode8_avx2<B>(row, i)), offset);
}

template <int B>
void dequantize_run_avx2(std::uint8_t const* row, std::int64_t first, std::int64_t count, float const* row_scales,
                         std::uint8_t const* row_zeros, std::int64_t group, float* out) noexcept {
  std::int64_t const end = first + count;
  std::int64_t i = first;
  while (i < end) {
    std::int64_t const g = i / group;
    std::int64_t const group_end = (g + 1) * group < end ? (g + 1) * group : end;
    experts::GroupAffine const a = experts::group_affine(row_scales, row_zeros, g, B);
    __m256 const step = _mm256_set1_ps(a.step);
    __m256 const offset = _mm256_set1_ps(a.offset);
    for (; i < group_end; i += 8) {
      _mm256_storeu_ps(out + (i - first), dequantize8_avx2<B>(row, i, step, offset));
    }
  }
}
#endif

// experts::dequantize_run(row, bits, first, count, row_scales, row_zeros, group, out), to fp32.
inline void dequantize_run_f32(std::uint8_t const* row, int bits, std::int64_t first, std::int64_t count,
                               float const* row_scales, std::uint8_t const* row_zeros, std::int64_t group,
                               float* out) noexcept {
#if MOEKIT_CPU_GEMM_AVX2
  switch (bits) {
    case 1: dequantize_run_avx2<1>(row, first, count, row_scales, row_zeros, group, out); return;
    case 2: dequantize_run_avx2<2>(row, first, count, row_scales, row_zeros, group, out); return;
    case 3: dequantize_run_avx2<3>(row, first, count, row_scales, row_zeros, group, out); return;
    case 4: dequantize_run_avx2<4>(row, first, count, row_scales, row_zeros, group, out); return;
    case 8: dequantize_run_avx2<8>(row, first, count, row_scales, row_zeros, group, out); return;
    default: break;
  }
#endif
  experts::dequantize_run(row, bits, first, count, row_scales, row_zeros, group, out);
}

// One weight row as codes.
struct CodeRow {
  std::uint8_t const* codes = nullptr;
  float const* scales = nullptr;
  std::uint8_t const* zeros = nullptr;  // null: symmetric
};

#if MOEKIT_CPU_GEMM_AVX2
// s[j] = Σ_{k0 <= k < k0+kn} a[k] · w_j[k] for J rows dequantised in registers: dot_block<1, J>'s
// FMAs, lanes and sum8 over the values dequantize_run_avx2 would have stored.
template <int B, int J>
void gemv_dequantized_block(float const* a, CodeRow const* rows, std::int64_t k0, std::int64_t kn, std::int64_t group,
                            float* s) noexcept {
  __m256 acc[J];
  for (int j = 0; j < J; ++j) {
    acc[j] = _mm256_setzero_ps();
  }
  std::int64_t const end = k0 + kn;
  std::int64_t k = k0;
  while (k < end) {
    std::int64_t const g = k / group;
    std::int64_t const group_end = (g + 1) * group < end ? (g + 1) * group : end;
    __m256 step[J], offset[J];
    for (int j = 0; j < J; ++j) {
      experts::GroupAffine const af = experts::group_affine(rows[j].scales, rows[j].zeros, g, B);
      step[j] = _mm256_set1_ps(af.step);
      offset[j] = _mm256_set1_ps(af.offset);
    }
    for (; k < group_end; k += 8) {
      __m256 const x = _mm256_loadu_ps(a + k);
      for (int j = 0; j < J; ++j) {
        acc[j] = _mm256_fmadd_ps(x, dequantize8_avx2<B>(rows[j].codes, k, step[j], offset[j]), acc[j]);
      }
    }
  }
  for (int j = 0; j < J; ++j) {
    s[j] = sum8(acc[j]);
  }
}

// gemm_nt_dequantized for one activation row and B-bit codes (row(j) gives weight row j): the
// same blocks of 3 rows and of dequant_block along k, the same partial sums, so the same bits.
template <int B, class RowOf>
void gemv_dequantized(std::int64_t columns, std::int64_t n, float const* a, std::int64_t group, RowOf const& row,
                      float* c) noexcept {
  for (std::int64_t j = 0; j < columns; j += gemm_columns) {
    int const jn = static_cast<int>(columns - j < gemm_columns ? columns - j : gemm_columns);
    CodeRow rows[gemm_columns];
    for (int jj = 0; jj < jn; ++jj) {
      rows[jj] = row(j + jj);
    }
    for (std::int64_t k0 = 0; k0 < n; k0 += dequant_block) {
      std::int64_t const kn = n - k0 < dequant_block ? n - k0 : dequant_block;
      float s[gemm_columns];
      switch (jn) {
        case 1: gemv_dequantized_block<B, 1>(a, rows, k0, kn, group, s); break;
        case 2: gemv_dequantized_block<B, 2>(a, rows, k0, kn, group, s); break;
        default: gemv_dequantized_block<B, 3>(a, rows, k0, kn, group, s); break;
      }
      for (int jj = 0; jj < jn; ++jj) {
        c[j + jj] = k0 == 0 ? s[jj] : c[j + jj] + s[jj];
      }
    }
  }
}
#endif

// c[j] = Σ_k a[k] · w_j[k], j < columns, for one activation row and `bits`-bit rows row(j), the
// codes decoded in registers; false (nothing written) where there is no such path (b = 5..7,
// no AVX2): the caller then runs gemm_nt_dequantized, which gives the same bits.
template <class RowOf>
[[nodiscard]] bool gemv_dequantized(int bits, std::int64_t columns, std::int64_t n, float const* a, std::int64_t group,
                                    RowOf const& row, float* c) noexcept {
#if MOEKIT_CPU_GEMM_AVX2
  switch (bits) {
    case 1: gemv_dequantized<1>(columns, n, a, group, row, c); return true;
    case 2: gemv_dequantized<2>(columns, n, a, group, row, c); return true;
    case 3: gemv_dequantized<3>(columns, n, a, group, row, c); return true;
    case 4: gemv_dequantized<4>(columns, n, a, group, row, c); return true;
    case 8: gemv_dequantized<8>(columns, n, a, group, row, c); return true;
    default: return false;
  }
#else
  (void)bits, (void)columns, (void)n, (void)a, (void)group, (void)row, (void)c;
  return false;
#endif
}

}  // namespace cpu::detail
MOEKIT_NAMESPACE_END
