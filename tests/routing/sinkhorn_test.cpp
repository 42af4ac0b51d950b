// Sinkhorn routing (ALGORITHMS.md §2.9) and Selective Sinkhorn Routing (§2.10), with their
// balancers: the worked examples (d0, d1, plan, U, weights, 4 iterations; SSR linear and
// softmax costs, the implicit gradient), host reference vs the emulated device kernel on random
// and adversarial inputs (ties, -inf, padding, E not a power of two, T = 0 / 1), determinism
// over schedule seeds, non-convergence, every bad input, gradients against the independent
// reference and central differences, the per-(step, layer) OT draw, and the balancer rules.
//
// How results are compared. The reference runs the spec's fp32 iteration with the same
// operations in the same order as the kernel (sums in ascending index, products through fma,
// core/fp32_math.hpp's exp and log), so plan, ids, iteration counts, convergence flags and the
// reported errors are compared bit for bit. Weights: the reference computes them in double,
// the kernel in fp32: Sinkhorn's softmax weights within (E + 40) u (the sum of E exp terms, exp
// and the division, and |z - max| u from rounding z - max, |z - max| < 32 here), sigmoid within
// 4 u; SSR's alpha = Pi_j / sum_U Pi from the same fp32 plan within (K + 2) u (K - 1 roundings in
// the fp32 sum, one in the division, one in the reference's final rounding); u = 2^-24.

#include "moekit/routing/sinkhorn.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "moekit/balancing/sinkhorn.hpp"
#include "moekit/balancing/switch_loss.hpp"
#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/emu/launch_config.hpp"
#include "moekit/host/batch_router_reference.hpp"

using namespace moekit;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();
constexpr float nan_value = std::numeric_limits<float>::quiet_NaN();
constexpr double u = 1.0 / 16777216.0;  // 2^-24

struct Problem {
  std::int64_t tokens = 0;
  int experts = 0;
  std::vector<float> logits;        // [T, E]
  std::vector<std::uint8_t> valid;  // empty: every token real
  float& at(std::int64_t t, int e) { return logits[static_cast<std::size_t>(t * experts + e)]; }
  std::uint8_t const* mask() const { return valid.empty() ? nullptr : valid.data(); }
  HostTensor<float const, 2> view() const {
    return HostTensor<float const, 2>::row_major(logits.data(), {tokens, experts});
  }
};

// The common §2.0 inputs (T = 3, E = 4).
Problem common_z() { return {3, 4, {1.0f, 0.5f, -0.5f, 0.2f, 0.3f, 1.2f, 0.1f, -0.4f, 0.9f, -0.2f, 0.6f, 0.0f}, {}}; }

struct Routed {
  Status status = Status::internal_error;
  std::vector<int> ids;
  std::vector<float> weights;
  std::vector<float> plan;
  routing::SinkhornResult sinkhorn{.iterations = -7};
  routing::SsrResult ssr{.iterations = -7};
  Diagnostics diagnostics{};
};

template <MemorySpace Space>
routing::TransportBuffers<Space> buffers(int k, Problem const& p, Routed& out, bool with_plan = true) {
  out.ids.assign(static_cast<std::size_t>(p.tokens * k), -7);  // a value no router writes
  out.weights.assign(static_cast<std::size_t>(p.tokens * k), -7.f);
  out.plan.assign(with_plan ? static_cast<std::size_t>(p.tokens * p.experts) : 0, -7.f);
  routing::TransportBuffers<Space> b;
  b.logits = TensorView<float const, 2, Space>::row_major(p.logits.data(), {p.tokens, p.experts});
  b.valid = p.mask();
  b.ids = TensorView<int, 2, Space>::row_major(out.ids.data(), {p.tokens, k});
  b.weights = TensorView<float, 2, Space>::row_major(out.weights.data(), {p.tokens, k});
  if (with_plan) {
    b.plan = TensorView<float, 2, Space>::row_major(out.plan.data(), {p.tokens, p.experts});
  }
  return b;
}

struct AlignedWorkspace {
  std::vector<std::byte> bytes;
  void* data = nullptr;
  explicit AlignedWorkspace(std::size_t n) : bytes(n + 256) {
    data = bytes.data() + (256 - reinterpret_cast<std::uintptr_t>(bytes.data()) % 256) % 256;
  }
};

emu::LaunchOptions options(std::uint64_t seed) {
  emu::LaunchOptions o;
  o.schedule_seed = seed;
  o.racecheck = true;
  return o;
}

template <int MaxK>
Routed host_sinkhorn(routing::SinkhornRouter<MaxK> const& r, Problem const& p, host::SinkhornScalings* s = nullptr) {
  Routed out;
  out.status = host::reference_sinkhorn(r, buffers<MemorySpace::host>(r.k, p, out), &out.sinkhorn, s);
  return out;
}

template <int MaxK>
Routed device_sinkhorn(routing::SinkhornRouter<MaxK> const& r, Problem const& p, std::uint64_t seed) {
  emu::ScopedLaunchOptions const guard(options(seed));
  Routed out;
  AlignedWorkspace ws(r.workspace_size(p.tokens));
  out.status = routing::route(r, buffers<MemorySpace::device>(r.k, p, out), &out.sinkhorn, ws.data,
                              r.workspace_size(p.tokens), &out.diagnostics, nullptr);
  return out;
}

template <int MaxK>
Routed host_ssr(routing::SelectiveSinkhornRouter<MaxK> const& r, Problem const& p) {
  Routed out;
  out.status = host::reference_ssr(r, buffers<MemorySpace::host>(r.k, p, out), &out.ssr);
  return out;
}

template <int MaxK>
Routed device_ssr(routing::SelectiveSinkhornRouter<MaxK> const& r, Problem const& p, std::uint64_t seed,
                  unsigned max_blocks = 0) {
  emu::ScopedLaunchOptions const guard(options(seed));
  Routed out;
  AlignedWorkspace ws(r.workspace_size(p.tokens));
  out.status = routing::route(r, buffers<MemorySpace::device>(r.k, p, out), &out.ssr, ws.data,
                              r.workspace_size(p.tokens), &out.diagnostics, nullptr, max_blocks);
  return out;
}

std::vector<std::uint32_t> bits(std::vector<float> const& v) {
  std::vector<std::uint32_t> b(v.size());
  std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
  return b;
}
std::uint32_t bits(float v) {
  std::uint32_t b;
  std::memcpy(&b, &v, sizeof b);
  return b;
}

void require_close(std::vector<float> const& got, std::vector<float> const& expected, double rtol, double atol) {
  REQUIRE(got.size() == expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO("entry " << i << ": got " << got[i] << ", expected " << expected[i]);
    REQUIRE(std::fabs(double(got[i]) - double(expected[i])) <= atol + rtol * std::fabs(double(expected[i])));
  }
}

// Everything but the weights bit for bit; the weights within rtol.
void require_same(Routed const& expected, Routed const& got, double weight_rtol) {
  REQUIRE(got.status == expected.status);
  REQUIRE(got.ids == expected.ids);
  REQUIRE(bits(got.plan) == bits(expected.plan));
  require_close(got.weights, expected.weights, weight_rtol, 0.0);
}

void require_same_sinkhorn_result(routing::SinkhornResult const& a, routing::SinkhornResult const& b) {
  REQUIRE(a.iterations == b.iterations);
  REQUIRE(a.converged == b.converged);
  REQUIRE(bits(a.error) == bits(b.error));
}

