#pragma once
// The oracle for the gate projection (ALGORITHMS.md §1.0): logits[t, e] = sum_h x[t, h]·Wg[e, h]
// + b[e] accumulated in double (every product of two fp32/bf16 values is exact in double), then
// rounded once to fp32. Written independently of the kernel and the CPU path: plain loops, its own
// non-finite checks. Checked mode: NaN or infinite inputs, or a logit whose double value rounds
// beyond the fp32 range, return Status::invalid_argument before anything is written.

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <vector>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/routing/gate_projection_buffers.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace host {

template <routing::GateElement X, routing::GateElement W>
[[nodiscard]] Status reference_gate_projection(routing::GateProjectionBuffers<X, W, MemorySpace::host> const& b) {
  if (Status s = routing::check_gate_projection_buffers(b); !s) {
    return s;
  }
  std::int64_t const tokens = b.hidden.extent(0);
  std::int64_t const hidden = b.hidden.extent(1);
  std::int64_t const experts = b.weight.extent(0);
  auto value = [](auto v) { return static_cast<double>(static_cast<float>(v)); };
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t h = 0; h < hidden; ++h) {
      if (!std::isfinite(value(b.hidden(t, h)))) {
        return error(Status::invalid_argument, "gate projection reference: hidden state at token %lld, h %lld is %g",
                     static_cast<long long>(t), static_cast<long long>(h), value(b.hidden(t, h)));
      }
    }
  }
  for (std::int64_t e = 0; e < experts; ++e) {
    for (std::int64_t h = 0; h < hidden; ++h) {
      if (!std::isfinite(value(b.weight(e, h)))) {
        return error(Status::invalid_argument, "gate projection reference: gate weight at expert %lld, h %lld is %g",
                     static_cast<long long>(e), static_cast<long long>(h), value(b.weight(e, h)));
      }
    }
    if (b.has_bias() && !std::isfinite(double(b.bias(e)))) {
      return error(Status::invalid_argument, "gate projection reference: gate bias at expert %lld is %g",
                   static_cast<long long>(e), double(b.bias(e)));
    }
  }
  std::vector<double> z(static_cast<std::size_t>(tokens * experts));
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t e = 0; e < experts; ++e) {
      double sum = 0;
      for (std::int64_t h = 0; h < hidden; ++h) {
        sum += value(b.hidden(t, h)) * value(b.weight(e, h));
      }
      if (b.has_bias()) {
        sum += double(b.bias(e));
      }
      if (std::fabs(static_cast<float>(sum)) > FLT_MAX) {
        return error(Status::invalid_argument,
                     "gate projection reference: logit %g at token %lld, expert %lld overflows fp32", sum,
                     static_cast<long long>(t), static_cast<long long>(e));
      }
      z[static_cast<std::size_t>(t * experts + e)] = sum;
    }
  }
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t e = 0; e < experts; ++e) {
      b.logits(t, e) = static_cast<float>(z[static_cast<std::size_t>(t * experts + e)]);
    }
  }
  return Status::ok;
}

}  // namespace host
MOEKIT_NAMESPACE_END
