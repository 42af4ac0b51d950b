#pragma once
// fp8_e4m3_t and fp8_e5m2_t (OCP 8-bit floats): storage types whose conversions from float and double match
// CUDA's __nv_cvt_float_to_fp8 / __nv_cvt_double_to_fp8 bit for bit in both saturation modes, NaN included, so
// weights quantised on the host and on the device agree. Pure bit arithmetic, host and device.

#include <cstdint>
#include <type_traits>

#include "moekit/config.hpp"
#include "moekit/core/float16.hpp"

MOEKIT_NAMESPACE_BEGIN

// What a conversion to fp8 does with a value beyond the largest finite fp8 value (after rounding), ±inf included.
enum class Saturation : std::uint8_t {
  satfinite,  // __NV_SATFINITE: clamp to ±max finite (448 for e4m3, 57344 for e5m2); ±inf too. NaN stays NaN.
  nosat,      // __NV_NOSAT: e5m2 gives ±inf; e4m3, which has no infinity, gives NaN (0x7F / 0xFF, sign kept)
};

namespace detail {

// CUDA's conversion (cuda_fp8.hpp, __nv_cvt_double_to_fp8), written over either source format:
//  - NaN: e4m3 gives S.1111.111; e5m2 gives S.11111.1m, m the top mantissa bit after the quiet bit (quiet, sign
//    kept);
//  - |x| rounding (RNE) past the largest finite value, ±inf included: see Saturation;
//  - otherwise round-to-nearest-even, subnormals included; a value at most half the smallest subnormal gives ±0.
template <bool E4M3, class Src>
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::uint8_t narrow_fp8(Src x, Saturation sat) noexcept {
  using S = IeeeSource<Src>;
  using Bits = typename S::Bits;
  constexpr int man_bits = E4M3 ? 3 : 2;
  constexpr int bias = E4M3 ? 7 : 15;
  constexpr std::uint32_t max_finite = E4M3 ? 0x7Eu : 0x7Bu;
  constexpr std::uint32_t overflow_nosat = E4M3 ? 0x7Fu : 0x7Cu;  // NaN for e4m3, inf for e5m2
  Bits const xb = bits_of(x);
  auto const sign = static_cast<std::uint32_t>(xb >> (S::total_bits - 1)) << 7;
  Bits const magnitude = xb & ~(Bits{1} << (S::total_bits - 1));
  if (magnitude > S::inf_bits) {
    if constexpr (E4M3) {
      return static_cast<std::uint8_t>(sign | 0x7Fu);
    } else {
      return static_cast<std::uint8_t>(sign | 0x7Eu |
                                       static_cast<std::uint32_t>((magnitude >> (S::man_bits - 2)) & 3u));
    }
  }
  Bits const code = round_magnitude_rne<Src, man_bits, bias>(magnitude);
  if (code > max_finite) {
    return static_cast<std::uint8_t>(sign | (sat == Saturation::satfinite ? max_finite : overflow_nosat));
  }
  return static_cast<std::uint8_t>(sign | static_cast<std::uint32_t>(code));
}

// __nv_cvt_float_to_fp8 first replaces every NaN by 0x7FFFFFFF, so a float NaN of either sign gives 0x7F.
template <bool E4M3>
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::uint8_t narrow_fp8_from_float(float x, Saturation sat) noexcept {
  if ((bits_of(x) & 0x7FFFFFFFu) > 0x7F800000u) return 0x7Fu;
  return narrow_fp8<E4M3>(x, sat);
}

}  // namespace detail

// OCP FP8 E4M3 ("E4M3FN"): 1 sign, 4 exponent (bias 7), 3 mantissa bits. No infinities; the only NaNs are
// S.1111.111 (0x7F, 0xFF); largest finite 448 (0x7E); smallest normal 2^-6; smallest subnormal 2^-9.
// Bit-compatible with CUDA's __nv_fp8_e4m3 (moekit/core/cuda_interop.hpp converts).
struct fp8_e4m3_t {
  std::uint8_t bits;

  fp8_e4m3_t() = default;  // trivial: uninitialised, like float; fp8_e4m3_t{} is +0
  // Round-to-nearest-even. Saturating by default (Saturation::satfinite: beyond ±448, ±inf included, gives ±448),
  // as CUDA's __nv_fp8_e4m3(float) constructor does; Saturation::nosat turns overflow into NaN. Bit for bit
  // __nv_cvt_float_to_fp8(x, sat, __NV_E4M3): a NaN of either sign gives 0x7F.
  MOEKIT_HOST_DEVICE constexpr explicit fp8_e4m3_t(float x, Saturation sat = Saturation::satfinite) noexcept
      : bits(detail::narrow_fp8_from_float<true>(x, sat)) {}
  // Rounded once from double. Bit for bit __nv_cvt_double_to_fp8(x, sat, __NV_E4M3): NaN keeps its sign.
  MOEKIT_HOST_DEVICE constexpr explicit fp8_e4m3_t(double x, Saturation sat = Saturation::satfinite) noexcept
      : bits(detail::narrow_fp8<true>(x, sat)) {}

  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr fp8_e4m3_t from_bits(std::uint8_t b) noexcept {
    fp8_e4m3_t r{};
    r.bits = b;
    return r;
  }

