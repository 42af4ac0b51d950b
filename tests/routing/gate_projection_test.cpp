// The gate projection logits = x·Wgᵀ (+ b): the small examples of ALGORITHMS.md §1.2 and §1.9.1,
// then host reference vs CPU path vs emulated device kernel for fp32 and bf16 inputs (H not a
// multiple of the 32-column chunk, T = 0 and 1, E up to 256), determinism over schedule seeds
// and grid sizes, and every bad input.
//
// Tolerances:
// - CPU path vs device kernel: bit-identical. Both run the same arithmetic per logit: one fp32
//   accumulator from +0, fmaf in ascending h, the bias added once (no reduction tree anywhere).
// - CPU/device vs host reference: the reference sums in double (each product of two fp32 or bf16
//   values is exact in double) and rounds once. The fp32 path rounds once per fmaf step, each
//   error at most u·|partial sum| <= u·(1 + H u)·S with S = sum_h |x_h w_h| + |b| (u = 2^-24),
//   once more for the bias, and the reference's own rounding adds u·|z| <= u·S. So
//   |z_fp32 - z_ref| <= (H + 2)·u·S·(1 + H u), checked as (H + 3)·u·S with S computed by the
//   test in double: a worst-case bound from the arithmetic, not a fitted number. It is absolute
//   in S, not relative to z, because cancellation can make z much smaller than S.

#include "moekit/routing/gate_projection.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "moekit/core/error_message.hpp"
#include "moekit/cpu/gate_projection.hpp"
#include "moekit/emu/launch_config.hpp"
#include "moekit/host/reference.hpp"

using namespace moekit;

namespace {

template <class X, class W>
struct Problem {
  std::int64_t tokens = 0, hidden = 0;
  int experts = 0;
  std::vector<X> x;         // [T, H]
  std::vector<W> w;         // [E, H]
  std::vector<float> bias;  // [E] or empty
};

template <class T>
T from(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return T(v);
  }
}