void require_same_ssr_result(routing::SsrResult const& a, routing::SsrResult const& b) {
  REQUIRE(a.iterations == b.iterations);
  REQUIRE(a.converged == b.converged);
  REQUIRE(a.used_ot == b.used_ot);
  REQUIRE(bits(a.row_error) == bits(b.row_error));
  REQUIRE(bits(a.column_error) == bits(b.column_error));
}

void require_identical(Routed const& a, Routed const& b) {
  REQUIRE(a.status == b.status);
  REQUIRE(a.ids == b.ids);
  REQUIRE(bits(a.weights) == bits(b.weights));
  REQUIRE(bits(a.plan) == bits(b.plan));
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Sinkhorn (§2.9)

TEST_CASE("sinkhorn reproduces the worked example of ALGORITHMS.md 2.9", "[routing][emu]") {
  routing::SinkhornRouter<8> const r{.experts = 4, .k = 2};
  Problem const p = common_z();
  host::SinkhornScalings s;
  Routed const host = host_sinkhorn(r, p, &s);
  REQUIRE(host.status == Status::ok);
  CHECK(host.sinkhorn.iterations == 4);
  CHECK(host.sinkhorn.converged);
  CHECK(host.sinkhorn.error <= 1e-4f);
  // The example prints 7 significant digits of an fp32 run (half a unit: <= 5e-7 relative);
  // its exp and ours differ by up to an ulp each, through 4 iterations of a few dozen
  // operations per entry: rtol 2e-6.
  require_close(s.d0, {0.05503426f, 0.05380262f, 0.05147378f}, 2e-6, 0);
  require_close(s.d1, {0.7166822f, 0.8025417f, 1.339532f, 1.615428f}, 2e-6, 0);
  require_close(host.plan,
                {0.1072147f, 0.07281954f, 0.04471352f, 0.1085874f, 0.05204972f, 0.1433588f, 0.07965001f, 0.05826036f,
                 0.0907356f, 0.03382165f, 0.1256365f, 0.08315218f},
                2e-6, 0);
  // Row sums [0.3333352, 0.3333189, 0.3333459], column sums 0.25 (to eps).
  std::vector<float> rows(3, 0.f), columns(4, 0.f);
  for (int t = 0; t < 3; ++t) {
    for (int e = 0; e < 4; ++e) {
      rows[t] += host.plan[static_cast<std::size_t>(t * 4 + e)];
      columns[e] += host.plan[static_cast<std::size_t>(t * 4 + e)];
    }
  }
  require_close(rows, {0.3333352f, 0.3333189f, 0.3333459f}, 2e-6, 0);
  require_close(columns, {0.25f, 0.25f, 0.25f, 0.25f}, 1e-6, 0);
  // U = [3, 0], [1, 2], [2, 0] (plain top-2 would be [0, 1], [1, 0], [0, 2]); loads [2, 1, 2, 1].
  CHECK(host.ids == std::vector<int>{3, 0, 1, 2, 2, 0});
  std::vector<int> loads(4, 0);
  for (int id : host.ids) {
    ++loads[id];
  }
  CHECK(loads == std::vector<int>{2, 1, 2, 1});
  // Softmax weights, not renormalised (7 printed digits; the reference's are double: rtol 1e-6).
  require_close(host.weights, {0.1971615f, 0.4387909f, 0.5151088f, 0.1714648f, 0.2986858f, 0.4031837f}, 1e-6, 0);

  for (std::uint64_t seed : {0ull, 5ull, 77ull}) {
    Routed const device = device_sinkhorn(r, p, seed);
    require_same(host, device, 44 * u);
    require_same_sinkhorn_result(host.sinkhorn, device.sinkhorn);
    CHECK(device.diagnostics.nonfinite_rows == 0);
  }

  // Run far past tol: the fully converged plan of the example (7 digits; fp32 sits within a few
  // ulps of the fixed point).
  routing::SinkhornRouter<8> const tight{.experts = 4, .k = 2, .tol = 0.f, .max_iters = 200};
  Routed const converged = host_sinkhorn(tight, p);
  REQUIRE(converged.status == Status::ok);
  require_close(converged.plan,
                {0.1072148f, 0.07281761f, 0.04471353f, 0.1085873f, 0.05205263f, 0.1433628f, 0.07965438f, 0.05826348f,
                 0.09073253f, 0.03381956f, 0.1256321f, 0.08314916f},
                2e-6, 0);
  require_same(converged, device_sinkhorn(tight, p, 3), 44 * u);
}

TEST_CASE("sinkhorn with k = 1 weights by the sigmoid of the selected logit", "[routing][emu]") {
  routing::SinkhornRouter<1> const r{.experts = 4, .k = 1};
  Problem const p = common_z();
  Routed const host = host_sinkhorn(r, p);
  REQUIRE(host.status == Status::ok);
  CHECK(host.ids == std::vector<int>{3, 1, 2});  // the top-1 of each row of the example's plan
  require_close(host.weights, {0.5498340f, 0.7685248f, 0.6456563f}, 1e-6, 0);
  require_same(host, device_sinkhorn(r, p, 2), 4 * u);
}

namespace {

enum class Pattern { random, ties, masked, coarse, one_expert };

char const* name(Pattern p) {
  switch (p) {
    case Pattern::random: return "random";
    case Pattern::ties: return "ties";
    case Pattern::masked: return "masked";
    case Pattern::coarse: return "coarse";
    case Pattern::one_expert: return "one_expert";
  }
  return "?";
}

Problem make_problem(std::int64_t tokens, int experts, Pattern pattern, std::uint32_t seed, bool padding) {
  Problem p{tokens, experts, std::vector<float>(static_cast<std::size_t>(tokens * experts)), {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 2.f);
  std::uniform_int_distribution<int> three(-1, 1);
  std::uniform_int_distribution<int> quarter(-8, 8);
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (int e = 0; e < experts; ++e) {
      float v = 0.f;
      switch (pattern) {
        case Pattern::random: v = normal(rng); break;
        case Pattern::ties: v = float(three(rng)); break;
        case Pattern::masked: v = ((t + e) % 3 == 1 && experts > 2) ? -inf : normal(rng); break;
        case Pattern::coarse: v = float(quarter(rng)) / 4.f; break;
        case Pattern::one_expert: v = e == 0 ? 6.f : normal(rng) / 2.f; break;
      }
      p.at(t, e) = v;
    }
  }
  if (padding) {
    p.valid.resize(static_cast<std::size_t>(tokens));
    for (std::int64_t t = 0; t < tokens; ++t) {
      p.valid[static_cast<std::size_t>(t)] = (t * 5 + seed) % 3 != 0 ? 1 : 0;
      if (p.valid[static_cast<std::size_t>(t)] == 0) {
        p.at(t, 0) = t % 2 == 0 ? nan_value : 100.f;  // never read: the host does not refuse it
      }
    }
  }
  return p;
}

struct Shape {
  std::int64_t tokens;
  int experts, k;
};

}  // namespace

TEST_CASE("sinkhorn: host reference and device kernel agree bit for bit", "[routing][emu]") {
  auto const shape = GENERATE(Shape{1, 1, 1}, Shape{1, 5, 2}, Shape{3, 4, 2}, Shape{17, 8, 2}, Shape{40, 6, 1},
                              Shape{64, 60, 8}, Shape{5, 16, 3}, Shape{300, 7, 2}, Shape{9, 256, 8});
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::masked, Pattern::coarse, Pattern::one_expert);
  auto const padding = GENERATE(false, true);
  CAPTURE(shape.tokens, shape.experts, shape.k, name(pattern), padding);
  routing::SinkhornRouter<8> const r{.experts = shape.experts, .k = shape.k};
  Problem const p = make_problem(shape.tokens, shape.experts, pattern,
                                 static_cast<std::uint32_t>(shape.tokens * 13 + shape.experts), padding);
  Routed const host = host_sinkhorn(r, p);
  REQUIRE(host.status == Status::ok);
  Routed const device = device_sinkhorn(r, p, 0);
  require_same(host, device, shape.k == 1 ? 4 * u : (shape.experts + 40) * u);
  require_same_sinkhorn_result(host.sinkhorn, device.sinkhorn);
  CHECK(device.diagnostics.nonfinite_rows == 0);
  require_identical(device, device_sinkhorn(r, p, 31));
  // Padding rows get the empty slot and a zero plan row.
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    if (p.mask() != nullptr && p.valid[static_cast<std::size_t>(t)] == 0) {
      CHECK(device.ids[static_cast<std::size_t>(t * shape.k)] == shape.experts);
      CHECK(device.weights[static_cast<std::size_t>(t * shape.k)] == 0.f);
      CHECK(device.plan[static_cast<std::size_t>(t * shape.experts)] == 0.f);
    }
  }
}

