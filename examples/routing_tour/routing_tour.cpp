// moekit routing tour: one batch of router logits through the production routers (Mixtral,
// Qwen2-MoE, gpt-oss, Llama-4, DeepSeek-V3 with its selection bias) on the CPU path and on the
// device kernel (run here by the CUDA emulator under a shuffled schedule), then the dispatch
// plan a grouped GEMM would consume, with capacity drops and Diagnostics.

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "moekit/cpu/plan.hpp"
#include "moekit/cpu/route.hpp"
#include "moekit/emu/launch_config.hpp"
#include "moekit/routing/grouped_top_k.hpp"
#include "moekit/routing/route.hpp"
#include "moekit/routing/top_k.hpp"

using namespace moekit;

namespace {

constexpr std::int64_t tokens = 8;
constexpr int experts = 16;

struct Routed {
  std::vector<int> ids;
  std::vector<float> weights;
};

template <class R>
bool route_both_ways(char const* name, R const& router, std::vector<float> const& logits, Routed& out) {
  int const k = router.slots();
  out.ids.assign(tokens * k, 0);
  out.weights.assign(tokens * k, 0.f);
  Routed device{std::vector<int>(tokens * k), std::vector<float>(tokens * k)};
  Status s = cpu::route(router, {HostTensor<float const, 2>::row_major(logits.data(), {tokens, experts}),
                                 HostTensor<int, 2>::row_major(out.ids.data(), {tokens, k}),
                                 HostTensor<float, 2>::row_major(out.weights.data(), {tokens, k})});
  if (!s) {
    std::fprintf(stderr, "%s: cpu::route: %s\n", name, last_error_message());
    return false;
  }
  emu::LaunchOptions options;
  options.schedule_seed = 2026;
  options.racecheck = true;
  emu::ScopedLaunchOptions const guard(options);
  Diagnostics diagnostics{};
  s = routing::route(router,
                     {DeviceTensor<float const, 2>::row_major(logits.data(), {tokens, experts}),
                      DeviceTensor<int, 2>::row_major(device.ids.data(), {tokens, k}),
                      DeviceTensor<float, 2>::row_major(device.weights.data(), {tokens, k})},
                     &diagnostics, nullptr);
  if (!s) {
    std::fprintf(stderr, "%s: routing::route: %s\n", name, last_error_message());
    return false;
  }
  bool const same = device.ids == out.ids && device.weights == out.weights;
  std::printf("%-12s", name);
  for (std::int64_t t = 0; t < 4; ++t) {
    std::printf("  t%lld:", static_cast<long long>(t));
    for (int j = 0; j < k; ++j) {
      std::printf(" %d(%.3f)", out.ids[t * k + j], double(out.weights[t * k + j]));
    }
  }
  std::printf("  ...  device %s\n", same ? "= CPU bit for bit" : "DIFFERS from CPU");
  return same;
}

}  // namespace

int main() {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> logits(tokens * experts);
  for (float& z : logits) {
    z = normal(rng);
  }
  for (int e = 0; e < experts; ++e) {
    logits[5 * experts + e] = logits[6 * experts + e] = 0.25f;  // tokens 5 and 6: all experts tie
  }
  std::vector<float> bias(experts);
  for (int e = 0; e < experts; ++e) {
    bias[e] = 0.02f * float(e % 5) - 0.04f;  // DeepSeek-V3's e_score_correction_bias
  }

  std::printf("moekit routing tour: %lld tokens, %d experts (first 4 tokens shown: expert(weight))\n\n",
              static_cast<long long>(tokens), experts);
  Routed mixtral, qwen, gpt_oss, llama4, v3;
  bool ok = route_both_ways("mixtral", routing::mixtral_router(experts, 2), logits, mixtral);
  ok &= route_both_ways("qwen2_moe", routing::qwen_moe_router(experts, 4, false), logits, qwen);
  ok &= route_both_ways("gpt_oss", routing::gpt_oss_router(experts, 4), logits, gpt_oss);
  ok &= route_both_ways("llama4", routing::llama4_router(experts), logits, llama4);
  ok &= route_both_ways("deepseek_v3", routing::deepseek_v3_router(experts, 4, 4, 2, 2.5f, bias.data()), logits, v3);
  std::printf("\ntied tokens 5 and 6 go to the lowest expert ids: mixtral t5 -> %d, %d\n", mixtral.ids[10],
              mixtral.ids[11]);

  // The dispatch plan of DeepSeek-V3's routing: capacity factor 1.0, tiles of 4 rows.
  plan::PlanProblem p{.tokens = tokens, .slots = 4, .experts = experts, .tile_rows = 4};
  if (!plan::capacity_from_factor(1.0, tokens, 4, experts, p.capacity)) {
    return 1;
  }
  std::vector<std::int64_t> counts(experts), offsets(experts + 1), rows(1), tiles(1);
  std::vector<std::int64_t> row_assignment(plan::max_rows(p)), assignment_row(plan::assignments(p)),
      tile_row(plan::max_tiles(p));
  std::vector<int> tile_expert(plan::max_tiles(p));
  Diagnostics d{};
  if (Status s = cpu::build_plan(p, HostTensor<int const, 2>::row_major(v3.ids.data(), {tokens, 4}),
                                 {counts.data(), offsets.data(), row_assignment.data(), assignment_row.data(),
                                  tile_expert.data(), tile_row.data(), rows.data(), tiles.data()},
                                 d);
      !s) {
    std::fprintf(stderr, "plan: %s\n", last_error_message());
    return 1;
  }
  std::printf("\ndispatch plan (DeepSeek-V3 routing, capacity %lld per expert, tiles of 4 rows):\n",
              static_cast<long long>(p.capacity));
  for (int e = 0; e < experts; ++e) {
    if (counts[e] == 0) {
      continue;
    }
    std::printf("  expert %2d: %lld assignments, rows [%lld, %lld):", e, static_cast<long long>(counts[e]),
                static_cast<long long>(offsets[e]), static_cast<long long>(offsets[e + 1]));
    for (std::int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
      std::int64_t const a = row_assignment[r];
      std::printf(a < 0 ? " pad" : " t%lld/s%lld", static_cast<long long>(a / 4), static_cast<long long>(a % 4));
    }
    std::printf("\n");
  }
  std::printf("  %lld rows in %lld tiles; dropped %llu, empty experts %llu, max load %llu\n",
              static_cast<long long>(rows[0]), static_cast<long long>(tiles[0]), d.dropped_assignments, d.empty_experts,
              d.max_load);

  // Checked mode: a NaN logit is refused on the CPU path with a message; the device counts it.
  logits[3 * experts + 7] = std::numeric_limits<float>::quiet_NaN();
  Routed refused;
  std::printf("\na NaN logit at token 3, expert 7: ");
  std::vector<int> ids(tokens * 2, -1);
  std::vector<float> w(tokens * 2);
  Status const s = cpu::route(routing::mixtral_router(experts, 2),
                              {HostTensor<float const, 2>::row_major(logits.data(), {tokens, experts}),
                               HostTensor<int, 2>::row_major(ids.data(), {tokens, 2}),
                               HostTensor<float, 2>::row_major(w.data(), {tokens, 2})});
  std::printf("cpu::route -> %s (%s), outputs untouched: %s\n", to_string(s), last_error_message(),
              ids[0] == -1 ? "yes" : "no");
  return ok && s == Status::invalid_argument ? 0 : 1;
}
