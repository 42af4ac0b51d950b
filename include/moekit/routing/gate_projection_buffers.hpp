#pragma once
// The buffers of the gate projection logits = x·Wgᵀ (+ b) (ALGORITHMS.md §1.0): hidden states
// x [T, H], router weight Wg [E, H] (HF nn.Linear [out, in]), optional router bias b [E]
// (gpt-oss), logits [T, E] in fp32. x and Wg are fp32 or bf16, independently. Shared by the
// device launcher, the CPU path and the host reference, with the checks every entry point
// applies before touching them; on any failure nothing is written and the message names the
// buffer and the sizes involved.

#include <cmath>
#include <concepts>
#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

// The element types the gate projection reads: fp32 or bf16 (both convert to fp32 exactly).
template <class T>
concept GateElement = std::same_as<T, float> || std::same_as<T, bf16_t>;

template <GateElement X, GateElement W, MemorySpace Space>
struct GateProjectionBuffers {
  TensorView<X const, 2, Space> hidden;    // [T, H], hidden dimension contiguous
  TensorView<W const, 2, Space> weight;    // [E, H], hidden dimension contiguous
  TensorView<float const, 1, Space> bias;  // [E], or extent 0 (and any pointer) for no bias
  TensorView<float, 2, Space> logits;      // [T, E], experts contiguous

  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool has_bias() const noexcept { return bias.extent(0) != 0; }
};

namespace detail {
template <class View>
Status check_gate_matrix(View const& v, char const* name, std::int64_t rows, std::int64_t cols) {
  if (!v.validate()) {
    return error(Status::invalid_argument, "gate projection: %s: null pointer or negative extent/stride", name);
  }
  if (v.extent(0) != rows || v.extent(1) != cols) {
    return error(Status::invalid_argument, "gate projection: %s: expected [%lld, %lld], got [%lld, %lld]", name,
                 static_cast<long long>(rows), static_cast<long long>(cols), static_cast<long long>(v.extent(0)),
                 static_cast<long long>(v.extent(1)));
  }
  if (rows > 0 && cols > 1 && v.stride(1) != 1) {
    return error(Status::invalid_argument, "gate projection: %s: the last dimension must be contiguous (stride %lld)",
                 name, static_cast<long long>(v.stride(1)));
  }
  if (rows > 1 && v.stride(0) < cols) {
    return error(Status::invalid_argument, "gate projection: %s: rows overlap (row stride %lld < %lld columns)", name,
                 static_cast<long long>(v.stride(0)), static_cast<long long>(cols));
  }
  if (!v.is_aligned(alignof(typename View::element_type))) {
    return error(Status::misaligned, "gate projection: %s: pointer not aligned to %zu bytes", name,
                 alignof(typename View::element_type));
  }
  return Status::ok;
}
}  // namespace detail

// Shapes, strides and alignment of every buffer; T = hidden.extent(0), H = hidden.extent(1),
// E = weight.extent(0) >= 1. H = 0 is allowed (the logits are then the bias, or zero).
template <GateElement X, GateElement W, MemorySpace Space>
[[nodiscard]] Status check_gate_projection_buffers(GateProjectionBuffers<X, W, Space> const& b) {
  std::int64_t const tokens = b.hidden.extent(0);
  std::int64_t const hidden = b.hidden.extent(1);
  std::int64_t const experts = b.weight.extent(0);
  if (tokens < 0 || hidden < 0) {
    return error(Status::invalid_argument, "gate projection: hidden states: negative extent [%lld, %lld]",
                 static_cast<long long>(tokens), static_cast<long long>(hidden));
  }
  if (experts < 1 || experts > 0x7fffffff) {
    return error(Status::invalid_argument, "gate projection: gate weight: need 1 to 2^31-1 experts (rows), got %lld",
                 static_cast<long long>(experts));
  }
  if (Status s = detail::check_gate_matrix(b.hidden, "hidden states", tokens, hidden); !s) {
    return s;
  }
  if (Status s = detail::check_gate_matrix(b.weight, "gate weight", experts, hidden); !s) {
    return s;
  }
  if (b.has_bias()) {
    if (b.bias.extent(0) != experts) {
      return error(Status::invalid_argument, "gate projection: gate bias: expected [%lld], got [%lld]",
                   static_cast<long long>(experts), static_cast<long long>(b.bias.extent(0)));
    }
    if (!b.bias.validate() || (experts > 1 && b.bias.stride(0) != 1)) {
      return error(Status::invalid_argument, "gate projection: gate bias: null pointer or not contiguous");
    }
    if (!b.bias.is_aligned(alignof(float))) {
      return error(Status::misaligned, "gate projection: gate bias: pointer not aligned to 4 bytes");
    }
  }
  return detail::check_gate_matrix(b.logits, "logits", tokens, experts);
}

// Checked mode (ALGORITHMS.md §0) for the inputs of the projection, host memory only: a NaN or
// infinite hidden state, weight or bias is refused naming its position, so a bad checkpoint or
// activation is reported where it is, not as a non-finite logit later.
template <GateElement X, GateElement W>
[[nodiscard]] Status check_gate_inputs_finite(GateProjectionBuffers<X, W, MemorySpace::host> const& b) {
  for (std::int64_t t = 0; t < b.hidden.extent(0); ++t) {
    for (std::int64_t h = 0; h < b.hidden.extent(1); ++h) {
      float const v = to_float(b.hidden(t, h));
      if (!std::isfinite(v)) {
        return error(Status::invalid_argument,
                     "gate projection: hidden states: non-finite value %g at token %lld, h %lld", double(v),
                     static_cast<long long>(t), static_cast<long long>(h));
      }
    }
  }
  for (std::int64_t e = 0; e < b.weight.extent(0); ++e) {
    for (std::int64_t h = 0; h < b.weight.extent(1); ++h) {
      float const v = to_float(b.weight(e, h));
      if (!std::isfinite(v)) {
        return error(Status::invalid_argument,
                     "gate projection: gate weight: non-finite value %g at expert %lld, h %lld", double(v),
                     static_cast<long long>(e), static_cast<long long>(h));
      }
    }
  }
  for (std::int64_t e = 0; e < b.bias.extent(0); ++e) {
    if (!std::isfinite(b.bias(e))) {
      return error(Status::invalid_argument, "gate projection: gate bias: non-finite value %g at expert %lld",
                   double(b.bias(e)), static_cast<long long>(e));
    }
  }
  return Status::ok;
}

}  // namespace routing
MOEKIT_NAMESPACE_END