TEST_CASE("sinkhorn: T = 0 and all-padding batches route nothing and report convergence", "[routing][emu]") {
  routing::SinkhornRouter<8> const r{.experts = 4, .k = 2};
  Problem const empty{0, 4, {}, {}};
  Routed const host = host_sinkhorn(r, empty);
  REQUIRE(host.status == Status::ok);
  CHECK(host.sinkhorn.iterations == 0);
  CHECK(host.sinkhorn.converged);
  Routed const device = device_sinkhorn(r, empty, 1);
  REQUIRE(device.status == Status::ok);
  require_same_sinkhorn_result(host.sinkhorn, device.sinkhorn);

  Problem padding = common_z();
  padding.valid = {0, 0, 0};
  Routed const all_padding = device_sinkhorn(r, padding, 2);
  REQUIRE(all_padding.status == Status::ok);
  CHECK(all_padding.ids == std::vector<int>(6, 4));
  CHECK(all_padding.sinkhorn.iterations == 0);
  require_same(host_sinkhorn(r, padding), all_padding, 0);
}

TEST_CASE("sinkhorn: max_iters reached is not an error: converged = false, the last plan used", "[routing][emu]") {
  routing::SinkhornRouter<8> const r{.experts = 4, .k = 2, .tol = 1e-4f, .max_iters = 2};
  Problem const p = common_z();
  Routed const host = host_sinkhorn(r, p);
  REQUIRE(host.status == Status::ok);
  CHECK(host.sinkhorn.iterations == 2);
  CHECK_FALSE(host.sinkhorn.converged);
  CHECK(host.sinkhorn.error > 1e-4f);
  Routed const device = device_sinkhorn(r, p, 4);
  require_same(host, device, 44 * u);
  require_same_sinkhorn_result(host.sinkhorn, device.sinkhorn);
  // Megatron's initial err is 1e9: a tol at or above it runs no iteration (plan = exp(z)).
  routing::SinkhornRouter<8> const lax{.experts = 4, .k = 2, .tol = 2e9f};
  Routed const none = device_sinkhorn(lax, p, 0);
  CHECK(none.sinkhorn.iterations == 0);
  CHECK(none.sinkhorn.converged);
  CHECK(none.plan[0] == fp32::exp(1.0f));
  require_same(host_sinkhorn(lax, p), none, 44 * u);
}

TEST_CASE("sinkhorn: bad parameters and logits get a Status with a message, outputs untouched", "[routing][emu]") {
  Problem const p = common_z();
  auto expect_rejected = [&](auto const& r, Problem const& q, Status code, char const* fragment) {
    clear_error_message();
    Routed const host = host_sinkhorn(r, q);
    CHECK(host.status == code);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    CHECK(host.ids == std::vector<int>(host.ids.size(), -7));
    CHECK(host.plan == std::vector<float>(host.plan.size(), -7.f));
    CHECK(host.sinkhorn.iterations == -7);
  };
  expect_rejected(routing::SinkhornRouter<8>{.experts = 4, .k = 5}, p, Status::invalid_argument,
                  "k must satisfy 1 <= k <= E (got k=5, E=4)");
  expect_rejected(routing::SinkhornRouter<8>{.experts = 4, .k = 0}, p, Status::invalid_argument, "1 <= k <= E");
  expect_rejected(routing::SinkhornRouter<2>{.experts = 4, .k = 3}, p, Status::unsupported_config, "MaxK=2");
  expect_rejected(routing::SinkhornRouter<8>{.experts = 4, .k = 2, .tol = -1.f}, p, Status::invalid_argument, "tol");
  expect_rejected(routing::SinkhornRouter<8>{.experts = 4, .k = 2, .tol = nan_value}, p, Status::invalid_argument,
                  "tol");
  expect_rejected(routing::SinkhornRouter<8>{.experts = 4, .k = 2, .max_iters = 0}, p, Status::invalid_argument,
                  "max_iters");
  routing::SinkhornRouter<8> const r{.experts = 4, .k = 2};
  Problem big = p;
  big.at(2, 1) = 88.5f;
  expect_rejected(r, big, Status::invalid_argument,
                  "sinkhorn: logit 88.5 exceeds 88; exp overflows fp32 (token 2, expert 1)");
  Problem nan_row = p;
  nan_row.at(1, 2) = nan_value;
  expect_rejected(r, nan_row, Status::invalid_argument, "non-finite value nan at token 1, expert 2");
  Problem inf_row = p;
  inf_row.at(1, 2) = inf;
  expect_rejected(r, inf_row, Status::invalid_argument, "non-finite value inf at token 1, expert 2");
  Problem masked = p;
  masked.at(0, 0) = masked.at(0, 1) = masked.at(0, 2) = masked.at(0, 3) = -inf;
  expect_rejected(r, masked, Status::invalid_argument, "all experts masked (-inf) at token 0");

  // 88 itself is legal, and so is anything in a padding row.
  Problem edge = p;
  edge.at(0, 0) = 88.f;
  CHECK(host_sinkhorn(r, edge).status == Status::ok);
  big.valid = {1, 1, 0};
  CHECK(host_sinkhorn(r, big).status == Status::ok);

  // The device refuses bad parameters and buffers the same way ...
  CHECK(device_sinkhorn(routing::SinkhornRouter<8>{.experts = 4, .k = 5}, p, 0).status == Status::invalid_argument);
  Routed out;
  auto b = buffers<MemorySpace::device>(2, p, out);
  routing::SinkhornResult result{};
  Diagnostics d{};
  AlignedWorkspace ws(r.workspace_size(3));
  clear_error_message();
  CHECK(routing::route(r, b, &result, ws.data, r.workspace_size(3) - 4, &d, nullptr) == Status::workspace_too_small);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("sinkhorn d1"));
  CHECK(routing::route(r, b, nullptr, ws.data, r.workspace_size(3), &d, nullptr) == Status::invalid_argument);
  auto wrong_plan = b;
  wrong_plan.plan.extents[1] = 3;
  CHECK(routing::route(r, wrong_plan, &result, ws.data, r.workspace_size(3), &d, nullptr) == Status::invalid_argument);
  CHECK(out.ids == std::vector<int>(6, -7));
  CHECK(host::reference_sinkhorn(r, buffers<MemorySpace::host>(2, p, out), nullptr) == Status::invalid_argument);

  // ... and counts the rows the host refuses (here one logit > 88, another NaN), keeping ids in range.
  Problem bad = p;
  bad.at(0, 3) = 89.f;
  bad.at(2, 0) = nan_value;
  Routed const device = device_sinkhorn(r, bad, 3);
  REQUIRE(device.status == Status::ok);
  CHECK(device.diagnostics.nonfinite_rows == 2);
  for (int id : device.ids) {
    CHECK((id >= 0 && id < 4));
  }
}

