#pragma once
// GroupedTopK: DeepSeek-V2 and DeepSeek-V3 routing (ALGORITHMS.md §1.3, §1.4), HF `topk_method`:
//   greedy                 top-k of the scores (V2)
//   group_limited_greedy   experts split into n_group contiguous groups; the topk_group groups
//                          with the largest best score survive; top-k among their experts (V2)
//   noaux_tc               selection key c = score + e_score_correction_bias; group score = sum
//                          of the two largest c in the group; top-k of c among the surviving
//                          groups; weights from the unbiased score (V3)
// Weights: V2 methods normalise xor scale (Hub semantics: w = s / (sum + 1e-20) when
// norm_topk_prob and k > 1, else w = routed_scaling_factor * s); noaux_tc normalises (any k)
// when norm_topk_prob and then always scales. Masked groups are excluded (-inf semantics).

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

enum class TopKMethod { greedy, group_limited_greedy, noaux_tc };

template <int MaxK = 8>
struct GroupedTopK {
  static constexpr RouterScope scope = RouterScope::per_token;
  static constexpr int max_slots = MaxK;
  static constexpr int max_groups = 32;  // vLLM's fused grouped top-k has the same bound

  int experts = 0;  // n_routed_experts
  int k = 0;        // num_experts_per_tok
  TopKMethod method = TopKMethod::noaux_tc;
  ScoreFunction scoring = ScoreFunction::sigmoid;  // scoring_func: softmax (V2) or sigmoid (V3)
  int n_group = 1;
  int topk_group = 1;
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.f;
  float const* correction_bias = nullptr;  // [E] e_score_correction_bias (noaux_tc); null = zero

  [[nodiscard]] MOEKIT_HOST_DEVICE int num_experts() const noexcept { return experts; }
  [[nodiscard]] MOEKIT_HOST_DEVICE int slots() const noexcept { return k; }

  [[nodiscard]] Status validate() const {
    if (experts < 1) {
      return error(Status::invalid_argument, "GroupedTopK router: n_routed_experts must be >= 1 (got %d)", experts);
    }
    if (k < 1 || k > experts) {
      return error(Status::invalid_argument,
                   "GroupedTopK router: num_experts_per_tok must be in [1, E] (got k=%d, E=%d)", k, experts);
    }
    if (k > MaxK) {
      return error(Status::unsupported_config,
                   "GroupedTopK router: k=%d exceeds this instantiation's MaxK=%d; use GroupedTopK<%d>", k, MaxK, k);
    }
    if (scoring == ScoreFunction::softmax_of_selected) {
      return error(Status::invalid_argument, "GroupedTopK router: scoring_func must be softmax or sigmoid");
    }
    if (!std::isfinite(routed_scaling_factor) || routed_scaling_factor <= 0.f) {
      return error(Status::invalid_argument,
                   "GroupedTopK router: routed_scaling_factor must be finite and > 0 (got %g)",
                   double(routed_scaling_factor));
    }
    if (method == TopKMethod::greedy) {
      return Status::ok;
    }
    if (n_group < 1 || n_group > max_groups) {
      return error(Status::invalid_argument, "GroupedTopK router: n_group must be in [1, %d] (got %d)", max_groups,
                   n_group);
    }
    if (experts % n_group != 0) {
      return error(Status::invalid_argument, "GroupedTopK router: n_group=%d does not divide E=%d", n_group, experts);
    }
    if (topk_group < 1 || topk_group > n_group) {
      return error(Status::invalid_argument, "GroupedTopK router: topk_group must be in [1, n_group=%d] (got %d)",
                   n_group, topk_group);
    }
    if (k > topk_group * (experts / n_group)) {
      return error(Status::invalid_argument,
                   "GroupedTopK router: num_experts_per_tok=%d exceeds the %d experts of topk_group=%d groups", k,
                   topk_group * (experts / n_group), topk_group);
    }
    if (method == TopKMethod::noaux_tc && n_group > 1 && experts / n_group < 2) {
      return error(Status::invalid_argument, "GroupedTopK router: noaux_tc group scoring needs E/n_group >= 2 (got %d)",
                   experts / n_group);
    }
    return Status::ok;
  }

