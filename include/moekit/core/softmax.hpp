#pragma once
// The fp32 softmax every router and loss shares (ALGORITHMS.md §1.0): the maximum, then the
// denominator sum_e exp(z_e - max) summed in ascending e, then p_e = exp(z_e - max) / denominator
// (a true division). fp32::exp gives the same bits on host and device, so a router and a loss
// see the same probabilities everywhere.

#include "moekit/config.hpp"
#include "moekit/core/fp32_math.hpp"

MOEKIT_NAMESPACE_BEGIN

// max_e z_e and sum_e exp(z_e - max), summed in ascending e (a true softmax then is
// exp(z_e - max) / denominator). NaN or +inf anywhere makes the denominator NaN, as in PyTorch.
struct SoftmaxNormaliser {
  float max;
  float denominator;
};

// `logit(e)` gives the e-th logit (an accessor, so callers can round or mask on the fly).
template <class Logit>
[[nodiscard]] MOEKIT_HOST_DEVICE SoftmaxNormaliser softmax_normaliser(int n, Logit const& logit) noexcept {
  float m = logit(0);
  for (int e = 1; e < n; ++e) {
    float const z = logit(e);
    m = z > m ? z : m;
  }
  float sum = 0.f;
  for (int e = 0; e < n; ++e) {
    sum += fp32::exp(logit(e) - m);
  }
  return {m, sum};
}

[[nodiscard]] MOEKIT_HOST_DEVICE inline SoftmaxNormaliser softmax_normaliser(float const* z, int n) noexcept {
  return softmax_normaliser(n, [z](int e) { return z[e]; });
}

[[nodiscard]] MOEKIT_HOST_DEVICE inline float softmax_entry(float z, SoftmaxNormaliser s) noexcept {
  return fp32::exp(z - s.max) / s.denominator;
}

MOEKIT_NAMESPACE_END