TEST_CASE("sinkhorn backward: formula, term-by-term reference and central differences agree", "[routing]") {
  // L = sum_slots g * weight with the selection fixed; weights softmax (k > 1) or sigmoid (k = 1)
  // of z, recomputed in double for the differences: h = 1e-6 gives truncation ~1e-12 and
  // rounding ~1e-10; both analytic results are rounded to fp32: |diff| <= 1e-6 |g| + 1e-9.
  for (int k : {1, 3}) {
    CAPTURE(k);
    routing::SinkhornRouter<8> const r{.experts = 6, .k = k};
    Problem const p = make_problem(7, 6, Pattern::random, 3, true);
    Routed const fwd = host_sinkhorn(r, p);
    REQUIRE(fwd.status == Status::ok);
    std::vector<float> g(fwd.ids.size());
    for (std::size_t i = 0; i < g.size(); ++i) {
      g[i] = float(int(i * 7 % 5) - 2) / 2.f;
    }
    std::vector<float> grad(42, -7.f), reference(42, -7.f);
    routing::TransportGradBuffers b{.logits = p.view(),
                                    .valid = p.mask(),
                                    .ids = HostTensor<int const, 2>::row_major(fwd.ids.data(), {7, k}),
                                    .grad_weights = HostTensor<float const, 2>::row_major(g.data(), {7, k}),
                                    .grad_logits = HostTensor<float, 2>::row_major(grad.data(), {7, 6})};
    REQUIRE(routing::sinkhorn_backward(r, b) == Status::ok);
    b.grad_logits.data = reference.data();
    REQUIRE(host::reference_sinkhorn_backward(r, b) == Status::ok);
    require_close(grad, reference, 1e-6, 1e-9);
    auto loss = [&](std::vector<double> const& z) {
      double l = 0;
      for (int t = 0; t < 7; ++t) {
        if (p.valid[static_cast<std::size_t>(t)] == 0) {
          continue;
        }
        double mx = -INFINITY, sum = 0;
        for (int e = 0; e < 6; ++e) {
          mx = std::max(mx, z[static_cast<std::size_t>(t * 6 + e)]);
        }
        for (int e = 0; e < 6; ++e) {
          sum += std::exp(z[static_cast<std::size_t>(t * 6 + e)] - mx);
        }
        for (int j = 0; j < k; ++j) {
          int const e = fwd.ids[static_cast<std::size_t>(t * k + j)];
          double const zz = z[static_cast<std::size_t>(t * 6 + e)];
          double const w = k == 1 ? 1.0 / (1.0 + std::exp(-zz)) : std::exp(zz - mx) / sum;
          l += g[static_cast<std::size_t>(t * k + j)] * w;
        }
      }
      return l;
    };
    std::vector<double> z(p.logits.begin(), p.logits.end());
    for (std::size_t i = 0; i < z.size(); ++i) {
      if (p.valid[i / 6] == 0) {
        CHECK(grad[i] == 0.f);
        continue;
      }
      std::vector<double> plus = z, minus = z;
      plus[i] += 1e-6;
      minus[i] -= 1e-6;
      double const fd = (loss(plus) - loss(minus)) / 2e-6;
      INFO("entry " << i);
      CHECK(std::fabs(grad[i] - fd) <= 1e-6 * std::fabs(fd) + 1e-9);
    }
  }
  // Bad selections are refused.
  routing::SinkhornRouter<8> const r{.experts = 4, .k = 2};
  Problem const p = common_z();
  std::vector<int> ids = {3, 3, 1, 2, 2, 0};
  std::vector<float> g(6, 1.f), grad(12, -7.f);
  routing::TransportGradBuffers const b{.logits = p.view(),
                                        .ids = HostTensor<int const, 2>::row_major(ids.data(), {3, 2}),
                                        .grad_weights = HostTensor<float const, 2>::row_major(g.data(), {3, 2}),
                                        .grad_logits = HostTensor<float, 2>::row_major(grad.data(), {3, 4})};
  clear_error_message();
  CHECK(routing::sinkhorn_backward(r, b) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("expert 3 selected twice at token 0"));
  ids[0] = 4;
  CHECK(routing::sinkhorn_backward(r, b) == Status::invalid_argument);
  CHECK(grad == std::vector<float>(12, -7.f));
}

// ---------------------------------------------------------------------------------------------
// Selective Sinkhorn Routing (§2.10)

namespace {

// A test-local double log-domain Sinkhorn on double logits (for central differences): the
// converged plan, then alpha over the fixed selection.
std::vector<double> ssr_alpha_double(std::vector<double> const& z, int tokens, int experts, double xi, bool softmax,
                                     std::vector<int> const& ids, int k) {
  std::vector<double> c(z.size());
  for (int t = 0; t < tokens; ++t) {
    double mx = -INFINITY, sum = 0;
    for (int e = 0; e < experts; ++e) {
      mx = std::max(mx, z[static_cast<std::size_t>(t * experts + e)]);
    }
    for (int e = 0; e < experts; ++e) {
      sum += std::exp(z[static_cast<std::size_t>(t * experts + e)] - mx);
    }
    for (int e = 0; e < experts; ++e) {
      double const v = z[static_cast<std::size_t>(t * experts + e)];
      c[static_cast<std::size_t>(t * experts + e)] = softmax ? std::exp(v - mx) / sum : v;
    }
  }
  std::vector<double> lu(static_cast<std::size_t>(tokens), 0.0), lv(static_cast<std::size_t>(experts), 0.0),
      plan(z.size());
  double const target = double(tokens) / experts;
  for (int it = 0; it < 100000; ++it) {
    for (int e = 0; e < experts; ++e) {
      double mx = -INFINITY, s = 0;
      for (int t = 0; t < tokens; ++t) {
        mx = std::max(mx, c[static_cast<std::size_t>(t * experts + e)] / xi + lu[t]);
      }
      for (int t = 0; t < tokens; ++t) {
        s += std::exp(c[static_cast<std::size_t>(t * experts + e)] / xi + lu[t] - mx);
      }
      lv[e] = std::log(target) - mx - std::log(s);
    }
    for (int t = 0; t < tokens; ++t) {
      double mx = -INFINITY, s = 0;
      for (int e = 0; e < experts; ++e) {
        mx = std::max(mx, c[static_cast<std::size_t>(t * experts + e)] / xi + lv[e]);
      }
      for (int e = 0; e < experts; ++e) {
        s += std::exp(c[static_cast<std::size_t>(t * experts + e)] / xi + lv[e] - mx);
      }
      lu[t] = -mx - std::log(s);
    }
    double err = 0;
    for (int e = 0; e < experts; ++e) {
      double col = 0;
      for (int t = 0; t < tokens; ++t) {
        plan[static_cast<std::size_t>(t * experts + e)] =
            std::exp(lu[t] + c[static_cast<std::size_t>(t * experts + e)] / xi + lv[e]);
        col += plan[static_cast<std::size_t>(t * experts + e)];
      }
      err = std::max(err, std::fabs(col - target));
    }
    if (err < 1e-15 * std::max(1.0, target)) {
      break;
    }
  }
  std::vector<double> alpha(static_cast<std::size_t>(tokens * k));
  for (int t = 0; t < tokens; ++t) {
    double mass = 0;
    for (int j = 0; j < k; ++j) {
      mass += plan[static_cast<std::size_t>(t * experts + ids[static_cast<std::size_t>(t * k + j)])];
    }
    for (int j = 0; j < k; ++j) {
      alpha[static_cast<std::size_t>(t * k + j)] =
          plan[static_cast<std::size_t>(t * experts + ids[static_cast<std::size_t>(t * k + j)])] / mass;
    }
  }
  return alpha;
}

}  // namespace

