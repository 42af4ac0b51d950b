#pragma once
// DynMoLE: Tsallis-entropy hybrid routing for LoRA experts (ALGORITHMS.md §3.2).
//   1. p = softmax(z) over the E experts (fp32)
//   2. rank the experts by descending logit (ties to the lower id; the same order as by p, §3)
//   3. top-p with the "<=" rule: rank r is kept iff C_r = p_pi(0) + ... + p_pi(r) <= top_p
//      (sequential fp32 sum in rank order): the expert that crosses top_p is dropped
//   4. ranks r < keep_top_k are always kept
//   5. broadcast: if entropy_threshold < 1 and the normalised Tsallis entropy H_q(p) > threshold,
//      every expert is kept (soft routing of an uncertain token)
//   6. weights w = p * mask, NOT renormalised (they sum to less than one unless broadcast)
// Output layout: slots() = E; the kept experts in rank order, then empty slots (id E, weight 0).
// The kept set is always a prefix of the rank order (C_r never decreases), so the rule reduces
// to a count of kept ranks: dynmole_kept_ranks below, the one place the rule is written in routing/.
// Thresholds use moekit's fp32 exp/log (fp32::pow below), so host and device decide alike.

#include <cmath>
#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"
#include "moekit/routing/concept.hpp"
#include "moekit/routing/ranking.hpp"
#include "moekit/routing/scores.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

// The hyper-parameters of the keep rule (HF-style keys of moe_peft's DynMoLE config).
struct DynMoLERule {
  float entropy_index = 1.1f;      // q of the Tsallis entropy, in (0, 2]
  float entropy_threshold = 0.9f;  // tau: broadcast when H_q > tau; tau >= 1 disables broadcast
  float top_p = 0.75f;             // in (0, 1]
  int keep_top_k = 2;              // minimum number of kept experts, in [1, E]
  float entropy_eps = 1e-5f;       // added to every p inside the entropy, > 0
};

// x^q for x > 0 as exp(q ln x), with moekit's fp32 routines (same bits on host and device).
[[nodiscard]] MOEKIT_HOST_DEVICE inline float dynmole_pow(float x, float q) noexcept {
  return fp32::exp(q * fp32::log(x));
}

// The normalised Tsallis entropy of p (ALGORITHMS.md §3.2), p given as a function of the expert:
// q != 1: (1 - sum_i (p_i + eps)^q) / (1 - E^(1-q)); q = 1: -sum_i (p_i + eps) ln(p_i + eps) / ln E.
// Sums in ascending expert order. Requires E >= 2.
template <class ProbabilityOf>
[[nodiscard]] MOEKIT_HOST_DEVICE float dynmole_entropy(ProbabilityOf const& p, int experts, float q,
                                                       float eps) noexcept {
  float const log_e = fp32::log(static_cast<float>(experts));
  float sum = 0.f;
  if (q == 1.f) {
    for (int i = 0; i < experts; ++i) {
      float const x = p(i) + eps;
      sum = ::fmaf(x, fp32::log(x), sum);
    }
    return -sum / log_e;
  }
  for (int i = 0; i < experts; ++i) {
    sum += dynmole_pow(p(i) + eps, q);
  }
  float const uniform_max = 1.f - fp32::exp((1.f - q) * log_e);
  return (1.f - sum) / uniform_max;
}

// How many leading ranks the rule keeps: E when the token broadcasts, else the longest prefix
// with r < keep_top_k or C_r <= top_p. `ranked_p(r)` is the probability of the expert at rank r;
// `entropy` is dynmole_entropy of the token. A NaN probability stops the prefix (C_r <= top_p
// is false) and never broadcasts (H > tau is false).
template <class RankedProbability>
[[nodiscard]] MOEKIT_HOST_DEVICE int dynmole_kept_ranks(RankedProbability const& ranked_p, int experts, float entropy,
                                                        DynMoLERule const& rule) noexcept {
  if (rule.entropy_index > 0.f && rule.entropy_threshold < 1.f && entropy > rule.entropy_threshold) {
    return experts;
  }
  float cumulative = 0.f;
  int kept = 0;
  for (int r = 0; r < experts; ++r) {
    cumulative += ranked_p(r);
    if (r >= rule.keep_top_k && !(cumulative <= rule.top_p)) {
      break;
    }
    kept = r + 1;
  }
  return kept;
}

// rank[e] = the position of expert e in the selection order (descending logit, NaN last, ties
// to the lower id): a permutation of 0..E-1, in O(E^2) with no scratch memory.
[[nodiscard]] MOEKIT_HOST_DEVICE inline int expert_rank(float const* logits, int experts, int e) noexcept {
  int r = 0;
  for (int c = 0; c < experts; ++c) {
    r += ranks_before(logits[c], c, logits[e], e) ? 1 : 0;
  }
  return r;
}

