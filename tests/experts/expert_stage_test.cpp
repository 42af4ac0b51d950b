// The device expert stage (kernels/expert_stage.hpp) under the emulator against the host
// reference: every dense Expert policy × bf16/fp16 × output type, biases, weight on the input,
// shared experts with and without gate, zero/identity experts, empty slots, capacity drops,
// T = 0 and 1, sizes that are not tile multiples, E up to 256, K up to 8, all tokens to one
// expert, an expert with no tokens; bit-identical across schedule seeds and grid sizes;
// bad input. Tolerance: expert_case::oracle's per-element first-order bound (see there).

#include "moekit/kernels/expert_stage.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "expert_case.hpp"
#include <catch2/catch.hpp>

#include "moekit/core/diagnostics.hpp"
#include "moekit/core/workspace.hpp"
#include "moekit/emu/launch_config.hpp"

namespace {

using expert_case::Case;
using expert_case::Routing;
using expert_case::Shape;
using moekit::bf16_t;
using moekit::Diagnostics;
using moekit::fp16_t;
using moekit::MemorySpace;
using moekit::Status;
namespace experts = moekit::experts;
namespace kernels = moekit::kernels;

template <class Y>
struct Run {
  Status status = Status::ok;
  std::vector<Y> y;
  Diagnostics diagnostics{};
};

template <class Cfg, class Y, class Policy, class X, class W>
Run<Y> run_device(Policy const& policy, Case<X, W> const& c, std::uint64_t seed, unsigned max_blocks) {
  moekit::emu::LaunchOptions o;
  o.schedule_seed = seed;
  o.racecheck = seed != 0;
  o.initcheck = seed != 0;
  o.max_resident_blocks = 2;
  moekit::emu::ScopedLaunchOptions const guard(o);
  Run<Y> r;
  r.y.assign(static_cast<std::size_t>(c.shape.tokens * c.shape.hidden), Y(-7.0f));
  auto const p = c.problem();
  expert_case::AlignedWorkspace ws(kernels::expert_stage_workspace_size<Cfg, X>(p));
  r.status = kernels::run_expert_stage<Cfg>(policy, p, c.template args<Y, MemorySpace::device>(r.y), ws.w,
                                            &r.diagnostics, nullptr, kernels::LaunchOptions{max_blocks});
  return r;
}

template <class Y>
void require_identical(Run<Y> const& a, Run<Y> const& b) {
  REQUIRE(a.status == b.status);
  REQUIRE(expert_case::same_bits(a.y, b.y));
}

// Runs one case on the device, compares with the oracle, and returns the run.
template <class Cfg, class Y, class Policy, class X, class W>
Run<Y> check_case(Policy const& policy, Case<X, W> const& c, std::uint64_t seed = 1, unsigned max_blocks = 3) {
  auto const r = run_device<Cfg, Y>(policy, c, seed, max_blocks);
  INFO("T " << c.shape.tokens << " H " << c.shape.hidden << " I " << c.shape.inter << " K " << c.shape.slots << " E "
            << c.shape.table.num_experts() << " (computed " << c.shape.table.computed << ", zero " << c.shape.table.zero
            << ", identity " << c.shape.table.identity << ") shared " << c.shape.shared_inter);
  INFO(moekit::last_error_message());
  REQUIRE(r.status == Status::ok);
  auto const o =
      expert_case::oracle<X, W, Y>(c, policy, expert_case::unit_roundoff<W>(), expert_case::unit_roundoff<Y>());
  expert_case::require_within(r.y, o);
  return r;
}

Shape small_shape(std::uint32_t seed) {
  Shape s;
  s.tokens = 37;
  s.hidden = 40;  // not a multiple of block_k (32) nor of 16-byte chunks... 40 = 5 chunks of 8
  s.inter = 36;   // not a multiple of block_n
  s.slots = 2;
  s.table = experts::all_computed(5);
  s.seed = seed;
  return s;
}

}  // namespace