TEST_CASE("ssr reproduces the linear-cost example of ALGORITHMS.md 2.10", "[routing][emu]") {
  routing::SelectiveSinkhornRouter<8> const r{
      .experts = 4, .k = 2, .use_ot = true, .xi = 1.f, .cost = routing::TransportCost::linear};
  Problem const p = common_z();
  // The converged plan (double): 7 printed digits, rtol 1e-6.
  std::vector<double> plan;
  REQUIRE(host::reference_ssr_converged_plan(r, p.view(), nullptr, plan) == Status::ok);
  std::vector<float> const expected = {0.3216445f, 0.2184528f, 0.1341406f, 0.325762f,  0.1561579f, 0.4300885f,
                                       0.2389632f, 0.1747905f, 0.2721976f, 0.1014587f, 0.3768962f, 0.2494475f};
  require_close(std::vector<float>(plan.begin(), plan.end()), expected, 1e-6, 0);
  // The fp32 iteration (delta = 1e-4) selects the same U and nearly the same alpha: at exit the
  // rows are exact and each column is within delta of 3/4, so plan entries move by O(delta).
  Routed const host = host_ssr(r, p);
  REQUIRE(host.status == Status::ok);
  CHECK(host.ssr.used_ot);
  CHECK(host.ssr.converged);
  CHECK(host.ssr.row_error < 1e-4f);
  CHECK(host.ssr.column_error < 1e-4f);
  CHECK(host.ids == std::vector<int>{3, 0, 1, 2, 2, 0});
  require_close(host.weights, {0.5031800f, 0.4968200f, 0.6428330f, 0.3571670f, 0.5806499f, 0.4193501f}, 0, 1e-4);
  require_close(host.plan, expected, 0, 1e-4);
  for (std::uint64_t seed : {0ull, 9ull}) {
    Routed const device = device_ssr(r, p, seed);
    require_same(host, device, 4 * u);
    require_same_ssr_result(host.ssr, device.ssr);
  }
  // Pi is T x the converged Sinkhorn plan of 2.9 (same kernel exp(z), marginals 1 and 3/4 vs
  // 1/3 and 1/4), up to Sinkhorn's eps terms (7e-9 / 3) and the 7 printed digits (5e-8).
  for (std::size_t i = 0; i < expected.size(); ++i) {
    CHECK(std::fabs(plan[i] / 3.0 - std::vector<double>{0.1072148, 0.07281761, 0.04471353, 0.1085873, 0.05205263,
                                                        0.1433628, 0.07965438, 0.05826348, 0.09073253, 0.03381956,
                                                        0.1256321, 0.08314916}[i]) <= 6e-8);
  }
}

TEST_CASE("ssr reproduces the default (softmax cost, xi = 0.05) example and its gradient", "[routing][emu]") {
  routing::SelectiveSinkhornRouter<8> const r{.experts = 4, .k = 2, .use_ot = true};
  Problem const p = common_z();
  std::vector<double> plan;
  REQUIRE(host::reference_ssr_converged_plan(r, p.view(), nullptr, plan) == Status::ok);
  std::vector<float> const expected = {0.5367837f, 0.002797719f, 0.01448352f, 0.4459351f,    0.01003702f, 0.747048f,
                                       0.1158284f, 0.1270866f,   0.2031793f,  0.0001542475f, 0.6196881f,  0.1769783f};
  require_close(std::vector<float>(plan.begin(), plan.end()), expected, 1e-6, 0);

  // fp32, delta = 1e-4: the example stops after 21 iterations with the converged selection.
  Routed const host = host_ssr(r, p);
  REQUIRE(host.status == Status::ok);
  CHECK(host.ssr.iterations == 21);
  CHECK(host.ssr.converged);
  CHECK(host.ids == std::vector<int>{0, 3, 1, 3, 2, 0});
  Routed const device = device_ssr(r, p, 4);
  require_same(host, device, 4 * u);
  require_same_ssr_result(host.ssr, device.ssr);

  // alpha of the converged plan (7 digits).
  std::vector<int> const ids = host.ids;
  std::vector<double> const z(p.logits.begin(), p.logits.end());
  std::vector<double> const alpha = ssr_alpha_double(z, 3, 4, 0.05, true, ids, 2);
  require_close(std::vector<float>(alpha.begin(), alpha.end()),
                {0.5462231f, 0.4537769f, 0.8546144f, 0.1453856f, 0.7530838f, 0.2469162f}, 1e-6, 0);

  // Gradient of L = sum G o alpha, G = [[1,2,3,4],[-1,0,1,2],[0.5,-0.5,1.5,-1.5]]: L = 3.905186.
  double const gm[3][4] = {{1, 2, 3, 4}, {-1, 0, 1, 2}, {0.5, -0.5, 1.5, -1.5}};
  std::vector<float> g(6);
  double loss = 0;
  for (int t = 0; t < 3; ++t) {
    for (int j = 0; j < 2; ++j) {
      g[static_cast<std::size_t>(t * 2 + j)] = float(gm[t][ids[static_cast<std::size_t>(t * 2 + j)]]);
      loss += g[static_cast<std::size_t>(t * 2 + j)] * alpha[static_cast<std::size_t>(t * 2 + j)];
    }
  }
  CHECK(std::fabs(loss - 3.905186) <= 5e-7);
  std::vector<float> const dz = {-0.8254187f, 0.1604872f, 0.0427572f, 0.6221743f,  0.0612968f, 0.0284045f,
                                 -0.2226347f, 0.1329333f, 0.6070988f, -0.0994256f, 0.2326900f, -0.7403632f};
  std::vector<float> grad(12, -7.f), reference(12, -7.f);
  routing::TransportGradBuffers b{.logits = p.view(),
                                  .ids = HostTensor<int const, 2>::row_major(ids.data(), {3, 2}),
                                  .grad_weights = HostTensor<float const, 2>::row_major(g.data(), {3, 2}),
                                  .grad_logits = HostTensor<float, 2>::row_major(grad.data(), {3, 4})};
  // At the converged plan the implicit gradient is the example's (7 decimals: 1e-7 + fp32 output rounding).
  REQUIRE(routing::ssr_backward(r, b, HostTensor<double const, 2>::row_major(plan.data(), {3, 4})) == Status::ok);
  require_close(grad, dz, 1e-6, 1e-7);
  b.grad_logits.data = reference.data();
  REQUIRE(host::reference_ssr_backward(r, b) == Status::ok);
  require_close(reference, dz, 1e-6, 1e-7);
  // Central differences of the test's own double formula (h = 1e-6: truncation h^2 |f'''| with
  // |f'''| ~ 1/xi^3 = 8000 gives ~1e-9, the plan's 1e-15 convergence / h gives ~1e-9).
  for (std::size_t i = 0; i < z.size(); ++i) {
    std::vector<double> plus = z, minus = z;
    plus[i] += 1e-6;
    minus[i] -= 1e-6;
    double lp = 0, lm = 0;
    std::vector<double> const ap = ssr_alpha_double(plus, 3, 4, 0.05, true, ids, 2);
    std::vector<double> const am = ssr_alpha_double(minus, 3, 4, 0.05, true, ids, 2);
    for (std::size_t j = 0; j < 6; ++j) {
      lp += g[j] * ap[j];
      lm += g[j] * am[j];
    }
    double const fd = (lp - lm) / 2e-6;
    INFO("entry " << i << ": fd " << fd << ", implicit " << grad[i]);
    CHECK(std::fabs(grad[i] - fd) <= 1e-6 * std::fabs(fd) + 1e-7);
  }
  // Linearising at the fp32 forward plan (delta = 1e-4) instead moves the gradient by O(delta / xi).
  std::vector<float> at_forward(12, -7.f);
  b.grad_logits.data = at_forward.data();
  REQUIRE(routing::ssr_backward(r, b, HostTensor<float const, 2>::row_major(host.plan.data(), {3, 4})) == Status::ok);
  require_close(at_forward, dz, 0, 20 * 1e-4 * 4);
  // detach: no gradient on OT steps.
  routing::SelectiveSinkhornRouter<8> detach = r;
  detach.grad_mode = routing::TransportGradient::detach;
  REQUIRE(routing::ssr_backward(detach, b, HostTensor<double const, 2>::row_major(plan.data(), {3, 4})) == Status::ok);
  CHECK(at_forward == std::vector<float>(12, 0.f));
}

