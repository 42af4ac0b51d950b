#pragma once
// exp, log and sigmoid in fp32 that give the same bits on the host and on the GPU
// (ALGORITHMS.md §0: one implementation in core/, so value-based selections such as
// DeepSeek-V3's, Switch's or expert choice agree bit for bit across backends).
//
// Why not std::exp / expf: libm and CUDA's device library round differently, and nvcc's
// __expf is an approximation. These use only correctly rounded IEEE operations (fmaf, +, *,
// /, rintf and bit manipulation), and every product that feeds a sum is an explicit fmaf, so no
// compiler's floating-point contraction can change a result. This holds with nvcc's default
// IEEE settings; --use_fast_math (-ftz=true, -prec-div=false) breaks it. Accuracy: exp and log
// within 1 ulp, sigmoid within 2 ulp of the correctly rounded result (tested against
// double-precision libm); subnormal results are kept, not flushed.
// Speed on the host: fmaf is one instruction only when the build targets FMA (-mfma, or
// -march=x86-64-v3 and later); otherwise each is a libm call and exp costs ~25 ns instead of
// ~3 ns, with identical results. moekit's own targets build with MOEKIT_HOST_ARCH (CMake).

#include <cmath>
#include <cstdint>
#include <cstring>

#include "moekit/config.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace fp32 {

namespace detail {
MOEKIT_HOST_DEVICE inline std::uint32_t bits(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
MOEKIT_HOST_DEVICE inline float from_bits(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}
// 2^n for n in [-126, 127], exactly.
MOEKIT_HOST_DEVICE inline float pow2(int n) { return from_bits(static_cast<std::uint32_t>(n + 127) << 23); }

// ln 2 split so that k * ln2_hi is exact for |k| < 2^10 (Cody and Waite).
inline constexpr float ln2_hi = 0.693145751953125f;
inline constexpr float ln2_lo = 1.428606765330187045e-06f;
}  // namespace detail

// e^x. NaN stays NaN; overflow gives +inf, underflow gradual then 0.
MOEKIT_HOST_DEVICE inline float exp(float x) {
  if (x != x) {
    return x + x;
  }
  if (x > 88.8f) {
    return detail::from_bits(0x7f800000u);
  }
  if (x < -104.0f) {
    return 0.0f;
  }
  // x = k ln2 + r, |r| <= ln2/2 (plus rounding).
  float const k = ::rintf(x * 1.44269504088896341f);
  float r = ::fmaf(k, -detail::ln2_hi, x);
  r = ::fmaf(k, -detail::ln2_lo, r);
  // e^r by its Taylor series to r^7/7!: truncation error < 6e-9 relative on |r| <= 0.35.
  float p = 1.98412698e-4f;  // 1/5040
  p = ::fmaf(p, r, 1.38888889e-3f);
  p = ::fmaf(p, r, 8.33333333e-3f);
  p = ::fmaf(p, r, 4.16666667e-2f);
  p = ::fmaf(p, r, 1.66666667e-1f);
  p = ::fmaf(p, r, 0.5f);
  p = ::fmaf(p, r, 1.0f);
  p = ::fmaf(p, r, 1.0f);
  // Scale by 2^k in two exact steps, so results near overflow or in the subnormal range round once.
  int const n = static_cast<int>(k);
  if (n > 127) {
    return p * detail::pow2(127) * detail::pow2(n - 127);
  }
  if (n < -126) {
    return p * detail::pow2(n + 126) * detail::pow2(-126);
  }
  return p * detail::pow2(n);
}

// ln x. NaN stays NaN, x < 0 gives NaN, ±0 gives -inf, +inf gives +inf.
MOEKIT_HOST_DEVICE inline float log(float x) {
  if (x != x) {
    return x + x;
  }
  if (x < 0.0f) {
    return detail::from_bits(0x7fc00000u);
  }
  if (x == 0.0f) {
    return detail::from_bits(0xff800000u);
  }
  std::uint32_t u = detail::bits(x);
  if (u == 0x7f800000u) {
    return x;
  }
  int e = 0;
  if (u < 0x00800000u) {  // subnormal: scale into the normal range
    u = detail::bits(x * 8388608.0f);
    e = -23;
  }
  // x = 2^e * m with m in [sqrt(1/2), sqrt(2)).
  e += static_cast<int>(u >> 23) - 127;
  u &= 0x007fffffu;
  if (u > 0x3504f3u) {  // mantissa above sqrt(2): use m / 2
    u |= 0x3f000000u;
    e += 1;
  } else {
    u |= 0x3f800000u;
  }
  float const f = detail::from_bits(u) - 1.0f;
  // log(1 + f) = f - hfsq + s (hfsq + R), s = f / (2 + f), R = 2 s^3/3 + 2 s^5/5 + ... (fdlibm's form).
  float const s = f / (2.0f + f);
  float const z = s * s;
  float const hfsq = 0.5f * f * f;
  float poly = 2.0f / 9.0f;
  poly = ::fmaf(poly, z, 2.0f / 7.0f);
  poly = ::fmaf(poly, z, 2.0f / 5.0f);
  poly = ::fmaf(poly, z, 2.0f / 3.0f);
  float const hfsq_plus_r = ::fmaf(z, poly, hfsq);
  float const q = ::fmaf(-s, hfsq_plus_r, hfsq);  // hfsq - s (hfsq + R)
  auto const ef = static_cast<float>(e);
  return ::fmaf(ef, detail::ln2_hi, ::fmaf(ef, detail::ln2_lo, f - q));
}

// 1 / (1 + e^-x), computed as e^x / (1 + e^x) for x < 0 so that e^-x never overflows: the
// result stays accurate down to the subnormal range (a plain 1 / (1 + e^-x) is 0 below -88.7).
MOEKIT_HOST_DEVICE inline float sigmoid(float x) {
  if (x < 0.0f) {
    float const e = fp32::exp(x);
    return e / (1.0f + e);
  }
  return 1.0f / (1.0f + fp32::exp(-x));
}

}  // namespace fp32
MOEKIT_NAMESPACE_END
