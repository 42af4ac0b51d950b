// AdaMoE null experts (ALGORITHMS.md §3.1): the worked example (ids, weights, num_true), the
// m = 0 reduction to Mixtral, host reference vs CPU path vs emulated kernel on random and
// adversarial logits, the num_true output, and every bad input.
//
// Weight tolerance: the reference works in double, the router in fp32. The softmax denominator
// is a sequential sum of n + m exp terms ((n + m) u relative), exp and the divisions add a few u,
// z - max rounds to a relative error |z - max| u of exp(z - max) (< 32 u for these logits), and D
// is a sum of at most k <= 8 terms: rtol = (n + m + 48) u, derived, not fitted.

#include "moekit/routing/null_experts.hpp"

#include <cstdint>
#include <vector>

#include "research_test_support.hpp"
#include <catch2/catch.hpp>

#include "moekit/routing/top_k.hpp"

using namespace moekit;
using research_test::Logits;
using research_test::Pattern;

namespace {
double weight_rtol(int experts) { return (experts + 48) * research_test::unit_roundoff; }

Logits worked_example() { return {2, 6, {2.0f, 1.0f, 0.5f, -1.0f, 1.5f, 0.2f, 0.1f, -0.5f, 0.3f, 0.0f, 1.2f, 0.9f}}; }
}  // namespace

TEST_CASE("AdaMoE reproduces the worked example of ALGORITHMS.md 3.1", "[routing][emu][adamoe]") {
  Logits const l = worked_example();
  auto const r = routing::adamoe_router(4, 2, 3);
  // Printed to 7 decimals (<= 5e-8) plus fp32 rounding: atol 1e-7.
  research_test::check_example(r, l, {0, 4, 1, 4, 5, 2}, {0.7310586f, 0.f, 0.2689414f, 0.f, 0.f, 1.0f}, 0, 1e-7);

  // num_true = [2, 1] on every path, each with its own output buffer.
  std::vector<int> reference(2, -1), cpu(2, -1), device(2, -1);
  auto with_output = [&](std::vector<int>& out) {
    auto copy = r;
    copy.num_true = out.data();
    copy.token_count = 2;
    return copy;
  };
  REQUIRE(route_test::host_reference(with_output(reference), l).status == Status::ok);
  REQUIRE(route_test::cpu_route(with_output(cpu), l).status == Status::ok);
  REQUIRE(route_test::device_route(with_output(device), l, 5, 1).status == Status::ok);
  CHECK(reference == std::vector<int>{2, 1});
  CHECK(cpu == reference);
  CHECK(device == reference);
}

TEST_CASE("AdaMoE: a tie between a true and a null expert goes to the true expert", "[routing][adamoe]") {
  Logits const l{1, 4, {0.5f, -1.f, 0.5f, 0.5f}};  // n = 2: experts 2, 3 are null
  auto const r = routing::adamoe_router(2, 2, 2);
  research_test::check_example(r, l, {0, 2}, {1.f, 0.f}, 0, 0);
}

TEST_CASE("AdaMoE: a token that picks only null experts gets all-zero weights", "[routing][adamoe]") {
  Logits const l{1, 5, {-1.f, -2.f, 3.f, 2.f, 1.f}};  // n = 2, m = 3, k = 2: picks 2 and 3
  research_test::check_example(routing::adamoe_router(2, 3, 2), l, {2, 3}, {0.f, 0.f}, 0, 0);
}

TEST_CASE("AdaMoE with m = 0 is Mixtral's renormalised softmax top-k", "[routing][adamoe]") {
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::one_expert);
  Logits const l = route_test::make_logits(50, 8, pattern, 17);
  auto const a = route_test::cpu_route(routing::adamoe_router(8, 0, 2), l);
  auto const b = route_test::cpu_route(routing::mixtral_router(8, 2), l);
  route_test::require_same_routing(b, a, 2 * weight_rtol(8), 0);
  CHECK(a.ids == b.ids);
}

