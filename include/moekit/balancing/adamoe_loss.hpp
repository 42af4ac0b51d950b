#pragma once
// AdaMoE load-balancing loss with null grouping (ALGORITHMS.md §3.1; Zeng et al., arXiv
// 2406.13233, code CengZihao/AdaMoE exp_1): n true experts then m null experts (ids n..n+m-1,
// E = n + m), counts over the top-k of all E logits, f_i = c_i / (k N),
//   f~_i = f_i (i < n),  f~_i = (1/m) sum_{j >= n} f_j (i >= n: only the total null load is balanced),
//   L = router_aux_loss_coef * (n + m) * sum_i f~_i P_i,   P = mean softmax over all E.
// null_grouping = false uses f instead of f~; hf_scale_by_k multiplies the value by k, which with
// null_grouping = false is the HF Mixtral form of exp_2, (n + m) sum_i (c_i / N) P_i.

#include <cstdint>

#include "moekit/balancing/concept.hpp"
#include "moekit/balancing/fp_loss.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

struct AdaMoeLoss {
  static constexpr BalancerKind kind = BalancerKind::loss;

  int num_null_experts = 16;    // m (Mixtral-8x7B fine-tuning: n = 8, m = 16)
  int num_experts_per_tok = 4;  // k (raised from Mixtral's 2)
  float router_aux_loss_coef = 1e-4f;
  bool null_grouping = true;
  bool hf_scale_by_k = false;

  [[nodiscard]] Status validate(int experts) const {
    if (num_null_experts < 0) {
      return error(Status::invalid_argument, "AdaMoE: num_null_experts must be >= 0 (got %d)", num_null_experts);
    }
    if (experts - num_null_experts < 1) {
      return error(Status::invalid_argument, "AdaMoE: need at least one true expert (E=%d, num_null_experts=%d)",
                   experts, num_null_experts);
    }
    if (num_experts_per_tok < 1 || num_experts_per_tok > experts) {
      return error(Status::invalid_argument, "AdaMoE: k must be in [1, n+m] (got k=%d, n+m=%d)", num_experts_per_tok,
                   experts);
    }
    return detail::check_loss_coefficient("router_aux_loss_coef", router_aux_loss_coef);
  }
  [[nodiscard]] Status check_shape(std::int64_t tokens, std::int64_t valid_entries) const {
    return detail::check_mask_entries(tokens, valid_entries);
  }
  [[nodiscard]] FpForm fp_form(std::int64_t tokens, int experts) const {
    double const scale = double(router_aux_loss_coef) * experts * (hf_scale_by_k ? num_experts_per_tok : 1);
    FpForm f = detail::whole_batch_form(LossScore::softmax, experts, num_experts_per_tok, tokens, scale);
    if (null_grouping && num_null_experts > 0) {
      f.rule = CountRule::null_group;
      f.null_experts = num_null_experts;
    }
    return f;
  }
};
static_assert(diagnose_balancer<AdaMoeLoss>() && FpLossPolicy<AdaMoeLoss>);

}  // namespace balancing
MOEKIT_NAMESPACE_END
