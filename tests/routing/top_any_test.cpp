// TopAnyThreshold (ALGORITHMS.md §3.6, MC-MoE ODP / MC# OTP inference): the worked example in
// ratio and logit modes, absolute mode, beta = theta = 0 as plain top-K, host reference vs CPU
// path vs emulated kernel, the num_active output, and every bad input.
//
// Tolerances: keep decisions are on fp32 softmax outputs in both router and reference (§3.6
// defines them so), hence exact. Weights: reference in double, router in fp32: softmax as in
// top_k_test ((E + 40) u) plus a renormalising sum of at most K <= 8 terms: rtol = (E + 48) u.

#include "moekit/routing/top_any.hpp"

#include <cstdint>
#include <random>
#include <vector>

#include "research_test_support.hpp"
#include <catch2/catch.hpp>

#include "moekit/routing/top_k.hpp"

using namespace moekit;
using research_test::Logits;
using research_test::Pattern;

namespace {
double weight_rtol(int experts) { return (experts + 48) * research_test::unit_roundoff; }

Logits worked_example() { return {2, 4, {2.0f, 1.6f, -0.5f, 0.2f, 0.0f, 3.0f, 0.5f, 0.4f}}; }

routing::TopAnyThreshold<8> logit_router(int experts, int k, std::vector<float> const& keep, std::int64_t tokens) {
  return {.experts = experts,
          .k = k,
          .mode = routing::TopAnyMode::logit,
          .keep_logits = keep.data(),
          .token_count = tokens};
}
}  // namespace

TEST_CASE("TopAnyThreshold reproduces the worked example of ALGORITHMS.md 3.6", "[routing][emu][top_any]") {
  Logits const l = worked_example();
  // Printed to 7 decimals (<= 5e-8) plus fp32 rounding: atol 1e-7.
  // ratio, beta = 0.5: token 0 keeps [0, 1] (0.6703 >= .5, 0.1653 < .5); token 1 keeps [1].
  research_test::check_example(routing::mc_moe_odp_router(4, 3, 0.5f), l, {0, 1, 4, 1, 4, 4},
                               {0.5986877f, 0.4013123f, 0.f, 1.f, 0.f, 0.f}, 0, 1e-7);
  // logit: the entry of slot 1 is ignored (a NaN there is legal); dropped slots keep their place.
  std::vector<float> const keep = {research_test::nan_value, -0.2f, 1.3f, 7.f, 0.1f, -0.4f};
  research_test::check_example(logit_router(4, 3, keep, 2), l, {0, 4, 3, 1, 2, 4},
                               {0.8581489f, 0.f, 0.1418511f, 0.9241418f, 0.0758582f, 0.f}, 0, 1e-7);
  // absolute: p / sum of the top-3. Token 0: fractions 0.365, 0.090; token 1: 0.0710, 0.0642.
  // theta = 0.1 keeps [0, 1] and [1]: the ratio rows above.
  routing::TopAnyThreshold<8> absolute{.experts = 4, .k = 3, .mode = routing::TopAnyMode::absolute, .theta = 0.1f};
  research_test::check_example(absolute, l, {0, 1, 4, 1, 4, 4}, {0.5986877f, 0.4013123f, 0.f, 1.f, 0.f, 0.f}, 0, 1e-7);
  // theta = 0.068 separates token 1's fractions: keeps [1, 2] there (the logit row above), and
  // all three of token 0 (0.090 >= 0.068).
  absolute.theta = 0.068f;
  auto const both = route_test::cpu_route(absolute, l);
  CHECK(both.ids == std::vector<int>{0, 1, 3, 1, 2, 4});
  CHECK(std::fabs(both.weights[3] - 0.9241418f) <= 1e-7);
  CHECK(std::fabs(both.weights[4] - 0.0758582f) <= 1e-7);

  // num_active: ratio [2, 1], logit [2, 2], on every path.
  for (int mode = 0; mode < 2; ++mode) {
    for (int path = 0; path < 3; ++path) {
      std::vector<int> active(2, -1);
      auto r = mode == 0 ? routing::mc_moe_odp_router(4, 3, 0.5f) : logit_router(4, 3, keep, 2);
      r.num_active = active.data();
      r.token_count = 2;
      auto const routed = path == 0   ? route_test::host_reference(r, l)
                          : path == 1 ? route_test::cpu_route(r, l)
                                      : route_test::device_route(r, l, 3, 1);
      REQUIRE(routed.status == Status::ok);
      CHECK(active == (mode == 0 ? std::vector<int>{2, 1} : std::vector<int>{2, 2}));
    }
  }
}

