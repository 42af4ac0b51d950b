#pragma once
// Checked mode (ALGORITHMS.md §0): the host reference, the CPU executor and the tools refuse
// NaN and +inf logits, and rows whose every logit is -inf, before writing any output. -inf
// alone is legal: it masks that expert.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

template <class T>
[[nodiscard]] Status check_logits_finite(HostTensor<T const, 2> logits, char const* what = "router logits") {
  for (std::int64_t t = 0; t < logits.extent(0); ++t) {
    T const* row = logits.pointer(t, 0);
    std::int64_t const stride = logits.extent(1) > 1 ? logits.stride(1) : 1;
    // A branch-free pass first (it vectorises on contiguous fp32 rows); the slow loop below only
    // names the culprit. Bit tests: NaN and +inf have an all-ones exponent, -inf is 0xff800000.
    bool bad = false;
    bool any_unmasked = logits.extent(1) == 0;
    if constexpr (std::is_same_v<std::remove_cv_t<T>, float>) {
      if (stride == 1) {
        unsigned bad_bits = 0, unmasked_bits = 0;
        for (std::int64_t e = 0; e < logits.extent(1); ++e) {
          std::uint32_t u;
          std::memcpy(&u, row + e, sizeof u);
          bad_bits |= unsigned((u & 0x7f800000u) == 0x7f800000u) & unsigned(u != 0xff800000u);
          unmasked_bits |= unsigned(u != 0xff800000u);
        }
        bad = bad_bits != 0;
        any_unmasked = any_unmasked || unmasked_bits != 0;
      }
    }
    if (!std::is_same_v<std::remove_cv_t<T>, float> || stride != 1) {
      for (std::int64_t e = 0; e < logits.extent(1); ++e) {
        float const v = static_cast<float>(row[e * stride]);
        bad |= (v != v) | (v == INFINITY);
        any_unmasked |= v != -INFINITY;
      }
    }
    if (!bad && any_unmasked) {
      continue;
    }
    for (std::int64_t e = 0; e < logits.extent(1); ++e) {
      float const v = static_cast<float>(row[e * stride]);
      if (std::isnan(v) || v == INFINITY) {
        return error(Status::invalid_argument, "%s: non-finite value %g at token %lld, expert %lld", what, double(v),
                     static_cast<long long>(t), static_cast<long long>(e));
      }
    }
    return error(Status::invalid_argument, "%s: all experts masked (-inf) at token %lld", what,
                 static_cast<long long>(t));
  }
  return Status::ok;
}

}  // namespace routing
MOEKIT_NAMESPACE_END
