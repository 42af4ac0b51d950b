#pragma once
// Router z-loss (ALGORITHMS.md §2.5; Zoph et al., ST-MoE, arXiv 2202.08906, eq. 5; Megatron
// z_loss_func): with l_t = logsumexp(z_t) = m_t + log sum_j exp(z_{t,j} - m_t),
//   L_z = z_loss_coef * (1/N) sum_t v_t l_t^2,   dL_z/dz_{t,j} = (2 z_loss_coef / N) v_t l_t p_{t,j}.
// The mean runs over the whole group given (Megatron: per shard). v = 1 marks a valid token
// everywhere in moekit (Megatron's z-loss padding_mask has the opposite sense).
// The z-loss writes only the value and the gradient of LossOutputs; counts, f and P are left as
// they are.

#include <cmath>
#include <cstdint>

#include "moekit/balancing/concept.hpp"
#include "moekit/balancing/fp_loss.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

struct ZLoss {
  static constexpr BalancerKind kind = BalancerKind::loss;

  float z_loss_coef = 1e-3f;  // c_z; keys moe_z_loss_coeff (Megatron, default off), router_z_loss_coef (HF Switch)

  [[nodiscard]] Status validate(int experts) const {
    if (experts < 1) {
      return error(Status::invalid_argument, "router z-loss: need at least one expert (got E=%d)", experts);
    }
    if (!std::isfinite(z_loss_coef) || z_loss_coef < 0.f) {
      return error(Status::invalid_argument, "router z-loss: z_loss_coef must be finite and >= 0 (got %g)",
                   double(z_loss_coef));
    }
    return Status::ok;
  }
  [[nodiscard]] Status check_shape(std::int64_t tokens, std::int64_t valid_entries) const {
    if (valid_entries >= 0 && valid_entries != tokens) {
      return error(Status::invalid_argument, "router z-loss: valid mask has %lld entries, expected T=%lld",
                   static_cast<long long>(valid_entries), static_cast<long long>(tokens));
    }
    return Status::ok;
  }
};
static_assert(diagnose_balancer<ZLoss>() && LossBalancer<ZLoss>);

// l_t in fp32 (the same bits on host and device): row max plus the log of the softmax
// denominator, a compensated sum in ascending expert order.
struct LogSumExp {
  float max;
  float denominator;
  float value;
};

[[nodiscard]] MOEKIT_HOST_DEVICE inline LogSumExp row_logsumexp(float const* z, int n) noexcept {
  float m = z[0];
  for (int e = 1; e < n; ++e) {
    m = z[e] > m ? z[e] : m;
  }
  CompensatedSum sum;
  for (int e = 0; e < n; ++e) {
    sum.add(fp32::exp(z[e] - m));
  }
  return {m, sum.sum, m + fp32::log(sum.sum)};
}

}  // namespace balancing
MOEKIT_NAMESPACE_END
