// The CPU executor's expert stage (cpu::run_experts) on a Mixtral-like layer scaled to fit:
// H = 1024, I = 3584, E = 8, K = 2, SwiGLU, bf16 activations, weights and output.
//
//   experts/<T>/<threads>     cpu::run_experts, T ∈ {1, 16, 128}, 1 or 2 threads
//   quantized/<T>/<threads>/<bits>  the same layer's weights quantised (moekit's quantiser,
//                             asymmetric, G = 128) to int4 or int8: Quantized<SwiGlu<bf16_t>>
//   reference/16              host::reference_moe_combine (double, loads every expert each call)
// Counters: flops (useful: 2·3·H·I per routed assignment, GEMMs only) and weight_bytes (the
// distinct expert weights the call reads, each once: bf16, or codes + fp32 scales + zero points)
// as rates.
//
// Inputs are deterministic: splitmix64 hashes mapped to small multiples of powers of two.

#include "moekit/cpu/experts.hpp"

#include <benchmark/benchmark.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "bench_inputs.hpp"

#include "moekit/experts/gated_mlp.hpp"
#include "moekit/experts/quantize.hpp"
#include "moekit/experts/quantized.hpp"
#include "moekit/host/expert_reference.hpp"

namespace {

using namespace moekit;

constexpr std::int64_t hidden = 1024, inter = 3584;
constexpr int num_experts = 8, slots = 2;
using Policy = experts::SwiGlu<bf16_t>;

// A value in [-scale, scale) from the hash of (seed, i).
bf16_t hashed(std::uint64_t seed, std::size_t i, float scale) {
  std::uint64_t const h = moekit_bench::splitmix64((seed << 40) + i);
  return bf16_t(float(std::int64_t(h >> 48) - 32768) * (scale / 32768.f));
}

struct Layer {
  std::vector<bf16_t> gate, up, down;
  Layer() : gate(std::size_t(num_experts * inter * hidden)), up(gate.size()), down(gate.size()) {
    float const in_scale = 1.f / 32.f, down_scale = 1.f / 64.f;  // ~1/√H, ~1/√I
    for (std::size_t i = 0; i < gate.size(); ++i) {
      gate[i] = hashed(1, i, in_scale);
      up[i] = hashed(2, i, in_scale);
      down[i] = hashed(3, i, down_scale);
    }
  }
  experts::MlpWeights<bf16_t, MemorySpace::host> views() const {
    return {HostTensor<bf16_t const, 3>::row_major(gate.data(), {num_experts, inter, hidden}),
            HostTensor<bf16_t const, 3>::row_major(up.data(), {num_experts, inter, hidden}),
            HostTensor<bf16_t const, 3>::row_major(down.data(), {num_experts, hidden, inter}),
            {},
            {},
            {}};
  }
};

Layer const& layer() {
  static Layer const l;
  return l;
}

// layer() quantised to `bits` bits per weight (every expert), asymmetric, G = 128.
struct QuantizedLayer {
  experts::QuantizedTensor gate, up, down;
  explicit QuantizedLayer(int bits) {
    std::vector<int> const b(num_experts, bits);
    experts::QuantizeOptions const o{.group = 128, .scheme = experts::QuantScheme::asymmetric};
    auto const w = layer().views();
    if (!experts::quantize_experts(w.gate, b, o, gate) || !experts::quantize_experts(w.up, b, o, up) ||
        !experts::quantize_experts(w.down, b, o, down)) {
      std::abort();
    }
  }
  experts::QuantizedMlpWeights<MemorySpace::host> views() const {
    return {gate.view(), up.view(), down.view(), {}, {}, {}};
  }
  // Bytes of one expert's three projections: codes, scales, zero points.
  double expert_bytes() const {
    auto const one = [](experts::QuantizedTensor const& q) {
      return double(q.data.size() + q.scales.size() * sizeof(float) + q.zeros.size()) / double(q.experts);
    };
    return one(gate) + one(up) + one(down);
  }
};

QuantizedLayer const& quantized_layer(int bits) {
  if (bits == 4) {
    static QuantizedLayer const int4(4);  // built on first use: quantising the layer takes seconds
    return int4;
  }
  static QuantizedLayer const int8(8);
  return int8;
}

struct Batch {
  std::int64_t tokens;
  std::vector<bf16_t> x, y;
  std::vector<int> ids;
  std::vector<float> weights;
  explicit Batch(std::int64_t t)
      : tokens(t), x(std::size_t(t * hidden)), y(x.size()), ids(std::size_t(t * slots)), weights(ids.size()) {
    for (std::size_t i = 0; i < x.size(); ++i) {
      x[i] = hashed(4, i, 2.f);
    }
    for (std::int64_t k = 0; k < t; ++k) {  // two distinct experts, weights p and 1 - p
      std::uint64_t const h = moekit_bench::splitmix64(0xe0ull + std::uint64_t(k));
      int const first = int(h % num_experts);
      ids[std::size_t(k * slots)] = first;
      ids[std::size_t(k * slots + 1)] = (first + 1 + int((h >> 8) % (num_experts - 1))) % num_experts;
      float const p = 0.5f + float((h >> 16) % 64) / 128.f;
      weights[std::size_t(k * slots)] = p;
      weights[std::size_t(k * slots + 1)] = 1.f - p;
    }
  }
  experts::ExpertProblem problem() const {
    return {.tokens = tokens,
            .hidden = hidden,
            .intermediate = inter,
            .slots = slots,
            .table = experts::all_computed(num_experts)};
  }
  experts::ExpertArgs<bf16_t, bf16_t, bf16_t, MemorySpace::host> args() {
    return {HostTensor<bf16_t const, 2>::row_major(x.data(), {tokens, hidden}),
            HostTensor<int const, 2>::row_major(ids.data(), {tokens, slots}),
            HostTensor<float const, 2>::row_major(weights.data(), {tokens, slots}),
            layer().views(),
            {},
            HostTensor<bf16_t, 2>::row_major(y.data(), {tokens, hidden})};
  }
  // Useful GEMM flops and the distinct weight bytes one call reads (expert_bytes per expert).
  void set_counters(benchmark::State& state,
                    double expert_bytes = 3.0 * hidden * inter * double(sizeof(bf16_t))) const {
    std::vector<bool> used(num_experts, false);
    for (int id : ids) {
      used[std::size_t(id)] = true;
    }
    double bytes = 0;
    for (bool u : used) {
      bytes += u ? expert_bytes : 0.0;
    }
    double const flops = 2.0 * 3.0 * hidden * inter * double(tokens * slots);
    auto const iterations = double(state.iterations());
    state.counters["flops"] = benchmark::Counter(flops * iterations, benchmark::Counter::kIsRate);
    state.counters["weight_bytes"] = benchmark::Counter(bytes * iterations, benchmark::Counter::kIsRate);
  }
};

// Times cpu::run_experts(policy, ..., args) on batch b.
template <class P, class Args>
void time_executor(benchmark::State& state, Batch& b, P const& policy, Args const& args) {
  auto const threads = static_cast<unsigned>(state.range(1));
  cpu::ThreadPool pool(threads);
  auto const p = b.problem();
  std::size_t const bytes = cpu::experts_workspace_size<P, bf16_t, bf16_t>(policy, p);
  std::unique_ptr<std::byte[]> storage(new std::byte[bytes + Workspace::default_alignment]);
  void* base = storage.get();
  std::size_t space = bytes + Workspace::default_alignment;
  std::align(Workspace::default_alignment, bytes, base, space);
  for (auto _ : state) {
    Workspace ws(base, bytes);
    if (!cpu::run_experts(policy, p, args, ws, nullptr, &pool)) {
      state.SkipWithError(last_error_message());
      return;
    }
    benchmark::DoNotOptimize(b.y.data());
    benchmark::ClobberMemory();
  }
}

void run_executor(benchmark::State& state) {
  Batch b(state.range(0));
  time_executor(state, b, Policy{}, b.args());
  b.set_counters(state);
}

void run_quantized(benchmark::State& state) {
  Batch b(state.range(0));
  QuantizedLayer const& q = quantized_layer(static_cast<int>(state.range(2)));
  auto const dense = b.args();
  experts::ExpertArgs<bf16_t, experts::Quantized<Policy>::Element, bf16_t, MemorySpace::host> args;
  args.x = dense.x;
  args.ids = dense.ids;
  args.weights = dense.weights;
  args.experts = q.views();
  args.y = dense.y;
  time_executor(state, b, experts::Quantized<Policy>{}, args);
  b.set_counters(state, q.expert_bytes());
}

void run_reference(benchmark::State& state) {
  Batch b(state.range(0));
  auto const w = layer().views();
  std::vector<host::ExpertWeights<bf16_t>> experts(num_experts);
  for (int e = 0; e < num_experts; ++e) {
    experts[std::size_t(e)].gate = HostTensor<bf16_t const, 2>::row_major(w.gate.pointer(e, 0, 0), {inter, hidden});
    experts[std::size_t(e)].up = HostTensor<bf16_t const, 2>::row_major(w.up.pointer(e, 0, 0), {inter, hidden});
    experts[std::size_t(e)].down = HostTensor<bf16_t const, 2>::row_major(w.down.pointer(e, 0, 0), {hidden, inter});
  }
  std::vector<float> y(b.x.size());
  auto const args = b.args();
  for (auto _ : state) {
    if (!host::reference_moe_combine<bf16_t, bf16_t>(
            args.x, args.ids, args.weights, std::span<host::ExpertWeights<bf16_t> const>(experts),
            host::ExpertFunction{}, host::WeightPosition::after_expert, nullptr,
            HostTensor<float, 2>::row_major(y.data(), {b.tokens, hidden}))) {
      state.SkipWithError(last_error_message());
      return;
    }
    benchmark::DoNotOptimize(y.data());
  }
  b.set_counters(state);
}

}  // namespace

int main(int argc, char** argv) {
  auto* executor = benchmark::RegisterBenchmark("experts", run_executor)->ArgNames({"T", "threads"});
  for (std::int64_t t : {1, 16, 128}) {
    for (std::int64_t threads : {1, 2}) {
      executor->Args({t, threads});
    }
  }
  executor->Unit(benchmark::kMillisecond)->UseRealTime();
  auto* quantized = benchmark::RegisterBenchmark("quantized", run_quantized)->ArgNames({"T", "threads", "bits"});
  for (std::int64_t bits : {4, 8}) {
    for (std::int64_t t : {1, 16, 128}) {
      for (std::int64_t threads : {1, 2}) {
        quantized->Args({t, threads, bits});
      }
    }
  }
  quantized->Unit(benchmark::kMillisecond)->UseRealTime();
  benchmark::RegisterBenchmark("reference", run_reference)
      ->ArgNames({"T"})
      ->Arg(16)
      ->Unit(benchmark::kMillisecond)
      ->Iterations(2);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) {
    return 1;
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
