// examples/custom_router: a router defined in user code (temperature_router.hpp) runs through
// moekit's CPU path, its device kernel (here under the emulator) and its dispatch plan,
// without touching library code. The same header compiles with nvcc (custom_router.cu).

#include <cstdio>
#include <random>
#include <vector>

#include "temperature_router.hpp"

#include "moekit/cpu/plan.hpp"
#include "moekit/cpu/route.hpp"
#include "moekit/routing/route.hpp"

int main() {
  using namespace moekit;
  constexpr std::int64_t tokens = 6;
  constexpr int experts = 5;
  my_project::TemperatureTopK<2> const router{.experts = experts, .k = 2, .temperature = 0.5f};

  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> logits(tokens * experts);
  for (float& z : logits) {
    z = normal(rng);
  }
  std::vector<int> ids(tokens * 2), device_ids(tokens * 2);
  std::vector<float> weights(tokens * 2), device_weights(tokens * 2);

  // The CPU path (checked: non-finite logits would be refused with a message).
  routing::RouteBuffers<MemorySpace::host> const host{
      HostTensor<float const, 2>::row_major(logits.data(), {tokens, experts}),
      HostTensor<int, 2>::row_major(ids.data(), {tokens, 2}),
      HostTensor<float, 2>::row_major(weights.data(), {tokens, 2})};
  if (Status s = cpu::route(router, host); !s) {
    std::fprintf(stderr, "cpu::route: %s: %s\n", to_string(s), last_error_message());
    return 1;
  }
  // The device kernel (a real GPU under nvcc; the emulator here).
  Diagnostics diagnostics{};
  routing::RouteBuffers<MemorySpace::device> const device{
      DeviceTensor<float const, 2>::row_major(logits.data(), {tokens, experts}),
      DeviceTensor<int, 2>::row_major(device_ids.data(), {tokens, 2}),
      DeviceTensor<float, 2>::row_major(device_weights.data(), {tokens, 2})};
  if (Status s = routing::route(router, device, &diagnostics, nullptr); !s) {
    std::fprintf(stderr, "routing::route: %s: %s\n", to_string(s), last_error_message());
    return 1;
  }
  if (ids != device_ids || weights != device_weights) {
    std::fprintf(stderr, "CPU and device routing differ\n");
    return 1;
  }
  // The dispatch plan groups the assignments by expert, in token order.
  plan::PlanProblem const p{.tokens = tokens, .slots = 2, .experts = experts, .tile_rows = 4};
  std::vector<std::int64_t> counts(experts), offsets(experts + 1), rows(1), tiles(1);
  std::vector<std::int64_t> row_assignment(plan::max_rows(p)), assignment_row(plan::assignments(p)),
      tile_row(plan::max_tiles(p));
  std::vector<int> tile_expert(plan::max_tiles(p));
  plan::DispatchPlan<MemorySpace::host> const out{counts.data(),         offsets.data(),     row_assignment.data(),
                                                  assignment_row.data(), tile_expert.data(), tile_row.data(),
                                                  rows.data(),           tiles.data()};
  Diagnostics plan_diagnostics{};
  if (Status s =
          cpu::build_plan(p, HostTensor<int const, 2>::row_major(ids.data(), {tokens, 2}), out, plan_diagnostics);
      !s) {
    std::fprintf(stderr, "cpu::build_plan: %s: %s\n", to_string(s), last_error_message());
    return 1;
  }
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::printf("token %lld -> experts %d, %d  weights %.4f, %.4f\n", static_cast<long long>(t), ids[t * 2],
                ids[t * 2 + 1], double(weights[t * 2]), double(weights[t * 2 + 1]));
  }
  for (int e = 0; e < experts; ++e) {
    std::printf("expert %d: %lld assignments, rows [%lld, %lld)\n", e, static_cast<long long>(counts[e]),
                static_cast<long long>(offsets[e]), static_cast<long long>(offsets[e + 1]));
  }
  std::printf("%lld rows in %lld tiles of 4\n", static_cast<long long>(rows[0]), static_cast<long long>(tiles[0]));
  return 0;
}