template <class X, class W>
Problem<X, W> make_problem(std::int64_t tokens, std::int64_t hidden, int experts, bool with_bias, std::uint32_t seed) {
  Problem<X, W> p{tokens, hidden, experts, {}, {}, {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  p.x.resize(static_cast<std::size_t>(tokens * hidden));
  p.w.resize(static_cast<std::size_t>(experts * hidden));
  for (auto& v : p.x) {
    v = from<X>(normal(rng));
  }
  for (auto& v : p.w) {
    v = from<W>(normal(rng) * 0.05f);
  }
  if (with_bias) {
    p.bias.resize(static_cast<std::size_t>(experts));
    for (auto& v : p.bias) {
      v = normal(rng);
    }
  }
  return p;
}

struct Result {
  Status status = Status::internal_error;
  std::vector<float> logits;
};

template <MemorySpace Space, class X, class W>
routing::GateProjectionBuffers<X, W, Space> buffers(Problem<X, W> const& p, Result& out) {
  out.logits.assign(static_cast<std::size_t>(p.tokens * p.experts), -7.f);  // a value nothing writes
  routing::GateProjectionBuffers<X, W, Space> b;
  b.hidden = TensorView<X const, 2, Space>::row_major(p.x.data(), {p.tokens, p.hidden});
  b.weight = TensorView<W const, 2, Space>::row_major(p.w.data(), {p.experts, p.hidden});
  b.bias = TensorView<float const, 1, Space>::row_major(p.bias.data(), {std::int64_t(p.bias.size())});
  b.logits = TensorView<float, 2, Space>::row_major(out.logits.data(), {p.tokens, p.experts});
  return b;
}

template <class X, class W>
Result reference(Problem<X, W> const& p) {
  Result r;
  r.status = host::reference_gate_projection(buffers<MemorySpace::host>(p, r));
  return r;
}

template <class X, class W>
Result cpu_run(Problem<X, W> const& p) {
  Result r;
  r.status = cpu::gate_projection(buffers<MemorySpace::host>(p, r));
  return r;
}

template <class X, class W>
Result device_run(Problem<X, W> const& p, std::uint64_t seed, unsigned max_blocks = 0) {
  emu::LaunchOptions o;
  o.schedule_seed = seed;
  o.racecheck = true;
  o.max_resident_blocks = 2;
  emu::ScopedLaunchOptions const guard(o);
  Result r;
  r.status = routing::gate_projection(buffers<MemorySpace::device>(p, r), nullptr, max_blocks);
  return r;
}

void require_identical(Result const& a, Result const& b) {
  REQUIRE(a.status == b.status);
  REQUIRE(a.logits.size() == b.logits.size());
  for (std::size_t i = 0; i < a.logits.size(); ++i) {
    std::uint32_t x, y;
    std::memcpy(&x, &a.logits[i], 4);
    std::memcpy(&y, &b.logits[i], 4);
    INFO("logit " << i << ": " << a.logits[i] << " vs " << b.logits[i]);
    REQUIRE(x == y);
  }
}

// |got - ref| <= (H + 3)·u·S per logit (header comment).
template <class X, class W>
void require_within_bound(Problem<X, W> const& p, Result const& ref, Result const& got) {
  REQUIRE(ref.status == Status::ok);
  REQUIRE(got.status == Status::ok);
  double const u = std::ldexp(1.0, -24);
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    for (std::int64_t e = 0; e < p.experts; ++e) {
      double s = p.bias.empty() ? 0.0 : std::fabs(double(p.bias[e]));
      for (std::int64_t h = 0; h < p.hidden; ++h) {
        s += std::fabs(double(to_float(p.x[t * p.hidden + h])) * double(to_float(p.w[e * p.hidden + h])));
      }
      auto const i = static_cast<std::size_t>(t * p.experts + e);
      INFO("token " << t << ", expert " << e << ": got " << got.logits[i] << ", reference " << ref.logits[i]);
      REQUIRE(std::fabs(double(got.logits[i]) - double(ref.logits[i])) <= double(p.hidden + 3) * u * s);
    }
  }
}

template <class X, class W>
void compare_all_paths(Problem<X, W> const& p) {
  auto const ref = reference(p);
  auto const cpu = cpu_run(p);
  require_within_bound(p, ref, cpu);
  auto const device = device_run(p, 0);
  require_identical(cpu, device);
  require_identical(device, device_run(p, 17, 1));
  require_identical(device, device_run(p, 29, 3));
}

constexpr float nan_value = std::numeric_limits<float>::quiet_NaN();
constexpr float inf_value = std::numeric_limits<float>::infinity();

}  // namespace

TEST_CASE("gate projection reproduces the small examples of ALGORITHMS.md 1.2 and 1.9.1", "[routing][emu]") {
  // §1.2: x = (1, -2), shared-expert gate w = (0.3, 0.1) -> a = 0.1.
  Problem<float, float> const shared_gate{1, 2, 1, {1.f, -2.f}, {0.3f, 0.1f}, {}};
  // §1.9.1: W_g = [[0.5, 0.25], [-1, 0.75]] -> W_g x = (0, -2.5), exact in fp32.
  Problem<float, float> const gate{1, 2, 2, {1.f, -2.f}, {0.5f, 0.25f, -1.f, 0.75f}, {}};
  for (auto const* p : {&shared_gate, &gate}) {
    auto const ref = reference(*p);
    REQUIRE(ref.status == Status::ok);
    require_identical(cpu_run(*p), device_run(*p, 3));
    require_within_bound(*p, ref, cpu_run(*p));
  }
  CHECK(cpu_run(shared_gate).logits[0] == Approx(0.1).epsilon(1e-6));
  CHECK(cpu_run(gate).logits == std::vector<float>{0.f, -2.5f});
  // gpt-oss: the router bias is added after the sum: z = W x + b.
  Problem<float, float> biased = gate;
  biased.bias = {0.25f, -0.5f};
  CHECK(cpu_run(biased).logits == std::vector<float>{0.25f, -3.f});
  CHECK(device_run(biased, 1).logits == std::vector<float>{0.25f, -3.f});
}

