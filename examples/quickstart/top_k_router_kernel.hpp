#pragma once
// The quickstart's kernel: softmax top-k routing, one warp per token (the Mixtral router).
// Lane e holds expert e's logit; the warp finds the maximum and the softmax denominator with
// butterfly shuffles, then picks the k largest probabilities (ties to the lower expert index)
// and renormalises them to sum to one. NaN logits never win: they count as -inf.

#include <cmath>
#include <cstdint>
#include <limits>

#include "moekit/arch/arch.hpp"

namespace quickstart {

inline constexpr int max_experts = 32;  // one lane per expert
inline constexpr int warps_per_block = 4;

struct Candidate {
  float value;
  int index;
};

// The better of two candidates: larger value, then lower index.
MOEKIT_HOST_DEVICE inline Candidate better(Candidate a, Candidate b) {
  return (b.value > a.value || (b.value == a.value && b.index < a.index)) ? b : a;
}

template <int K>
MOEKIT_KERNEL void top_k_router_kernel(float const* logits, std::int64_t tokens, int experts, int* expert_ids,
                                       float* weights) {
  namespace arch = moekit::arch;
  unsigned const lane = arch::lane_id();
  std::int64_t const token = std::int64_t{arch::block_rank()} * warps_per_block + arch::warp_id();
  if (token >= tokens) {
    return;  // whole warps leave together: no collective below waits for them
  }
  float const minus_inf = -std::numeric_limits<float>::infinity();
  float logit = static_cast<int>(lane) < experts ? logits[token * experts + lane] : minus_inf;
  if (logit != logit) {
    logit = minus_inf;
  }
  float max_logit = logit;
  for (int offset = 16; offset > 0; offset /= 2) {
    max_logit = std::fmax(max_logit, arch::shfl_xor_sync(arch::full_warp_mask, max_logit, offset));
  }
  float const p = logit == minus_inf ? 0.f : std::exp(logit - max_logit);
  float sum = p;
  for (int offset = 16; offset > 0; offset /= 2) {
    sum += arch::shfl_xor_sync(arch::full_warp_mask, sum, offset);
  }

  Candidate mine{static_cast<int>(lane) < experts ? p / sum : -1.f, static_cast<int>(lane)};
  float chosen_sum = 0.f;
  float chosen[K];
  int chosen_id[K];
  for (int slot = 0; slot < K; ++slot) {
    Candidate best = mine;
    for (int offset = 16; offset > 0; offset /= 2) {
      Candidate const other{arch::shfl_xor_sync(arch::full_warp_mask, best.value, offset),
                            arch::shfl_xor_sync(arch::full_warp_mask, best.index, offset)};
      best = better(best, other);
    }
    chosen[slot] = best.value;
    chosen_id[slot] = best.index;
    chosen_sum += best.value;
    if (static_cast<int>(lane) == best.index) {
      mine.value = -2.f;  // taken
    }
  }
  if (lane == 0) {
    for (int slot = 0; slot < K; ++slot) {
      expert_ids[token * K + slot] = chosen_id[slot];
      weights[token * K + slot] = chosen[slot] / chosen_sum;
    }
  }
}

}  // namespace quickstart