TEST_CASE("ssr: host reference and device kernel agree bit for bit", "[routing][emu]") {
  auto const shape = GENERATE(Shape{1, 1, 1}, Shape{1, 4, 2}, Shape{3, 4, 2}, Shape{13, 8, 2}, Shape{30, 6, 1},
                              Shape{20, 60, 8}, Shape{6, 16, 3}, Shape{150, 7, 2});
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::masked, Pattern::one_expert);
  auto const padding = GENERATE(false, true);
  auto const cost = GENERATE(routing::TransportCost::softmax, routing::TransportCost::linear);
  CAPTURE(shape.tokens, shape.experts, shape.k, name(pattern), padding, int(cost));
  routing::SelectiveSinkhornRouter<8> r{
      .experts = shape.experts, .k = shape.k, .use_ot = true, .xi = 0.5f, .max_iter = 40, .cost = cost};
  if (cost == routing::TransportCost::softmax && shape.tokens < 20) {
    r.xi = 0.05f;  // the default, on the smaller problems
  }
  Problem const p = make_problem(shape.tokens, shape.experts, pattern,
                                 static_cast<std::uint32_t>(shape.tokens * 17 + shape.experts), padding);
  clear_error_message();
  Routed const host = host_ssr(r, p);
  bool dead_column = false;  // an expert at -inf for every real token (possible with T = 1)
  for (int e = 0; e < shape.experts && cost == routing::TransportCost::linear; ++e) {
    bool any_real = false, reachable = false;
    for (std::int64_t t = 0; t < p.tokens; ++t) {
      if (p.mask() == nullptr || p.valid[static_cast<std::size_t>(t)] != 0) {
        any_real = true;
        reachable = reachable || p.logits[static_cast<std::size_t>(t * shape.experts + e)] != -inf;
      }
    }
    dead_column = dead_column || (any_real && !reachable);
  }
  if (dead_column) {
    // Under the linear cost no plan gives that expert its column mass: refused.
    REQUIRE(host.status == Status::invalid_argument);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains("is -inf for every token"));
    return;
  }
  REQUIRE(host.status == Status::ok);
  Routed const device = device_ssr(r, p, 0);
  require_same(host, device, (shape.k + 2) * u);
  require_same_ssr_result(host.ssr, device.ssr);
  CHECK(device.diagnostics.nonfinite_rows == 0);
  if (shape.tokens * shape.experts <= 300) {
    require_identical(device, device_ssr(r, p, 41));
  }
  // Rows sum to one at exit (column update first): |row - 1| within E u of fp32 summation.
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    if (p.mask() != nullptr && p.valid[static_cast<std::size_t>(t)] == 0) {
      CHECK(device.ids[static_cast<std::size_t>(t * shape.k)] == shape.experts);
      continue;
    }
    double row = 0;
    for (int e = 0; e < shape.experts; ++e) {
      row += device.plan[static_cast<std::size_t>(t * shape.experts + e)];
    }
    CHECK(std::fabs(row - 1.0) <= (shape.experts + 4) * u * 4);
  }
}

TEST_CASE("ssr without use_ot is softmax top-k renormalised (Mixtral)", "[routing][emu]") {
  auto const shape = GENERATE(Shape{1, 1, 1}, Shape{37, 8, 2}, Shape{300, 60, 8}, Shape{5, 3, 3});
  auto const padding = GENERATE(false, true);
  CAPTURE(shape.tokens, shape.experts, shape.k, padding);
  routing::SelectiveSinkhornRouter<8> const r{.experts = shape.experts, .k = shape.k};
  Problem const p = make_problem(shape.tokens, shape.experts, Pattern::ties, 5, padding);
  Routed const host = host_ssr(r, p);
  REQUIRE(host.status == Status::ok);
  CHECK_FALSE(host.ssr.used_ot);
  Routed const device = device_ssr(r, p, 3);
  REQUIRE(device.status == Status::ok);
  CHECK(device.ids == host.ids);
  require_close(device.weights, host.weights, (shape.experts + 40) * u, 0);
  CHECK_FALSE(device.ssr.used_ot);
  CHECK(device.ssr.converged);
  CHECK(device.plan == std::vector<float>(device.plan.size(), -7.f));  // no plan on non-OT steps
  require_identical(device, device_ssr(r, p, 8, 1));
  // Bit for bit the Mixtral router's own route_token.
  routing::TopK<8> const mixtral = routing::mixtral_router(shape.experts, shape.k);
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    if (p.mask() != nullptr && p.valid[static_cast<std::size_t>(t)] == 0) {
      continue;
    }
    int ids[8];
    float w[8];
    mixtral.route_token(t, &p.logits[static_cast<std::size_t>(t * shape.experts)], ids, w);
    for (int j = 0; j < shape.k; ++j) {
      CHECK(device.ids[static_cast<std::size_t>(t * shape.k + j)] == ids[j]);
      CHECK(bits(device.weights[static_cast<std::size_t>(t * shape.k + j)]) == bits(w[j]));
    }
  }
}

