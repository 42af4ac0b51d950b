// Quantized<Base> experts through the device expert stage (emulated) and the fused layer: codes
// dequantised to bf16/fp16 as they are loaded into shared memory. Oracle: the host reference on
// the dequantised weights rounded to the 16-bit type — exactly the operands the tensor cores
// see — so expert_case::oracle's per-element bound applies unchanged. Mixed bit widths (2, 3,
// 4, 8 and 1) in one layer, symmetric and asymmetric, group sizes 32/64/128, a dense shared
// expert beside quantised routed ones, bit-identical across grids and schedules.

#include <cstdint>
#include <cstring>
#include <vector>

#include "expert_case.hpp"
#include <catch2/catch.hpp>

#include "moekit/emu/launch_config.hpp"
#include "moekit/experts/dequantize.hpp"
#include "moekit/experts/quantize.hpp"
#include "moekit/experts/quantized.hpp"
#include "moekit/kernels/expert_stage.hpp"

namespace {

using expert_case::Case;
using expert_case::Shape;
using moekit::bf16_t;
using moekit::Diagnostics;
using moekit::fp16_t;
using moekit::HostTensor;
using moekit::MemorySpace;
using moekit::Status;
namespace experts = moekit::experts;
namespace kernels = moekit::kernels;

// One projection quantised, and its dequantised values rounded to T (what the kernel feeds the MMA).
template <class T>
struct QuantizedProjection {
  experts::QuantizedTensor q;
  std::vector<T> dense;  // [E, out, in]
};

template <class T>
QuantizedProjection<T> quantize(std::vector<T> const& w, std::int64_t E, std::int64_t out, std::int64_t in,
                                std::vector<int> const& bits, experts::QuantizeOptions const& o) {
  QuantizedProjection<T> r;
  REQUIRE(experts::quantize_experts(HostTensor<T const, 3>::row_major(w.data(), {E, out, in}), bits, o, r.q) ==
          Status::ok);
  std::vector<float> m(static_cast<std::size_t>(out * in));
  for (std::int64_t e = 0; e < E; ++e) {
    REQUIRE(experts::dequantize_matrix(r.q.view(), e, HostTensor<float, 2>::row_major(m.data(), {out, in})) ==
            Status::ok);
    for (float v : m) {
      r.dense.push_back(T(v));
    }
  }
  return r;
}

template <class T>
experts::QuantizedWeights<MemorySpace::device> on_device(experts::QuantizedTensor const& q) {
  auto const h = q.view();  // (the emulator's device memory is host memory)
  experts::QuantizedWeights<MemorySpace::device> d;
  d.bits = h.bits;
  d.offsets = h.offsets;
  d.data = h.data;
  d.scales = h.scales;
  d.zeros = h.zeros;
  d.bytes = h.bytes;
  d.experts = h.experts;
  d.out = h.out;
  d.in = h.in;
  d.group = h.group;
  return d;
}

template <class T>
void check_quantized(Shape s, std::vector<int> const& bits, experts::QuantizeOptions const& o) {
  using Policy = experts::Quantized<experts::SwiGlu<T>>;
  Case<T, T> c = expert_case::make_case<T, T>(s);
  auto const E = std::int64_t{s.table.computed};
  auto const gate = quantize(c.gate, E, s.inter, s.hidden, bits, o);
  auto const up = quantize(c.up, E, s.inter, s.hidden, bits, o);
  auto const down = quantize(c.down, E, s.hidden, s.inter, bits, o);
  Case<T, T> dequantized = c;  // the oracle's weights: what the tensor cores see
  dequantized.gate = gate.dense;
  dequantized.up = up.dense;
  dequantized.down = down.dense;

  auto const run = [&](std::uint64_t seed, unsigned max_blocks) {
    moekit::emu::LaunchOptions lo;
    lo.schedule_seed = seed;
    lo.racecheck = true;
    lo.max_resident_blocks = 2;
    moekit::emu::ScopedLaunchOptions const guard(lo);
    std::vector<float> y(static_cast<std::size_t>(s.tokens * s.hidden), -7.0f);
    auto const dense_args = c.template args<float, MemorySpace::device>(y);
    experts::ExpertArgs<T, typename Policy::Element, float, MemorySpace::device> a;
    a.x = dense_args.x;
    a.ids = dense_args.ids;
    a.weights = dense_args.weights;
    a.shared = dense_args.shared;
    a.y = dense_args.y;
    a.experts.gate = on_device<T>(gate.q);
    a.experts.up = on_device<T>(up.q);
    a.experts.down = on_device<T>(down.q);
    auto const layout = [](experts::QuantizedTensor const& q) {
      return experts::QuantizedLayout{q.bits.data(), q.offsets.data()};
    };
    a.quantized_layout = {layout(gate.q), layout(up.q), layout(down.q)};
    auto const p = c.problem();
    expert_case::AlignedWorkspace ws(kernels::expert_stage_workspace_size<kernels::PrefillConfig, T>(p));
    Diagnostics d{};
    INFO(moekit::last_error_message());
    REQUIRE(kernels::run_expert_stage<kernels::PrefillConfig>(Policy{}, p, a, ws.w, &d, nullptr,
                                                              kernels::LaunchOptions{max_blocks}) == Status::ok);
    return y;
  };
  auto const y = run(3, 3);
  auto const oracle =
      expert_case::oracle<T, T, float>(dequantized, experts::SwiGlu<T>{}, expert_case::unit_roundoff<T>(), 0x1p-24);
  expert_case::require_within(y, oracle);
  auto const again = run(11, 1);
  REQUIRE(expert_case::same_bits(y, again));
}

Shape quantized_shape(std::uint32_t seed) {
  Shape s;
  s.tokens = 41;
  s.hidden = 64;  // multiples of the group size (the format's rule), not of the 64-wide output tile for I
  s.inter = 96;
  s.slots = 2;
  s.table = experts::all_computed(5);
  s.seed = seed;
  return s;
}

}  // namespace