TEST_CASE("AdaMoE: host reference, CPU path and device kernel agree", "[routing][emu][adamoe]") {
  struct Shape {
    int n, m, k;
  };
  auto const s = GENERATE(Shape{1, 0, 1}, Shape{4, 2, 3}, Shape{8, 16, 4}, Shape{7, 5, 8}, Shape{3, 3, 6},
                          Shape{200, 56, 8}, Shape{60, 4, 6}, Shape{1, 7, 8});
  auto const tokens = GENERATE(std::int64_t{1}, std::int64_t{37}, std::int64_t{300});
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::one_expert, Pattern::masked, Pattern::coarse);
  int const experts = s.n + s.m;
  CAPTURE(s.n, s.m, s.k, tokens, route_test::name(pattern));
  if (pattern == Pattern::masked && experts < 3) {
    SUCCEED("skipped: the masked pattern would mask whole rows when E < 3");
    return;
  }
  Logits const l = route_test::make_logits(tokens, experts, pattern, 31u + static_cast<std::uint32_t>(experts));
  auto const r = routing::NullExperts<8>{.true_experts = s.n, .null_experts = s.m, .k = s.k};
  auto const reference = research_test::compare_all_paths(r, l, weight_rtol(experts), 1e-30);

  // Invariants of §3.1: weights on null slots are 0, true weights sum to 1 or are all 0.
  for (std::int64_t t = 0; t < tokens; ++t) {
    double sum = 0;
    for (int j = 0; j < s.k; ++j) {
      int const id = reference.ids[t * s.k + j];
      float const w = reference.weights[t * s.k + j];
      REQUIRE((id >= 0 && id < experts));
      if (id >= s.n) {
        REQUIRE(w == 0.f);
      }
      sum += w;
    }
    REQUIRE((sum == 0 || std::fabs(sum - 1) < 1e-6));
  }

  // num_true: the count of selected ids below n, on every path.
  std::vector<int> expected(static_cast<std::size_t>(tokens));
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (int j = 0; j < s.k; ++j) {
      expected[t] += reference.ids[t * s.k + j] < s.n ? 1 : 0;
    }
  }
  for (int path = 0; path < 3; ++path) {
    std::vector<int> out(static_cast<std::size_t>(tokens), -1);
    auto copy = r;
    copy.num_true = out.data();
    copy.token_count = tokens;
    auto const routed = path == 0   ? route_test::host_reference(copy, l)
                        : path == 1 ? route_test::cpu_route(copy, l)
                                    : route_test::device_route(copy, l, 9, 1);
    REQUIRE(routed.status == Status::ok);
    CHECK(out == expected);
  }
}

TEST_CASE("AdaMoE: E up to 256 with a NaN row on the device", "[routing][emu][adamoe]") {
  auto const r = routing::NullExperts<8>{.true_experts = 200, .null_experts = 56, .k = 8};
  research_test::check_nonfinite_policy(r, route_test::make_logits(3, 256, Pattern::random, 4), 201);
  research_test::check_nonfinite_policy(routing::adamoe_router(4, 2, 3),
                                        route_test::make_logits(3, 6, Pattern::random, 5), 2);
}

TEST_CASE("AdaMoE: T = 0 routes nothing", "[routing][emu][adamoe]") {
  Logits const empty{0, 6, {}};
  auto const r = routing::adamoe_router(4, 2, 3);
  CHECK(route_test::host_reference(r, empty).status == Status::ok);
  CHECK(route_test::cpu_route(r, empty).status == Status::ok);
  CHECK(route_test::device_route(r, empty, 1).status == Status::ok);
}

TEST_CASE("AdaMoE: bad parameters are refused with a message, outputs untouched", "[routing][emu][adamoe]") {
  Logits const l = route_test::make_logits(3, 6, Pattern::random, 1);
  using research_test::expect_rejected;
  expect_rejected(routing::adamoe_router(0, 6, 2), l, Status::invalid_argument, "need at least one true expert");
  expect_rejected(routing::adamoe_router(4, 2, 0), l, Status::invalid_argument, "k must be in [1, n+m]");
  expect_rejected(routing::adamoe_router(4, 2, 7), l, Status::invalid_argument, "k must be in [1, n+m]");
  expect_rejected(routing::adamoe_router(7, -1, 2), l, Status::invalid_argument, "num_null_experts must be >= 0");
  expect_rejected(routing::NullExperts<2>{.true_experts = 4, .null_experts = 2, .k = 3}, l, Status::unsupported_config,
                  "MaxK=2");

  // num_true sized for another T: the reference (which knows T) refuses; validate_inputs says why.
  std::vector<int> out(5, -1);
  auto r = routing::adamoe_router(4, 2, 3);
  r.num_true = out.data();
  r.token_count = 5;
  research_test::expect_rejected_by_reference(r, l, Status::invalid_argument, "num_true holds 5 tokens");
  CHECK(r.validate_inputs(3) == Status::invalid_argument);
  CHECK(r.validate_inputs(5) == Status::ok);
  CHECK(out == std::vector<int>(5, -1));
}
