#pragma once
// Checked mode (ALGORITHMS.md §0): the host reference, the CPU executor and the tools refuse
// NaN and +inf logits, and rows whose every logit is -inf, before writing any output. -inf
// alone is legal: it masks that expert.

#include <cmath>
#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

template <class T>
[[nodiscard]] Status check_logits_finite(HostTensor<T const, 2> logits, char const* what = "router logits") {
  for (std::int64_t t = 0; t < logits.extent(0); ++t) {
    bool any_unmasked = logits.extent(1) == 0;
    for (std::int64_t e = 0; e < logits.extent(1); ++e) {
      float const v = static_cast<float>(logits(t, e));
      if (std::isnan(v) || v == INFINITY) {
        return error(Status::invalid_argument, "%s: non-finite value %g at token %lld, expert %lld", what, double(v),
                     static_cast<long long>(t), static_cast<long long>(e));
      }
      any_unmasked = any_unmasked || v != -INFINITY;
    }
    if (!any_unmasked) {
      return error(Status::invalid_argument, "%s: all experts masked (-inf) at token %lld", what,
                   static_cast<long long>(t));
    }
  }
  return Status::ok;
}

}  // namespace routing
MOEKIT_NAMESPACE_END
