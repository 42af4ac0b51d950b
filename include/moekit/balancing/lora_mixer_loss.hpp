#pragma once
// LoRA-Mixer's routing specialisation / balance loss (ALGORITHMS.md §3.4, RSL = v1's SBL):
//
//   L_RSL = alpha Σ_i p̄_i f̄_i - lambda (1/N) Σ_t H_t
//   p̄_i = (1/N) Σ_t p_ti,   f̄_i = c_i / (N k),   H_t = -Σ_i p_ti ln p_ti   (0 ln 0 = 0)
//   c_i = tokens whose top-k (logits, ties to the lower index) holds expert i (no gradient)
//   ∂L/∂z_tj = p_tj [ (alpha/N)(f̄_j - Σ_i p_ti f̄_i) + (lambda/N)(ln p_tj + H_t) ]
//
// moekit decisions (docs/adaptive_balancing.md): Eq. 5 is implemented literally with a SIGNED
// lambda: lambda > 0 is the printed equation (minimising raises the entropy, flatter routing),
// lambda < 0 is what the paper's prose describes (sharper routing). No factor E in the balance
// term, as printed. Defaults alpha = 0.01, lambda = 0, beta = 0 are moekit's (the paper's
// appendix was not available): set lambda explicitly. An expert at -inf is masked (§0): it gets
// no count, so Σ f̄ < 1 when a token has fewer than k unmasked experts. N = Σ valid.
//
// The expert-preservation term beta Σ_{i in C} ||θ_i - θ_i^(0)||² acts on LoRA weights, not on
// the router: preservation_loss() below is its host helper.

#include <cmath>
#include <cstdint>

#include "moekit/balancing/concept.hpp"
#include "moekit/balancing/detail/token_loss_common.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

struct LoraMixerLoss {
  static constexpr BalancerKind kind = BalancerKind::loss;

  int top_k = 3;        // k of the counting top-k (the paper's inference top_k)
  float alpha = 0.01f;  // balance coefficient (not the LoRA alpha)
  float lambda = 0.f;   // signed entropy coefficient, see above
  float beta = 0.f;     // expert-preservation coefficient (preservation_loss)

  [[nodiscard]] Status validate(int experts) const {
    if (experts < 1) {
      return error(Status::invalid_argument, "LoRA-Mixer RSL: E must be >= 1 (got %d)", experts);
    }
    if (top_k < 1 || top_k > experts) {
      return error(Status::invalid_argument, "LoRA-Mixer RSL: top_k must be in [1, E] (got k=%d, E=%d)", top_k,
                   experts);
    }
    if (!std::isfinite(alpha) || !std::isfinite(lambda)) {
      return error(Status::invalid_argument, "LoRA-Mixer RSL: alpha and lambda must be finite (got %g, %g)",
                   double(alpha), double(lambda));
    }
    if (!(beta >= 0.f) || std::isinf(beta)) {
      return error(Status::invalid_argument, "LoRA-Mixer RSL: beta must be finite and >= 0 (got %g)", double(beta));
    }
    return Status::ok;
  }

  // ---- hooks of the chunked device loss (balancing/adaptive_loss_launch.hpp) ----
  using Stats = detail::token_loss::TokenStats;
  struct GradConstants {
    float balance;  // alpha / N
    float entropy;  // lambda / N
  };

  // ln p_e from the token's softmax: (z - max) - ln(denominator), finite wherever p > 0 even
  // when exp(z - max) underflows.
  [[nodiscard]] MOEKIT_HOST_DEVICE static float log_p(float z, Stats const& s) noexcept {
    return (z - s.max) - fp32::log(s.denominator);
  }

