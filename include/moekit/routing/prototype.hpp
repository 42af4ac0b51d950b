#pragma once
// PrototypeRouter: ProMoE's conditional + prototypical routing (ALGORITHMS.md §4.1), token
// choice. The "logits" it routes are the prototype scores Z = alpha n(x_t) . n(p_e) from
// cosine_scores.hpp, one row per token with N_E + N_U columns: the N_E routed experts' scores,
// then N_U columns the router does not read (cosine_scores writes -inf there) that stand for the
// unconditional experts, so that num_experts() = N_E + N_U and the empty-slot id N_E + N_U is
// outside every real expert (§0: extra experts are real experts).
//
// Per token t (uncond_mask[t / tokens_per_sample] != 0 marks an unconditional token, e.g. the
// null-label half of a CFG batch; a null mask means every token is conditional):
//   unconditional  slot j < N_U: id N_E + j, weight exactly 1 (y_t = sum of the N_U
//                  unconditional experts); later slots empty (id N_E + N_U, weight 0). The
//                  reference repeats id N_E with weight 0 in the other slots; moekit leaves them
//                  empty so the plan dispatches no zero-weight work.
//   conditional    S = A(Z) over the N_E routed experts, A = identity (default), sigmoid, or
//                  softmax over the N_E; top-K of S (ties to the lower id); weight = S at the
//                  selected experts, no renormalisation, no clamping (identity weights are
//                  cosines and may be negative); slots K.. empty.
// slots() = max(K, N_U), so either kind of token fits.

#include <cmath>
#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/routing/concept.hpp"
#include "moekit/routing/ranking.hpp"
#include "moekit/routing/route_buffers.hpp"
#include "moekit/routing/scores.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

enum class PrototypeActivation { identity, sigmoid, softmax };  // router_weight_mode

template <int MaxK = 8>
struct PrototypeRouter {
  static constexpr RouterScope scope = RouterScope::per_token;
  static constexpr int max_slots = MaxK;

  int routed_experts = 0;  // N_E (num_routed_experts)
  int uncond_experts = 1;  // N_U (use_uncond_expert: 1, or 0)
  int k = 1;               // K (top_k)
  PrototypeActivation activation = PrototypeActivation::identity;
  // [token_count / tokens_per_sample] flags, nonzero = unconditional (label == null_id). Null:
  // every token is conditional (the reference with use_uncond_expert = false).
  std::uint8_t const* uncond_mask = nullptr;
  std::int64_t tokens_per_sample = 1;  // L: one flag per sample of L tokens (1: one per token)
  std::int64_t token_count = 0;        // T the mask was made for (validate_inputs); tokens past it are conditional

  [[nodiscard]] MOEKIT_HOST_DEVICE int num_experts() const noexcept { return routed_experts + uncond_experts; }
  [[nodiscard]] MOEKIT_HOST_DEVICE int slots() const noexcept { return k > uncond_experts ? k : uncond_experts; }

  [[nodiscard]] Status validate() const {
    if (routed_experts < 1) {
      return error(Status::invalid_argument, "ProMoE: num_routed_experts must be >= 1 (got %d)", routed_experts);
    }
    if (uncond_experts < 0) {
      return error(Status::invalid_argument, "ProMoE: the number of unconditional experts must be >= 0 (got %d)",
                   uncond_experts);
    }
    if (k < 1 || k > routed_experts) {
      return error(Status::invalid_argument, "ProMoE: top_k must be in [1, num_routed_experts] (got %d, N_E=%d)", k,
                   routed_experts);
    }
    if (slots() > MaxK) {
      return error(Status::unsupported_config,
                   "ProMoE: max(top_k, N_U)=%d exceeds this instantiation's MaxK=%d; use PrototypeRouter<%d>", slots(),
                   MaxK, slots());
    }
    if (activation != PrototypeActivation::identity && activation != PrototypeActivation::sigmoid &&
        activation != PrototypeActivation::softmax) {
      return error(Status::invalid_argument, "ProMoE: unknown router_weight_mode %d", static_cast<int>(activation));
    }
    if (uncond_mask != nullptr) {
      // The device path cannot read the mask's values to see whether it marks a token, so a
      // mask without an unconditional expert is refused outright.
      if (uncond_experts == 0) {
        return error(Status::invalid_argument,
                     "ProMoE: unconditional tokens require an unconditional expert (uncond_mask set, N_U = 0)");
      }
      if (tokens_per_sample < 1 || token_count < 0) {
        return error(Status::invalid_argument,
                     "ProMoE: tokens_per_sample must be >= 1 and token_count >= 0 (got %lld, "
                     "%lld)",
                     static_cast<long long>(tokens_per_sample), static_cast<long long>(token_count));
      }
      if (token_count % tokens_per_sample != 0) {
        return error(Status::invalid_argument, "ProMoE: token_count %lld is not a multiple of tokens_per_sample %lld",
                     static_cast<long long>(token_count), static_cast<long long>(tokens_per_sample));
      }
    }
    return Status::ok;
  }

  // The mask against the batch's T (see NullExperts::validate_inputs).
  [[nodiscard]] Status validate_inputs(std::int64_t tokens) const {
    if (uncond_mask != nullptr && token_count != tokens) {
      return error(Status::invalid_argument, "ProMoE: uncond_mask was made for %lld tokens, the batch has %lld",
                   static_cast<long long>(token_count), static_cast<long long>(tokens));
    }
    return Status::ok;
  }

