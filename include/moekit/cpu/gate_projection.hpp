#pragma once
// The gate projection on the CPU, in checked mode: logits[t, e] = sum_h x[t, h] · Wg[e, h]
// (+ b[e]) with the device kernel's exact arithmetic (one fp32 accumulator per logit, fmaf in
// ascending h from +0, the bias added once), so the CPU and the device give the same bits.
//
// Checked mode (ALGORITHMS.md §0): NaN or infinite inputs are refused naming their position, and
// so are inputs large enough that the fp32 sum could overflow: for each (t, e) the bound
// max_h |x[t,h]| · sum_h |Wg[e,h]| + |b[e]| (in double) must stay below FLT_MAX / (1 + (H+2)·2^-23),
// which bounds every partial sum. Both checks run before any output is written. The bound is
// conservative: it refuses only inputs whose products reach ~1e38 / H, far outside any router.

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <vector>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/status.hpp"
#include "moekit/routing/gate_projection_buffers.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace cpu {

template <routing::GateElement X, routing::GateElement W>
[[nodiscard]] Status gate_projection(routing::GateProjectionBuffers<X, W, MemorySpace::host> const& b) {
  if (Status s = routing::check_gate_projection_buffers(b); !s) {
    return s;
  }
  if (Status s = routing::check_gate_inputs_finite(b); !s) {
    return s;
  }
  std::int64_t const tokens = b.hidden.extent(0);
  std::int64_t const hidden = b.hidden.extent(1);
  std::int64_t const experts = b.weight.extent(0);

  // Overflow bound, before anything is written.
  std::vector<double> weight_l1(static_cast<std::size_t>(experts), 0.0);
  for (std::int64_t e = 0; e < experts; ++e) {
    for (std::int64_t h = 0; h < hidden; ++h) {
      weight_l1[static_cast<std::size_t>(e)] += std::fabs(double(to_float(b.weight(e, h))));
    }
  }
  double const limit = double(FLT_MAX) / (1.0 + double(hidden + 2) * 0x1p-23);
  for (std::int64_t t = 0; t < tokens; ++t) {
    double x_max = 0.0;
    for (std::int64_t h = 0; h < hidden; ++h) {
      x_max = std::fmax(x_max, std::fabs(double(to_float(b.hidden(t, h)))));
    }
    for (std::int64_t e = 0; e < experts; ++e) {
      double const bound =
          x_max * weight_l1[static_cast<std::size_t>(e)] + (b.has_bias() ? std::fabs(double(b.bias(e))) : 0.0);
      if (bound >= limit) {
        return error(Status::invalid_argument,
                     "gate projection: the fp32 logit at token %lld, expert %lld could overflow (|x|·|w| bound %g)",
                     static_cast<long long>(t), static_cast<long long>(e), bound);
      }
    }
  }

  for (std::int64_t t = 0; t < tokens; ++t) {
    X const* x = b.hidden.pointer(t, 0);
    for (std::int64_t e = 0; e < experts; ++e) {
      W const* w = b.weight.pointer(e, 0);
      float acc = 0.f;
      for (std::int64_t h = 0; h < hidden; ++h) {
        acc = std::fmaf(to_float(x[h]), to_float(w[h]), acc);
      }
      b.logits(t, e) = b.has_bias() ? acc + b.bias(e) : acc;
    }
  }
  return Status::ok;
}

}  // namespace cpu
MOEKIT_NAMESPACE_END
