#pragma once
// TopK: the production per-token routers of ALGORITHMS.md §1.1, §1.5, §1.6, §1.7.
//   softmax             Mixtral and Qwen3-MoE (norm_topk_prob = true), Qwen2-MoE and OLMoE (false),
//                       Switch (k = 1, false; capacity comes from the plan)
//   sigmoid             sigmoid top-k; Llama-4 (k = 1, no renormalisation, weight on the input)
//   softmax_of_selected gpt-oss: top-k of the logits, softmax over the k selected logits
// Selection ranks the logits themselves (every score here is increasing in the logit), ties to
// the lower expert index, NaN last. Weights: the score of each selected expert, renormalised
// over the k (in slot order, no epsilon) when norm_topk_prob, then times routed_scaling_factor.

#include <cmath>
#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"
#include "moekit/routing/concept.hpp"
#include "moekit/routing/ranking.hpp"
#include "moekit/routing/scores.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

template <int MaxK = 8>
struct TopK {
  static constexpr RouterScope scope = RouterScope::per_token;
  static constexpr int max_slots = MaxK;

  int experts = 0;  // E (num_local_experts / num_experts)
  int k = 0;        // num_experts_per_tok
  ScoreFunction scoring = ScoreFunction::softmax;
  bool norm_topk_prob = false;  // renormalise the k weights to sum to one
  float routed_scaling_factor = 1.f;
  bool round_logits_to_bf16 = false;  // reproduce an HF router that runs in bf16

  [[nodiscard]] MOEKIT_HOST_DEVICE int num_experts() const noexcept { return experts; }
  [[nodiscard]] MOEKIT_HOST_DEVICE int slots() const noexcept { return k; }

  [[nodiscard]] Status validate() const {
    if (experts < 1) {
      return error(Status::invalid_argument, "TopK router: num_experts must be >= 1 (got %d)", experts);
    }
    if (k < 1 || k > experts) {
      return error(Status::invalid_argument, "TopK router: num_experts_per_tok must be in [1, E] (got k=%d, E=%d)", k,
                   experts);
    }
    if (k > MaxK) {
      return error(Status::unsupported_config, "TopK router: k=%d exceeds this instantiation's MaxK=%d; use TopK<%d>",
                   k, MaxK, k);
    }
    if (!std::isfinite(routed_scaling_factor) || routed_scaling_factor <= 0.f) {
      return error(Status::invalid_argument, "TopK router: routed_scaling_factor must be finite and > 0 (got %g)",
                   double(routed_scaling_factor));
    }
    return Status::ok;
  }

  MOEKIT_HOST_DEVICE void route_token(std::int64_t, float const* logits, int* ids, float* weights) const noexcept {
    route_row(logits, nullptr, nullptr, ids, weights);
  }

  // route_token with parts computed by the caller with the same arithmetic (the CPU path's
  // vectorised passes): `given` the row's softmax maximum and denominator, `selected` the k
  // chosen experts in selection order; null: computed here. Only without bf16 rounding.
  MOEKIT_HOST_DEVICE void route_row(float const* logits, SoftmaxNormaliser const* given, int const* selected, int* ids,
                                    float* weights) const noexcept {
    bool const round = round_logits_to_bf16;
    auto logit = [logits, round](int e) { return round ? round_to_bf16(logits[e]) : logits[e]; };
    int chosen[MaxK] = {};
    if (selected != nullptr) {
      for (int j = 0; j < k; ++j) {
        chosen[j] = selected[j];
      }
    } else {
      top_k<MaxK>(
          experts, k, logit, [](int e) { return e; }, chosen);
    }

    float w[MaxK];
    if (scoring == ScoreFunction::softmax) {
      SoftmaxNormaliser const n = given != nullptr ? *given : softmax_normaliser(experts, logit);
      for (int j = 0; j < k; ++j) {
        w[j] = softmax_entry(logit(chosen[j]), n);
      }
    } else if (scoring == ScoreFunction::sigmoid) {
      for (int j = 0; j < k; ++j) {
        w[j] = fp32::sigmoid(logit(chosen[j]));
      }
    } else {  // softmax over the selected logits: slot 0 holds the largest
      float const m = logit(chosen[0]);
      float denominator = 0.f;
      for (int j = 0; j < k; ++j) {
        w[j] = fp32::exp(logit(chosen[j]) - m);
        denominator += w[j];
      }
      for (int j = 0; j < k; ++j) {
        w[j] = w[j] / denominator;
      }
    }
    if (norm_topk_prob && scoring != ScoreFunction::softmax_of_selected) {
      float sum = 0.f;
      for (int j = 0; j < k; ++j) {
        sum += w[j];
      }
      for (int j = 0; j < k; ++j) {
        w[j] = w[j] / sum;
      }
    }
    for (int j = 0; j < k; ++j) {
      ids[j] = chosen[j];
      weights[j] = w[j] * routed_scaling_factor;
    }
  }
};

// Presets with the semantics of each model family (HF config keys in the parameter names).
[[nodiscard]] constexpr TopK<8> mixtral_router(int num_local_experts, int num_experts_per_tok) {
  return {.experts = num_local_experts, .k = num_experts_per_tok, .norm_topk_prob = true};
}
[[nodiscard]] constexpr TopK<8> qwen_moe_router(int num_experts, int num_experts_per_tok, bool norm_topk_prob) {
  return {.experts = num_experts, .k = num_experts_per_tok, .norm_topk_prob = norm_topk_prob};
}
[[nodiscard]] constexpr TopK<8> olmoe_router(int num_experts, int num_experts_per_tok, bool norm_topk_prob = false) {
  return qwen_moe_router(num_experts, num_experts_per_tok, norm_topk_prob);
}
[[nodiscard]] constexpr TopK<8> gpt_oss_router(int num_local_experts, int num_experts_per_tok) {
  return {.experts = num_local_experts, .k = num_experts_per_tok, .scoring = ScoreFunction::softmax_of_selected};
}
[[nodiscard]] constexpr TopK<8> llama4_router(int num_local_experts, int num_experts_per_tok = 1) {
  return {.experts = num_local_experts, .k = num_experts_per_tok, .scoring = ScoreFunction::sigmoid};
}
[[nodiscard]] constexpr TopK<1> switch_router(int num_experts) { return {.experts = num_experts, .k = 1}; }

static_assert(diagnose_router<TopK<8>>() && Router<TopK<8>>);

}  // namespace routing
MOEKIT_NAMESPACE_END
