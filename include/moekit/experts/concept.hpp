#pragma once
// The Expert concept: what an expert policy provides so that moekit can run it in the grouped
// GEMM kernels, on the CPU executor and in the host reference.
//
// Every expert moekit runs is a two-projection MLP over weights stored [out, in]:
//   gated  (ExpertShape::gated)  g = W_g x + b_g, u = W_u x + b_u, h = f(g, u), o = W_d h + b_d
//   plain  (ExpertShape::plain)  u = W_u x + b_u,                   h = f(0, u), o = W_d h + b_d
// A policy is a small trivially copyable value (it is passed to kernels by value) that names
// the weight element type and the element-wise f, the only part that differs between SwiGLU,
// GeGLU, gpt-oss's clamped SwiGLU, a ReLU MLP or a linear (LoRA) expert:
//
//   struct MyExpert {
//     using Element = moekit::bf16_t;                          // weight storage type
//     static constexpr moekit::experts::ExpertShape shape = moekit::experts::ExpertShape::gated;
//     static constexpr char const* name = "my_expert";
//     MOEKIT_HOST_DEVICE float hidden_unit(float gate, float up) const noexcept;  // h = f(g, u)
//     moekit::Status validate() const;                        // host: parameters, moekit::error(...)
//   };
//
// Which experts do no GEMM at all (null, zero, identity) is not the policy's business: it is a
// property of expert ids, experts/expert_table.hpp.

#include <concepts>
#include <type_traits>

#include "moekit/config.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace experts {

enum class ExpertShape { gated, plain };

// Element types the dense expert GEMMs read: fp32 (CPU executor), bf16 and fp16 (both).
template <class T>
concept DenseElement = std::same_as<T, float> || std::same_as<T, bf16_t> || std::same_as<T, fp16_t>;

template <class E>
concept Expert = std::is_trivially_copyable_v<E> && requires(E const& e, float g, float u) {
  typename E::Element;
  { E::shape } -> std::convertible_to<ExpertShape>;
  { E::name } -> std::convertible_to<char const*>;
  { e.hidden_unit(g, u) }
  noexcept->std::same_as<float>;
  { e.validate() } -> std::same_as<Status>;
};

namespace detail {
template <class E>
concept has_element = requires {
  typename E::Element;
};
template <class E>
concept has_shape = requires {
  { E::shape } -> std::convertible_to<ExpertShape>;
};
template <class E>
concept has_name = requires {
  { E::name } -> std::convertible_to<char const*>;
};
template <class E>
concept has_hidden_unit = requires(E const& e, float g, float u) {
  { e.hidden_unit(g, u) }
  noexcept->std::same_as<float>;
};
template <class E>
concept has_validate = requires(E const& e) {
  { e.validate() } -> std::same_as<Status>;
};
}  // namespace detail

// One static_assert per requirement, worded as the fix; the concept check then holds.
template <class E>
constexpr bool diagnose_expert() {
  static_assert(std::is_trivially_copyable_v<E>,
                "an Expert policy is passed to kernels by value: make it trivially copyable (no containers, no "
                "virtual functions; hold device pointers, not owners)");
  static_assert(detail::has_element<E>, "an Expert policy needs `using Element = ...;` (its weight storage type)");
  static_assert(detail::has_shape<E>,
                "an Expert policy needs `static constexpr moekit::experts::ExpertShape shape = ...;` (gated or plain)");
  static_assert(detail::has_name<E>, "an Expert policy needs `static constexpr char const* name = \"...\";`");
  static_assert(detail::has_hidden_unit<E>,
                "an Expert policy needs `MOEKIT_HOST_DEVICE float hidden_unit(float gate, float up) const noexcept`");
  static_assert(detail::has_validate<E>, "an Expert policy needs `moekit::Status validate() const`");
  return Expert<E>;
}

}  // namespace experts
MOEKIT_NAMESPACE_END
