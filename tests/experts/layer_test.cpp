// MoeLayer end to end, on the emulated device and on the CPU executor, for the production
// families' layer shapes (Mixtral, Qwen2-MoE with its gated shared expert, DeepSeek-V3 with
// group-limited routing and a shared expert, gpt-oss with router bias and clamped SwiGLU with
// biases, Llama-4 with the weight on the input), T from 0 to a few hundred.
//
// What each run is checked against:
//   logits   the host gate-projection reference: (H + 3)·2⁻²⁴·Σ|x·w| per logit (one rounding per fma);
//   routing  the host router reference applied to the run's own logits: bit-identical (the same
//            fp32 code decides; comparing against the reference's logits instead would let a
//            last-bit difference flip a near tie and test nothing about the layer);
//   y        expert_case::oracle on the run's ids and weights, within its per-element bound.

#include "moekit/layer.hpp"

#include <cmath>
#include <cstdint>
#include <vector>

#include "expert_case.hpp"
#include <catch2/catch.hpp>

#include "moekit/balancing/concept.hpp"
#include "moekit/emu/launch_config.hpp"
#include "moekit/host/gate_projection_reference.hpp"
#include "moekit/host/top_k_reference.hpp"
#include "moekit/routing/grouped_top_k.hpp"
#include "moekit/routing/top_k.hpp"