  [[nodiscard]] MOEKIT_HOST_DEVICE bool is_unconditional(std::int64_t token) const noexcept {
    return uncond_mask != nullptr && token < token_count && uncond_mask[token / tokens_per_sample] != 0;
  }

  MOEKIT_HOST_DEVICE void route_token(std::int64_t token, float const* scores, int* ids,
                                      float* weights) const noexcept {
    int const n = slots();
    int const empty = num_experts();
    if (is_unconditional(token)) {
      for (int j = 0; j < n; ++j) {
        ids[j] = j < uncond_experts ? routed_experts + j : empty;
        weights[j] = j < uncond_experts ? 1.f : 0.f;
      }
      return;
    }
    PrototypeActivation const a = activation;
    SoftmaxNormaliser const norm =
        a == PrototypeActivation::softmax ? softmax_normaliser(scores, routed_experts) : SoftmaxNormaliser{0.f, 1.f};
    auto activated = [&](int e) {
      float const z = scores[e];
      return a == PrototypeActivation::identity
                 ? z
                 : (a == PrototypeActivation::sigmoid ? fp32::sigmoid(z) : softmax_entry(z, norm));
    };
    int chosen[MaxK];
    top_k<MaxK>(
        routed_experts, k, activated, [](int e) { return e; }, chosen);
    for (int j = 0; j < n; ++j) {
      ids[j] = j < k ? chosen[j] : empty;
      weights[j] = j < k ? activated(chosen[j]) : 0.f;
    }
  }
};

// ProMoE's released configs (004_ProMoE_*.yaml): N_E = 12, one unconditional expert, top_k = 1,
// identity weights.
[[nodiscard]] constexpr PrototypeRouter<8>
promoe_router(int num_routed_experts = 12, int top_k = 1,
              PrototypeActivation router_weight_mode = PrototypeActivation::identity, bool use_uncond_expert = true) {
  return {.routed_experts = num_routed_experts,
          .uncond_experts = use_uncond_expert ? 1 : 0,
          .k = top_k,
          .activation = router_weight_mode};
}

// The gradient of the routing weights w.r.t. the scores (ALGORITHMS.md §4.1 "Router gradient"):
// given dL/dweights [T, slots], dL/dZ [T, N_E] (the extra columns carry none): identity passes
// it through at the selected experts, sigmoid multiplies by S(1 - S), softmax applies the
// softmax Jacobian over all N_E; unconditional tokens and empty slots give nothing. Host, fp64
// inside, sums in ascending slot then expert order. ids must be what the router wrote.
template <int MaxK>
[[nodiscard]] Status prototype_weights_backward(PrototypeRouter<MaxK> const& r, HostTensor<float const, 2> scores,
                                                HostTensor<int const, 2> ids, HostTensor<float const, 2> grad_weights,
                                                HostTensor<float, 2> grad_scores) {
  if (Status s = r.validate(); !s) {
    return s;
  }
  std::int64_t const tokens = scores.extent(0);
  if (Status s = r.validate_inputs(tokens); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(scores, "ProMoE backward: scores", tokens, r.num_experts()); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(ids, "ProMoE backward: ids", tokens, r.slots()); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(grad_weights, "ProMoE backward: grad_weights", tokens, r.slots()); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(grad_scores, "ProMoE backward: grad_scores", tokens, r.routed_experts); !s) {
    return s;
  }
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (int j = 0; j < r.slots(); ++j) {
      int const id = ids(t, j);
      if (id < 0 || id > r.num_experts()) {
        return error(Status::invalid_argument, "ProMoE backward: id %d out of range at token %lld, slot %d", id,
                     static_cast<long long>(t), j);
      }
    }
  }
  int const n = r.routed_experts;
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (int e = 0; e < n; ++e) {
      grad_scores(t, e) = 0.f;
    }
    if (r.is_unconditional(t)) {
      continue;
    }
    // dL/dS at the selected experts.
    double max = -INFINITY;
    for (int e = 0; e < n; ++e) {
      max = std::fmax(max, double(scores(t, e)));
    }
    double sum = 0;
    for (int e = 0; e < n; ++e) {
      sum += std::exp(double(scores(t, e)) - max);
    }
    auto softmax = [&](int e) { return std::exp(double(scores(t, e)) - max) / sum; };
    double dot = 0;  // sum_j dL/dS_j S_j (softmax Jacobian)
    for (int j = 0; j < r.slots(); ++j) {
      if (ids(t, j) < n) {
        dot += double(grad_weights(t, j)) * softmax(ids(t, j));
      }
    }
    for (int j = 0; j < r.slots(); ++j) {
      int const e = ids(t, j);
      if (e >= n || r.activation == PrototypeActivation::softmax) {
        continue;
      }
      double g = grad_weights(t, j);
      if (r.activation == PrototypeActivation::sigmoid) {
        double const s = 1.0 / (1.0 + std::exp(-double(scores(t, e))));
        g *= s * (1 - s);
      }
      grad_scores(t, e) = static_cast<float>(g);
    }
    if (r.activation == PrototypeActivation::softmax) {
      for (int e = 0; e < n; ++e) {
        double g_e = 0;
        for (int j = 0; j < r.slots(); ++j) {
          g_e += ids(t, j) == e ? double(grad_weights(t, j)) : 0.0;
        }
        grad_scores(t, e) = static_cast<float>(softmax(e) * (g_e - dot));
      }
    }
  }
  return Status::ok;
}

static_assert(diagnose_router<PrototypeRouter<8>>() && Router<PrototypeRouter<8>>);

}  // namespace routing
MOEKIT_NAMESPACE_END
