#pragma once
// Megatron-Core seq_aux_loss (ALGORITHMS.md §2.4b; the DeepSeek-V2/V3 per-sequence form): B
// sequences, each balanced on its own and averaged,
//   L = (1/B) sum_b coeff * E * sum_i (c_{b,i} / (K S_b)) * (1/S_b) sum_{s valid} q_{(b,s),i},
// S_b = sequence b's valid tokens. moekit uses each sequence's own S_b (DeepSeek-V3's definition;
// with padding Megatron uses the mean valid length for all, identical without padding). A fully
// padded sequence adds 0 and still counts in 1/B, as in Megatron.
// Token layout: `layout` says where (b, s) sits among the T = B * S rows: batch_major (row
// b * S + s, moekit's default) or seq_major (row s * B + b, Megatron's [S, B]).

#include <cstdint>

#include "moekit/balancing/concept.hpp"
#include "moekit/balancing/fp_loss.hpp"
#include "moekit/config.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

struct MegatronSeqAuxLoss {
  static constexpr BalancerKind kind = BalancerKind::loss;

  int moe_router_topk = 2;          // K
  float moe_aux_loss_coeff = 0.0f;  // Megatron's default (off); 1e-2 recommended
  LossScore score = LossScore::softmax;
  int batch = 1;             // B
  std::int64_t seq_len = 0;  // S (padded length); 0: T / B
  SequenceLayout layout = SequenceLayout::batch_major;

  [[nodiscard]] Status validate(int experts) const {
    if (Status s = detail::check_loss_k(moe_router_topk, experts); !s) {
      return s;
    }
    return detail::check_loss_coefficient("moe_aux_loss_coeff", moe_aux_loss_coeff);
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
    FpForm f =
        detail::whole_batch_form(score, experts, moe_router_topk, tokens, double(moe_aux_loss_coeff) * experts / b);
    f.groups = b;
    f.group_len = detail::sequence_length(b, seq_len, tokens);
    f.seq_major = layout == SequenceLayout::seq_major;
    return f;
  }
};
static_assert(diagnose_balancer<MegatronSeqAuxLoss>() && FpLossPolicy<MegatronSeqAuxLoss>);

}  // namespace balancing
MOEKIT_NAMESPACE_END
