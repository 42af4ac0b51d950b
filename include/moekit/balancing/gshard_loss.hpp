#pragma once
// GShard load-balancing loss (ALGORITHMS.md §2.2; Lepikhin et al., arXiv 2006.16668, and
// lingvo's Top2GatingOnLogits): top-2 routing, but the loss counts only the first choice, at the
// code's scale: L = lambda * E * sum_i (c_i / N) P_i, i.e. exactly §2.1. The paper's 1/E^2
// smaller form is absorbed by its multiplier. moekit normalises by the valid tokens N (lingvo's
// legacy_mtf_behavior=False up to its 1e-6). One call is one group; the caller averages groups.

#include <cstdint>

#include "moekit/balancing/concept.hpp"
#include "moekit/balancing/fp_loss.hpp"
#include "moekit/config.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

struct GShardLoss {
  static constexpr BalancerKind kind = BalancerKind::loss;

  float coefficient = 1e-2f;  // lambda; the paper leaves it tunable, moekit's default is 1e-2

  [[nodiscard]] Status validate(int experts) const {
    if (Status s = detail::check_loss_k(1, experts); !s) {
      return s;
    }
    return detail::check_loss_coefficient("coefficient", coefficient);
  }
  [[nodiscard]] Status check_shape(std::int64_t tokens, std::int64_t valid_entries) const {
    return detail::check_mask_entries(tokens, valid_entries);
  }
  [[nodiscard]] FpForm fp_form(std::int64_t tokens, int experts) const {
    return detail::whole_batch_form(LossScore::softmax, experts, 1, tokens, double(coefficient) * experts);
  }
};
static_assert(diagnose_balancer<GShardLoss>() && FpLossPolicy<GShardLoss>);

}  // namespace balancing
MOEKIT_NAMESPACE_END
