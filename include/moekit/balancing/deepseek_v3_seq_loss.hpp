#pragma once
// DeepSeek-V3 complementary sequence-wise balance loss (ALGORITHMS.md §2.6; DeepSeek-V3
// Technical Report, arXiv 2412.19437, eqs. 17-20): per sequence of T_b valid tokens,
//   f_i = E / (K T_b) * #{t : i in TopK(unbiased affinities)},  P_i = (1/T_b) sum_t s'_{t,i},
//   L_b = alpha * sum_i f_i P_i,   batch value = mean over the B sequences,
// with s' the normalised sigmoid: Megatron's seq_aux_loss (§2.4b) with the nsigmoid score.
// The counting set ignores the aux-loss-free bias and node-limited routing, as in the paper.
// Sequences and layout as in megatron_seq_aux_loss.hpp.

#include <cstdint>

#include "moekit/balancing/concept.hpp"
#include "moekit/balancing/fp_loss.hpp"
#include "moekit/config.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

struct DeepSeekV3SeqLoss {
  static constexpr BalancerKind kind = BalancerKind::loss;

  int num_experts_per_tok = 8;   // K_r
  float aux_loss_alpha = 1e-4f;  // paper's alpha; the released config.json carries 0.001
  int batch = 1;                 // B
  std::int64_t seq_len = 0;      // S (padded length); 0: T / B
  SequenceLayout layout = SequenceLayout::batch_major;

  [[nodiscard]] Status validate(int experts) const {
    if (Status s = detail::check_loss_k(num_experts_per_tok, experts); !s) {
      return s;
    }
    return detail::check_loss_coefficient("aux_loss_alpha", aux_loss_alpha);
  }
  [[nodiscard]] Status check_shape(std::int64_t tokens, std::int64_t valid_entries) const {
    if (Status s = detail::check_sequences(batch, seq_len, tokens); !s) {
      return s;
    }
    return detail::check_mask_entries(tokens, valid_entries);
  }
  // (Also called, for a workspace size, with parameters not yet validated: never divides by 0.)
  [[nodiscard]] FpForm fp_form(std::int64_t tokens, int experts) const {
    int const b = batch >= 1 ? batch : 1;
    FpForm f = detail::whole_batch_form(LossScore::nsigmoid, experts, num_experts_per_tok, tokens,
                                        double(aux_loss_alpha) * experts / b);
    f.groups = b;
    f.group_len = detail::sequence_length(b, seq_len, tokens);
    f.seq_major = layout == SequenceLayout::seq_major;
    return f;
  }
};
static_assert(diagnose_balancer<DeepSeekV3SeqLoss>() && FpLossPolicy<DeepSeekV3SeqLoss>);

}  // namespace balancing
MOEKIT_NAMESPACE_END
