#pragma once
// Megatron-Core global_aux_loss (ALGORITHMS.md §2.4c; router.py _apply_global_aux_loss,
// reset_global_aux_loss_tracker): counts accumulated over the micro-batches of one global
// batch. Micro-batch m (1-based) adds its counts c to C and uses the running mean C / m:
//   L = coeff * E * sum_i (C_i / m) / (K N) * P_i,   N, P over this micro-batch's valid tokens.
// The running state is caller-owned (GlobalAuxState: C in the memory the loss runs in, host
// memory for the host reference and device memory for the device path; m on the host) and must
// be reset after each optimizer step. All-reducing c across ranks is the caller's job.
// Each call is one micro-batch: an empty one (N = 0) still advances m. A call that fails its
// checks leaves the state untouched.

#include <cstdint>

#include "moekit/balancing/concept.hpp"
#include "moekit/balancing/fp_loss.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

struct GlobalAuxState {
  long long* C = nullptr;  // [experts] counts accumulated since the last reset
  int experts = 0;         // E of the layer this state belongs to
  int m = 0;               // micro-batches accumulated since the last reset
};

// Zeroes a state whose C lives in host memory (device memory: reset_global_aux_state(state,
// stream) in fp_loss_kernels.hpp).
[[nodiscard]] inline Status reset_global_aux_state(GlobalAuxState& state) {
  if (state.experts < 0 || (state.C == nullptr && state.experts > 0)) {
    return error(Status::invalid_argument, "global aux state: C is null or E=%d is negative", state.experts);
  }
  for (int i = 0; i < state.experts; ++i) {
    state.C[i] = 0;
  }
  state.m = 0;
  return Status::ok;
}

struct MegatronGlobalAuxLoss {
  static constexpr BalancerKind kind = BalancerKind::loss;

  int moe_router_topk = 2;          // K
  float moe_aux_loss_coeff = 0.0f;  // Megatron's default (off); 1e-2 recommended
  LossScore score = LossScore::softmax;
  GlobalAuxState* state = nullptr;  // caller-owned, updated by every successful call

  [[nodiscard]] Status validate(int experts) const {
    if (Status s = detail::check_loss_k(moe_router_topk, experts); !s) {
      return s;
    }
    if (Status s = detail::check_loss_coefficient("moe_aux_loss_coeff", moe_aux_loss_coeff); !s) {
      return s;
    }
    if (state == nullptr || state->C == nullptr) {
      return error(Status::invalid_argument, "global aux state: the policy needs a state with a counts buffer C");
    }
    if (state->experts != experts) {
      return error(Status::invalid_argument, "global aux state has E=%d, layer has E=%d", state->experts, experts);
    }
    if (state->m < 0) {
      return error(Status::invalid_argument, "global aux state: negative micro-batch count m=%d", state->m);
    }
    if ((reinterpret_cast<std::uintptr_t>(state->C) & (alignof(long long) - 1)) != 0) {
      return error(Status::misaligned, "global aux state: C not aligned to %zu bytes", alignof(long long));
    }
    return Status::ok;
  }
  [[nodiscard]] Status check_shape(std::int64_t tokens, std::int64_t valid_entries) const {
    return detail::check_mask_entries(tokens, valid_entries);
  }
  // Describes the call that will add this micro-batch as number state->m + 1 (a null state only
  // for a workspace size query).
  [[nodiscard]] FpForm fp_form(std::int64_t tokens, int experts) const {
    FpForm f = detail::whole_batch_form(score, experts, moe_router_topk, tokens, double(moe_aux_loss_coeff) * experts);
    f.rule = CountRule::running_mean;
    f.running_counts = state != nullptr ? state->C : nullptr;
    f.running_m = state != nullptr ? state->m + 1 : 1;
    return f;
  }
  // Called by the device path once its launches are queued: this micro-batch is counted.
  void commit(FpForm const& f) const { state->m = f.running_m; }
};
static_assert(diagnose_balancer<MegatronGlobalAuxLoss>() && FpLossPolicy<MegatronGlobalAuxLoss>);

}  // namespace balancing
MOEKIT_NAMESPACE_END
