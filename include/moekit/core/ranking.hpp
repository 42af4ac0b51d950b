#pragma once
// How every router and every loss's counting set ranks candidates (ALGORITHMS.md §0): larger key first; NaN below every
// number, -inf included; equal keys (and NaN among NaN) go to the lower index. `top_k` keeps
// the k best of n candidates in that order with an insertion pass: no allocation, no sort,
// the same code on host and device, O(n·k) with k small.

#include "moekit/config.hpp"

MOEKIT_NAMESPACE_BEGIN

// True when (a, index_a) is ranked before (b, index_b).
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool ranks_before(float a, int index_a, float b, int index_b) noexcept {
  // Ordered comparisons first: they settle almost every call and are false for NaN.
  if (a > b) {
    return true;
  }
  if (a < b) {
    return false;
  }
  bool const a_nan = a != a;
  bool const b_nan = b != b;
  if (a_nan != b_nan) {
    return b_nan;  // a number ranks before NaN
  }
  return index_a < index_b;  // equal keys, or NaN and NaN
}

// The k best of n candidates, best first. Candidate c has key `key(c)` and tie index `index(c)`
// (for experts both are usually the expert id). Writes the chosen candidates' indices (c, not
// index(c)) to `chosen[0..k)`. Requires 0 <= k <= n and k <= MaxK.
template <int MaxK, class Key, class Index>
MOEKIT_HOST_DEVICE void top_k(int n, int k, Key const& key, Index const& index, int* chosen) noexcept {
  static_assert(MaxK >= 1, "top_k needs MaxK >= 1");
  // Value-initialised only to keep GCC's maybe-uninitialized analysis quiet (k <= MaxK entries
  // are always written before they are read).
  float best_key[MaxK] = {};
  int best_index[MaxK] = {};
  int best[MaxK] = {};
  int count = 0;
  for (int c = 0; c < n; ++c) {
    float const v = key(c);
    int const i = index(c);
    if (count == k) {
      // Most candidates lose to the current k-th: one ordered comparison (false for NaN, which
      // then takes the exact rule).
      if (k == 0 || v < best_key[k - 1] || !ranks_before(v, i, best_key[k - 1], best_index[k - 1])) {
        continue;
      }
    }
    int pos = count < k ? count++ : k - 1;
    while (pos > 0 && ranks_before(v, i, best_key[pos - 1], best_index[pos - 1])) {
      best_key[pos] = best_key[pos - 1];
      best_index[pos] = best_index[pos - 1];
      best[pos] = best[pos - 1];
      --pos;
    }
    best_key[pos] = v;
    best_index[pos] = i;
    best[pos] = c;
  }
  for (int j = 0; j < count; ++j) {
    chosen[j] = best[j];
  }
}

// The common case: candidates are experts 0..n-1 ranked by keys[e].
template <int MaxK>
MOEKIT_HOST_DEVICE void top_k(float const* keys, int n, int k, int* chosen) noexcept {
  top_k<MaxK>(
      n, k, [keys](int c) { return keys[c]; }, [](int c) { return c; }, chosen);
}

MOEKIT_NAMESPACE_END
