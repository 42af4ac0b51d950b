#pragma once
// The CPU executor's dequantiser: experts::dequantize_run to fp32, with an AVX2 path for the
// widths that decode in one 32-bit lane shift (b = 1, 2, 3, 4: eight codes in b bytes) or one
// byte widening (b = 8). Each element is the same single fma(step, q, offset) with the same
// (step, offset) from experts::group_affine, so every path gives dequantize_run's bits; b = 5..7
// (and builds without AVX2) call dequantize_run itself. The scalar form decodes ~1.5 cycles per
// weight, which made decode-size batches compute-bound (docs/quantized_experts.md).

#include <cstdint>
#include <cstring>

#include "moekit/config.hpp"
#include "moekit/cpu/detail/expert_gemm.hpp"
#include "moekit/experts/dequantize.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace cpu::detail {

#if MOEKIT_CPU_GEMM_AVX2
template <int B>
void dequantize_run_avx2(std::uint8_t const* row, std::int64_t first, std::int64_t count, float const* row_scales,
                         std::uint8_t const* row_zeros, std::int64_t group, float* out) noexcept {
  static_assert(B == 8 || (B >= 1 && B <= 4), "eight codes must fit one 32-bit lane, or be bytes");
  __m256i const shifts = _mm256_setr_epi32(0, B, 2 * B, 3 * B, 4 * B, 5 * B, 6 * B, 7 * B);
  __m256i const mask = _mm256_set1_epi32((1 << B) - 1);
  std::int64_t const end = first + count;
  std::int64_t i = first;
  while (i < end) {
    std::int64_t const g = i / group;
    std::int64_t const group_end = (g + 1) * group < end ? (g + 1) * group : end;
    experts::GroupAffine const a = experts::group_affine(row_scales, row_zeros, g, B);
    __m256 const step = _mm256_set1_ps(a.step);
    __m256 const offset = _mm256_set1_ps(a.offset);
    for (; i < group_end; i += 8) {
      __m256i q;
      if constexpr (B == 8) {
        q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<__m128i const*>(row + i)));
      } else {
        std::uint32_t word = 0;  // the B bytes of codes i .. i+7, little-endian
        std::memcpy(&word, row + i / 8 * B, B);
        q = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(word)), shifts), mask);
      }
      _mm256_storeu_ps(out + (i - first), _mm256_fmadd_ps(step, _mm256_cvtepi32_ps(q), offset));
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

}  // namespace cpu::detail
MOEKIT_NAMESPACE_END