TEST_CASE("ssr: max_iter reached is not an error; T = 0 and all padding route nothing", "[routing][emu]") {
  routing::SelectiveSinkhornRouter<8> const r{.experts = 4, .k = 2, .use_ot = true, .max_iter = 3};
  Problem const p = common_z();
  Routed const host = host_ssr(r, p);
  REQUIRE(host.status == Status::ok);
  CHECK(host.ssr.iterations == 3);
  CHECK_FALSE(host.ssr.converged);
  CHECK(host.ssr.column_error >= 1e-4f);
  Routed const device = device_ssr(r, p, 2);
  require_same(host, device, 4 * u);
  require_same_ssr_result(host.ssr, device.ssr);

  Problem const empty{0, 4, {}, {}};
  Routed const none = device_ssr(r, empty, 1);
  REQUIRE(none.status == Status::ok);
  CHECK(none.ssr.iterations == 0);
  CHECK(none.ssr.converged);
  Problem padding = common_z();
  padding.valid = {0, 0, 0};
  Routed const all_padding = device_ssr(r, padding, 1);
  CHECK(all_padding.ids == std::vector<int>(6, 4));
  require_same(host_ssr(r, padding), all_padding, 0);
}

TEST_CASE("ssr: bad parameters and logits get a Status with a message, outputs untouched", "[routing][emu]") {
  Problem const p = common_z();
  auto expect_rejected = [&](auto const& r, Problem const& q, Status code, char const* fragment) {
    clear_error_message();
    Routed const host = host_ssr(r, q);
    CHECK(host.status == code);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    CHECK(host.ids == std::vector<int>(host.ids.size(), -7));
    CHECK(host.ssr.iterations == -7);
    if (code != Status::invalid_argument || std::string(fragment).find("ssr router") != std::string::npos) {
      CHECK(device_ssr(r, q, 0).status == code);
    }
  };
  using R = routing::SelectiveSinkhornRouter<8>;
  expect_rejected(R{.experts = 4, .k = 5, .use_ot = true}, p, Status::invalid_argument, "ssr router: k must satisfy");
  expect_rejected(routing::SelectiveSinkhornRouter<2>{.experts = 4, .k = 3}, p, Status::unsupported_config, "MaxK=2");
  expect_rejected(R{.experts = 4, .k = 2, .xi = 0.f}, p, Status::invalid_argument, "ssr router: xi");
  expect_rejected(R{.experts = 4, .k = 2, .delta = -1e-4f}, p, Status::invalid_argument, "ssr router: delta");
  expect_rejected(R{.experts = 4, .k = 2, .max_iter = 0}, p, Status::invalid_argument, "ssr router: max_iter");
  R const r{.experts = 4, .k = 2, .use_ot = true};
  Problem nan_row = p;
  nan_row.at(2, 3) = nan_value;
  expect_rejected(r, nan_row, Status::invalid_argument, "non-finite value nan at token 2, expert 3");
  R const linear{.experts = 4, .k = 2, .use_ot = true, .cost = routing::TransportCost::linear};
  Problem huge = p;
  huge.at(1, 1) = 3e38f;
  expect_rejected(linear, huge, Status::invalid_argument, "overflows fp32 (token 1, expert 1)");
  Problem dead_column = p;
  dead_column.at(0, 2) = dead_column.at(1, 2) = dead_column.at(2, 2) = -inf;
  expect_rejected(linear, dead_column, Status::invalid_argument, "expert 2 is -inf for every token");
  CHECK(host_ssr(r, dead_column).status == Status::ok);  // softmax cost: C = 0 there, still a plan

  // The device counts the rows the host refuses and keeps ids in range.
  Routed const device = device_ssr(r, nan_row, 5);
  REQUIRE(device.status == Status::ok);
  CHECK(device.diagnostics.nonfinite_rows == 1);
  for (int id : device.ids) {
    CHECK((id >= 0 && id < 4));
  }
}

TEST_CASE("ssr backward: implicit solve, forward-mode reference and central differences agree", "[routing]") {
  // Sizes where forward-mode through the double iteration stays cheap (m E tangents).
  struct Case {
    std::int64_t tokens;
    int experts, k;
    float xi;
    routing::TransportCost cost;
    bool padding;
  };
  auto const c = GENERATE(Case{5, 4, 2, 0.05f, routing::TransportCost::softmax, false},
                          Case{7, 3, 1, 0.5f, routing::TransportCost::softmax, true},
                          Case{6, 5, 2, 1.0f, routing::TransportCost::linear, false},
                          Case{8, 6, 3, 0.25f, routing::TransportCost::linear, true});
  CAPTURE(c.tokens, c.experts, c.k, c.xi, int(c.cost), c.padding);
  routing::SelectiveSinkhornRouter<8> const r{
      .experts = c.experts, .k = c.k, .use_ot = true, .xi = c.xi, .cost = c.cost};
  Problem const p = make_problem(c.tokens, c.experts, Pattern::random, 21, c.padding);
  Routed const fwd = host_ssr(r, p);
  REQUIRE(fwd.status == Status::ok);
  std::vector<double> plan;
  REQUIRE(host::reference_ssr_converged_plan(r, p.view(), p.mask(), plan) == Status::ok);
  std::vector<float> g(fwd.ids.size());
  for (std::size_t i = 0; i < g.size(); ++i) {
    g[i] = float(int(i * 5 % 7) - 3) / 3.f;
  }
  auto const te = static_cast<std::size_t>(c.tokens * c.experts);
  std::vector<float> grad(te, -7.f), reference(te, -7.f);
  routing::TransportGradBuffers b{.logits = p.view(),
                                  .valid = p.mask(),
                                  .ids = HostTensor<int const, 2>::row_major(fwd.ids.data(), {c.tokens, c.k}),
                                  .grad_weights = HostTensor<float const, 2>::row_major(g.data(), {c.tokens, c.k}),
                                  .grad_logits = HostTensor<float, 2>::row_major(grad.data(), {c.tokens, c.experts})};
  REQUIRE(routing::ssr_backward(r, b, HostTensor<double const, 2>::row_major(plan.data(), {c.tokens, c.experts})) ==
          Status::ok);
  b.grad_logits.data = reference.data();
  REQUIRE(host::reference_ssr_backward(r, b) == Status::ok);
  // Both in double from the same converged plan (1e-14): they differ by the solve's and the
  // tangents' rounding, far below the fp32 rounding of the outputs (u relative).
  double scale = 0;
  for (float v : reference) {
    scale = std::max(scale, double(std::fabs(v)));
  }
  require_close(grad, reference, 2 * u, 1e-9 * scale);

  // Central differences on the real tokens' double formula (padding rows have no gradient).
  std::vector<std::int64_t> rows;
  for (std::int64_t t = 0; t < c.tokens; ++t) {
    if (p.mask() == nullptr || p.valid[static_cast<std::size_t>(t)] != 0) {
      rows.push_back(t);
    }
  }
  auto const m = static_cast<int>(rows.size());
  std::vector<double> zr;
  std::vector<int> ids;
  std::vector<double> gr;
  for (std::int64_t t : rows) {
    for (int e = 0; e < c.experts; ++e) {
      zr.push_back(p.logits[static_cast<std::size_t>(t * c.experts + e)]);
    }
    for (int j = 0; j < c.k; ++j) {
      ids.push_back(fwd.ids[static_cast<std::size_t>(t * c.k + j)]);
      gr.push_back(g[static_cast<std::size_t>(t * c.k + j)]);
    }
  }
  bool const softmax = c.cost == routing::TransportCost::softmax;
  for (int i = 0; i < m; ++i) {
    for (int e = 0; e < c.experts; ++e) {
      std::size_t const at = static_cast<std::size_t>(i * c.experts + e);
      std::vector<double> plus = zr, minus = zr;
      plus[at] += 1e-6;
      minus[at] -= 1e-6;
      std::vector<double> const ap = ssr_alpha_double(plus, m, c.experts, c.xi, softmax, ids, c.k);
      std::vector<double> const am = ssr_alpha_double(minus, m, c.experts, c.xi, softmax, ids, c.k);
      double fd = 0;
      for (std::size_t j = 0; j < gr.size(); ++j) {
        fd += gr[j] * (ap[j] - am[j]) / 2e-6;
      }
      float const got = grad[static_cast<std::size_t>(rows[static_cast<std::size_t>(i)] * c.experts + e)];
      INFO("token " << rows[static_cast<std::size_t>(i)] << ", expert " << e << ": fd " << fd << ", implicit " << got);
      CHECK(std::fabs(got - fd) <= 1e-6 * std::fabs(fd) + 1e-7 * std::max(1.0, scale));
    }
  }
  for (std::int64_t t = 0; t < c.tokens; ++t) {
    if (p.mask() != nullptr && p.valid[static_cast<std::size_t>(t)] == 0) {
      for (int e = 0; e < c.experts; ++e) {
        CHECK(grad[static_cast<std::size_t>(t * c.experts + e)] == 0.f);
      }
    }
  }

  // Non-OT steps: softmax over the selected logits, against the reference and differences.
  routing::SelectiveSinkhornRouter<8> plain = r;
  plain.use_ot = false;
  Routed const top = host_ssr(plain, p);
  b.ids = HostTensor<int const, 2>::row_major(top.ids.data(), {c.tokens, c.k});
  b.grad_logits.data = grad.data();
  REQUIRE(routing::ssr_backward(plain, b, HostTensor<float const, 2>{}) == Status::ok);
  b.grad_logits.data = reference.data();
  REQUIRE(host::reference_ssr_backward(plain, b) == Status::ok);
  require_close(grad, reference, 4 * u, 1e-12);
}

