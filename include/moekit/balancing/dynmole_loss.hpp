#pragma once
// DynMoLE (ALGORITHMS.md §3.2): Tsallis-entropy hybrid routing for LoRA experts and its router
// loss L_router = router_dyn_loss_coef * L_ent + router_aux_loss_coef * L_bal.
//
//   p_t      = softmax(z_t) (fp32, the routers' bits)
//   Ĥ_q(p)   = (1 - Σ (p_i + ε)^q) / (1 - E^(1-q))          q != 1
//            = -Σ (p_i + ε) ln(p_i + ε) / ln E               q == 1
//   keep mask m_t: experts in rank order (logit descending, ties to the lower index); rank r is
//            kept iff C_r = Σ_{s<=r} p_(s) <= top_p (sequential fp32 sum) or r < keep_top_k;
//            every expert is kept when entropy_threshold < 1 and Ĥ_q(p_t) > entropy_threshold
//   L_ent    = (1/N) Σ_t Ĥ_q(p_t)
//   L_bal    = E Σ_i F_i P_i,  F_i = (1/N) Σ_t p_ti m_ti,  P_i = (1/N) Σ_t p_ti  (m constant)
//
// The keep rule is the routing rule: DynMoLERouting and dynmole_keep_mask are what the DynMoLE
// router calls, so the loss and the router agree on m bit for bit.
//
// moekit decisions (see docs/adaptive_balancing.md):
//  - ranks on the logits, which is the order of p in exact arithmetic (§3 conventions);
//  - an expert at -inf is masked (§0): never kept, not even by keep_top_k or broadcast;
//  - means over the valid rows (N = Σ valid); padding rows get zero gradient (the reference
//    keeps padding in L_ent; §3.2 has the caller drop padding, which is what `valid` does).

#include <cmath>
#include <cstdint>

#include "moekit/balancing/concept.hpp"
#include "moekit/balancing/detail/token_loss_common.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

// The routing parameters (MoE-PEFT `config.py` keys and defaults).
struct DynMoLERouting {
  float entropy_index = 1.1f;      // q, in (0, 2]
  float entropy_threshold = 0.9f;  // τ; >= 1 disables broadcast
  float top_p = 0.75f;             // in (0, 1]
  int keep_top_k = 2;              // in [1, E]
  float entropy_eps = 1e-5f;       // ε > 0

  [[nodiscard]] Status validate(int experts) const {
    if (experts < 2) {
      return error(Status::invalid_argument, "DynMoLE: E must be >= 2 (entropy normalisation) (got E=%d)", experts);
    }
    if (!(entropy_index > 0.f && entropy_index <= 2.f)) {
      return error(Status::invalid_argument, "DynMoLE: entropy_index must be in (0, 2] (got %g)",
                   double(entropy_index));
    }
    if (!(top_p > 0.f && top_p <= 1.f)) {
      return error(Status::invalid_argument, "DynMoLE: top_p must be in (0, 1] (got %g)", double(top_p));
    }
    if (keep_top_k < 1 || keep_top_k > experts) {
      return error(Status::invalid_argument, "DynMoLE: keep_top_k must be in [1, E] (got keep_top_k=%d, E=%d)",
                   keep_top_k, experts);
    }
    if (!(entropy_threshold > 0.f) || std::isinf(entropy_threshold)) {
      return error(Status::invalid_argument, "DynMoLE: entropy_threshold must be finite and > 0 (got %g)",
                   double(entropy_threshold));
    }
    if (!(entropy_eps > 0.f) || std::isinf(entropy_eps)) {
      return error(Status::invalid_argument, "DynMoLE: entropy_eps must be finite and > 0 (got %g)",
                   double(entropy_eps));
    }
    return Status::ok;
  }
};

// The entropy's normaliser: 1 - E^(1-q) (q != 1; computed without ε) or ln E (q == 1).
[[nodiscard]] MOEKIT_HOST_DEVICE inline float tsallis_normaliser(float q, int experts) noexcept {
  float const log_e = fp32::log(static_cast<float>(experts));
  return q == 1.f ? log_e : 1.f - fp32::exp((1.f - q) * log_e);
}

// Ĥ_q of one token's softmax, summed in ascending expert order.
[[nodiscard]] MOEKIT_HOST_DEVICE inline float
tsallis_entropy(float const* z, int experts, detail::token_loss::Softmax const& sm, float q, float eps) noexcept {
  float const norm = tsallis_normaliser(q, experts);
  if (q == 1.f) {
    float acc = 0.f;
    for (int e = 0; e < experts; ++e) {
      float const x = sm.p(z[e]) + eps;
      acc = ::fmaf(x, fp32::log(x), acc);  // explicit: the same bits whether or not a compiler contracts
    }
    return -acc / norm;
  }
  float sum = 0.f;
  for (int e = 0; e < experts; ++e) {
    sum += fp32::exp(q * fp32::log(sm.p(z[e]) + eps));
  }
  return (1.f - sum) / norm;
}

// The last expert (in rank order) that the keep rule keeps, or -1 when all are kept
// (broadcast). The kept set is a prefix of the ranking because C_r never decreases.
[[nodiscard]] MOEKIT_HOST_DEVICE inline int dynmole_last_kept(DynMoLERouting const& r, float const* z, int experts,
                                                              detail::token_loss::Softmax const& sm,
                                                              float entropy) noexcept {
  if (r.entropy_threshold < 1.f && entropy > r.entropy_threshold) {
    return -1;
  }
  float cumulative = 0.f;
  int last = -1;
  for (int rank = 0; rank < experts; ++rank) {
    int const next = detail::token_loss::next_ranked(z, experts, last);
    if (next < 0) {
      break;
    }
    cumulative += sm.p(z[next]);
    if (rank >= r.keep_top_k && !(cumulative <= r.top_p)) {
      break;
    }
    last = next;
  }
  return last;
}

