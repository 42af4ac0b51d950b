#pragma once
// DType names moekit's element types at run time (problem descriptions, file I/O, dispatch); dtype_of / type_of
// map them to and from the C++ types at compile time.

#include <cstdint>
#include <type_traits>

#include "moekit/config.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/float8.hpp"
#include "moekit/core/int4.hpp"

MOEKIT_NAMESPACE_BEGIN

enum class DType : std::uint8_t {
  f32,       // float
  bf16,      // bf16_t
  f16,       // fp16_t
  fp8_e4m3,  // fp8_e4m3_t
  fp8_e5m2,  // fp8_e5m2_t
  i8,        // std::int8_t
  i4,        // int4x2_t: two elements per byte, element 0 in the low nibble
};

inline constexpr DType all_dtypes[] = {DType::f32,      DType::bf16, DType::f16, DType::fp8_e4m3,
                                       DType::fp8_e5m2, DType::i8,   DType::i4};

[[nodiscard]] MOEKIT_HOST_DEVICE constexpr char const* to_string(DType t) noexcept {
  switch (t) {
    case DType::f32: return "f32";
    case DType::bf16: return "bf16";
    case DType::f16: return "f16";
    case DType::fp8_e4m3: return "fp8_e4m3";
    case DType::fp8_e5m2: return "fp8_e5m2";
    case DType::i8: return "i8";
    case DType::i4: return "i4";
  }
  return "unknown dtype";
}

// Bits of one element (4 for i4, although its storage unit int4x2_t is a byte); 0 for a value outside the enum.
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr int size_in_bits(DType t) noexcept {
  switch (t) {
    case DType::f32: return 32;
    case DType::bf16:
    case DType::f16: return 16;
    case DType::fp8_e4m3:
    case DType::fp8_e5m2:
    case DType::i8: return 8;
    case DType::i4: return 4;
  }
  return 0;
}

// Bytes that `elements` contiguous elements occupy, rounded up to whole bytes (i4: an odd count leaves the last
// high nibble unused). elements >= 0.
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::int64_t storage_bytes(DType t, std::int64_t elements) noexcept {
  return (elements * size_in_bits(t) + 7) / 8;
}

[[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_floating(DType t) noexcept {
  return t != DType::i8 && t != DType::i4;
}

namespace detail {
template <class T>
struct DTypeEntry {
  static constexpr bool known = false;
  static constexpr DType value{};  // only so that a failed dtype_of reports one error, not two
};
template <DType D>
struct DTypeKnown {
  static constexpr bool known = true;
  static constexpr DType value = D;
};
template <>
struct DTypeEntry<float> : DTypeKnown<DType::f32> {};
template <>
struct DTypeEntry<bf16_t> : DTypeKnown<DType::bf16> {};
template <>
struct DTypeEntry<fp16_t> : DTypeKnown<DType::f16> {};
template <>
struct DTypeEntry<fp8_e4m3_t> : DTypeKnown<DType::fp8_e4m3> {};
template <>
struct DTypeEntry<fp8_e5m2_t> : DTypeKnown<DType::fp8_e5m2> {};
template <>
struct DTypeEntry<std::int8_t> : DTypeKnown<DType::i8> {};
template <>
struct DTypeEntry<int4x2_t> : DTypeKnown<DType::i4> {};
}  // namespace detail

// One of moekit's element (storage) types, cv-qualified or not: float, bf16_t, fp16_t, fp8_e4m3_t, fp8_e5m2_t,
// std::int8_t, int4x2_t.
template <class T>
concept Numeric = detail::DTypeEntry<std::remove_cv_t<T>>::known;

// dtype_of<T>::value (or dtype_of_v<T>): the DType of element type T.
template <class T>
struct dtype_of {
  static_assert(Numeric<T>, "dtype_of<T>: T is not a moekit element type. Use float, bf16_t, fp16_t, fp8_e4m3_t, "
                            "fp8_e5m2_t, std::int8_t or int4x2_t (two int4 per byte), or convert to one of them.");
  static constexpr DType value = detail::DTypeEntry<std::remove_cv_t<T>>::value;
};
template <class T>
inline constexpr DType dtype_of_v = dtype_of<T>::value;

// type_of<D>::type (or type_of_t<D>): the C++ type that stores DType D; for i4 that is int4x2_t, two elements.
template <DType D>
struct type_of {
  static_assert(D != D, "type_of<D>: D is not one of the DType enumerators");
};
template <>
struct type_of<DType::f32> {
  using type = float;
};
template <>
struct type_of<DType::bf16> {
  using type = bf16_t;
};
template <>
struct type_of<DType::f16> {
  using type = fp16_t;
};
template <>
struct type_of<DType::fp8_e4m3> {
  using type = fp8_e4m3_t;
};
template <>
struct type_of<DType::fp8_e5m2> {
  using type = fp8_e5m2_t;
};
template <>
struct type_of<DType::i8> {
  using type = std::int8_t;
};
template <>
struct type_of<DType::i4> {
  using type = int4x2_t;
};
template <DType D>
using type_of_t = typename type_of<D>::type;

// The floating element types: what from_float<T> makes and to_float reads.
template <class T>
concept FloatingNumeric = Numeric<T> && is_floating(dtype_of_v<T>);

// T from a float, rounded to nearest even (saturating for fp8, as their constructors are), so templates over the
// element type can write from_float<T>(x); to_float(x) (float16.hpp, float8.hpp) goes the other way.
template <FloatingNumeric T>
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::remove_cv_t<T> from_float(float x) noexcept {
  return std::remove_cv_t<T>(x);
}

MOEKIT_NAMESPACE_END