TEMPLATE_TEST_CASE("expert stage: every dense policy, bf16 and fp16, against the host reference", "[experts][emu]",
                   bf16_t, fp16_t) {
  using T = TestType;
  Shape s = small_shape(11);
  SECTION("SwiGLU") {
    check_case<kernels::PrefillConfig, float>(experts::SwiGlu<T>{}, expert_case::make_case<T, T>(s));
  }
  SECTION("GeGLU (erf) with a 16-bit output") {
    check_case<kernels::PrefillConfig, T>(experts::GeGlu<T>{}, expert_case::make_case<T, T>(s));
  }
  SECTION("GeGLU (tanh)") {
    check_case<kernels::PrefillConfig, float>(experts::GeGluTanh<T>{}, expert_case::make_case<T, T>(s));
  }
  SECTION("ReGLU") { check_case<kernels::PrefillConfig, float>(experts::ReGlu<T>{}, expert_case::make_case<T, T>(s)); }
  SECTION("plain ReLU and GELU MLPs") {
    check_case<kernels::PrefillConfig, float>(experts::ReluMlp<T>{}, expert_case::make_case<T, T>(s));
    check_case<kernels::PrefillConfig, float>(experts::GeluMlp<T>{}, expert_case::make_case<T, T>(s));
  }
  SECTION("gpt-oss clamped SwiGLU with biases on all three projections") {
    s.biases = true;
    // limit 1 makes both clamps bite on these O(1) pre-activations.
    check_case<kernels::PrefillConfig, float>(experts::ClampedSwiglu<T>{1.702f, 1.0f}, expert_case::make_case<T, T>(s));
  }
}

TEST_CASE("expert stage: layer features", "[experts][emu]") {
  using T = bf16_t;
  Shape s = small_shape(23);
  SECTION("weight on the input (Llama-4) with a shared expert") {
    s.position = experts::WeightPosition::on_input;
    s.slots = 1;
    s.shared_inter = 24;
    check_case<kernels::PrefillConfig, float>(experts::SwiGlu<T>{}, expert_case::make_case<T, T>(s));
  }
  SECTION("Qwen2-MoE shared expert with its sigmoid gate") {
    s.shared_inter = 20;
    s.shared_gate = true;
    s.slots = 4;
    check_case<kernels::PrefillConfig, float>(experts::SwiGlu<T>{}, expert_case::make_case<T, T>(s));
  }
  SECTION("zero and identity experts beside computed ones") {
    s.table = experts::ExpertTable{4, 2, 2};
    s.slots = 3;
    check_case<kernels::PrefillConfig, float>(experts::SwiGlu<T>{}, expert_case::make_case<T, T>(s));
  }
  SECTION("only zero and identity experts: no GEMM at all") {
    s.table = experts::ExpertTable{0, 1, 2};
    check_case<kernels::PrefillConfig, float>(experts::SwiGlu<T>{}, expert_case::make_case<T, T>(s));
  }
  SECTION("capacity drops are counted and excluded") {
    s.capacity = 5;
    s.slots = 3;
    auto const c = expert_case::make_case<T, T>(s);
    auto const r = check_case<kernels::PrefillConfig, float>(experts::SwiGlu<T>{}, c);
    REQUIRE(r.diagnostics.dropped_assignments > 0);
  }
  SECTION("ids outside [0, E] are counted and skipped") {
    auto c = expert_case::make_case<T, T>(s);
    int const bad = c.ids[3];
    c.ids[3] = 99;
    c.ids[8] = -1;
    auto r = run_device<kernels::PrefillConfig, float>(experts::SwiGlu<T>{}, c, 1, 3);
    REQUIRE(r.status == Status::ok);
    REQUIRE(r.diagnostics.invalid_ids == 2);
    // The oracle with those slots empty gives the same output.
    c.ids[3] = s.table.num_experts();
    c.ids[8] = s.table.num_experts();
    (void)bad;
    auto const o = expert_case::oracle<T, T, float>(c, experts::SwiGlu<T>{}, expert_case::unit_roundoff<T>(),
                                                    expert_case::unit_roundoff<float>());
    expert_case::require_within(r.y, o);
  }
  SECTION("all tokens to one expert, and an expert with no tokens") {
    s.routing = Routing::one_expert;
    check_case<kernels::PrefillConfig, float>(experts::SwiGlu<T>{}, expert_case::make_case<T, T>(s));
    s.routing = Routing::skip_last;
    check_case<kernels::PrefillConfig, float>(experts::SwiGlu<T>{}, expert_case::make_case<T, T>(s));
  }
  SECTION("unaligned rows (H, I odd): the register load path") {
    s.hidden = 19;
    s.inter = 13;
    s.shared_inter = 11;
    check_case<kernels::PrefillConfig, float>(experts::SwiGlu<T>{}, expert_case::make_case<T, T>(s));
  }
}