// The keep mask of one token (mask[e] = 1 kept, 0 dropped); returns how many are kept. What the
// DynMoLE router calls per token; the weights are then p_e * mask[e], not renormalised.
MOEKIT_HOST_DEVICE inline int dynmole_keep_mask(DynMoLERouting const& r, float const* z, int experts,
                                                std::uint8_t* mask) noexcept {
  auto const sm = detail::token_loss::softmax_of(z, experts);
  float const h = tsallis_entropy(z, experts, sm, r.entropy_index, r.entropy_eps);
  int const last = dynmole_last_kept(r, z, experts, sm, h);
  int kept = 0;
  for (int e = 0; e < experts; ++e) {
    bool const k = detail::token_loss::in_prefix(z, last, e);
    mask[e] = k ? 1 : 0;
    kept += k ? 1 : 0;
  }
  return kept;
}

// The loss policy. router_dyn_loss_coef / router_aux_loss_coef are the MoE-PEFT keys.
struct DynMoLELoss {
  static constexpr BalancerKind kind = BalancerKind::loss;

  DynMoLERouting router;
  float router_dyn_loss_coef = 0.01f;   // λ_dyn
  float router_aux_loss_coef = 0.001f;  // λ_aux

  [[nodiscard]] Status validate(int experts) const {
    if (Status s = router.validate(experts); !s) {
      return s;
    }
    if (!std::isfinite(router_dyn_loss_coef) || !std::isfinite(router_aux_loss_coef)) {
      return error(Status::invalid_argument,
                   "DynMoLE: router_dyn_loss_coef and router_aux_loss_coef must be finite (got %g, %g)",
                   double(router_dyn_loss_coef), double(router_aux_loss_coef));
    }
    return Status::ok;
  }

  // ---- hooks of the chunked device loss (balancing/adaptive_loss_launch.hpp) ----
  using Stats = detail::token_loss::TokenStats;
  struct GradConstants {
    float entropy;  // -λ_dyn q / (N (1 - E^(1-q)))   or  -λ_dyn / (N ln E)  (q = 1)
    float balance;  // λ_aux E / N
  };

  // Per token: softmax, Ĥ (summed into L_ent) and the kept prefix.
  [[nodiscard]] MOEKIT_HOST_DEVICE Stats token_stats(float const* z, int experts) const noexcept {
    auto const sm = detail::token_loss::softmax_of(z, experts);
    float const h = tsallis_entropy(z, experts, sm, router.entropy_index, router.entropy_eps);
    return {sm.max, sm.denominator, h, dynmole_last_kept(router, z, experts, sm, h)};
  }
  // Per expert: f = F_i (differentiable load), P = P_i; both 0 when N = 0.
  MOEKIT_HOST_DEVICE void expert_outputs(long long n, double sum_p, double sum_kept_p, long long, float& f,
                                         float& p) const noexcept {
    f = n > 0 ? static_cast<float>(sum_kept_p / static_cast<double>(n)) : 0.f;
    p = n > 0 ? static_cast<float>(sum_p / static_cast<double>(n)) : 0.f;
  }
  [[nodiscard]] MOEKIT_HOST_DEVICE double value(int experts, long long n, float const* f, float const* p,
                                                double sum_entropy) const noexcept {
    if (n == 0) {
      return 0.0;
    }
    double balance = 0.0;
    for (int e = 0; e < experts; ++e) {
      balance = ::fma(static_cast<double>(f[e]), static_cast<double>(p[e]), balance);
    }
    double const l_ent = sum_entropy / static_cast<double>(n);
    double const l_bal = static_cast<double>(experts) * balance;
    return ::fma(static_cast<double>(router_dyn_loss_coef), l_ent, static_cast<double>(router_aux_loss_coef) * l_bal);
  }
  [[nodiscard]] MOEKIT_HOST_DEVICE GradConstants grad_constants(int experts, long long n) const noexcept {
    if (n == 0) {
      return {0.f, 0.f};
    }
    double const nd = static_cast<double>(n);
    double const q = router.entropy_index;
    double const norm = tsallis_normaliser(router.entropy_index, experts);
    double const entropy = q == 1.0 ? -static_cast<double>(router_dyn_loss_coef) / (nd * norm)
                                    : -static_cast<double>(router_dyn_loss_coef) * q / (nd * norm);
    return {static_cast<float>(entropy),
            static_cast<float>(static_cast<double>(router_aux_loss_coef) * static_cast<double>(experts) / nd)};
  }
  // ∂L/∂p_ti (before the softmax back-projection).
  [[nodiscard]] MOEKIT_HOST_DEVICE float dl_dp(float, float p, int e, bool kept, Stats const&, float const* f,
                                               float const* pm, GradConstants c) const noexcept {
    float const x = p + router.entropy_eps;
    float const h =
        router.entropy_index == 1.f ? fp32::log(x) + 1.f : fp32::exp((router.entropy_index - 1.f) * fp32::log(x));
    float const load = kept ? pm[e] + f[e] : f[e];
    return ::fmaf(c.entropy, h, c.balance * load);
  }
};
static_assert(diagnose_balancer<DynMoLELoss>() && LossBalancer<DynMoLELoss>);

}  // namespace balancing
MOEKIT_NAMESPACE_END