// ---------------------------------------------------------------------------------------------
// The selective draw and the balancers

TEST_CASE("ssr_use_ot: a reproducible Bernoulli(p) per (seed, step, layer)", "[routing]") {
  constexpr int steps = 100000;
  int hits = 0, same = 0;
  for (std::uint64_t step = 0; step < steps; ++step) {
    hits += routing::ssr_use_ot(7, step, 3, 0.1) ? 1 : 0;
    same += routing::ssr_use_ot(7, step, 3, 0.5) == routing::ssr_use_ot(7, step, 4, 0.5) ? 1 : 0;
    REQUIRE(routing::ssr_use_ot(7, step, 3, 0.1) == routing::ssr_use_ot(7, step, 3, 0.1));
    REQUIRE_FALSE(routing::ssr_use_ot(7, step, 3, 0.0));
    REQUIRE(routing::ssr_use_ot(7, step, 3, 1.0));
  }
  // Binomial: mean n p, sd sqrt(n p (1 - p)); 5 sd bounds.
  CHECK(std::abs(hits - 10000) <= 5 * 95);
  CHECK(std::abs(same - 50000) <= 5 * 159);  // layers 3 and 4 draw independently
  static_assert(routing::ssr_uniform(1, 2, 3) != routing::ssr_uniform(1, 3, 2), "keys are not symmetric");
  CHECK(routing::ssr_uniform(0, 0, 0) != routing::ssr_uniform(1, 0, 0));
}

namespace {
struct AuxLoss {
  static constexpr balancing::BalancerKind kind = balancing::BalancerKind::loss;
  [[nodiscard]] Status validate(int) const { return Status::ok; }
};
struct RouterZLoss {  // a loss that does not balance load (the router z-loss)
  static constexpr balancing::BalancerKind kind = balancing::BalancerKind::loss;
  static constexpr bool balances_load = false;
  [[nodiscard]] Status validate(int) const { return Status::ok; }
};
struct ExpertBias {
  static constexpr balancing::BalancerKind kind = balancing::BalancerKind::bias;
  [[nodiscard]] Status validate(int) const { return Status::ok; }
};
}  // namespace

TEST_CASE("transport balancers: parameters, routers, and the aux-loss combination rule", "[balancing]") {
  using balancing::combination_status;
  using balancing::SelectiveSinkhorn;
  using balancing::Sinkhorn;
  static_assert(is_ok(combination_status<Sinkhorn>()));
  static_assert(is_ok(combination_status<Sinkhorn, RouterZLoss>()));
  static_assert(is_ok(combination_status<Sinkhorn, balancing::ZLoss>()));  // Megatron allows the z-loss
  static_assert(!is_ok(combination_status<Sinkhorn, balancing::SwitchLoss>()));
  static_assert(!is_ok(combination_status<Sinkhorn, AuxLoss>()));
  static_assert(!is_ok(combination_status<AuxLoss, SelectiveSinkhorn>()));
  static_assert(!is_ok(combination_status<Sinkhorn, ExpertBias>()));
  static_assert(!is_ok(combination_status<Sinkhorn, SelectiveSinkhorn>()));
  static_assert(is_ok(combination_status<AuxLoss, ExpertBias, RouterZLoss>()));
  static_assert(is_ok(combination_status<>()));

  clear_error_message();
  CHECK(balancing::check_combination<RouterZLoss, Sinkhorn, AuxLoss>() == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()),
             Catch::Contains("sinkhorn routing cannot be combined with an auxiliary balance loss"));
  CHECK(balancing::check_combination<SelectiveSinkhorn, ExpertBias>() == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("expert-bias"));
  CHECK(balancing::check_combination<Sinkhorn, RouterZLoss>() == Status::ok);

  Sinkhorn const s{.tol = 1e-3f, .max_iters = 50};
  CHECK(s.validate(8) == Status::ok);
  CHECK(Sinkhorn{.tol = -1.f}.validate(8) == Status::invalid_argument);
  CHECK(s.validate(0) == Status::invalid_argument);
  constexpr auto router = Sinkhorn{}.router<2>(16, 2);
  static_assert(router.experts == 16 && router.k == 2 && router.tol == 1e-4f && router.max_iters == 1000);

  SelectiveSinkhorn const ssr{.probability = 0.25, .seed = 11, .xi = 0.5f};
  CHECK(ssr.validate(8) == Status::ok);
  CHECK(SelectiveSinkhorn{.probability = 1.5}.validate(8) == Status::invalid_argument);
  CHECK(SelectiveSinkhorn{.xi = 0.f}.validate(8) == Status::invalid_argument);
  int on = 0;
  for (std::uint64_t step = 0; step < 1000; ++step) {
    CHECK_FALSE(ssr.use_ot(step, 2, false));  // never at inference
    CHECK(ssr.use_ot(step, 2, true) == routing::ssr_use_ot(11, step, 2, 0.25));
    on += ssr.use_ot(step, 2, true) ? 1 : 0;
  }
  CHECK(std::abs(on - 250) <= 5 * 14);
  auto const r = ssr.router<8>(8, 2, true);
  CHECK(r.use_ot);
  CHECK(r.xi == 0.5f);
  CHECK(r.validate() == Status::ok);
}
