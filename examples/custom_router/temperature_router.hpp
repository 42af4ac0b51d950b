#pragma once
// A router written outside moekit: softmax with a temperature, top-k, renormalised. It
// satisfies moekit::routing::TokenRouter, so moekit's CPU path, device kernel and dispatch
// plan run it unchanged; nothing in the library knows about it.

#include <cmath>
#include <cstdint>

#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/routing/concept.hpp"
#include "moekit/routing/ranking.hpp"

namespace my_project {

template <int MaxK>
struct TemperatureTopK {
  static constexpr moekit::routing::RouterScope scope = moekit::routing::RouterScope::per_token;
  static constexpr int max_slots = MaxK;

  int experts = 0;
  int k = 0;
  float temperature = 1.f;

  [[nodiscard]] MOEKIT_HOST_DEVICE int num_experts() const noexcept { return experts; }
  [[nodiscard]] MOEKIT_HOST_DEVICE int slots() const noexcept { return k; }

  [[nodiscard]] moekit::Status validate() const {
    if (experts < 1 || k < 1 || k > experts || k > MaxK) {
      return moekit::error(moekit::Status::invalid_argument, "TemperatureTopK: need 1 <= k <= min(E, %d) (k=%d, E=%d)",
                           MaxK, k, experts);
    }
    if (!(temperature > 0.f) || !std::isfinite(temperature)) {
      return moekit::error(moekit::Status::invalid_argument, "TemperatureTopK: temperature must be > 0 (got %g)",
                           double(temperature));
    }
    return moekit::Status::ok;
  }

  // Selection on the logits (dividing by a positive temperature keeps the order); weights are
  // the tempered softmax over the k selected logits.
  MOEKIT_HOST_DEVICE void route_token(std::int64_t, float const* logits, int* ids, float* weights) const noexcept {
    moekit::routing::top_k<MaxK>(logits, experts, k, ids);
    float const top = logits[ids[0]];
    float sum = 0.f;
    for (int j = 0; j < k; ++j) {
      weights[j] = moekit::fp32::exp((logits[ids[j]] - top) / temperature);
      sum += weights[j];
    }
    for (int j = 0; j < k; ++j) {
      weights[j] /= sum;
    }
  }
};

static_assert(moekit::routing::diagnose_router<TemperatureTopK<4>>() && moekit::routing::Router<TemperatureTopK<4>>);

}  // namespace my_project
