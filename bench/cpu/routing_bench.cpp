// Routing + dispatch-plan throughput on the CPU path, per production router, on the inputs
// bench/compare_torch_routing.py rebuilds bit for bit (bench_inputs.hpp): that script times the
// same semantics in PyTorch in the same run and prints the ratios.
//
//   route/<router>/<T>        cpu::route (checked mode: includes the non-finite scan)
//   route_plan/<router>/<T>   cpu::route + cpu::build_plan (tile of 16 rows)
// Counters: tokens/s, and checksums of the outputs (sum of ids, sum of weights in slot order)
// that the comparison script checks against PyTorch's.

#include <benchmark/benchmark.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bench_inputs.hpp"

#include "moekit/cpu/plan.hpp"
#include "moekit/cpu/route.hpp"
#include "moekit/routing/dynmole.hpp"
#include "moekit/routing/grouped_top_k.hpp"
#include "moekit/routing/null_experts.hpp"
#include "moekit/routing/top_any.hpp"
#include "moekit/routing/top_k.hpp"

namespace {

using namespace moekit;

std::vector<float> const& v3_bias() {
  static std::vector<float> const b = moekit_bench::hashed_bias(256);
  return b;
}

struct Buffers {
  std::vector<float> logits;
  std::vector<int> ids;
  std::vector<float> weights;
  std::vector<std::int64_t> counts, offsets, rows{0}, tiles{0};
  std::vector<std::int64_t> row_assignment, assignment_row, tile_row;
  std::vector<int> tile_expert;
  plan::PlanProblem problem;

  Buffers(std::int64_t tokens, int experts, int k)
      : logits(moekit_bench::hashed_logits(tokens, experts, 1)), ids(static_cast<std::size_t>(tokens * k)),
        weights(ids.size()), counts(static_cast<std::size_t>(experts)),
        offsets(static_cast<std::size_t>(experts) + 1), problem{.tokens = tokens,
                                                                .slots = k,
                                                                .experts = experts,
                                                                .tile_rows = 16} {
    row_assignment.resize(static_cast<std::size_t>(plan::max_rows(problem)));
    assignment_row.resize(static_cast<std::size_t>(plan::assignments(problem)));
    tile_row.resize(static_cast<std::size_t>(plan::max_tiles(problem)));
    tile_expert.resize(tile_row.size());
  }
  routing::RouteBuffers<MemorySpace::host> route_buffers() {
    int const experts = problem.experts;
    return {HostTensor<float const, 2>::row_major(logits.data(), {problem.tokens, experts}),
            HostTensor<int, 2>::row_major(ids.data(), {problem.tokens, problem.slots}),
            HostTensor<float, 2>::row_major(weights.data(), {problem.tokens, problem.slots})};
  }
  plan::DispatchPlan<MemorySpace::host> plan_buffers() {
    return {counts.data(),      offsets.data(),  row_assignment.data(), assignment_row.data(),
            tile_expert.data(), tile_row.data(), rows.data(),           tiles.data()};
  }
};

template <class R>
void run(benchmark::State& state, R const& router, bool with_plan) {
  std::int64_t const tokens = state.range(0);
  Buffers b(tokens, router.num_experts(), router.slots());
  auto const route = b.route_buffers();
  auto const out = b.plan_buffers();
  auto const ids = HostTensor<int const, 2>::row_major(b.ids.data(), {tokens, router.slots()});
  Diagnostics d{};
  for (auto _ : state) {
    if (!cpu::route(router, route)) {
      state.SkipWithError(last_error_message());
      return;
    }
    if (with_plan && !cpu::build_plan(b.problem, ids, out, d)) {
      state.SkipWithError(last_error_message());
      return;
    }
    benchmark::DoNotOptimize(b.weights.data());
    benchmark::ClobberMemory();
  }
  double id_sum = 0, weight_sum = 0;
  for (std::size_t i = 0; i < b.ids.size(); ++i) {
    id_sum += b.ids[i];
    weight_sum += b.weights[i];
  }
  state.SetItemsProcessed(state.iterations() * tokens);
  state.counters["ids_checksum"] = id_sum;
  state.counters["weights_checksum"] = weight_sum;
}

void register_router(std::string const& name, auto const& router) {
  for (bool with_plan : {false, true}) {
    auto* b = benchmark::RegisterBenchmark((std::string(with_plan ? "route_plan/" : "route/") + name).c_str(),
                                           [router, with_plan](benchmark::State& s) { run(s, router, with_plan); });
    for (std::int64_t t : {1, 16, 128, 512, 2048, 8192}) {
      b->Arg(t);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  // The router set and shapes of bench/compare_torch_routing.py (keep the two in step).
  register_router("mixtral", routing::mixtral_router(8, 2));
  register_router("qwen3_moe", routing::qwen_moe_router(128, 8, true));
  register_router("olmoe", routing::olmoe_router(64, 8));
  register_router("gpt_oss", routing::gpt_oss_router(128, 4));
  register_router("llama4", routing::llama4_router(16));
  register_router("deepseek_v3", routing::deepseek_v3_router(256, 8, 8, 4, 2.5f, v3_bias().data()));
  // Research routers: AdaMoE on Mixtral (8 true + 16 null experts, k = 4), MC-MoE ODP (top-2,
  // beta 0.5), DynMoLE with its defaults over 8 experts.
  register_router("adamoe", routing::adamoe_router(8, 16, 4));
  register_router("mc_moe_odp", routing::mc_moe_odp_router(8, 2, 0.5f));
  register_router("dynmole", routing::DynMoLE<8>{.experts = 8});
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    return 1;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
