#pragma once
// Auxiliary-loss-free balancing (ALGORITHMS.md §2.8; Loss-Free Alg. 1, DeepSeek-V3 §2.1.2,
// Megatron `moe_router_enable_expert_bias`): a persistent per-expert bias b that shifts the
// selection only (key = fp32(score + b_j), weights from the unbiased score), updated once per
// optimizer step from the loads A the biased selection produced:
//
//   c̄ = (1/E) Σ_j A_j,  e_j = c̄ - A_j  (fp64 from the integer counts; e_j > 0: under-loaded)
//   sign          Δ_j = u sign(e_j)                      (sign(0) = 0; Loss-Free, DeepSeek-V3)
//   proportional  Δ_j = u e_j / c̄                        (0 when c̄ = 0)
//   decaying      Δ_j = u_n e_j / c̄,  u_n = u n0 / (n0 + n), n = updates already applied
//   b_j <- fp32(b_j + fp32(Δ_j)),  A <- 0,  n <- n + 1.   No mean-centering.
//
// Workflow per training step: route with `selection_bias()` as the router's correction bias
// (routing::GroupedTopK::correction_bias), accumulate the loads of every micro-batch
// (accumulate_loads), sum A over the data/tensor/context-parallel ranks (the caller's
// all-reduce), then call update_bias once after the optimizer step. At inference b is frozen.
//
// This header holds the policy, the update rule shared bit for bit by the host and the device
// (bias_delta / apply_bias_delta), and the host entry points; the device kernels are in
// balancing/expert_bias_launch.hpp.

#include <cmath>
#include <cstdint>

#include "moekit/balancing/concept.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

enum class BiasRule { sign, proportional, decaying };

[[nodiscard]] constexpr char const* to_string(BiasRule r) noexcept {
  switch (r) {
    case BiasRule::sign: return "sign";
    case BiasRule::proportional: return "proportional";
    case BiasRule::decaying: return "decaying";
  }
  return "unknown";
}

// The policy with its state views. The views are caller-owned: b persists across steps (and is
// checkpointed, HF `e_score_correction_bias`), A and n are scratch the caller zero-initialises
// once. Space says where the three live.
template <MemorySpace Space>
struct ExpertBias {
  static constexpr BalancerKind kind = BalancerKind::bias;

  BiasRule rule = BiasRule::sign;
  double update_rate = 1e-3;              // u (Megatron moe_router_bias_update_rate)
  double decay_steps = 1000.;             // n0 of the decaying rule
  TensorView<float, 1, Space> bias;       // b [E], fp32
  TensorView<long long, 1, Space> loads;  // A [E]
  long long* updates = nullptr;           // n, updates applied so far

  // The pointer a router adds to its scores before ranking (routing::GroupedTopK::correction_bias).
  [[nodiscard]] MOEKIT_HOST_DEVICE float const* selection_bias() const noexcept { return bias.data; }

  [[nodiscard]] Status validate(int experts) const {
    if (!std::isfinite(update_rate) || update_rate < 0.0) {
      return error(Status::invalid_argument, "bias update: update_rate u must be finite and >= 0 (got %g)",
                   update_rate);
    }
    if (!std::isfinite(decay_steps) || decay_steps <= 0.0) {
      return error(Status::invalid_argument, "bias update: decay_steps n0 must be finite and > 0 (got %g)",
                   decay_steps);
    }
    if (rule != BiasRule::sign && rule != BiasRule::proportional && rule != BiasRule::decaying) {
      return error(Status::invalid_argument, "bias update: unknown rule %d", static_cast<int>(rule));
    }
    if (experts < 1) {
      return error(Status::invalid_argument, "bias update: E must be >= 1 (got %d)", experts);
    }
    if (bias.extent(0) != experts) {
      return error(Status::invalid_argument, "expert bias has %lld entries, expected E=%d",
                   static_cast<long long>(bias.extent(0)), experts);
    }
    if (loads.extent(0) != experts) {
      return error(Status::invalid_argument, "bias update: load accumulator has %lld entries, expected E=%d",
                   static_cast<long long>(loads.extent(0)), experts);
    }
    if (bias.data == nullptr || loads.data == nullptr || updates == nullptr) {
      return error(Status::invalid_argument, "bias update: null %s pointer",
                   bias.data == nullptr ? "bias" : (loads.data == nullptr ? "load accumulator" : "update counter"));
    }
    if (experts > 1 && (bias.stride(0) != 1 || loads.stride(0) != 1)) {
      return error(Status::invalid_argument, "bias update: bias and loads must be contiguous (strides %lld, %lld)",
                   static_cast<long long>(bias.stride(0)), static_cast<long long>(loads.stride(0)));
    }
    if (!bias.is_aligned(alignof(float)) || !loads.is_aligned(alignof(long long)) ||
        reinterpret_cast<std::uintptr_t>(updates) % alignof(long long) != 0) {
      return error(Status::misaligned, "bias update: bias, loads or counter pointer is misaligned");
    }
    return Status::ok;
  }
};
static_assert(diagnose_balancer<ExpertBias<MemorySpace::device>>() && Balancer<ExpertBias<MemorySpace::device>>);

