#pragma once
// fp32::exp and fp32::sigmoid eight lanes at a time for the CPU path, with the same bits as
// the scalar routines (core/fp32_math.hpp): the same operations in the same order — fma with
// one rounding, round-to-nearest-even, the two-step scaling by 2^k — written with AVX2/FMA
// intrinsics when the build targets them, else the scalar routines lane by lane. Inputs here
// are finite or -inf (the CPU path refuses NaN and +inf before it routes).

#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/routing/ranking.hpp"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MOEKIT_CPU_SIMD_AVX2 1
#else
#define MOEKIT_CPU_SIMD_AVX2 0
#endif

MOEKIT_NAMESPACE_BEGIN
namespace cpu::detail {

inline constexpr int simd_lanes = 8;

#if MOEKIT_CPU_SIMD_AVX2
inline __m256 pow2_8(__m256i n) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(n, _mm256_set1_epi32(127)), 23));
}

// fp32::exp, lane by lane, for finite x or -inf.
inline __m256 exp8(__m256 x) {
  __m256 const hi = _mm256_set1_ps(88.8f);
  __m256 const lo = _mm256_set1_ps(-104.0f);
  __m256 const xc = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  __m256 const k = _mm256_round_ps(_mm256_mul_ps(xc, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fmadd_ps(k, _mm256_set1_ps(-fp32::detail::ln2_hi), xc);
  r = _mm256_fmadd_ps(k, _mm256_set1_ps(-fp32::detail::ln2_lo), r);
  __m256 p = _mm256_set1_ps(1.98412698e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.38888889e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.33333333e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.16666667e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.66666667e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
  // 2^n as 2^(n - b) * 2^b, b = n - 127 above the normal range, -126 below it, else 0.
  __m256i const n = _mm256_cvtps_epi32(k);
  __m256i const over = _mm256_sub_epi32(n, _mm256_set1_epi32(127));
  __m256i b = _mm256_and_si256(_mm256_cmpgt_epi32(n, _mm256_set1_epi32(127)), over);
  b = _mm256_blendv_epi8(b, _mm256_set1_epi32(-126), _mm256_cmpgt_epi32(_mm256_set1_epi32(-126), n));
  __m256 y = _mm256_mul_ps(_mm256_mul_ps(p, pow2_8(_mm256_sub_epi32(n, b))), pow2_8(b));
  y = _mm256_blendv_ps(y, _mm256_set1_ps(__builtin_huge_valf()), _mm256_cmp_ps(x, hi, _CMP_GT_OQ));
  return _mm256_blendv_ps(y, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LT_OQ));
}

// fp32::sigmoid: e^x / (1 + e^x) for x < 0, 1 / (1 + e^-x) otherwise; e = exp(-|x|) either way.
inline __m256 sigmoid8(__m256 x) {
  __m256 const negative = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
  __m256 const e = exp8(_mm256_blendv_ps(_mm256_sub_ps(_mm256_setzero_ps(), x), x, negative));
  __m256 const one = _mm256_set1_ps(1.0f);
  __m256 const denominator = _mm256_add_ps(one, e);
  return _mm256_div_ps(_mm256_blendv_ps(one, e, negative), denominator);
}
#endif

// out[i] = fp32::sigmoid(x[i]) for i < n.
inline void sigmoid_n(float const* x, int n, float* out) noexcept {
  int i = 0;
#if MOEKIT_CPU_SIMD_AVX2
  for (; i + simd_lanes <= n; i += simd_lanes) {
    _mm256_storeu_ps(out + i, sigmoid8(_mm256_loadu_ps(x + i)));
  }
#endif
  for (; i < n; ++i) {
    out[i] = fp32::sigmoid(x[i]);
  }
}

// For 8 rows of `experts` logits (row l at rows + l * stride): the softmax maximum and the
// denominator sum_e exp(z_e - max), summed in ascending e — routing::softmax_normaliser's
// arithmetic, eight tokens side by side.
inline void softmax_normalisers8(float const* rows, std::int64_t stride, int experts, float* max,
                                 float* denominator) noexcept {
#if MOEKIT_CPU_SIMD_AVX2
  __m256i const offsets =
      _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(static_cast<int>(stride)));
  if (stride * simd_lanes <= 0x7fffffff) {
    __m256 m = _mm256_i32gather_ps(rows, offsets, 4);
    for (int e = 1; e < experts; ++e) {
      __m256 const z = _mm256_i32gather_ps(rows + e, offsets, 4);
      m = _mm256_blendv_ps(m, z, _mm256_cmp_ps(z, m, _CMP_GT_OQ));
    }
    __m256 sum = _mm256_setzero_ps();
    for (int e = 0; e < experts; ++e) {
      sum = _mm256_add_ps(sum, exp8(_mm256_sub_ps(_mm256_i32gather_ps(rows + e, offsets, 4), m)));
    }
    _mm256_storeu_ps(max, m);
    _mm256_storeu_ps(denominator, sum);
    return;
  }
#endif
  for (int l = 0; l < simd_lanes; ++l) {
    float const* z = rows + l * stride;
    float m = z[0];
    for (int e = 1; e < experts; ++e) {
      m = z[e] > m ? z[e] : m;
    }
    float sum = 0.f;
    for (int e = 0; e < experts; ++e) {
      sum += fp32::exp(z[e] - m);
    }
    max[l] = m;
    denominator[l] = sum;
  }
}

// routing::top_k over a row of n finite-or-(-inf) keys (the CPU path refuses NaN and +inf):
// the same selection, with eight keys compared against the current k-th at a time, so most of
// the row is rejected without a branch per key.
template <int MaxK>
void top_k_row(float const* keys, int n, int k, int* chosen) noexcept {
  float best_key[MaxK] = {};
  int best[MaxK] = {};
  int count = 0;
  auto insert = [&](int e) {
    float const v = keys[e];
    if (count == k && !routing::ranks_before(v, e, best_key[k - 1], best[k - 1])) {
      return;
    }
    int pos = count < k ? count++ : k - 1;
    if constexpr (MaxK > 1) {
      while (pos > 0 && routing::ranks_before(v, e, best_key[pos - 1], best[pos - 1])) {
        best_key[pos] = best_key[pos - 1];
        best[pos] = best[pos - 1];
        --pos;
      }
    }
    best_key[pos] = v;
    best[pos] = e;
  };
  int e = 0;
  for (; e < n && count < k; ++e) {
    insert(e);
  }
#if MOEKIT_CPU_SIMD_AVX2
  for (; e + simd_lanes <= n; e += simd_lanes) {
    // Only keys >= the k-th can enter (an equal key has a larger index and loses the tie).
    int mask =
        _mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(keys + e), _mm256_set1_ps(best_key[k - 1]), _CMP_GT_OQ));
    while (mask != 0) {
      insert(e + __builtin_ctz(static_cast<unsigned>(mask)));
      mask &= mask - 1;
    }
  }
#endif
  for (; e < n; ++e) {
    insert(e);
  }
  for (int j = 0; j < count; ++j) {
    chosen[j] = best[j];
  }
}

}  // namespace cpu::detail
MOEKIT_NAMESPACE_END
