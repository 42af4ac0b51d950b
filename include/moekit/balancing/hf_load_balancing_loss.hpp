#pragma once
// Hugging Face load_balancing_loss_func (ALGORITHMS.md §2.3; transformers' modeling_mixtral.py,
// copied into Qwen2/Qwen3-MoE, OLMoE, Jamba, ...): the router logits of L layers, each [B*S, E],
// concatenated in layer order (T = L*B*S rows) and pooled:
//   f_i = (1/R) #{rows r : i in top-K(r)} (sum_i f_i = K),  P_i = (1/R) sum_r p_{r,i},
//   aux = E * sum_i f_i P_i,   value = router_aux_loss_coef * aux,
// R = valid rows. The attention mask [B*S] (1 = keep) is broadcast to every layer, so the
// LossInputs mask of this loss has B*S entries, not T. aux = K x the generic fP loss over the
// pooled rows; pooling is not the mean of per-layer losses. An empty batch gives 0 (HF: 0/0).

#include <cstdint>

#include "moekit/balancing/concept.hpp"
#include "moekit/balancing/fp_loss.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

struct HfLoadBalancingLoss {
  static constexpr BalancerKind kind = BalancerKind::loss;

  int num_experts_per_tok = 2;          // K
  int num_layers = 1;                   // L: layers whose logits are concatenated
  float router_aux_loss_coef = 0.001f;  // MixtralConfig default (Mixtral-8x7B config.json: 0.02)

  [[nodiscard]] Status validate(int experts) const {
    if (Status s = detail::check_loss_k(num_experts_per_tok, experts); !s) {
      return s;
    }
    if (num_layers < 1) {
      return error(Status::invalid_argument, "hf balance loss: num_layers must be >= 1 (got %d)", num_layers);
    }
    return detail::check_loss_coefficient("router_aux_loss_coef", router_aux_loss_coef);
  }
  [[nodiscard]] Status check_shape(std::int64_t tokens, std::int64_t valid_entries) const {
    if (tokens % num_layers != 0) {
      return error(Status::invalid_argument, "hf balance loss: %lld logit rows are not num_layers=%d times B*S",
                   static_cast<long long>(tokens), num_layers);
    }
    std::int64_t const per_layer = tokens / num_layers;
    if (valid_entries >= 0 && valid_entries != per_layer) {
      return error(Status::invalid_argument, "hf balance loss: attention mask has %lld entries, expected B*S=%lld",
                   static_cast<long long>(valid_entries), static_cast<long long>(per_layer));
    }
    return Status::ok;
  }
  // (Also called, for a workspace size, with parameters not yet validated: never divides by 0.)
  [[nodiscard]] FpForm fp_form(std::int64_t tokens, int experts) const {
    FpForm f = detail::whole_batch_form(LossScore::softmax, experts, num_experts_per_tok, tokens,
                                        double(router_aux_loss_coef) * experts * num_experts_per_tok);
    f.mask_period = num_layers >= 1 ? tokens / num_layers : tokens;
    return f;
  }
};
static_assert(diagnose_balancer<HfLoadBalancingLoss>() && FpLossPolicy<HfLoadBalancingLoss>);

}  // namespace balancing
MOEKIT_NAMESPACE_END
