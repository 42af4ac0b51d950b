#pragma once
// Switch Transformer load-balancing loss (ALGORITHMS.md §2.1; Fedus et al., arXiv 2101.03961,
// eqs. 4-6): L = alpha * E * sum_i f_i P_i, f_i = (valid tokens whose argmax is i) / N,
// P_i = mean softmax. One call is one routing group; with G groups the caller averages.

#include <cstdint>

#include "moekit/balancing/concept.hpp"
#include "moekit/balancing/fp_loss.hpp"
#include "moekit/config.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

struct SwitchLoss {
  static constexpr BalancerKind kind = BalancerKind::loss;

  float alpha = 1e-2f;  // paper's alpha; HF key router_aux_loss_coef (SwitchTransformersConfig: 0.001)

  [[nodiscard]] Status validate(int experts) const {
    if (Status s = detail::check_loss_k(1, experts); !s) {
      return s;
    }
    return detail::check_loss_coefficient("alpha", alpha);
  }
  [[nodiscard]] Status check_shape(std::int64_t tokens, std::int64_t valid_entries) const {
    return detail::check_mask_entries(tokens, valid_entries);
  }
  [[nodiscard]] FpForm fp_form(std::int64_t tokens, int experts) const {
    return detail::whole_batch_form(LossScore::softmax, experts, 1, tokens, double(alpha) * experts);
  }
};
static_assert(diagnose_balancer<SwitchLoss>() && FpLossPolicy<SwitchLoss>);

}  // namespace balancing
MOEKIT_NAMESPACE_END
