#pragma once
// Score functions shared by the routers, in fp32 with the same bits on host and device
// (ALGORITHMS.md §1.0): the softmax's maximum and denominator over a token's logits, and the
// bf16 rounding that reproduces an HF model whose router runs in bf16.

#include "moekit/config.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/softmax.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

enum class ScoreFunction {
  softmax,             // p = softmax(z) over all experts
  sigmoid,             // s = 1 / (1 + exp(-z)) per expert
  softmax_of_selected  // gpt-oss: softmax over the selected logits only
};

using moekit::softmax_entry;
using moekit::softmax_normaliser;
using moekit::SoftmaxNormaliser;

// Round-to-nearest-even to bf16 and back: the logits an HF model in bf16 would route on.
[[nodiscard]] MOEKIT_HOST_DEVICE inline float round_to_bf16(float z) noexcept { return float(bf16_t(z)); }

}  // namespace routing
MOEKIT_NAMESPACE_END