TEMPLATE_TEST_CASE("gate projection: host reference, CPU path and device kernel agree", "[routing][emu]", float,
                   bf16_t) {
  struct Shape {
    std::int64_t tokens, hidden;
    int experts;
  };
  auto const shape = GENERATE(Shape{1, 1, 1}, Shape{1, 37, 8}, Shape{19, 45, 7}, Shape{33, 100, 60}, Shape{5, 64, 256},
                              Shape{17, 31, 33}, Shape{40, 3, 256});
  bool const with_bias = GENERATE(false, true);
  CAPTURE(shape.tokens, shape.hidden, shape.experts, with_bias);
  auto const seed = static_cast<std::uint32_t>(shape.tokens * 131 + shape.hidden);
  compare_all_paths(make_problem<TestType, TestType>(shape.tokens, shape.hidden, shape.experts, with_bias, seed));
  // Mixed precisions: bf16 activations with an fp32 router weight (DeepSeek keeps it in fp32) and back.
  compare_all_paths(make_problem<TestType, float>(shape.tokens, shape.hidden, shape.experts, with_bias, seed + 1));
  compare_all_paths(make_problem<float, TestType>(shape.tokens, shape.hidden, shape.experts, with_bias, seed + 2));
}

TEST_CASE("gate projection: bf16 inputs are exact in fp32, so small sums match the reference exactly", "[routing]") {
  // Products of bf16 values are exact in fp32, and these sums stay within 24 bits: no rounding at all.
  Problem<bf16_t, bf16_t> p{2, 3, 2, {}, {}, {}};
  for (float v : {1.f, -2.f, 0.5f, 3.f, 0.25f, -1.5f}) {
    p.x.push_back(bf16_t(v));
  }
  for (float v : {0.5f, 0.25f, -1.f, 2.f, 1.f, 0.125f}) {
    p.w.push_back(bf16_t(v));
  }
  auto const cpu = cpu_run(p);
  // t0: 0.5 - 0.5 - 0.5 = -0.5, 2 - 2 + 0.0625 = 0.0625; t1: 1.5 + 0.0625 + 1.5 = 3.0625, 6 + 0.25 - 0.1875 = 6.0625
  CHECK(cpu.logits == std::vector<float>{-0.5f, 0.0625f, 3.0625f, 6.0625f});
  CHECK(reference(p).logits == cpu.logits);
}

TEST_CASE("gate projection: T = 0 computes and launches nothing; H = 0 gives the bias", "[routing][emu]") {
  auto const empty = make_problem<float, float>(0, 16, 8, true, 1);
  CHECK(reference(empty).status == Status::ok);
  CHECK(cpu_run(empty).status == Status::ok);
  CHECK(device_run(empty, 1).status == Status::ok);
  Problem<float, float> no_hidden{3, 0, 2, {}, {}, {1.5f, -2.f}};
  auto const cpu = cpu_run(no_hidden);
  REQUIRE(cpu.status == Status::ok);
  CHECK(cpu.logits == std::vector<float>{1.5f, -2.f, 1.5f, -2.f, 1.5f, -2.f});
  require_identical(cpu, device_run(no_hidden, 2));
  CHECK(reference(no_hidden).logits == cpu.logits);
}

