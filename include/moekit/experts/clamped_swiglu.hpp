#pragma once
// gpt-oss's clamped SwiGLU (ALGORITHMS.md §1.5): â = min(g, limit), û = clamp(u, −limit, limit),
// h = (û + 1)·â·σ(α â). gpt-oss's experts also carry biases on all three projections
// (MlpWeights' bias views). α = 1.702 and limit = 7 are the released values; limit = +inf
// disables both clamps.

#include <cmath>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"
#include "moekit/experts/concept.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace experts {

template <DenseElement W = bf16_t>
struct ClampedSwiglu {
  using Element = W;
  static constexpr ExpertShape shape = ExpertShape::gated;
  static constexpr char const* name = "clamped_swiglu";

  float alpha = 1.702f;  // HF swiglu_alpha default (not stored in checkpoints)
  float limit = 7.0f;    // swiglu_limit

  [[nodiscard]] MOEKIT_HOST_DEVICE float hidden_unit(float gate, float up) const noexcept {
    float const a = gate < limit ? gate : limit;
    float const u = up > limit ? limit : (up < -limit ? -limit : up);
    return (u + 1.0f) * (a * fp32::sigmoid(alpha * a));
  }
  [[nodiscard]] Status validate() const {
    if (!(limit > 0.0f)) {
      return error(Status::invalid_argument, "clamped SwiGLU: swiglu_limit must be > 0 (got %g)", double(limit));
    }
    if (!std::isfinite(alpha)) {
      return error(Status::invalid_argument, "clamped SwiGLU: swiglu_alpha must be finite (got %g)", double(alpha));
    }
    return Status::ok;
  }
};

}  // namespace experts
MOEKIT_NAMESPACE_END
