#pragma once
// NullExperts: AdaMoE's token-adaptive top-k (ALGORITHMS.md §3.1). The layer has n true experts
// (ids 0..n-1) and m null experts (ids n..n+m-1, the rows of the second gate appended after the
// true rows, as in the reference). A null expert outputs zero and is never dispatched, so a token
// that picks j null experts uses k - j true experts.
//   selection  top-k of the logits over all n + m experts (ties to the lower id, so a tie between
//              a true and a null expert goes to the true one)
//   weights    p = softmax over all n + m; w = p / D on the selected true experts with D their sum
//              (slot order, no epsilon), 0 on selected null experts; D = 0 gives all-zero weights
// Null slots keep their id (n..n+m-1): they are real experts of the layer's numbering (§0), the
// plan skips them through their zero weight or an expert table that maps them to no work. The
// empty-slot sentinel stays n + m. With m = 0 this is Mixtral's renormalised softmax top-k.

#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/routing/concept.hpp"
#include "moekit/routing/ranking.hpp"
#include "moekit/routing/scores.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

template <int MaxK = 8>
struct NullExperts {
  static constexpr RouterScope scope = RouterScope::per_token;
  static constexpr int max_slots = MaxK;

  int true_experts = 0;  // n (num_local_experts)
  int null_experts = 0;  // m (num_null_experts)
  int k = 0;             // num_experts_per_tok (AdaMoE raises it, e.g. 2 -> 4 on Mixtral)
  // Optional output [token_count]: the number of true experts each token selected (a_t, its
  // FLOPs). Written only for tokens < token_count; token_count must equal T (validate_inputs).
  int* num_true = nullptr;
  std::int64_t token_count = 0;

  [[nodiscard]] MOEKIT_HOST_DEVICE int num_experts() const noexcept { return true_experts + null_experts; }
  [[nodiscard]] MOEKIT_HOST_DEVICE int slots() const noexcept { return k; }

  [[nodiscard]] Status validate() const {
    if (true_experts < 1) {
      return error(Status::invalid_argument, "AdaMoE: need at least one true expert (got n=%d)", true_experts);
    }
    if (null_experts < 0) {
      return error(Status::invalid_argument, "AdaMoE: num_null_experts must be >= 0 (got m=%d)", null_experts);
    }
    if (k < 1 || k > num_experts()) {
      return error(Status::invalid_argument, "AdaMoE: k must be in [1, n+m] (got k=%d, n=%d, m=%d)", k, true_experts,
                   null_experts);
    }
    if (k > MaxK) {
      return error(Status::unsupported_config, "AdaMoE: k=%d exceeds this instantiation's MaxK=%d; use NullExperts<%d>",
                   k, MaxK, k);
    }
    if (num_true != nullptr && token_count < 0) {
      return error(Status::invalid_argument, "AdaMoE: num_true token_count must be >= 0 (got %lld)",
                   static_cast<long long>(token_count));
    }
    return Status::ok;
  }

  // The per-token side buffers against the batch's T (the route entry points check only
  // validate(), which cannot know T; host::reference_route calls this, callers should too).
  [[nodiscard]] Status validate_inputs(std::int64_t tokens) const {
    if (num_true != nullptr && token_count != tokens) {
      return error(Status::invalid_argument, "AdaMoE: num_true holds %lld tokens, the batch has %lld",
                   static_cast<long long>(token_count), static_cast<long long>(tokens));
    }
    return Status::ok;
  }

  MOEKIT_HOST_DEVICE void route_token(std::int64_t token, float const* logits, int* ids,
                                      float* weights) const noexcept {
    int const experts = num_experts();
    int chosen[MaxK];
    top_k<MaxK>(logits, experts, k, chosen);
    SoftmaxNormaliser const norm = softmax_normaliser(logits, experts);
    float p[MaxK];
    float true_sum = 0.f;  // D, in slot order
    int active = 0;
    for (int j = 0; j < k; ++j) {
      p[j] = softmax_entry(logits[chosen[j]], norm);
      if (chosen[j] < true_experts) {
        true_sum += p[j];
        ++active;
      }
    }
    for (int j = 0; j < k; ++j) {
      bool const is_true = chosen[j] < true_experts;
      ids[j] = chosen[j];
      weights[j] = is_true && true_sum != 0.f ? p[j] / true_sum : 0.f;
    }
    if (num_true != nullptr && token < token_count) {
      num_true[token] = active;
    }
  }
};

// AdaMoE on Mixtral-8x7B (exp_2/loader.py): n = 8, m = 16, k = 4.
[[nodiscard]] constexpr NullExperts<8> adamoe_router(int num_local_experts, int num_null_experts,
                                                     int num_experts_per_tok) {
  return {.true_experts = num_local_experts, .null_experts = num_null_experts, .k = num_experts_per_tok};
}

static_assert(diagnose_router<NullExperts<8>>() && Router<NullExperts<8>>);

}  // namespace routing
MOEKIT_NAMESPACE_END
