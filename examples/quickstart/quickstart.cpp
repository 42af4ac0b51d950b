// moekit quickstart: route a handful of tokens to 8 experts with a softmax top-2 router,
// written once as a CUDA kernel and run here on the CPU by moekit's emulator, with racecheck
// on. The same kernel compiles with nvcc for sm_80 and sm_90a.

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "top_k_router_kernel.hpp"

#include "moekit/emu/emu.hpp"

int main() {
  namespace emu = moekit::emu;
  constexpr int k = 2;
  int const experts = 8;
  std::int64_t const tokens = 6;

  std::mt19937 rng(2026);
  std::normal_distribution<float> dist(0.f, 1.5f);
  std::vector<float> logits(static_cast<std::size_t>(tokens * experts));
  for (auto& x : logits) {
    x = dist(rng);
  }
  logits[3 * experts + 5] = NAN;  // a NaN logit is never selected

  std::vector<int> ids(static_cast<std::size_t>(tokens * k), -1);
  std::vector<float> weights(ids.size(), 0.f);
  auto const blocks = static_cast<unsigned>((tokens + quickstart::warps_per_block - 1) / quickstart::warps_per_block);
  emu::LaunchOptions options;
  options.racecheck = true;
  options.schedule_seed = 1;  // a shuffled schedule: the result must not depend on it
  emu::LaunchResult const r =
      emu::launch({.grid = blocks, .block = 32 * quickstart::warps_per_block}, options,
                  quickstart::top_k_router_kernel<k>, logits.data(), tokens, experts, ids.data(), weights.data());
  if (!r.ok()) {
    std::fprintf(stderr, "emulated launch failed: %s\n", r.summary().c_str());
    return 1;
  }

  std::printf("moekit quickstart: softmax top-%d routing of %lld tokens over %d experts\n", k,
              static_cast<long long>(tokens), experts);
  std::printf("kernel ran under the CUDA emulator (%u blocks x %d threads, %llu fiber switches, racecheck clean)\n\n",
              blocks, 32 * quickstart::warps_per_block, static_cast<unsigned long long>(r.context_switches));
  int mismatches = 0;
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::printf("token %lld  logits [", static_cast<long long>(t));
    for (int e = 0; e < experts; ++e) {
      std::printf("%s%6.2f", e ? " " : "", static_cast<double>(logits[static_cast<std::size_t>(t * experts + e)]));
    }
    std::printf("]  ->");
    // Host check: the two largest finite logits, ties to the lower index.
    int best[2] = {-1, -1};
    for (int e = 0; e < experts; ++e) {
      float const v = logits[static_cast<std::size_t>(t * experts + e)];
      if (std::isnan(v)) {
        continue;
      }
      for (int s = 0; s < 2; ++s) {
        if (best[s] < 0 || v > logits[static_cast<std::size_t>(t * experts + best[s])]) {
          if (s == 0) {
            best[1] = best[0];
          }
          best[s] = e;
          break;
        }
      }
    }
    for (int s = 0; s < k; ++s) {
      auto const i = static_cast<std::size_t>(t * k + s);
      std::printf("  expert %d (w %.3f)", ids[i], static_cast<double>(weights[i]));
      mismatches += ids[i] != best[s];
    }
    std::printf("\n");
  }
  std::printf("\n%s\n",
              mismatches == 0 ? "all selections match the host reference" : "MISMATCH against the host reference");
  return mismatches == 0 ? 0 : 1;
}
