#pragma once
// Score functions shared by the routers, in fp32 with the same bits on host and device
// (ALGORITHMS.md §1.0): the softmax's maximum and denominator over a token's logits, and the
// bf16 rounding that reproduces an HF model whose router runs in bf16.

#include "moekit/config.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/fp32_math.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

enum class ScoreFunction {
  softmax,             // p = softmax(z) over all experts
  sigmoid,             // s = 1 / (1 + exp(-z)) per expert
  softmax_of_selected  // gpt-oss: softmax over the selected logits only
};

// max_e z_e and sum_e exp(z_e - max), summed in ascending e (a true softmax then is
// exp(z_e - max) / denominator). NaN or +inf anywhere makes the denominator NaN, as in PyTorch.
struct SoftmaxNormaliser {
  float max;
  float denominator;
};

// `logit(e)` gives the e-th logit (an accessor, so callers can round or mask on the fly).
template <class Logit>
[[nodiscard]] MOEKIT_HOST_DEVICE SoftmaxNormaliser softmax_normaliser(int n, Logit const& logit) noexcept {
  float m = logit(0);
  for (int e = 1; e < n; ++e) {
    float const z = logit(e);
    m = z > m ? z : m;
  }
  float sum = 0.f;
  for (int e = 0; e < n; ++e) {
    sum += fp32::exp(logit(e) - m);
  }
  return {m, sum};
}

[[nodiscard]] MOEKIT_HOST_DEVICE inline SoftmaxNormaliser softmax_normaliser(float const* z, int n) noexcept {
  return softmax_normaliser(n, [z](int e) { return z[e]; });
}

[[nodiscard]] MOEKIT_HOST_DEVICE inline float softmax_entry(float z, SoftmaxNormaliser s) noexcept {
  return fp32::exp(z - s.max) / s.denominator;
}

// Round-to-nearest-even to bf16 and back: the logits an HF model in bf16 would route on.
[[nodiscard]] MOEKIT_HOST_DEVICE inline float round_to_bf16(float z) noexcept { return float(bf16_t(z)); }

}  // namespace routing
MOEKIT_NAMESPACE_END