namespace {

using expert_case::Case;
using expert_case::Shape;
using moekit::bf16_t;
using moekit::Diagnostics;
using moekit::HostTensor;
using moekit::MemorySpace;
using moekit::Status;
namespace experts = moekit::experts;
namespace routing = moekit::routing;

template <class Router, class Policy, class X>
struct LayerCase {
  Router router;
  Policy policy;
  Case<X, X> c;                  // x, expert weights (ids/weights are the layer's to compute)
  std::vector<X> gate_weight;    // [E, H]
  std::vector<float> gate_bias;  // [E] or empty
};

template <class Router, class Policy, class X>
LayerCase<Router, Policy, X> make_layer_case(Router router, Policy policy, Shape s, bool router_bias) {
  LayerCase<Router, Policy, X> l{router, policy, expert_case::make_case<X, X>(s), {}, {}};
  std::mt19937 rng(s.seed + 1000);
  int const E = s.table.num_experts();
  // Router weights ~ U(±2/√H): logits O(1) apart, so selections are not dominated by near ties.
  l.gate_weight = expert_case::random_vector<X>(static_cast<std::size_t>(E * s.hidden), 2.0 / std::sqrt(s.hidden), rng);
  if (router_bias) {
    l.gate_bias = expert_case::random_vector<float>(static_cast<std::size_t>(E), 0.5, rng);
  }
  return l;
}

template <class Layer, class X, class Y, MemorySpace S, class L>
typename Layer::template Arguments<X, Y, S> layer_args(L const& l, std::vector<Y>& y, std::vector<float>& logits,
                                                       std::vector<int>& ids, std::vector<float>& weights,
                                                       Diagnostics* d) {
  Shape const& s = l.c.shape;
  auto const E = std::int64_t{s.table.num_experts()}, K = std::int64_t{l.router.slots()};
  typename Layer::template Arguments<X, Y, S> a;
  a.x = moekit::TensorView<X const, 2, S>::row_major(l.c.x.data(), {s.tokens, s.hidden});
  a.gate_weight = moekit::TensorView<X const, 2, S>::row_major(l.gate_weight.data(), {E, s.hidden});
  a.gate_bias = moekit::TensorView<float const, 1, S>::row_major(l.gate_bias.data(),
                                                                 {static_cast<std::int64_t>(l.gate_bias.size())});
  a.experts = l.c.template routed<S>();
  a.shared = l.c.template shared<S>();
  y.assign(static_cast<std::size_t>(s.tokens * s.hidden), Y(-7.0f));
  logits.assign(static_cast<std::size_t>(s.tokens * E), 0.0f);
  ids.assign(static_cast<std::size_t>(s.tokens * K), -1);
  weights.assign(static_cast<std::size_t>(s.tokens * K), 0.0f);
  a.y = moekit::TensorView<Y, 2, S>::row_major(y.data(), {s.tokens, s.hidden});
  a.logits = moekit::TensorView<float, 2, S>::row_major(logits.data(), {s.tokens, E});
  a.ids = moekit::TensorView<int, 2, S>::row_major(ids.data(), {s.tokens, K});
  a.weights = moekit::TensorView<float, 2, S>::row_major(weights.data(), {s.tokens, K});
  a.diagnostics = d;
  return a;
}

template <class Layer, class L>
typename Layer::Problem layer_problem(L const& l) {
  Shape const& s = l.c.shape;
  typename Layer::Problem p;
  p.tokens = s.tokens;
  p.hidden = s.hidden;
  p.intermediate = s.inter;
  p.table = s.table;
  p.shared_intermediate = s.shared_inter;
  p.capacity = s.capacity;
  p.position = s.position;
  return p;
}

// Runs the layer (device under the emulator, or the CPU executor) and checks logits, routing and y.
template <class Router, class Policy, class X, class Y>
void check_layer(LayerCase<Router, Policy, X> const& l, bool device,
                 experts::CombineMode combine = experts::CombineMode::deterministic) {
  using Layer = moekit::MoeLayer<Router, moekit::balancing::None, Policy>;
  Shape const& s = l.c.shape;
  auto p = layer_problem<Layer>(l);
  p.combine = combine;
  bool const atomic = combine == experts::CombineMode::atomic;
  std::vector<Y> other_y;  // the multi-launch run's y (atomic: checked against the oracle too)
  INFO((device ? "device" : "cpu") << " T " << s.tokens << " H " << s.hidden << " I " << s.inter << " E "
                                   << s.table.num_experts() << " K " << l.router.slots());
  REQUIRE(Layer::template can_implement<X, Y>(l.router, {}, l.policy, p, device) == Status::ok);
  expert_case::AlignedWorkspace buffer(Layer::template workspace_size<X, Y>(l.router, p, device));
  moekit::Workspace w = buffer.fresh();
  std::vector<Y> y;
  std::vector<float> logits, weights;
  std::vector<int> ids;
  Diagnostics d{};
  Status status = Status::ok;
  if (device) {
    moekit::emu::LaunchOptions o;
    o.schedule_seed = 5;
    o.racecheck = true;
    o.max_resident_blocks = 2;
    moekit::emu::ScopedLaunchOptions const guard(o);
    auto const a = layer_args<Layer, X, Y, MemorySpace::device>(l, y, logits, ids, weights, &d);
    status = Layer::run(l.router, {}, l.policy, p, a, w, nullptr);  // one fused launch
    // The multi-launch path gives the same bits (and so does a smaller fused grid).
    for (auto const& [launch, blocks] : {std::pair{moekit::LayerLaunch::multi, 0u}, {moekit::LayerLaunch::fused, 3u}}) {
      std::vector<Y> y2;
      std::vector<float> logits2, weights2;
      std::vector<int> ids2;
      Diagnostics d2{};
      moekit::Workspace w2 = buffer.fresh();
      auto const a2 = layer_args<Layer, X, Y, MemorySpace::device>(l, y2, logits2, ids2, weights2, &d2);
      INFO((launch == moekit::LayerLaunch::multi ? "multi-launch" : "fused, 3 blocks"));
      REQUIRE(Layer::run(l.router, {}, l.policy, p, a2, w2, nullptr, launch, moekit::kernels::LaunchOptions{blocks}) ==
              Status::ok);
      if (atomic) {
        other_y = y2;  // the order of the atomic adds differs: compared with the oracle below
      } else {
        REQUIRE(expert_case::same_bits(y2, y));
      }
      REQUIRE(expert_case::same_bits(logits2, logits));
      REQUIRE(ids2 == ids);
      REQUIRE(expert_case::same_bits(weights2, weights));
      REQUIRE(d2.dropped_assignments == d.dropped_assignments);
      REQUIRE(d2.empty_slots == d.empty_slots);
    }
  } else {
    moekit::cpu::ThreadPool pool(2);
    auto const a = layer_args<Layer, X, Y, MemorySpace::host>(l, y, logits, ids, weights, &d);
    status = Layer::run(l.router, {}, l.policy, p, a, w, pool);
  }
  INFO(moekit::last_error_message());
  REQUIRE(status == Status::ok);
  if (s.tokens == 0) {
    SUCCEED("T = 0: nothing to compare");
    return;
  }
  auto const E = std::int64_t{s.table.num_experts()}, K = std::int64_t{l.router.slots()};
  // Logits against the gate reference.
  std::vector<float> ref_logits(logits.size());
  routing::GateProjectionBuffers<X, X, MemorySpace::host> gb{
      HostTensor<X const, 2>::row_major(l.c.x.data(), {s.tokens, s.hidden}),
      HostTensor<X const, 2>::row_major(l.gate_weight.data(), {E, s.hidden}),
      HostTensor<float const, 1>::row_major(l.gate_bias.data(), {static_cast<std::int64_t>(l.gate_bias.size())}),
      HostTensor<float, 2>::row_major(ref_logits.data(), {s.tokens, E})};
  REQUIRE(moekit::host::reference_gate_projection(gb) == Status::ok);
  for (std::int64_t t = 0; t < s.tokens; ++t) {
    for (std::int64_t e = 0; e < E; ++e) {
      double mag = l.gate_bias.empty() ? 0.0 : std::fabs(l.gate_bias[static_cast<std::size_t>(e)]);
      for (std::int64_t h = 0; h < s.hidden; ++h) {
        mag += std::fabs(double(moekit::to_float(l.c.x[static_cast<std::size_t>(t * s.hidden + h)])) *
                         double(moekit::to_float(l.gate_weight[static_cast<std::size_t>(e * s.hidden + h)])));
      }
      std::size_t const at = static_cast<std::size_t>(t * E + e);
      REQUIRE(std::fabs(double(logits[at]) - double(ref_logits[at])) <= double(s.hidden + 3) * 0x1p-24 * mag);
    }
  }
  // Routing on the run's own logits: the CPU router (the same fp32 code) bit for bit, and the
  // double-precision reference: ids exactly, weights within (E + 40)·2⁻²⁴ relative (the router
  // tests' bound: the E-term fp32 softmax sum and a few exp/div ulps).
  auto const route_with = [&](auto const& route_fn, std::vector<int>& out_ids, std::vector<float>& out_weights) {
    out_ids.assign(ids.size(), -1);
    out_weights.assign(weights.size(), 0.0f);
    REQUIRE(route_fn(routing::RouteBuffers<MemorySpace::host>{
                HostTensor<float const, 2>::row_major(logits.data(), {s.tokens, E}),
                HostTensor<int, 2>::row_major(out_ids.data(), {s.tokens, K}),
                HostTensor<float, 2>::row_major(out_weights.data(), {s.tokens, K})}) == Status::ok);
  };
  std::vector<int> cpu_ids, ref_ids;
  std::vector<float> cpu_weights, ref_weights;
  route_with([&](auto const& b) { return moekit::cpu::route(l.router, b); }, cpu_ids, cpu_weights);
  route_with([&](auto const& b) { return moekit::host::reference_route(l.router, b); }, ref_ids, ref_weights);
  REQUIRE(ids == cpu_ids);
  REQUIRE(expert_case::same_bits(weights, cpu_weights));
  REQUIRE(ids == ref_ids);
  for (std::size_t i = 0; i < weights.size(); ++i) {
    REQUIRE(std::fabs(double(weights[i]) - double(ref_weights[i])) <=
            double(E + 40) * 0x1p-24 * std::fabs(double(ref_weights[i])));
  }
  // y: the oracle on these ids and weights.
  Case<X, X> routed = l.c;
  routed.ids = ids;
  routed.weights = weights;
  routed.shape.slots = static_cast<int>(K);
  // The CPU executor keeps h in fp32: its bound uses fp32's unit roundoff for h.
  double const u_h = device ? expert_case::unit_roundoff<X>() : expert_case::unit_roundoff<float>();
  double const u_y = expert_case::unit_roundoff<Y>();
  auto const o = expert_case::oracle<X, X, Y>(routed, l.policy, u_h, u_y);
  expert_case::require_within(y, o);
  if (!other_y.empty()) {
    expert_case::require_within(other_y, o);
  }
  REQUIRE(d.nonfinite_rows == 0);
}

Shape family_shape(std::int64_t tokens, std::int64_t hidden, std::int64_t inter, int experts, int slots,
                   std::uint32_t seed) {
  Shape s;
  s.tokens = tokens;
  s.hidden = hidden;
  s.inter = inter;
  s.slots = slots;
  s.table = experts::all_computed(experts);
  s.seed = seed;
  return s;
}

}  // namespace