TEST_CASE("gate projection: non-finite inputs are refused on the host, propagate on the device", "[routing][emu]") {
  struct Case {
    int where;  // 0: hidden (token 2, h 5), 1: weight (expert 3, h 7), 2: bias (expert 4)
    float value;
    char const* fragment;
  };
  auto const c = GENERATE(Case{0, nan_value, "hidden states: non-finite value nan at token 2, h 5"},
                          Case{0, -inf_value, "hidden states: non-finite value -inf at token 2, h 5"},
                          Case{1, inf_value, "gate weight: non-finite value inf at expert 3, h 7"},
                          Case{2, nan_value, "gate bias: non-finite value nan at expert 4"});
  auto p = make_problem<float, float>(4, 9, 6, true, 5);
  if (c.where == 0) {
    p.x[2 * 9 + 5] = c.value;
  } else if (c.where == 1) {
    p.w[3 * 9 + 7] = c.value;
  } else {
    p.bias[4] = c.value;
  }
  clear_error_message();
  auto const cpu = cpu_run(p);
  CHECK(cpu.status == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains(c.fragment));
  CHECK(cpu.logits == std::vector<float>(24, -7.f));
  auto const ref = reference(p);
  CHECK(ref.status == Status::invalid_argument);
  CHECK(ref.logits == std::vector<float>(24, -7.f));

  // The device cannot return a Status without a sync: it computes, and the bad value reaches
  // exactly the logits that read it (a row, a column or the bias column); the route kernel then
  // counts those rows in Diagnostics.
  auto const device = device_run(p, 6);
  REQUIRE(device.status == Status::ok);
  for (std::int64_t t = 0; t < 4; ++t) {
    for (std::int64_t e = 0; e < 6; ++e) {
      bool const touched = (c.where == 0 && t == 2) || (c.where == 1 && e == 3) || (c.where == 2 && e == 4);
      CHECK(std::isfinite(device.logits[t * 6 + e]) == !touched);
    }
  }
}

TEST_CASE("gate projection: inputs that could overflow fp32 are refused before writing", "[routing]") {
  auto p = make_problem<float, float>(2, 4, 3, false, 7);
  p.x[5] = 3e30f;
  p.w[2 * 4 + 1] = 2e10f;  // 6e40 > FLT_MAX at token 1, expert 2
  clear_error_message();
  auto const cpu = cpu_run(p);
  CHECK(cpu.status == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("token 1, expert 2 could overflow"));
  CHECK(cpu.logits == std::vector<float>(6, -7.f));
  auto const ref = reference(p);
  CHECK(ref.status == Status::invalid_argument);
  CHECK(ref.logits == std::vector<float>(6, -7.f));
}

TEST_CASE("gate projection: bad buffers get a Status with a message and leave logits untouched", "[routing][emu]") {
  auto const p = make_problem<float, float>(3, 10, 4, true, 9);
  auto expect_rejected = [&](auto mutate, Status code, char const* fragment) {
    Result host_out, device_out;
    auto hb = buffers<MemorySpace::host>(p, host_out);
    auto db = buffers<MemorySpace::device>(p, device_out);
    mutate(hb);
    mutate(db);
    clear_error_message();
    CHECK(cpu::gate_projection(hb) == code);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    CHECK(host::reference_gate_projection(hb) == code);
    CHECK(routing::gate_projection(db, nullptr) == code);
    CHECK(host_out.logits == std::vector<float>(12, -7.f));
    CHECK(device_out.logits == std::vector<float>(12, -7.f));
  };
  expect_rejected([](auto& b) { b.weight.extents[1] = 9; }, Status::invalid_argument,
                  "gate weight: expected [4, 10], got [4, 9]");
  expect_rejected([](auto& b) { b.weight.extents[0] = 0; }, Status::invalid_argument, "need 1 to 2^31-1 experts");
  expect_rejected([](auto& b) { b.bias.extents[0] = 3; }, Status::invalid_argument, "gate bias: expected [4], got [3]");
  expect_rejected([](auto& b) { b.logits.extents[1] = 5; }, Status::invalid_argument,
                  "logits: expected [3, 4], got [3, 5]");
  expect_rejected([](auto& b) { b.hidden.data = nullptr; }, Status::invalid_argument, "hidden states: null pointer");
  expect_rejected([](auto& b) { b.hidden.strides[1] = 2; }, Status::invalid_argument, "must be contiguous");
  expect_rejected(
      [](auto& b) {
        using P = decltype(b.logits.data);
        b.logits.data = reinterpret_cast<P>(reinterpret_cast<char*>(b.logits.data) + 2);
      },
      Status::misaligned, "logits: pointer not aligned");
}