  // Per token: softmax, the Shannon entropy H_t, and the k-th ranked expert.
  [[nodiscard]] MOEKIT_HOST_DEVICE Stats token_stats(float const* z, int experts) const noexcept {
    auto const sm = detail::token_loss::softmax_of(z, experts);
    Stats s{sm.max, sm.denominator, 0.f, 0};
    float acc = 0.f;
    for (int e = 0; e < experts; ++e) {
      float const p = sm.p(z[e]);
      if (p > 0.f) {
        acc = ::fmaf(p, log_p(z[e], s), acc);
      }
    }
    s.scalar = -acc;
    s.last = detail::token_loss::kth_ranked(z, experts, top_k);
    return s;
  }
  MOEKIT_HOST_DEVICE void expert_outputs(long long n, double sum_p, double, long long count, float& f,
                                         float& p) const noexcept {
    double const nd = static_cast<double>(n);
    f = n > 0 ? static_cast<float>(static_cast<double>(count) / (nd * static_cast<double>(top_k))) : 0.f;
    p = n > 0 ? static_cast<float>(sum_p / nd) : 0.f;
  }
  [[nodiscard]] MOEKIT_HOST_DEVICE double value(int experts, long long n, float const* f, float const* p,
                                                double sum_entropy) const noexcept {
    if (n == 0) {
      return 0.0;
    }
    double balance = 0.0;
    for (int e = 0; e < experts; ++e) {
      balance = ::fma(static_cast<double>(p[e]), static_cast<double>(f[e]), balance);
    }
    return ::fma(static_cast<double>(alpha), balance,
                 -static_cast<double>(lambda) * (sum_entropy / static_cast<double>(n)));
  }
  [[nodiscard]] MOEKIT_HOST_DEVICE GradConstants grad_constants(int, long long n) const noexcept {
    if (n == 0) {
      return {0.f, 0.f};
    }
    double const nd = static_cast<double>(n);
    return {static_cast<float>(static_cast<double>(alpha) / nd), static_cast<float>(static_cast<double>(lambda) / nd)};
  }
  // ∂L/∂p_ti = (alpha/N) f̄_i + (lambda/N)(ln p_ti + 1); called only for p > 0.
  [[nodiscard]] MOEKIT_HOST_DEVICE float dl_dp(float z, float, int e, bool, Stats const& s, float const* f,
                                               float const*, GradConstants c) const noexcept {
    return ::fmaf(c.balance, f[e], c.entropy * (log_p(z, s) + 1.f));
  }
};
static_assert(diagnose_balancer<LoraMixerLoss>() && LossBalancer<LoraMixerLoss>);

// Expert preservation for one parameter block θ (a LoRA A or B of an expert in C):
// *value = beta ||θ - θ0||² (summed in index order in double), grad = 2 beta (θ - θ0).
// Call it per block of the chosen subset and add the values. grad.data may be null.
[[nodiscard]] inline Status preservation_loss(LoraMixerLoss const& loss, HostTensor<float const, 1> theta,
                                              HostTensor<float const, 1> theta0, double* value,
                                              HostTensor<float, 1> grad) {
  if (!(loss.beta >= 0.f) || std::isinf(loss.beta)) {
    return error(Status::invalid_argument, "LoRA-Mixer preservation: beta must be finite and >= 0 (got %g)",
                 double(loss.beta));
  }
  if (value == nullptr || !theta.validate() || !theta0.validate() || !grad.validate()) {
    return error(Status::invalid_argument, "LoRA-Mixer preservation: null pointer or negative extent/stride");
  }
  if (theta0.extent(0) != theta.extent(0) || (grad.data != nullptr && grad.extent(0) != theta.extent(0))) {
    return error(Status::invalid_argument,
                 "LoRA-Mixer preservation: theta has %lld entries, theta0 %lld, gradient %lld (must match)",
                 static_cast<long long>(theta.extent(0)), static_cast<long long>(theta0.extent(0)),
                 static_cast<long long>(grad.extent(0)));
  }
  for (std::int64_t i = 0; i < theta.extent(0); ++i) {
    if (!std::isfinite(theta(i)) || !std::isfinite(theta0(i))) {
      return error(Status::invalid_argument, "LoRA-Mixer preservation: non-finite parameter at index %lld",
                   static_cast<long long>(i));
    }
  }
  double sum = 0.0;
  for (std::int64_t i = 0; i < theta.extent(0); ++i) {
    double const d = double(theta(i)) - double(theta0(i));
    sum += d * d;
  }
  if (grad.data != nullptr) {
    for (std::int64_t i = 0; i < theta.extent(0); ++i) {
      grad(i) = static_cast<float>(2.0 * double(loss.beta) * (double(theta(i)) - double(theta0(i))));
    }
  }
  *value = double(loss.beta) * sum;
  return Status::ok;
}

}  // namespace balancing
MOEKIT_NAMESPACE_END
