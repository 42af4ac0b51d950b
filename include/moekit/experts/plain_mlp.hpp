#pragma once
// Plain MLP experts, h = act(u) with u = W_in x (Switch Transformer, HF `has_gate=False`;
// ALGORITHMS.md §1.9.1). `up` holds W_in [I, H] and `down` W_out [H, I]; there is no gate
// projection. With act::Identity and I = r it is a linear low-rank expert (LoRA-only experts).

#include "moekit/config.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/status.hpp"
#include "moekit/experts/activation.hpp"
#include "moekit/experts/concept.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace experts {

template <class Act, DenseElement W = bf16_t>
struct PlainMlp {
  using Element = W;
  using Activation = Act;
  static constexpr ExpertShape shape = ExpertShape::plain;
  static constexpr char const* name = "plain_mlp";

  [[nodiscard]] MOEKIT_HOST_DEVICE float hidden_unit(float /*gate*/, float up) const noexcept { return Act{}(up); }
  [[nodiscard]] Status validate() const { return Status::ok; }
};

template <DenseElement W = bf16_t>
using ReluMlp = PlainMlp<act::ReLU, W>;
template <DenseElement W = bf16_t>
using GeluMlp = PlainMlp<act::Gelu, W>;

}  // namespace experts
MOEKIT_NAMESPACE_END