TEST_CASE("expert stage: sizes", "[experts][emu]") {
  using T = bf16_t;
  SECTION("T = 0 writes nothing") {
    Shape s = small_shape(3);
    s.tokens = 0;
    auto const c = expert_case::make_case<T, T>(s);
    auto const r = run_device<kernels::PrefillConfig, float>(experts::SwiGlu<T>{}, c, 1, 3);
    REQUIRE(r.status == Status::ok);
    REQUIRE(r.y.empty());
  }
  SECTION("T = 1, decode configuration") {
    Shape s = small_shape(4);
    s.tokens = 1;
    s.slots = 2;
    check_case<kernels::DecodeConfig, float>(experts::SwiGlu<T>{}, expert_case::make_case<T, T>(s));
  }
  SECTION("E = 256, K = 8, decode configuration") {
    Shape s = small_shape(5);
    s.tokens = 9;
    s.hidden = 24;
    s.inter = 16;
    s.slots = 8;
    s.table = experts::all_computed(256);
    check_case<kernels::DecodeConfig, float>(experts::SwiGlu<T>{}, expert_case::make_case<T, T>(s));
  }
  SECTION("T = 2048, 16 experts, K = 2 (a prefill batch; small H and I keep the emulator quick)") {
    Shape s = small_shape(7);
    s.tokens = 2048;
    s.hidden = 24;
    s.inter = 20;
    s.slots = 2;
    s.table = experts::all_computed(16);
    s.shared_inter = 16;
    check_case<kernels::PrefillConfig, float>(experts::SwiGlu<T>{}, expert_case::make_case<T, T>(s), 1, 8);
  }
  SECTION("several tiles per expert and K slices (T = 300)") {
    Shape s = small_shape(6);
    s.tokens = 300;
    s.hidden = 72;
    s.inter = 80;
    s.slots = 2;
    s.table = experts::all_computed(3);
    check_case<kernels::PrefillConfig, float>(experts::SwiGlu<T>{}, expert_case::make_case<T, T>(s), 1, 4);
  }
}

TEST_CASE("expert stage: the atomic combine (non-deterministic order) stays within the bound", "[experts][emu]") {
  using T = bf16_t;
  Shape s = small_shape(37);
  s.slots = 4;
  s.table = experts::ExpertTable{5, 1, 1};
  s.shared_inter = 20;
  s.capacity = 12;
  auto c = expert_case::make_case<T, T>(s);
  // (Case::problem() has no combine field: run through a wrapper that sets it.)
  auto p = c.problem();
  p.combine = experts::CombineMode::atomic;
  for (auto const& [seed, blocks] : {std::pair{1u, 3u}, {5u, 1u}}) {
    moekit::emu::LaunchOptions o;
    o.schedule_seed = seed;
    o.racecheck = true;
    o.max_resident_blocks = 2;
    moekit::emu::ScopedLaunchOptions const guard(o);
    std::vector<float> y(static_cast<std::size_t>(s.tokens * s.hidden), -7.0f);
    expert_case::AlignedWorkspace ws(kernels::expert_stage_workspace_size<kernels::PrefillConfig, T>(p));
    Diagnostics d{};
    REQUIRE(kernels::run_expert_stage<kernels::PrefillConfig>(experts::SwiGlu<T>{}, p,
                                                              c.args<float, MemorySpace::device>(y), ws.w, &d, nullptr,
                                                              kernels::LaunchOptions{blocks}) == Status::ok);
    REQUIRE(d.dropped_assignments > 0);
    auto const o2 = expert_case::oracle<T, T, float>(c, experts::SwiGlu<T>{}, expert_case::unit_roundoff<T>(),
                                                     expert_case::unit_roundoff<float>());
    expert_case::require_within(y, o2);
  }
  // K times less workspace than the deterministic combine's [T·K, H] rows.
  auto det = p;
  det.combine = experts::CombineMode::deterministic;
  REQUIRE(kernels::expert_stage_workspace_size<kernels::PrefillConfig, T>(p) <
          kernels::expert_stage_workspace_size<kernels::PrefillConfig, T>(det));
}