  MOEKIT_HOST_DEVICE void route_token(std::int64_t, float const* z, int* ids, float* weights) const noexcept {
    bool const softmax = scoring == ScoreFunction::softmax;
    SoftmaxNormaliser const norm = softmax ? softmax_normaliser(z, experts) : SoftmaxNormaliser{0.f, 1.f};
    route_scored(
        z, [&](int e) { return softmax ? softmax_entry(z[e], norm) : fp32::sigmoid(z[e]); }, ids, weights);
  }

  // Selection and weights given each expert's score `score(e)` (softmax or sigmoid of z[e]):
  // route_token computes the scores on the fly; the CPU path passes scores it computed eight
  // experts at a time with the same arithmetic.
  template <class Score>
  MOEKIT_HOST_DEVICE void route_scored(float const* z, Score const& score, int* ids, float* weights) const noexcept {
    bool const biased = method == TopKMethod::noaux_tc;
    // The selection key: the logit itself where the score is increasing in it, else score + bias.
    float const* bias = correction_bias;
    auto key = [&](int e) { return biased ? score(e) + (bias != nullptr ? bias[e] : 0.f) : z[e]; };

    int const groups = method == TopKMethod::greedy ? 1 : n_group;
    int const group_size = experts / groups;
    int const kept_groups = groups == 1 ? 1 : topk_group;
    int group_list[max_groups];
    if (groups == 1) {
      group_list[0] = 0;
    } else {
      auto group_score = [&](int g) {
        int best[2];
        int const first = g * group_size;
        top_k<2>(
            group_size, biased ? 2 : 1, [&](int c) { return key(first + c); }, [&](int c) { return first + c; }, best);
        return biased ? key(first + best[0]) + key(first + best[1]) : key(first + best[0]);
      };
      int chosen_groups[max_groups];
      top_k<max_groups>(
          groups, kept_groups, group_score, [](int g) { return g; }, chosen_groups);
      // Candidates are enumerated group by group in ascending group order (ties use expert ids anyway).
      for (int i = 0; i < kept_groups; ++i) {
        group_list[i] = chosen_groups[i];
      }
    }
    auto expert_of = [&](int c) { return group_list[c / group_size] * group_size + c % group_size; };
    int chosen[MaxK];
    top_k<MaxK>(
        kept_groups * group_size, k, [&](int c) { return key(expert_of(c)); }, expert_of, chosen);

    float w[MaxK];
    float sum = 0.f;
    for (int j = 0; j < k; ++j) {
      ids[j] = expert_of(chosen[j]);
      w[j] = score(ids[j]);
      sum += w[j];
    }
    bool const normalise = norm_topk_prob && (biased || k > 1);
    bool const scale = biased || !normalise;
    for (int j = 0; j < k; ++j) {
      float v = normalise ? w[j] / (sum + 1e-20f) : w[j];
      weights[j] = scale ? v * routed_scaling_factor : v;
    }
  }
};

// DeepSeek-V3 (and Kimi-K2-style n_group = 1): sigmoid, noaux_tc, normalise then scale.
[[nodiscard]] constexpr GroupedTopK<8> deepseek_v3_router(int n_routed_experts, int num_experts_per_tok, int n_group,
                                                          int topk_group, float routed_scaling_factor,
                                                          float const* e_score_correction_bias,
                                                          bool norm_topk_prob = true) {
  return {.experts = n_routed_experts,
          .k = num_experts_per_tok,
          .method = TopKMethod::noaux_tc,
          .scoring = ScoreFunction::sigmoid,
          .n_group = n_group,
          .topk_group = topk_group,
          .norm_topk_prob = norm_topk_prob,
          .routed_scaling_factor = routed_scaling_factor,
          .correction_bias = e_score_correction_bias};
}

// DeepSeek-V2: softmax, greedy or group_limited_greedy, normalise xor scale.
[[nodiscard]] constexpr GroupedTopK<8> deepseek_v2_router(int n_routed_experts, int num_experts_per_tok,
                                                          TopKMethod topk_method, int n_group, int topk_group,
                                                          float routed_scaling_factor, bool norm_topk_prob = false) {
  return {.experts = n_routed_experts,
          .k = num_experts_per_tok,
          .method = topk_method,
          .scoring = ScoreFunction::softmax,
          .n_group = n_group,
          .topk_group = topk_group,
          .norm_topk_prob = norm_topk_prob,
          .routed_scaling_factor = routed_scaling_factor};
}

static_assert(diagnose_router<GroupedTopK<8>>() && Router<GroupedTopK<8>>);

}  // namespace routing
MOEKIT_NAMESPACE_END
