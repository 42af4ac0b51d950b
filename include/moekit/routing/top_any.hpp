#pragma once
// TopAnyThreshold: top-any pruning of the router's top-K (ALGORITHMS.md §3.6; MC-MoE's Online
// Dynamic Pruning and the deterministic inference mode of MC#'s Online Top-any Pruning).
//   1. p = softmax(z); the top-K experts by logit in rank order e_1..e_K (ties to the lower id)
//   2. slot 1 is always kept; slot s >= 2 is kept iff
//        ratio     p[e_s] >= beta * p[e_1]            (fp32 product, no division; per-layer beta)
//        logit     keep_logits[t, s] > 0              (caller-supplied keep-logits [T, K]; the
//                                                      entry of slot 1 is ignored)
//        absolute  p[e_s] / (p[e_1] + ... + p[e_K]) >= theta   (sum in slot order)
//   3. weights p / (sum of p over the kept slots, in slot order); a dropped slot stays in place
//      with id E and weight 0, so slot s always means "rank s" for the fused kernel.
// Inference only: no gradient (the kept set is piecewise constant).

#include <cmath>
#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/routing/concept.hpp"
#include "moekit/routing/ranking.hpp"
#include "moekit/routing/scores.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

enum class TopAnyMode { ratio, logit, absolute };

template <int MaxK = 8>
struct TopAnyThreshold {
  static constexpr RouterScope scope = RouterScope::per_token;
  static constexpr int max_slots = MaxK;

  int experts = 0;  // E (num_local_experts)
  int k = 0;        // K (num_experts_per_tok): the candidates that may be pruned
  TopAnyMode mode = TopAnyMode::ratio;
  float beta = 0.f;   // ratio mode, this layer's beta (MC-MoE: 0.40 .. 0.62); 0 keeps all K
  float theta = 0.f;  // absolute mode, in [0, 1]; 0 keeps all K
  // logit mode: keep-logits [token_count, K], row stride keep_logits_stride (0 means K).
  float const* keep_logits = nullptr;
  std::int64_t keep_logits_stride = 0;
  // Optional output [token_count]: the number of kept slots of each token.
  int* num_active = nullptr;
  // Rows of the per-token side buffers; must equal T (validate_inputs). Tokens at or past it
  // read no keep-logit (their slots s >= 2 are dropped) and write no num_active.
  std::int64_t token_count = 0;

  [[nodiscard]] MOEKIT_HOST_DEVICE int num_experts() const noexcept { return experts; }
  [[nodiscard]] MOEKIT_HOST_DEVICE int slots() const noexcept { return k; }
  [[nodiscard]] MOEKIT_HOST_DEVICE std::int64_t keep_logits_row_stride() const noexcept {
    return keep_logits_stride == 0 ? k : keep_logits_stride;
  }

  [[nodiscard]] Status validate() const {
    if (experts < 1) {
      return error(Status::invalid_argument, "TopAnyThreshold: num_experts must be >= 1 (got %d)", experts);
    }
    if (k < 1 || k > experts) {
      return error(Status::invalid_argument, "TopAnyThreshold: K must be in [1, E] (got K=%d, E=%d)", k, experts);
    }
    if (k > MaxK) {
      return error(Status::unsupported_config,
                   "TopAnyThreshold: K=%d exceeds this instantiation's MaxK=%d; use TopAnyThreshold<%d>", k, MaxK, k);
    }
    if (mode == TopAnyMode::ratio && !(beta >= 0.f)) {
      return error(Status::invalid_argument, "TopAnyThreshold: beta must be >= 0 (got %g)", double(beta));
    }
    if (mode == TopAnyMode::absolute && !(theta >= 0.f && theta <= 1.f)) {
      return error(Status::invalid_argument, "TopAnyThreshold: theta must be in [0, 1] (got %g)", double(theta));
    }
    if (mode == TopAnyMode::logit &&
        (keep_logits == nullptr || keep_logits_stride < 0 || (keep_logits_stride != 0 && keep_logits_stride < k))) {
      return error(Status::invalid_argument,
                   "TopAnyThreshold: keep_logits must be [T,K] (pointer %s, row stride %lld, K=%d)",
                   keep_logits == nullptr ? "null" : "set", static_cast<long long>(keep_logits_stride), k);
    }
    if ((mode == TopAnyMode::logit || num_active != nullptr) && token_count < 0) {
      return error(Status::invalid_argument, "TopAnyThreshold: token_count must be >= 0 (got %lld)",
                   static_cast<long long>(token_count));
    }
    return Status::ok;
  }

  // The per-token side buffers against the batch's T (see NullExperts::validate_inputs).
  [[nodiscard]] Status validate_inputs(std::int64_t tokens) const {
    if (mode == TopAnyMode::logit && token_count != tokens) {
      return error(Status::invalid_argument, "TopAnyThreshold: keep_logits must be [T,K] (holds %lld rows, T=%lld)",
                   static_cast<long long>(token_count), static_cast<long long>(tokens));
    }
    if (num_active != nullptr && token_count != tokens) {
      return error(Status::invalid_argument, "TopAnyThreshold: num_active holds %lld tokens, the batch has %lld",
                   static_cast<long long>(token_count), static_cast<long long>(tokens));
    }
    return Status::ok;
  }

  MOEKIT_HOST_DEVICE void route_token(std::int64_t token, float const* logits, int* ids,
                                      float* weights) const noexcept {
    int chosen[MaxK];
    top_k<MaxK>(logits, experts, k, chosen);
    SoftmaxNormaliser const norm = softmax_normaliser(logits, experts);
    float p[MaxK];
    float candidates_sum = 0.f;
    for (int j = 0; j < k; ++j) {
      p[j] = softmax_entry(logits[chosen[j]], norm);
      candidates_sum += p[j];
    }
    bool const has_row = token < token_count;
    float const* keep_row =
        keep_logits != nullptr && has_row ? keep_logits + token * keep_logits_row_stride() : nullptr;
    bool keep[MaxK];
    float kept_sum = 0.f;
    int active = 0;
    for (int j = 0; j < k; ++j) {
      bool kept = j == 0;
      if (j > 0) {
        switch (mode) {
          case TopAnyMode::ratio: kept = p[j] >= beta * p[0]; break;
          case TopAnyMode::logit: kept = keep_row != nullptr && keep_row[j] > 0.f; break;
          case TopAnyMode::absolute: kept = p[j] / candidates_sum >= theta; break;
        }
      }
      keep[j] = kept;
      if (kept) {
        kept_sum += p[j];
        ++active;
      }
    }
    for (int j = 0; j < k; ++j) {
      ids[j] = keep[j] ? chosen[j] : experts;
      weights[j] = keep[j] ? p[j] / kept_sum : 0.f;
    }
    if (num_active != nullptr && has_row) {
      num_active[token] = active;
    }
  }
};

// MC-MoE ODP on Mixtral (top-2, drop the second expert when p2 < beta_l * p1).
[[nodiscard]] constexpr TopAnyThreshold<8> mc_moe_odp_router(int num_local_experts, int num_experts_per_tok,
                                                             float layer_beta) {
  return {.experts = num_local_experts, .k = num_experts_per_tok, .mode = TopAnyMode::ratio, .beta = layer_beta};
}

static_assert(diagnose_router<TopAnyThreshold<8>>() && Router<TopAnyThreshold<8>>);

}  // namespace routing
MOEKIT_NAMESPACE_END