  // Exact (every e4m3 value is a normal float or zero). NaN gives a quiet float NaN with the same sign.
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr float to_float() const noexcept {
    std::uint32_t const sign = static_cast<std::uint32_t>(bits & 0x80u) << 24;
    std::uint32_t const magnitude = bits & 0x7Fu;
    if (magnitude == 0x7Fu) return detail::float_from_bits(sign | 0x7FC00000u);
    return detail::float_from_bits(sign | detail::widen_magnitude<4, 3>(magnitude));
  }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr double to_double() const noexcept {
    return static_cast<double>(to_float());
  }
  MOEKIT_HOST_DEVICE constexpr explicit operator float() const noexcept { return to_float(); }
  MOEKIT_HOST_DEVICE constexpr explicit operator double() const noexcept { return to_double(); }

  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_nan() const noexcept { return (bits & 0x7Fu) == 0x7Fu; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_inf() const noexcept { return false; }  // e4m3 has none
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_finite() const noexcept { return !is_nan(); }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool signbit() const noexcept { return (bits & 0x80u) != 0; }

  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr fp8_e4m3_t quiet_nan() noexcept { return from_bits(0x7Fu); }
  // Largest finite value: 448.
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr fp8_e4m3_t max_finite() noexcept { return from_bits(0x7Eu); }
  // Smallest normal value: 2^-6.
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr fp8_e4m3_t min_normal() noexcept { return from_bits(0x08u); }
  // Smallest subnormal value: 2^-9.
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr fp8_e4m3_t min_subnormal() noexcept { return from_bits(0x01u); }
};

// OCP FP8 E5M2: 1 sign, 5 exponent (bias 15), 2 mantissa bits; IEEE-like: ±inf (0x7C, 0xFC) and NaNs
// (S.11111.01 to S.11111.11); largest finite 57344 (0x7B); smallest normal 2^-14; smallest subnormal 2^-16.
// The top byte of an fp16. Bit-compatible with CUDA's __nv_fp8_e5m2 (moekit/core/cuda_interop.hpp converts).
struct fp8_e5m2_t {
  std::uint8_t bits;

  fp8_e5m2_t() = default;  // trivial: uninitialised, like float; fp8_e5m2_t{} is +0
  // Round-to-nearest-even. Saturating by default (Saturation::satfinite: beyond ±57344, ±inf included, gives
  // ±57344), as CUDA's __nv_fp8_e5m2(float) constructor does; Saturation::nosat gives ±inf (from |x| >= 61440).
  // Bit for bit __nv_cvt_float_to_fp8(x, sat, __NV_E5M2): a NaN of either sign gives 0x7F.
  MOEKIT_HOST_DEVICE constexpr explicit fp8_e5m2_t(float x, Saturation sat = Saturation::satfinite) noexcept
      : bits(detail::narrow_fp8_from_float<false>(x, sat)) {}
  // Rounded once from double. Bit for bit __nv_cvt_double_to_fp8(x, sat, __NV_E5M2): NaN keeps its sign.
  MOEKIT_HOST_DEVICE constexpr explicit fp8_e5m2_t(double x, Saturation sat = Saturation::satfinite) noexcept
      : bits(detail::narrow_fp8<false>(x, sat)) {}

  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr fp8_e5m2_t from_bits(std::uint8_t b) noexcept {
    fp8_e5m2_t r{};
    r.bits = b;
    return r;
  }

  // Exact (every e5m2 value is a normal float, zero or ±inf). NaN payloads and signs are kept, as in fp16_t.
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr float to_float() const noexcept {
    return fp16_t::from_bits(static_cast<std::uint16_t>(bits << 8)).to_float();
  }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr double to_double() const noexcept {
    return static_cast<double>(to_float());
  }
  MOEKIT_HOST_DEVICE constexpr explicit operator float() const noexcept { return to_float(); }
  MOEKIT_HOST_DEVICE constexpr explicit operator double() const noexcept { return to_double(); }

  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_nan() const noexcept { return (bits & 0x7Fu) > 0x7Cu; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_inf() const noexcept { return (bits & 0x7Fu) == 0x7Cu; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_finite() const noexcept { return (bits & 0x7Cu) != 0x7Cu; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool signbit() const noexcept { return (bits & 0x80u) != 0; }

  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr fp8_e5m2_t infinity() noexcept { return from_bits(0x7Cu); }
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr fp8_e5m2_t quiet_nan() noexcept { return from_bits(0x7Eu); }
  // Largest finite value: 57344.
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr fp8_e5m2_t max_finite() noexcept { return from_bits(0x7Bu); }
  // Smallest normal value: 2^-14.
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr fp8_e5m2_t min_normal() noexcept { return from_bits(0x04u); }
  // Smallest subnormal value: 2^-16.
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr fp8_e5m2_t min_subnormal() noexcept { return from_bits(0x01u); }
};

[[nodiscard]] MOEKIT_HOST_DEVICE constexpr float to_float(fp8_e4m3_t x) noexcept { return x.to_float(); }
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr float to_float(fp8_e5m2_t x) noexcept { return x.to_float(); }

static_assert(sizeof(fp8_e4m3_t) == 1 && std::is_trivial_v<fp8_e4m3_t> && std::is_standard_layout_v<fp8_e4m3_t>);
static_assert(sizeof(fp8_e5m2_t) == 1 && std::is_trivial_v<fp8_e5m2_t> && std::is_standard_layout_v<fp8_e5m2_t>);

MOEKIT_NAMESPACE_END