// Δ_j in fp64 from the integer load. Host and device evaluate exactly these operations (no
// product feeds a sum, so no contraction can change a bit).
[[nodiscard]] MOEKIT_HOST_DEVICE inline double bias_delta(BiasRule rule, double u, double n0, long long n,
                                                          double mean_load, long long load) noexcept {
  double const e = mean_load - static_cast<double>(load);
  if (rule == BiasRule::sign) {
    return e > 0.0 ? u : (e < 0.0 ? -u : 0.0);
  }
  if (mean_load == 0.0) {
    return 0.0;
  }
  double const step = rule == BiasRule::decaying ? u * n0 / (n0 + static_cast<double>(n)) : u;
  return step * e / mean_load;
}

// b <- fp32(b + fp32(Δ)).
[[nodiscard]] MOEKIT_HOST_DEVICE inline float apply_bias_delta(float b, double delta) noexcept {
  return b + static_cast<float>(delta);
}

// c̄ = Σ A / E.
[[nodiscard]] MOEKIT_HOST_DEVICE inline double mean_load(long long total, int experts) noexcept {
  return static_cast<double>(total) / static_cast<double>(experts);
}

// Adds the selections in ids [T, K] (rows with valid[t] == 0 skipped, valid may be null; the
// empty-slot id E ignored) to A. Ids outside [0, E] are refused before anything is added.
[[nodiscard]] inline Status accumulate_loads(ExpertBias<MemorySpace::host> const& s, HostTensor<int const, 2> ids,
                                             std::uint8_t const* valid) {
  auto const experts = static_cast<int>(s.bias.extent(0));
  if (Status st = s.validate(experts); !st) {
    return st;
  }
  if (!ids.validate() || (ids.extent(0) > 0 && ids.extent(1) < 1)) {
    return error(Status::invalid_argument, "bias loads: ids must be a valid [T, K >= 1] view (got [%lld, %lld])",
                 static_cast<long long>(ids.extent(0)), static_cast<long long>(ids.extent(1)));
  }
  for (std::int64_t t = 0; t < ids.extent(0); ++t) {
    for (std::int64_t j = 0; j < ids.extent(1); ++j) {
      int const id = ids(t, j);
      if (id < 0 || id > experts) {
        return error(Status::invalid_argument, "bias loads: expert id %d out of range [0, %d] at token %lld, slot %lld",
                     id, experts, static_cast<long long>(t), static_cast<long long>(j));
      }
    }
  }
  for (std::int64_t t = 0; t < ids.extent(0); ++t) {
    if (valid != nullptr && valid[t] == 0) {
      continue;
    }
    for (std::int64_t j = 0; j < ids.extent(1); ++j) {
      int const id = ids(t, j);
      if (id < experts) {
        ++s.loads(id);
      }
    }
  }
  return Status::ok;
}

// One update step on the host: b from A and n, then A <- 0 and n <- n + 1.
[[nodiscard]] inline Status update_bias(ExpertBias<MemorySpace::host> const& s) {
  auto const experts = static_cast<int>(s.bias.extent(0));
  if (Status st = s.validate(experts); !st) {
    return st;
  }
  if (*s.updates < 0) {
    return error(Status::invalid_argument, "bias update: negative update counter n=%lld", *s.updates);
  }
  long long total = 0;
  for (int e = 0; e < experts; ++e) {
    if (s.loads(e) < 0) {
      return error(Status::invalid_argument, "bias update: negative load %lld at expert %d", s.loads(e), e);
    }
    if (!std::isfinite(s.bias(e))) {
      return error(Status::invalid_argument, "bias update: non-finite bias %g at expert %d", double(s.bias(e)), e);
    }
    total += s.loads(e);
  }
  double const c = mean_load(total, experts);
  for (int e = 0; e < experts; ++e) {
    s.bias(e) =
        apply_bias_delta(s.bias(e), bias_delta(s.rule, s.update_rate, s.decay_steps, *s.updates, c, s.loads(e)));
    s.loads(e) = 0;
  }
  ++*s.updates;
  return Status::ok;
}

}  // namespace balancing
MOEKIT_NAMESPACE_END
