#pragma once
// The router backward of the production routers (ALGORITHMS.md §1.0, §1.1, §1.3, §1.4.2, §1.5,
// §1.6): given the selection (held fixed: top-k has no gradient) and g = dL/dweights per slot,
// dL/dlogits for one token. Renormalised softmax and gpt-oss: only the selected logits get a
// gradient; softmax without renormalisation: dense over all E; sigmoid and DeepSeek-V3: through
// the selected scores. The routed_scaling_factor multiplies every gradient it multiplies weights.
// Same code on host and device (one thread per token); sums in slot order, then expert order.

#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/routing/grouped_top_k.hpp"
#include "moekit/routing/scores.hpp"
#include "moekit/routing/top_k.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

namespace detail {
// dL/dz for weights w_j = rho * s_j / (sum_l s_l + eps) (normalise) or rho * s_j, given
// ds_j/dz_j = s_j (1 - s_j) (sigmoid scores).
template <int MaxK, class Logit>
MOEKIT_HOST_DEVICE void sigmoid_weights_backward(int experts, Logit const& logit, int const* ids, float const* g, int k,
                                                 bool normalise, float eps, float rho, float* grad) noexcept {
  for (int e = 0; e < experts; ++e) {
    grad[e] = 0.f;
  }
  float s[MaxK];
  float sum = 0.f, dot = 0.f;
  for (int j = 0; j < k; ++j) {
    s[j] = fp32::sigmoid(logit(ids[j]));
    sum += s[j];
    dot += g[j] * s[j];
  }
  float const d = sum + eps;
  for (int j = 0; j < k; ++j) {
    float const ds = normalise ? rho * (g[j] / d - dot / (d * d)) : rho * g[j];
    grad[ids[j]] += ds * s[j] * (1.f - s[j]);
  }
}

// dL/dz for softmax scores p = softmax(z) over all E with weights rho * p_j (dense gradient),
// or rho * p_j / (sum_l p_l + eps) (normalise: the selected logits only when eps = 0).
template <int MaxK, class Logit>
MOEKIT_HOST_DEVICE void softmax_weights_backward(int experts, Logit const& logit, int const* ids, float const* g, int k,
                                                 bool normalise, float eps, float rho, float* grad) noexcept {
  SoftmaxNormaliser const n = softmax_normaliser(experts, logit);
  float p[MaxK];
  float sum = 0.f;
  for (int j = 0; j < k; ++j) {
    p[j] = softmax_entry(logit(ids[j]), n);
    sum += p[j];
  }
  // dL/dp_j for the selected experts, then through the softmax Jacobian p_m (dp_m - sum_j dp_j p_j).
  float dp[MaxK];
  float dot = 0.f;
  for (int j = 0; j < k; ++j) {
    dot += g[j] * p[j];
  }
  float const d = sum + eps;
  for (int j = 0; j < k; ++j) {
    dp[j] = normalise ? rho * (g[j] / d - dot / (d * d)) : rho * g[j];
  }
  float centre = 0.f;
  for (int j = 0; j < k; ++j) {
    centre += dp[j] * p[j];
  }
  for (int e = 0; e < experts; ++e) {
    grad[e] = -softmax_entry(logit(e), n) * centre;
  }
  for (int j = 0; j < k; ++j) {
    grad[ids[j]] += p[j] * dp[j];
  }
}
}  // namespace detail

// dL/dz [E] of one token routed by `r` to `ids` [k], with upstream g = dL/dweights [k].
template <int MaxK>
MOEKIT_HOST_DEVICE void backward_token(TopK<MaxK> const& r, float const* logits, int const* ids, float const* g,
                                       float* grad) noexcept {
  bool const round = r.round_logits_to_bf16;
  auto logit = [logits, round](int e) { return round ? round_to_bf16(logits[e]) : logits[e]; };
  float const rho = r.routed_scaling_factor;
  if (r.scoring == ScoreFunction::sigmoid) {
    detail::sigmoid_weights_backward<MaxK>(r.experts, logit, ids, g, r.k, r.norm_topk_prob, 0.f, rho, grad);
    return;
  }
  if (r.scoring == ScoreFunction::softmax_of_selected || r.norm_topk_prob) {
    // w = rho * softmax over the selected logits: dz_{i_a} = rho w_a (g_a - sum_j g_j w_j); 0 elsewhere.
    for (int e = 0; e < r.experts; ++e) {
      grad[e] = 0.f;
    }
    float const m = logit(ids[0]);
    float w[MaxK];
    float sum = 0.f;
    for (int j = 0; j < r.k; ++j) {
      w[j] = fp32::exp(logit(ids[j]) - m);
      sum += w[j];
    }
    float dot = 0.f;
    for (int j = 0; j < r.k; ++j) {
      w[j] = w[j] / sum;
      dot += g[j] * w[j];
    }
    for (int j = 0; j < r.k; ++j) {
      grad[ids[j]] = rho * w[j] * (g[j] - dot);
    }
    return;
  }
  detail::softmax_weights_backward<MaxK>(r.experts, logit, ids, g, r.k, false, 0.f, rho, grad);
}

template <int MaxK>
MOEKIT_HOST_DEVICE void backward_token(GroupedTopK<MaxK> const& r, float const* logits, int const* ids, float const* g,
                                       float* grad) noexcept {
  bool const biased = r.method == TopKMethod::noaux_tc;
  bool const normalise = r.norm_topk_prob && (biased || r.k > 1);
  float const rho = biased || !normalise ? r.routed_scaling_factor : 1.f;
  if (r.scoring == ScoreFunction::sigmoid) {
    detail::sigmoid_weights_backward<MaxK>(
        r.experts, [logits](int e) { return logits[e]; }, ids, g, r.k, normalise, 1e-20f, rho, grad);
    return;
  }
  detail::softmax_weights_backward<MaxK>(
      r.experts, [logits](int e) { return logits[e]; }, ids, g, r.k, normalise, 1e-20f, rho, grad);
}

}  // namespace routing
MOEKIT_NAMESPACE_END