TEST_CASE("TopAnyThreshold with beta = 0 or theta = 0 is plain renormalised top-K", "[routing][top_any]") {
  Logits const l = route_test::make_logits(64, 8, Pattern::random, 3);
  auto const plain = route_test::cpu_route(routing::mixtral_router(8, 3), l);
  auto const ratio = route_test::cpu_route(routing::mc_moe_odp_router(8, 3, 0.f), l);
  routing::TopAnyThreshold<8> absolute{.experts = 8, .k = 3, .mode = routing::TopAnyMode::absolute, .theta = 0.f};
  auto const abs = route_test::cpu_route(absolute, l);
  CHECK(ratio.ids == plain.ids);
  CHECK(abs.ids == plain.ids);
  route_test::require_same_routing(plain, ratio, 2 * weight_rtol(8), 0);
  route_test::require_same_routing(plain, abs, 2 * weight_rtol(8), 0);
}

TEST_CASE("TopAnyThreshold: host reference, CPU path and device kernel agree", "[routing][emu][top_any]") {
  struct Case {
    int experts, k;
    routing::TopAnyMode mode;
    float parameter;
  };
  using routing::TopAnyMode;
  auto const c = GENERATE(Case{1, 1, TopAnyMode::ratio, 0.5f}, Case{4, 3, TopAnyMode::ratio, 0.5f},
                          Case{8, 2, TopAnyMode::ratio, 0.62f}, Case{60, 6, TopAnyMode::ratio, 0.4f},
                          Case{256, 8, TopAnyMode::ratio, 0.1f}, Case{7, 7, TopAnyMode::ratio, 1.0f},
                          Case{4, 3, TopAnyMode::logit, 0.f}, Case{256, 8, TopAnyMode::logit, 0.f},
                          Case{9, 5, TopAnyMode::logit, 0.f}, Case{8, 4, TopAnyMode::absolute, 0.1f},
                          Case{256, 8, TopAnyMode::absolute, 0.05f}, Case{6, 6, TopAnyMode::absolute, 1.0f});
  auto const tokens = GENERATE(std::int64_t{1}, std::int64_t{37}, std::int64_t{300});
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::one_expert, Pattern::masked, Pattern::coarse);
  CAPTURE(c.experts, c.k, int(c.mode), c.parameter, tokens, route_test::name(pattern));
  if (pattern == Pattern::masked && c.experts < 3) {
    SUCCEED("skipped: the masked pattern would mask whole rows when E < 3");
    return;
  }
  Logits const l = route_test::make_logits(tokens, c.experts, pattern, 71u + static_cast<std::uint32_t>(c.experts));
  // Keep-logits N(0, 1), every fifth exactly 0 (dropped: the rule is > 0), padded rows (stride K + 2).
  std::int64_t const stride = c.k + 2;
  std::vector<float> keep(static_cast<std::size_t>(tokens * stride), research_test::nan_value);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (int j = 0; j < c.k; ++j) {
      keep[t * stride + j] = (t + j) % 5 == 0 ? 0.f : normal(rng);
    }
  }
  routing::TopAnyThreshold<8> r{.experts = c.experts, .k = c.k, .mode = c.mode};
  if (c.mode == TopAnyMode::ratio) {
    r.beta = c.parameter;
  } else if (c.mode == TopAnyMode::absolute) {
    r.theta = c.parameter;
  } else {
    r.keep_logits = keep.data();
    r.keep_logits_stride = stride;
    r.token_count = tokens;
  }
  auto const reference = research_test::compare_all_paths(r, l, weight_rtol(c.experts), 1e-30);

  // Slot 0 is always kept; kept weights sum to 1; num_active counts the kept slots, every path.
  std::vector<int> expected(static_cast<std::size_t>(tokens), 0);
  for (std::int64_t t = 0; t < tokens; ++t) {
    REQUIRE(reference.ids[t * c.k] < c.experts);
    double sum = 0;
    for (int j = 0; j < c.k; ++j) {
      bool const kept = reference.ids[t * c.k + j] < c.experts;
      expected[t] += kept ? 1 : 0;
      sum += reference.weights[t * c.k + j];
      if (!kept) {
        REQUIRE(reference.weights[t * c.k + j] == 0.f);
      }
    }
    REQUIRE(std::fabs(sum - 1) < 1e-6);
  }
  for (int path = 0; path < 3; ++path) {
    std::vector<int> active(static_cast<std::size_t>(tokens), -1);
    auto copy = r;
    copy.num_active = active.data();
    copy.token_count = tokens;
    auto const routed = path == 0   ? route_test::host_reference(copy, l)
                        : path == 1 ? route_test::cpu_route(copy, l)
                                    : route_test::device_route(copy, l, 13, 2);
    REQUIRE(routed.status == Status::ok);
    CHECK(active == expected);
  }
}

