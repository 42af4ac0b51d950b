#pragma once
// DiT-MoE expert-level balance loss (ALGORITHMS.md §2.7; Fei et al., arXiv 2407.11633, code
// feizc/DiT-MoE MoEGate with seq_aux = False): over all B*S tokens of the micro-batch,
// L = alpha * sum_i P_i * E * c_i / (B S K), c from the routing top-k of the softmax. This is
// Megatron's aux_loss (§2.4a) with lambda = alpha and the softmax. The source has no mask; a
// mask given here removes padded tokens as everywhere else (N = valid tokens). The source adds
// L per layer with gradient 1 and no z-loss; both are the trainer's business.

#include <cstdint>

#include "moekit/balancing/concept.hpp"
#include "moekit/balancing/fp_loss.hpp"
#include "moekit/config.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

struct DitMoeLoss {
  static constexpr BalancerKind kind = BalancerKind::loss;

  int num_experts_per_tok = 2;  // K
  float aux_loss_alpha = 0.01f;

  [[nodiscard]] Status validate(int experts) const {
    if (Status s = detail::check_loss_k(num_experts_per_tok, experts); !s) {
      return s;
    }
    return detail::check_loss_coefficient("aux_loss_alpha", aux_loss_alpha);
  }
  [[nodiscard]] Status check_shape(std::int64_t tokens, std::int64_t valid_entries) const {
    return detail::check_mask_entries(tokens, valid_entries);
  }
  [[nodiscard]] FpForm fp_form(std::int64_t tokens, int experts) const {
    return detail::whole_batch_form(LossScore::softmax, experts, num_experts_per_tok, tokens,
                                    double(aux_loss_alpha) * experts);
  }
};
static_assert(diagnose_balancer<DitMoeLoss>() && FpLossPolicy<DitMoeLoss>);

}  // namespace balancing
MOEKIT_NAMESPACE_END
