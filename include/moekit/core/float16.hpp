#pragma once
// bf16_t and fp16_t: 16-bit floating-point storage types with exact, portable conversions, usable in host and
// device code alike. Pure bit arithmetic (no intrinsics; a fast device path belongs in arch/). Also holds the
// rounding core that float8.hpp reuses.

#include <cstdint>
#include <type_traits>

#include "moekit/config.hpp"

MOEKIT_NAMESPACE_BEGIN

namespace detail {

[[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::uint32_t bits_of(float x) noexcept {
  return __builtin_bit_cast(std::uint32_t, x);
}
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::uint64_t bits_of(double x) noexcept {
  return __builtin_bit_cast(std::uint64_t, x);
}
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr float float_from_bits(std::uint32_t u) noexcept {
  return __builtin_bit_cast(float, u);
}

// The two IEEE formats we convert from: binary32 and binary64.
template <class T>
struct IeeeSource;
template <>
struct IeeeSource<float> {
  using Bits = std::uint32_t;
  static constexpr int total_bits = 32;
  static constexpr int man_bits = 23;
  static constexpr int bias = 127;
  static constexpr Bits inf_bits = 0x7F800000u;
};
template <>
struct IeeeSource<double> {
  using Bits = std::uint64_t;
  static constexpr int total_bits = 64;
  static constexpr int man_bits = 52;
  static constexpr int bias = 1023;
  static constexpr Bits inf_bits = 0x7FF0000000000000ull;
};

// Rounds a finite or infinite magnitude |x| (the source's bits without the sign, not NaN) to a binary format
// with DstMan explicit mantissa bits and exponent bias DstBias, round-to-nearest-even, subnormals included.
// Returns the destination's magnitude code, not yet checked for overflow: a code at or past the first
// non-finite code of the destination means |x| rounded beyond its largest finite value, and the caller decides
// what that becomes (inf, NaN or the largest finite value). Infinity always lands there.
//
// The destination's implicit leading 1 is added, not or-ed, onto exponent field (e - 1), so a carry out of the
// mantissa while rounding moves to the next binade (or to the overflow codes) on its own, and a subnormal
// rounding up to the smallest normal needs no special case.
template <class Src, int DstMan, int DstBias>
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr typename IeeeSource<Src>::Bits
round_magnitude_rne(typename IeeeSource<Src>::Bits magnitude) noexcept {
  using S = IeeeSource<Src>;
  using Bits = typename S::Bits;
  static_assert(S::man_bits > DstMan, "round_magnitude_rne only narrows");
  Bits const exp_field = magnitude >> S::man_bits;
  Bits const implicit = exp_field != 0 ? (Bits{1} << S::man_bits) : Bits{0};
  Bits const significand = (magnitude & ((Bits{1} << S::man_bits) - 1)) | implicit;
  // Biased destination exponent of |x|; source subnormals have exponent field 0 but scale 2^(1 - bias).
  int const dst_exp = static_cast<int>(exp_field != 0 ? exp_field : Bits{1}) - S::bias + DstBias;
  int shift = S::man_bits - DstMan;
  Bits base = 0;
  if (dst_exp >= 1) {
    base = static_cast<Bits>(dst_exp - 1) << DstMan;
  } else {
    shift += 1 - dst_exp;                         // a destination subnormal: fewer mantissa bits survive
    if (shift > S::man_bits + 1) return Bits{0};  // below half the smallest subnormal: rounds to zero
  }
  Bits const kept = significand >> shift;
  Bits const rest = significand & ((Bits{1} << shift) - 1);
  Bits const half = Bits{1} << (shift - 1);
  Bits result = base + kept;  // base is a multiple of 2^DstMan, so result's last bit is kept's
  if (rest > half || (rest == half && (kept & 1u) != 0)) ++result;
  return result;
}

// x (float or double) to an IEEE-like binary format of 1 + ExpBits + ManBits bits with infinities and NaNs:
// round-to-nearest-even, overflow to ±inf as IEEE 754 specifies, signed zeros kept, NaN stays NaN with its sign
// and the top of its payload, made quiet (as x86's F16C and Arm's FCVT do).
template <int ExpBits, int ManBits, class Src>
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::uint32_t narrow_ieee(Src x) noexcept {
  using S = IeeeSource<Src>;
  using Bits = typename S::Bits;
  constexpr int bias = (1 << (ExpBits - 1)) - 1;
  constexpr std::uint32_t inf_code = ((1u << ExpBits) - 1u) << ManBits;
  constexpr std::uint32_t quiet_bit = 1u << (ManBits - 1);
  Bits const xb = bits_of(x);
  auto const sign = static_cast<std::uint32_t>(xb >> (S::total_bits - 1)) << (ExpBits + ManBits);
  Bits const magnitude = xb & ~(Bits{1} << (S::total_bits - 1));
  if (magnitude > S::inf_bits) {
    auto const payload = static_cast<std::uint32_t>((magnitude >> (S::man_bits - ManBits)) & ((1u << ManBits) - 1u));
    return sign | inf_code | quiet_bit | payload;
  }
  Bits const code = round_magnitude_rne<Src, ManBits, bias>(magnitude);
  return sign | (code >= inf_code ? inf_code : static_cast<std::uint32_t>(code));
}

// Float bits of a magnitude code (no sign) of a binary format with ExpBits/ManBits whose every value, subnormals
// included, is a normal float (fp16, fp8). Exponent field all-ones is decoded as a normal binade: callers with
// IEEE infinities and NaNs handle that field first.
template <int ExpBits, int ManBits>
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::uint32_t widen_magnitude(std::uint32_t code) noexcept {
  constexpr int bias = (1 << (ExpBits - 1)) - 1;
  static_assert(bias + ManBits <= 127 && (1 << ExpBits) - 1 - bias <= 127,
                "widen_magnitude: this format has values that are not normal floats");
  constexpr std::uint32_t man_mask = (1u << ManBits) - 1u;
  std::uint32_t const exp_field = code >> ManBits;
  std::uint32_t man = code & man_mask;
  if (exp_field != 0) return ((exp_field - bias + 127u) << 23) | (man << (23 - ManBits));
  if (man == 0) return 0;
  // Subnormal: man * 2^(1 - bias - ManBits). Normalise so the leading 1 becomes the implicit bit.
  int exp = 1 - bias;
  while ((man & (1u << ManBits)) == 0) {
    man <<= 1;
    --exp;
  }
  return (static_cast<std::uint32_t>(exp + 127) << 23) | ((man & man_mask) << (23 - ManBits));
}

}  // namespace detail

// bfloat16: 1 sign, 8 exponent, 7 mantissa bits; float's exponent range. A storage type: convert to float to
// compute. Bit-compatible with CUDA's __nv_bfloat16 (moekit/core/cuda_interop.hpp converts).
struct bf16_t {
  std::uint16_t bits;

  bf16_t() = default;  // trivial: uninitialised, like float; bf16_t{} is +0
  // Round-to-nearest-even. Overflow gives ±inf (IEEE 754). NaN stays NaN: sign and top payload bits kept, made
  // quiet. (CUDA's __float2bfloat16_rn returns the canonical NaN 0x7FFF instead; every non-NaN agrees bit for bit.)
  MOEKIT_HOST_DEVICE constexpr explicit bf16_t(float x) noexcept
      : bits(static_cast<std::uint16_t>(detail::narrow_ieee<8, 7>(x))) {}
  // Rounded once, straight from double (not via float, which could round twice).
  MOEKIT_HOST_DEVICE constexpr explicit bf16_t(double x) noexcept
      : bits(static_cast<std::uint16_t>(detail::narrow_ieee<8, 7>(x))) {}

  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr bf16_t from_bits(std::uint16_t b) noexcept {
    bf16_t r{};
    r.bits = b;
    return r;
  }

  // Exact: every bf16 is a float (subnormals too; NaN payloads kept).
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr float to_float() const noexcept {
    return detail::float_from_bits(static_cast<std::uint32_t>(bits) << 16);
  }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr double to_double() const noexcept {
    return static_cast<double>(to_float());
  }
  MOEKIT_HOST_DEVICE constexpr explicit operator float() const noexcept { return to_float(); }
  MOEKIT_HOST_DEVICE constexpr explicit operator double() const noexcept { return to_double(); }

  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_nan() const noexcept { return (bits & 0x7FFFu) > 0x7F80u; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_inf() const noexcept { return (bits & 0x7FFFu) == 0x7F80u; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_finite() const noexcept { return (bits & 0x7F80u) != 0x7F80u; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool signbit() const noexcept { return (bits & 0x8000u) != 0; }

  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr bf16_t infinity() noexcept { return from_bits(0x7F80u); }
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr bf16_t quiet_nan() noexcept { return from_bits(0x7FC0u); }
  // Largest finite value: 0x1.FEp127, about 3.39e38.
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr bf16_t max_finite() noexcept { return from_bits(0x7F7Fu); }
  // Smallest normal value: 2^-126.
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr bf16_t min_normal() noexcept { return from_bits(0x0080u); }
  // Smallest subnormal value: 2^-133.
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr bf16_t min_subnormal() noexcept { return from_bits(0x0001u); }
};

// IEEE 754 binary16: 1 sign, 5 exponent, 10 mantissa bits; largest finite 65504. A storage type: convert to float to
// compute. Bit-compatible with CUDA's __half (moekit/core/cuda_interop.hpp converts).
struct fp16_t {
  std::uint16_t bits;

  fp16_t() = default;  // trivial: uninitialised, like float; fp16_t{} is +0
  // Round-to-nearest-even. |x| >= 65520 (65504 + half an ulp) gives ±inf (IEEE 754). NaN stays NaN: sign and top
  // payload bits kept, made quiet. (CUDA's __float2half_rn returns the canonical NaN 0x7FFF instead; every non-NaN
  // agrees bit for bit.)
  MOEKIT_HOST_DEVICE constexpr explicit fp16_t(float x) noexcept
      : bits(static_cast<std::uint16_t>(detail::narrow_ieee<5, 10>(x))) {}
  // Rounded once, straight from double (not via float, which could round twice).
  MOEKIT_HOST_DEVICE constexpr explicit fp16_t(double x) noexcept
      : bits(static_cast<std::uint16_t>(detail::narrow_ieee<5, 10>(x))) {}

  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr fp16_t from_bits(std::uint16_t b) noexcept {
    fp16_t r{};
    r.bits = b;
    return r;
  }

  // Exact: every fp16 is a normal float (subnormals too; NaN payloads kept).
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr float to_float() const noexcept {
    std::uint32_t const sign = static_cast<std::uint32_t>(bits & 0x8000u) << 16;
    std::uint32_t const magnitude = bits & 0x7FFFu;
    if (magnitude >= 0x7C00u) return detail::float_from_bits(sign | 0x7F800000u | ((magnitude & 0x03FFu) << 13));
    return detail::float_from_bits(sign | detail::widen_magnitude<5, 10>(magnitude));
  }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr double to_double() const noexcept {
    return static_cast<double>(to_float());
  }
  MOEKIT_HOST_DEVICE constexpr explicit operator float() const noexcept { return to_float(); }
  MOEKIT_HOST_DEVICE constexpr explicit operator double() const noexcept { return to_double(); }

  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_nan() const noexcept { return (bits & 0x7FFFu) > 0x7C00u; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_inf() const noexcept { return (bits & 0x7FFFu) == 0x7C00u; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_finite() const noexcept { return (bits & 0x7C00u) != 0x7C00u; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool signbit() const noexcept { return (bits & 0x8000u) != 0; }

  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr fp16_t infinity() noexcept { return from_bits(0x7C00u); }
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr fp16_t quiet_nan() noexcept { return from_bits(0x7E00u); }
  // Largest finite value: 65504.
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr fp16_t max_finite() noexcept { return from_bits(0x7BFFu); }
  // Smallest normal value: 2^-14.
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr fp16_t min_normal() noexcept { return from_bits(0x0400u); }
  // Smallest subnormal value: 2^-24.
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr fp16_t min_subnormal() noexcept { return from_bits(0x0001u); }
};

// to_float(x) for every floating element type, float included, so templates over the element type can write it.
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr float to_float(float x) noexcept { return x; }
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr float to_float(bf16_t x) noexcept { return x.to_float(); }
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr float to_float(fp16_t x) noexcept { return x.to_float(); }

static_assert(sizeof(bf16_t) == 2 && alignof(bf16_t) == 2 && std::is_trivial_v<bf16_t> &&
              std::is_standard_layout_v<bf16_t>);
static_assert(sizeof(fp16_t) == 2 && alignof(fp16_t) == 2 && std::is_trivial_v<fp16_t> &&
              std::is_standard_layout_v<fp16_t>);

MOEKIT_NAMESPACE_END
