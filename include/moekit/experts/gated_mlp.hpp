#pragma once
// Gated MLP experts, h = act(g) ⊙ u (ALGORITHMS.md §1.9.1): SwiGLU (Mixtral, Qwen2/3-MoE, OLMoE,
// DeepSeek, Llama-4 and their shared experts), GeGLU in the erf and tanh forms, ReGLU.

#include "moekit/config.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/status.hpp"
#include "moekit/experts/activation.hpp"
#include "moekit/experts/concept.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace experts {

template <class Act, DenseElement W = bf16_t>
struct GatedMlp {
  using Element = W;
  using Activation = Act;
  static constexpr ExpertShape shape = ExpertShape::gated;
  static constexpr char const* name = "gated_mlp";

  [[nodiscard]] MOEKIT_HOST_DEVICE float hidden_unit(float gate, float up) const noexcept { return Act{}(gate)*up; }
  [[nodiscard]] Status validate() const { return Status::ok; }
};

template <DenseElement W = bf16_t>
using SwiGlu = GatedMlp<act::SiLU, W>;
template <DenseElement W = bf16_t>
using GeGlu = GatedMlp<act::Gelu, W>;
template <DenseElement W = bf16_t>
using GeGluTanh = GatedMlp<act::GeluTanh, W>;
template <DenseElement W = bf16_t>
using ReGlu = GatedMlp<act::ReLU, W>;

}  // namespace experts
MOEKIT_NAMESPACE_END
