#pragma once
// What the per-token losses of ALGORITHMS.md §3 (DynMoLE, LoRA-Mixer) share, on host and
// device alike: ranking on the logits (§0: larger first, NaN last, ties to the lower index),
// the fp32 softmax of one token, the "ranked at or before" membership test that describes a
// prefix of the ranking with one expert index, and the checks every loss entry point applies
// to its buffers. balancing/ may include core/ only, so the ranking rule is restated here
// rather than taken from routing/ranking.hpp (the two must agree; the tests check both).

#include <cmath>
#include <cstdint>

#include "moekit/balancing/loss_buffers.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/ranking.hpp"
#include "moekit/core/softmax.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {
namespace detail::token_loss {

// The ranking rule of §0 (core/ranking.hpp).
using moekit::ranks_before;

// The expert ranked right after `prev` (prev < 0: the first), or -1 when none is left. O(n).
[[nodiscard]] MOEKIT_HOST_DEVICE inline int next_ranked(float const* z, int n, int prev) noexcept {
  float const zp = prev >= 0 ? z[prev] : 0.f;
  int best = -1;
  float zb = 0.f;
  for (int i = 0; i < n; ++i) {
    float const zi = z[i];
    if (prev >= 0 && !ranks_before(zp, prev, zi, i)) {
      continue;
    }
    if (best < 0 || ranks_before(zi, i, zb, best)) {
      best = i;
      zb = zi;
    }
  }
  return best;
}

// Expert `e` is in the prefix of the ranking that ends at `last` (last < 0: every expert).
// An expert at -inf is masked (§0) and never in the prefix.
[[nodiscard]] MOEKIT_HOST_DEVICE inline bool in_prefix(float const* z, int last, int e) noexcept {
  float const ze = z[e];
  if (ze == -INFINITY) {
    return false;
  }
  return last < 0 || e == last || ranks_before(ze, e, z[last], last);
}

// The k-th ranked expert (k >= 1): the last of the top-k. O(n k).
[[nodiscard]] MOEKIT_HOST_DEVICE inline int kth_ranked(float const* z, int n, int k) noexcept {
  int last = -1;
  for (int r = 0; r < k; ++r) {
    int const next = next_ranked(z, n, last);
    if (next < 0) {
      break;
    }
    last = next;
  }
  return last;
}

// softmax(z)_e = exp(z_e - max) / denominator, the denominator summed in ascending e: the same
// bits as routing::softmax_entry, so a router and a loss see the same probabilities.
struct Softmax {
  float max;
  float denominator;
  [[nodiscard]] MOEKIT_HOST_DEVICE float p(float z) const noexcept { return softmax_entry(z, {max, denominator}); }
};

[[nodiscard]] MOEKIT_HOST_DEVICE inline Softmax softmax_of(float const* z, int n) noexcept {
  SoftmaxNormaliser const s = softmax_normaliser(z, n);
  return {s.max, s.denominator};
}

// What the per-token pass keeps for the gradient pass: the softmax, a per-token scalar (an
// entropy) and the last expert of the kept prefix (-1: all experts).
struct TokenStats {
  float max;
  float denominator;
  float scalar;
  int last;
};

// True for a row the host would refuse: NaN or +inf, or every logit -inf.
[[nodiscard]] MOEKIT_HOST_DEVICE inline bool nonfinite_row(float const* z, int n) noexcept {
  bool bad = false;
  bool any = false;
  for (int e = 0; e < n; ++e) {
    float const v = z[e];
    bad = bad || v != v || v == INFINITY;
    any = any || v != -INFINITY;
  }
  return bad || !any;
}

template <class View>
Status check_matrix(View const& v, char const* what, char const* name, std::int64_t rows, std::int64_t cols) {
  if (!v.validate()) {
    return error(Status::invalid_argument, "%s: %s: null pointer or negative extent/stride", what, name);
  }
  if (v.extent(0) != rows || v.extent(1) != cols) {
    return error(Status::invalid_argument, "%s: %s: expected [%lld, %lld], got [%lld, %lld]", what, name,
                 static_cast<long long>(rows), static_cast<long long>(cols), static_cast<long long>(v.extent(0)),
                 static_cast<long long>(v.extent(1)));
  }
  if (rows > 0 && cols > 1 && v.stride(1) != 1) {
    return error(Status::invalid_argument, "%s: %s: the last dimension must be contiguous (stride %lld)", what, name,
                 static_cast<long long>(v.stride(1)));
  }
  if (rows > 1 && v.stride(0) < cols) {
    return error(Status::invalid_argument, "%s: %s: rows overlap (row stride %lld < %lld columns)", what, name,
                 static_cast<long long>(v.stride(0)), static_cast<long long>(cols));
  }
  if (!v.is_aligned(alignof(typename View::element_type))) {
    return error(Status::misaligned, "%s: %s: pointer not aligned to %zu bytes", what, name,
                 alignof(typename View::element_type));
  }
  return Status::ok;
}

// The buffer checks shared by the host and device entry points of a loss over logits [T, E]:
// the value pointer is required, the gradient (when its data is not null) must be [T, E] with
// contiguous rows, and counts / f / P are optional.
template <class T>
[[nodiscard]] bool aligned_or_null(T const* p) noexcept {
  return reinterpret_cast<std::uintptr_t>(p) % alignof(T) == 0;
}

template <MemorySpace Space>
[[nodiscard]] Status check_loss_buffers(LossInputs<Space> const& in, LossOutputs<Space> const& out, char const* what) {
  if (in.logits.extent(0) < 0 || in.logits.extent(1) < 1 || in.logits.extent(1) > (1 << 24)) {
    return error(Status::invalid_argument, "%s: logits must be [T >= 0, 1 <= E <= 2^24] (got [%lld, %lld])", what,
                 static_cast<long long>(in.logits.extent(0)), static_cast<long long>(in.logits.extent(1)));
  }
  std::int64_t const tokens = in.logits.extent(0);
  std::int64_t const experts = in.logits.extent(1);
  if (Status s = check_matrix(in.logits, what, "logits", tokens, experts); !s) {
    return s;
  }
  if (in.valid != nullptr && in.valid_entries >= 0 && in.valid_entries != tokens) {
    return error(Status::invalid_argument, "%s: valid mask has %lld entries, logits have %lld tokens", what,
                 static_cast<long long>(in.valid_entries), static_cast<long long>(tokens));
  }
  if (in.valid == nullptr && in.valid_entries > 0) {
    return error(Status::invalid_argument, "%s: valid mask: %lld entries declared but the pointer is null", what,
                 static_cast<long long>(in.valid_entries));
  }
  if (out.value == nullptr) {
    return error(Status::invalid_argument, "%s: the value pointer is null", what);
  }
  if (!aligned_or_null(out.value) || !aligned_or_null(out.counts) || !aligned_or_null(out.f) ||
      !aligned_or_null(out.P)) {
    return error(Status::misaligned, "%s: value, counts, f or P pointer is misaligned", what);
  }
  if (out.grad.data != nullptr) {
    if (Status s = check_matrix(out.grad, what, "gradient", tokens, experts); !s) {
      return s;
    }
  }
  return Status::ok;
}

// Checked mode (§0) over the rows that count (valid[t] != 0, or all when valid is null).
[[nodiscard]] inline Status check_valid_logits(HostTensor<float const, 2> logits, std::uint8_t const* valid,
                                               char const* what) {
  for (std::int64_t t = 0; t < logits.extent(0); ++t) {
    if (valid != nullptr && valid[t] == 0) {
      continue;
    }
    bool any = false;
    for (std::int64_t e = 0; e < logits.extent(1); ++e) {
      float const v = logits(t, e);
      if (std::isnan(v) || v == INFINITY) {
        return error(Status::invalid_argument, "%s: router logits: non-finite value %g at token %lld, expert %lld",
                     what, double(v), static_cast<long long>(t), static_cast<long long>(e));
      }
      any = any || v != -INFINITY;
    }
    if (!any) {
      return error(Status::invalid_argument, "%s: router logits: all experts masked (-inf) at token %lld", what,
                   static_cast<long long>(t));
    }
  }
  return Status::ok;
}

}  // namespace detail::token_loss
}  // namespace balancing
MOEKIT_NAMESPACE_END