TEST_CASE("expert stage: bit-identical for any schedule and grid size", "[experts][emu]") {
  using T = bf16_t;
  Shape s = small_shape(31);
  s.shared_inter = 20;
  s.shared_gate = true;
  s.table = experts::ExpertTable{4, 1, 1};
  s.slots = 3;
  auto const c = expert_case::make_case<T, T>(s);
  auto const first = check_case<kernels::PrefillConfig, float>(experts::SwiGlu<T>{}, c, 0, 0);
  for (auto const& [seed, blocks] : {std::pair{7u, 1u}, {8u, 2u}, {9u, 5u}}) {
    require_identical(first, run_device<kernels::PrefillConfig, float>(experts::SwiGlu<T>{}, c, seed, blocks));
  }
}

TEST_CASE("expert stage: bad input leaves y untouched", "[experts][emu]") {
  using T = bf16_t;
  Shape s = small_shape(41);
  auto c = expert_case::make_case<T, T>(s);
  auto const p = c.problem();
  std::vector<float> y(static_cast<std::size_t>(s.tokens * s.hidden), -7.0f);
  Diagnostics d{};
  auto const untouched = [&] {
    for (float v : y) {
      REQUIRE(v == -7.0f);
    }
  };
  SECTION("workspace too small") {
    alignas(256) std::byte ws[64];
    moekit::Workspace w(ws, sizeof ws);
    REQUIRE(kernels::run_expert_stage<kernels::PrefillConfig>(experts::SwiGlu<T>{}, p,
                                                              c.args<float, MemorySpace::device>(y), w, &d,
                                                              nullptr) == Status::workspace_too_small);
    REQUIRE_THAT(moekit::last_error_message(), Catch::Contains("workspace"));
    untouched();
  }
  SECTION("a weight view of the wrong shape") {
    auto a = c.args<float, MemorySpace::device>(y);
    a.experts.down.extents[1] = s.hidden + 1;
    moekit::Workspace w;
    REQUIRE(kernels::run_expert_stage<kernels::PrefillConfig>(experts::SwiGlu<T>{}, p, a, w, &d, nullptr) ==
            Status::invalid_argument);
    REQUIRE_THAT(moekit::last_error_message(), Catch::Contains("down"));
    untouched();
  }
  SECTION("fp32 weights are the CPU executor's") {
    auto const reason = kernels::can_implement<kernels::PrefillConfig, experts::SwiGlu<float>, float, float>(
        experts::SwiGlu<float>{}, p);
    REQUIRE(reason == Status::unsupported_config);
    REQUIRE_THAT(moekit::last_error_message(), Catch::Contains("CPU executor"));
  }
  SECTION("a bad clamped-SwiGLU limit") {
    moekit::Workspace w;
    REQUIRE(kernels::run_expert_stage<kernels::PrefillConfig>(experts::ClampedSwiglu<T>{1.702f, -1.0f}, p,
                                                              c.args<float, MemorySpace::device>(y), w, &d,
                                                              nullptr) == Status::invalid_argument);
    REQUIRE_THAT(moekit::last_error_message(), Catch::Contains("swiglu_limit"));
    untouched();
  }
}
