#pragma once
// Two policies written outside moekit, each satisfying its concept, so MoeLayer composes them
// like its own: the CPU executor, the device kernels (emulated here) and nvcc run them
// unchanged, and nothing in the library knows about them.
//
//   SigmoidTopK     a per-token router (routing::TokenRouter): the k largest logits, each
//                   weighted σ(z/τ) on its own (no normalisation across slots, as Llama-4's
//                   sigmoid router with a temperature τ);
//   SquaredReluGlu  a gated expert (experts::Expert): h = min(relu(g), cap)²·u, the squared
//                   ReLU of Primer / Nemotron as a GLU, capped so h stays bounded in bf16.

#include <cmath>
#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"
#include "moekit/experts/concept.hpp"
#include "moekit/routing/concept.hpp"
#include "moekit/routing/ranking.hpp"

namespace my_project {

template <int MaxK>
struct SigmoidTopK {
  static constexpr moekit::routing::RouterScope scope = moekit::routing::RouterScope::per_token;
  static constexpr int max_slots = MaxK;

  int experts = 0;
  int k = 0;
  float temperature = 1.f;

  [[nodiscard]] MOEKIT_HOST_DEVICE int num_experts() const noexcept { return experts; }
  [[nodiscard]] MOEKIT_HOST_DEVICE int slots() const noexcept { return k; }

  [[nodiscard]] moekit::Status validate() const {
    if (experts < 1 || k < 1 || k > experts || k > MaxK) {
      return moekit::error(moekit::Status::invalid_argument, "SigmoidTopK: need 1 <= k <= min(E, %d) (k=%d, E=%d)",
                           MaxK, k, experts);
    }
    if (!(temperature > 0.f) || !std::isfinite(temperature)) {
      return moekit::error(moekit::Status::invalid_argument, "SigmoidTopK: temperature must be > 0 (got %g)",
                           double(temperature));
    }
    return moekit::Status::ok;
  }

  // Runs on the host and in device code, one thread per token. Non-finite logit rows never get
  // here: moekit's route entry points count them (device) or refuse them (host).
  MOEKIT_HOST_DEVICE void route_token(std::int64_t, float const* logits, int* ids, float* weights) const noexcept {
    moekit::routing::top_k<MaxK>(logits, experts, k, ids);
    for (int j = 0; j < k; ++j) {
      weights[j] = moekit::fp32::sigmoid(logits[ids[j]] / temperature);
    }
  }
};

struct SquaredReluGlu {
  using Element = moekit::bf16_t;
  static constexpr moekit::experts::ExpertShape shape = moekit::experts::ExpertShape::gated;
  static constexpr char const* name = "squared_relu_glu";

  float cap = 4.f;

  [[nodiscard]] MOEKIT_HOST_DEVICE float hidden_unit(float gate, float up) const noexcept {
    float const r = gate < 0.f ? 0.f : (gate > cap ? cap : gate);  // NaN propagates, as torch's relu
    return r * r * up;
  }
  [[nodiscard]] moekit::Status validate() const {
    if (!(cap > 0.f) || !std::isfinite(cap)) {
      return moekit::error(moekit::Status::invalid_argument, "SquaredReluGlu: cap must be finite and > 0 (got %g)",
                           double(cap));
    }
    return moekit::Status::ok;
  }
};

// One static_assert per missing requirement, worded as the fix, if either policy misses one.
static_assert(moekit::routing::diagnose_router<SigmoidTopK<4>>() && moekit::routing::TokenRouter<SigmoidTopK<4>>);
static_assert(moekit::experts::diagnose_expert<SquaredReluGlu>());

}  // namespace my_project
