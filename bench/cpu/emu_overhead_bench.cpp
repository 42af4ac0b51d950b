// What the CUDA emulator costs: fiber switches per second, one block-barrier round trip, one
// warp collective, launch set-up, and the foundation's 64x64x64 mma GEMM. These size the
// emulated tests (DESIGN.md §4: size them by collectives, not by FLOPs).

#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "mma_gemm_kernel.hpp"

#include "moekit/arch/arch.hpp"
#include "moekit/emu/emu.hpp"

namespace {

namespace arch = moekit::arch;
namespace emu = moekit::emu;

void report(benchmark::State& state, emu::LaunchResult const& r, double events_per_launch, char const* name) {
  if (!r.ok()) {
    state.SkipWithError(r.summary().c_str());
    return;
  }
  state.counters["switches/s"] =
      benchmark::Counter(static_cast<double>(r.context_switches), benchmark::Counter::kIsIterationInvariantRate);
  state.counters[name] = benchmark::Counter(events_per_launch, benchmark::Counter::kIsIterationInvariantRate);
}

// Every thread yields `rounds` times: pure fiber switching, no rendezvous.
void BM_FiberSwitch(benchmark::State& state) {
  int const threads = static_cast<int>(state.range(0));
  int const rounds = 64;
  emu::LaunchResult r;
  for (auto _ : state) {
    r = emu::launch({.grid = 1, .block = static_cast<unsigned>(threads)}, emu::LaunchOptions{}, [rounds] {
      for (int i = 0; i < rounds; ++i) {
        arch::thread_fence();  // a scheduling point under emulation
      }
    });
  }
  report(state, r, static_cast<double>(threads) * rounds, "thread_yields/s");
}
BENCHMARK(BM_FiberSwitch)->Arg(32)->Arg(256)->Arg(1024)->Unit(benchmark::kMicrosecond);

// `rounds` block barriers: one round trip = every thread arrives and is woken.
void BM_BlockSync(benchmark::State& state) {
  int const threads = static_cast<int>(state.range(0));
  int const rounds = 64;
  emu::LaunchResult r;
  for (auto _ : state) {
    r = emu::launch({.grid = 1, .block = static_cast<unsigned>(threads)}, emu::LaunchOptions{}, [rounds] {
      for (int i = 0; i < rounds; ++i) {
        arch::sync_threads();
      }
    });
  }
  report(state, r, rounds, "barriers/s");
}
BENCHMARK(BM_BlockSync)->Arg(32)->Arg(256)->Arg(1024)->Unit(benchmark::kMicrosecond);

// Warp shuffles: each is a 32-lane rendezvous.
void BM_WarpShuffle(benchmark::State& state) {
  int const rounds = 64;
  emu::LaunchResult r;
  for (auto _ : state) {
    r = emu::launch({.grid = 1, .block = 256}, emu::LaunchOptions{}, [rounds] {
      int v = static_cast<int>(arch::lane_id());
      for (int i = 0; i < rounds; ++i) {
        v += arch::shfl_xor_sync(arch::full_warp_mask, v, 1 + i % 16);
      }
      benchmark::DoNotOptimize(v);
    });
  }
  report(state, r, 8.0 * rounds, "warp_collectives/s");
}
BENCHMARK(BM_WarpShuffle)->Unit(benchmark::kMicrosecond);

// A launch of one empty block: fiber creation and teardown.
void BM_LaunchEmpty(benchmark::State& state) {
  int const threads = static_cast<int>(state.range(0));
  emu::LaunchResult r;
  for (auto _ : state) {
    r = emu::launch({.grid = 1, .block = static_cast<unsigned>(threads)}, emu::LaunchOptions{}, [] {});
  }
  report(state, r, 1, "launches/s");
}
BENCHMARK(BM_LaunchEmpty)->Arg(32)->Arg(256)->Arg(1024)->Unit(benchmark::kMicrosecond);

// The 64x64x64 bf16 mma GEMM (128 mma.sync + 64 ldmatrix per block), with and without checks.
void BM_MmaGemm64(benchmark::State& state) {
  using S = moekit_samples::MmaGemmShape;
  std::int64_t const n = 64;
  std::vector<moekit::bf16_t> a(static_cast<std::size_t>(n * n), moekit::bf16_t(0.5f)), b = a;
  std::vector<float> c(static_cast<std::size_t>(n * n));
  emu::LaunchOptions o;
  o.racecheck = o.initcheck = state.range(0) != 0;
  emu::LaunchResult r;
  for (auto _ : state) {
    r = emu::launch({.grid = 1, .block = S::threads, .dynamic_shared_bytes = sizeof(moekit_samples::MmaGemmStorage)}, o,
                    moekit_samples::mma_gemm_kernel<>, a.data(), b.data(), c.data(), n, n, n);
  }
  report(state, r, 2.0 * n * n * n, "emulated_flop/s");
}
BENCHMARK(BM_MmaGemm64)->ArgName("checks")->Arg(0)->Arg(1)->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
