#pragma once
// Megatron-Core aux_loss (ALGORITHMS.md §2.4a; moe_utils.py switch_load_balancing_loss_func with
// compute_routing_scores_for_aux_loss): the generic fP loss at micro-batch level,
// L = moe_aux_loss_coeff * E * sum_i (c_i / (K N)) P_i, counts from a separate top-K of the
// logits (no expert bias, groups, capacity or Sinkhorn), score softmax or nsigmoid
// (moe_router_score_function "softmax" / "sigmoid"). Reducing counts over TP x CP ranks is the
// caller's job: pass the logits of the group the counts should cover.

#include <cstdint>

#include "moekit/balancing/concept.hpp"
#include "moekit/balancing/fp_loss.hpp"
#include "moekit/config.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

struct MegatronAuxLoss {
  static constexpr BalancerKind kind = BalancerKind::loss;

  int moe_router_topk = 2;          // K
  float moe_aux_loss_coeff = 0.0f;  // Megatron's default (off); 1e-2 is the recommended value
  LossScore score = LossScore::softmax;

  [[nodiscard]] Status validate(int experts) const {
    if (Status s = detail::check_loss_k(moe_router_topk, experts); !s) {
      return s;
    }
    return detail::check_loss_coefficient("moe_aux_loss_coeff", moe_aux_loss_coeff);
  }
  [[nodiscard]] Status check_shape(std::int64_t tokens, std::int64_t valid_entries) const {
    return detail::check_mask_entries(tokens, valid_entries);
  }
  [[nodiscard]] FpForm fp_form(std::int64_t tokens, int experts) const {
    return detail::whole_batch_form(score, experts, moe_router_topk, tokens, double(moe_aux_loss_coeff) * experts);
  }
};
static_assert(diagnose_balancer<MegatronAuxLoss>() && FpLossPolicy<MegatronAuxLoss>);

}  // namespace balancing
MOEKIT_NAMESPACE_END