TEST_CASE("TopAnyThreshold: a NaN row on the device, T = 0", "[routing][emu][top_any]") {
  research_test::check_nonfinite_policy(routing::mc_moe_odp_router(8, 3, 0.5f),
                                        route_test::make_logits(3, 8, Pattern::random, 2), 6);
  std::vector<float> const keep(3 * 8, 1.f);
  research_test::check_nonfinite_policy(logit_router(256, 8, keep, 3),
                                        route_test::make_logits(3, 256, Pattern::random, 3), 100);
  Logits const empty{0, 4, {}};
  std::vector<float> const unused(1, 1.f);  // T = 0: a valid pointer, no rows
  auto const r = logit_router(4, 3, unused, 0);
  CHECK(route_test::host_reference(r, empty).status == Status::ok);
  CHECK(route_test::cpu_route(r, empty).status == Status::ok);
  CHECK(route_test::device_route(r, empty, 1).status == Status::ok);
}

TEST_CASE("TopAnyThreshold: bad parameters are refused with a message, outputs untouched", "[routing][emu][top_any]") {
  using research_test::expect_rejected;
  using routing::TopAnyMode;
  Logits const l = route_test::make_logits(3, 4, Pattern::random, 1);
  expect_rejected(routing::mc_moe_odp_router(4, 0, 0.5f), l, Status::invalid_argument, "K must be in [1, E]");
  expect_rejected(routing::mc_moe_odp_router(4, 5, 0.5f), l, Status::invalid_argument, "K must be in [1, E]");
  expect_rejected(routing::TopAnyThreshold<2>{.experts = 4, .k = 3}, l, Status::unsupported_config, "MaxK=2");
  expect_rejected(routing::mc_moe_odp_router(4, 3, -0.1f), l, Status::invalid_argument, "beta must be >= 0");
  expect_rejected(routing::mc_moe_odp_router(4, 3, research_test::nan_value), l, Status::invalid_argument,
                  "beta must be >= 0");
  expect_rejected(routing::TopAnyThreshold<8>{.experts = 4, .k = 3, .mode = TopAnyMode::absolute, .theta = 1.5f}, l,
                  Status::invalid_argument, "theta must be in [0, 1]");
  expect_rejected(routing::TopAnyThreshold<8>{.experts = 4, .k = 3, .mode = TopAnyMode::absolute, .theta = -0.1f}, l,
                  Status::invalid_argument, "theta must be in [0, 1]");
  std::vector<float> keep(3 * 3, 1.f);
  expect_rejected(routing::TopAnyThreshold<8>{.experts = 4, .k = 3, .mode = TopAnyMode::logit, .token_count = 3}, l,
                  Status::invalid_argument, "keep_logits must be [T,K]");
  auto narrow = logit_router(4, 3, keep, 3);
  narrow.keep_logits_stride = 2;
  expect_rejected(narrow, l, Status::invalid_argument, "keep_logits must be [T,K]");

  // Known only with T: rows != T, NaN keep-logits, num_active of another size.
  research_test::expect_rejected_by_reference(logit_router(4, 3, keep, 2), l, Status::invalid_argument,
                                              "keep_logits must be [T,K] (holds 2 rows, T=3)");
  keep[2 * 3 + 1] = research_test::nan_value;
  research_test::expect_rejected_by_reference(logit_router(4, 3, keep, 3), l, Status::invalid_argument,
                                              "keep_logits NaN at token 2, slot 1");
  std::vector<int> active(4, -1);
  auto with_output = routing::mc_moe_odp_router(4, 3, 0.5f);
  with_output.num_active = active.data();
  with_output.token_count = 4;
  research_test::expect_rejected_by_reference(with_output, l, Status::invalid_argument, "num_active holds 4 tokens");
  CHECK(active == std::vector<int>(4, -1));
}