TEST_CASE("MoeLayer: production families, device and CPU", "[layer][emu]") {
  using T = bf16_t;
  for (std::int64_t tokens : {std::int64_t{0}, std::int64_t{1}, std::int64_t{45}, std::int64_t{130}}) {
    SECTION("Mixtral: softmax top-2 renormalised, SwiGLU, T = " + std::to_string(tokens)) {
      auto const l = make_layer_case<routing::TopK<8>, experts::SwiGlu<T>, T>(
          routing::mixtral_router(8, 2), {}, family_shape(tokens, 40, 36, 8, 2, 101), false);
      check_layer<routing::TopK<8>, experts::SwiGlu<T>, T, float>(l, true);
      check_layer<routing::TopK<8>, experts::SwiGlu<T>, T, float>(l, false);
    }
  }
  SECTION("Qwen2-MoE: softmax top-4 not renormalised, shared expert with sigmoid gate, bf16 output") {
    Shape s = family_shape(33, 48, 24, 12, 4, 102);
    s.shared_inter = 40;
    s.shared_gate = true;
    auto const l =
        make_layer_case<routing::TopK<8>, experts::SwiGlu<T>, T>(routing::qwen_moe_router(12, 4, false), {}, s, false);
    check_layer<routing::TopK<8>, experts::SwiGlu<T>, T, T>(l, true);
    check_layer<routing::TopK<8>, experts::SwiGlu<T>, T, T>(l, false);
  }
  SECTION("DeepSeek-V3: sigmoid scores, 4 groups, top-2 groups, top-8, scaled, shared expert") {
    Shape s = family_shape(21, 32, 16, 32, 8, 103);
    s.shared_inter = 16;
    auto const router = routing::deepseek_v3_router(32, 8, 4, 2, 2.5f, nullptr);
    auto const l = make_layer_case<routing::GroupedTopK<8>, experts::SwiGlu<T>, T>(router, {}, s, false);
    check_layer<routing::GroupedTopK<8>, experts::SwiGlu<T>, T, float>(l, true);
    check_layer<routing::GroupedTopK<8>, experts::SwiGlu<T>, T, float>(l, false);
  }
  SECTION("gpt-oss: router bias, top-4 then softmax, clamped SwiGLU with biases") {
    Shape s = family_shape(29, 32, 32, 8, 4, 104);
    s.biases = true;
    auto const l = make_layer_case<routing::TopK<8>, experts::ClampedSwiglu<T>, T>(routing::gpt_oss_router(8, 4),
                                                                                   {1.702f, 7.0f}, s, true);
    check_layer<routing::TopK<8>, experts::ClampedSwiglu<T>, T, float>(l, true);
    check_layer<routing::TopK<8>, experts::ClampedSwiglu<T>, T, float>(l, false);
  }
  SECTION("Mixtral with the atomic combine: fused and multi-launch, within the bound") {
    auto const l = make_layer_case<routing::TopK<8>, experts::SwiGlu<T>, T>(routing::mixtral_router(8, 2), {},
                                                                            family_shape(70, 40, 36, 8, 2, 108), false);
    check_layer<routing::TopK<8>, experts::SwiGlu<T>, T, float>(l, true, experts::CombineMode::atomic);
    check_layer<routing::TopK<8>, experts::SwiGlu<T>, T, float>(l, false, experts::CombineMode::atomic);
  }
  SECTION("Llama-4: sigmoid top-1, weight on the input, shared expert") {
    Shape s = family_shape(25, 40, 24, 16, 1, 105);
    s.position = experts::WeightPosition::on_input;
    s.shared_inter = 24;
    auto const l =
        make_layer_case<routing::TopK<8>, experts::SwiGlu<T>, T>(routing::llama4_router(16, 1), {}, s, false);
    check_layer<routing::TopK<8>, experts::SwiGlu<T>, T, float>(l, true);
    check_layer<routing::TopK<8>, experts::SwiGlu<T>, T, float>(l, false);
  }
  SECTION("fp32 layer on the CPU executor (the device path refuses it with a reason)") {
    auto const l = make_layer_case<routing::TopK<8>, experts::SwiGlu<float>, float>(
        routing::mixtral_router(8, 2), {}, family_shape(37, 40, 36, 8, 2, 106), false);
    check_layer<routing::TopK<8>, experts::SwiGlu<float>, float, float>(l, false);
    using Layer = moekit::MoeLayer<routing::TopK<8>, moekit::balancing::None, experts::SwiGlu<float>>;
    REQUIRE(Layer::can_implement<float, float>(l.router, {}, l.policy, layer_problem<Layer>(l), true) ==
            Status::unsupported_config);
  }
}