TEMPLATE_TEST_CASE("quantized experts: mixed bit widths through the device expert stage", "[experts][emu]", bf16_t,
                   fp16_t) {
  using T = TestType;
  experts::QuantizeOptions o;
  o.group = 32;
  SECTION("asymmetric, bits 2/3/4/8/1 per expert, group 32") {
    o.scheme = experts::QuantScheme::asymmetric;
    check_quantized<T>(quantized_shape(61), {2, 3, 4, 8, 1}, o);
  }
  SECTION("symmetric int4, group 64, with a dense shared expert and its gate") {
    o.scheme = experts::QuantScheme::symmetric;
    o.group = 64;
    Shape s = quantized_shape(62);
    s.inter = 128;  // the down projection's input must be a multiple of the group size too
    s.shared_inter = 24;
    s.shared_gate = true;
    check_quantized<T>(s, {4, 4, 4, 4, 4}, o);
  }
  SECTION("int8, group 128, zero and identity experts beside quantised ones") {
    o.group = 128;
    Shape s = quantized_shape(63);
    s.hidden = 128;
    s.inter = 128;
    s.table = experts::ExpertTable{3, 1, 1};
    s.slots = 3;
    check_quantized<T>(s, {8, 8, 8}, o);
  }
}

TEST_CASE("quantized experts: a device view is checked against its host layout", "[experts][emu]") {
  using T = bf16_t;
  using Policy = experts::Quantized<experts::SwiGlu<T>>;
  Shape s = quantized_shape(64);
  Case<T, T> c = expert_case::make_case<T, T>(s);
  std::vector<float> y(static_cast<std::size_t>(s.tokens * s.hidden), -7.0f);
  auto const dense_args = c.args<float, MemorySpace::device>(y);
  experts::ExpertArgs<T, Policy::Element, float, MemorySpace::device> a;
  a.x = dense_args.x;
  a.ids = dense_args.ids;
  a.weights = dense_args.weights;
  a.y = dense_args.y;
  experts::QuantizeOptions o;
  o.group = 32;
  auto const up = quantize(c.up, 5, s.inter, s.hidden, {4, 4, 4, 4, 4}, o);
  a.experts.gate = a.experts.up = on_device<T>(up.q);
  a.experts.down = on_device<T>(up.q);  // wrong shape: [E, I, H] where [E, H, I] is expected
  a.quantized_layout = {{up.q.bits.data(), up.q.offsets.data()},
                        {up.q.bits.data(), up.q.offsets.data()},
                        {up.q.bits.data(), up.q.offsets.data()}};
  moekit::Workspace w;
  Diagnostics d{};
  REQUIRE(kernels::run_expert_stage<kernels::PrefillConfig>(Policy{}, c.problem(), a, w, &d, nullptr) ==
          Status::invalid_argument);
  REQUIRE_THAT(moekit::last_error_message(), Catch::Contains("down"));
  for (float v : y) {
    REQUIRE(v == -7.0f);
  }
}