// The keep mask m[t, 0..E) of one token (1 kept, 0 not), for a loss that needs it ([E] floats).
[[nodiscard]] MOEKIT_HOST_DEVICE inline int dynmole_keep_mask(float const* logits, int experts, DynMoLERule const& rule,
                                                              float* mask) noexcept {
  SoftmaxNormaliser const norm = softmax_normaliser(logits, experts);
  auto p = [&](int e) { return softmax_entry(logits[e], norm); };
  float const entropy = dynmole_entropy(p, experts, rule.entropy_index, rule.entropy_eps);
  // mask[] holds the expert at each rank while the prefix is measured.
  for (int e = 0; e < experts; ++e) {
    mask[expert_rank(logits, experts, e)] = static_cast<float>(e);
  }
  auto ranked = [&](int r) { return p(static_cast<int>(mask[r])); };
  int const kept = dynmole_kept_ranks(ranked, experts, entropy, rule);
  int count = 0;
  for (int e = 0; e < experts; ++e) {
    bool const keep = expert_rank(logits, experts, e) < kept && logits[e] != -INFINITY;  // -inf masks (§0)
    mask[e] = keep ? 1.f : 0.f;
    count += keep ? 1 : 0;
  }
  return count;
}

template <int MaxExperts = 256>
struct DynMoLE {
  static constexpr RouterScope scope = RouterScope::per_token;
  static constexpr int max_slots = MaxExperts;

  int experts = 0;  // num_experts (LoRA experts of one adapted projection)
  DynMoLERule rule{};

  [[nodiscard]] MOEKIT_HOST_DEVICE int num_experts() const noexcept { return experts; }
  [[nodiscard]] MOEKIT_HOST_DEVICE int slots() const noexcept { return experts; }

  [[nodiscard]] Status validate() const {
    if (experts < 2) {
      return error(Status::invalid_argument, "DynMoLE: E must be >= 2 (entropy normalisation) (got E=%d)", experts);
    }
    if (experts > MaxExperts) {
      return error(Status::unsupported_config,
                   "DynMoLE: E=%d exceeds this instantiation's MaxExperts=%d; use DynMoLE<%d>", experts, MaxExperts,
                   experts);
    }
    if (!(rule.entropy_index > 0.f && rule.entropy_index <= 2.f)) {
      return error(Status::invalid_argument, "DynMoLE: entropy_index must be in (0, 2] (got %g)",
                   double(rule.entropy_index));
    }
    if (!(rule.top_p > 0.f && rule.top_p <= 1.f)) {
      return error(Status::invalid_argument, "DynMoLE: top_p must be in (0, 1] (got %g)", double(rule.top_p));
    }
    if (rule.keep_top_k < 1 || rule.keep_top_k > experts) {
      return error(Status::invalid_argument, "DynMoLE: keep_top_k must be in [1, E] (got %d, E=%d)", rule.keep_top_k,
                   experts);
    }
    if (!(rule.entropy_threshold > 0.f)) {
      return error(Status::invalid_argument, "DynMoLE: entropy_threshold must be > 0 (got %g)",
                   double(rule.entropy_threshold));
    }
    if (!(rule.entropy_eps > 0.f) || !std::isfinite(rule.entropy_eps)) {
      return error(Status::invalid_argument, "DynMoLE: entropy_eps must be finite and > 0 (got %g)",
                   double(rule.entropy_eps));
    }
    return Status::ok;
  }

  // No per-token side buffers (the same query as the other research routers).
  [[nodiscard]] Status validate_inputs(std::int64_t) const { return Status::ok; }

  MOEKIT_HOST_DEVICE void route_token(std::int64_t, float const* logits, int* ids, float* weights) const noexcept {
    int const n = experts;
    // ids[] doubles as the rank order: ids[rank(e)] = e.
    for (int e = 0; e < n; ++e) {
      ids[expert_rank(logits, n, e)] = e;
    }
    SoftmaxNormaliser const norm = softmax_normaliser(logits, n);
    auto p = [&](int e) { return softmax_entry(logits[e], norm); };
    float const entropy = dynmole_entropy(p, n, rule.entropy_index, rule.entropy_eps);
    int const kept = dynmole_kept_ranks([&](int r) { return p(ids[r]); }, n, entropy, rule);
    for (int r = 0; r < n; ++r) {
      // A -inf logit masks its expert (§0), even under keep_top_k or broadcast (as the DynMoLE
      // loss decides): -inf ranks after every number, so such slots are the kept prefix's tail.
      if (r < kept && logits[ids[r]] != -INFINITY) {
        weights[r] = p(ids[r]);
      } else {
        ids[r] = n;
        weights[r] = 0.f;
      }
    }
  }
};

// The DynMoLE defaults (config.py / templates/dynmole.json): q = 1.1, tau = 0.9, top_p = 0.75,
// keep_top_k = 2, eps = 1e-5; num_experts = 6 in the template.
[[nodiscard]] constexpr DynMoLE<256> dynmole_router(int num_experts, DynMoLERule rule = {}) {
  return {.experts = num_experts, .rule = rule};
}

static_assert(diagnose_router<DynMoLE<256>>() && Router<DynMoLE<256>>);

}  // namespace routing
MOEKIT_NAMESPACE_END
