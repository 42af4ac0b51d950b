#pragma once
// int4x2_t, two signed 4-bit integers packed in a byte, and the rounding, saturating float -> int8 / int4
// quantisation that quantised experts use. int8 needs no type of its own: it is std::int8_t.

#include <cstdint>
#include <type_traits>

#include "moekit/config.hpp"

MOEKIT_NAMESPACE_BEGIN

namespace detail {

// x rounded to the nearest integer, ties to even, then clamped to [lo, hi]; NaN gives 0. lo < 0 < hi, small.
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr int round_half_even_saturate(float x, int lo, int hi) noexcept {
  if (x != x) return 0;                          // NaN
  if (x >= static_cast<float>(hi)) return hi;    // +inf too
  if (x <= static_cast<float>(lo)) return lo;    // -inf too
  int t = static_cast<int>(x);                   // toward zero; |x| < 2^31 here
  float const frac = x - static_cast<float>(t);  // exact (Sterbenz: |x|/2 <= |t| <= |x| when |x| >= 1, else t = 0)
  if (frac > 0.5f || (frac == 0.5f && (t & 1) != 0)) {
    ++t;
  } else if (frac < -0.5f || (frac == -0.5f && (t & 1) != 0)) {
    --t;
  }
  return t;  // in [lo, hi]: lo < x < hi, and rounding moves at most to the nearest integer
}

}  // namespace detail

// Two signed 4-bit integers (two's complement, range [-8, 7]) in one byte: element 0 in the low nibble (bits 0-3),
// element 1 in the high nibble (bits 4-7). Element 2i of a packed tensor is element 0 of byte i (the order of
// CUTLASS's Array<int4b_t>; checkpoints that interleave nibbles, as AWQ does, are reordered when loaded).
struct int4x2_t {
  std::uint8_t bits;

  static constexpr int min_value = -8;
  static constexpr int max_value = 7;

  int4x2_t() = default;  // trivial: uninitialised; int4x2_t{} holds (0, 0)

  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr int4x2_t from_bits(std::uint8_t b) noexcept {
    int4x2_t r{};
    r.bits = b;
    return r;
  }
  // e0, e1 must lie in [-8, 7]; only their low four bits are stored (out-of-range values wrap).
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr int4x2_t pack(int e0, int e1) noexcept {
    return from_bits(
        static_cast<std::uint8_t>((static_cast<unsigned>(e0) & 0xFu) | ((static_cast<unsigned>(e1) & 0xFu) << 4)));
  }

  // Element i (0 or 1), sign-extended.
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr int get(int i) const noexcept {
    int const nibble = (bits >> (4 * (i & 1))) & 0xF;
    return (nibble ^ 8) - 8;
  }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr int lo() const noexcept { return get(0); }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr int hi() const noexcept { return get(1); }

  // Sets element i (0 or 1) to v, which must lie in [-8, 7] (only its low four bits are stored); the other is kept.
  MOEKIT_HOST_DEVICE constexpr void set(int i, int v) noexcept {
    unsigned const shift = 4u * static_cast<unsigned>(i & 1);
    bits = static_cast<std::uint8_t>((bits & ~(0xFu << shift)) | ((static_cast<unsigned>(v) & 0xFu) << shift));
  }
};

static_assert(sizeof(int4x2_t) == 1 && std::is_trivial_v<int4x2_t> && std::is_standard_layout_v<int4x2_t>);

// x rounded to the nearest integer (ties to even), saturated to [-128, 127]; NaN gives 0, ±inf the bound.
// The caller divides by its scale first.
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::int8_t quantize_int8(float x) noexcept {
  return static_cast<std::int8_t>(detail::round_half_even_saturate(x, -128, 127));
}

// x rounded to the nearest integer (ties to even), saturated to [-8, 7]; NaN gives 0, ±inf the bound.
// The caller divides by its scale first; int4x2_t::pack stores the results.
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::int8_t quantize_int4(float x) noexcept {
  return static_cast<std::int8_t>(detail::round_half_even_saturate(x, int4x2_t::min_value, int4x2_t::max_value));
}

// Two values quantised to int4 and packed: x0 in element 0 (low nibble), x1 in element 1.
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr int4x2_t quantize_int4x2(float x0, float x1) noexcept {
  return int4x2_t::pack(quantize_int4(x0), quantize_int4(x1));
}

MOEKIT_NAMESPACE_END