TEST_CASE("MoeLayer: the fused kernel fits the emulated device (so the fused path really runs)", "[layer][emu]") {
  using T = bf16_t;
  namespace kernels = moekit::kernels;
  using Policy = experts::SwiGlu<T>;
  auto const check = [](auto kernel, std::size_t smem) {
    int const blocks = moekit::arch::max_cooperative_blocks(kernel, 128, smem);
    INFO(smem << " bytes of shared memory");
    REQUIRE(blocks >= 4);  // at least one block per SM of the 4-SM test device
  };
  check(kernels::fused_layer_kernel<kernels::PrefillConfig, routing::TopK<8>, Policy, T, float>,
        kernels::fused_layer_shared_bytes<kernels::PrefillConfig, Policy, T>());
  check(kernels::fused_layer_kernel<kernels::DecodeConfig, routing::GroupedTopK<8>, Policy, T, float>,
        kernels::fused_layer_shared_bytes<kernels::DecodeConfig, Policy, T>());
}

TEST_CASE("MoeLayer: a router/table mismatch is refused before anything is written", "[layer][emu]") {
  using T = bf16_t;
  using Layer = moekit::MoeLayer<routing::TopK<8>, moekit::balancing::None, experts::SwiGlu<T>>;
  auto const l = make_layer_case<routing::TopK<8>, experts::SwiGlu<T>, T>(routing::mixtral_router(8, 2), {},
                                                                          family_shape(5, 40, 36, 8, 2, 107), false);
  auto p = layer_problem<Layer>(l);
  p.table = experts::all_computed(7);
  REQUIRE(Layer::can_implement<T, float>(l.router, {}, l.policy, p, false) == Status::invalid_argument);
  REQUIRE_THAT(moekit::last_error_message(), Catch::Contains("router has 8 experts"));
}
