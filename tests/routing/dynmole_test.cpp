// DynMoLE hybrid routing (ALGORITHMS.md §3.2): the worked example (entropies, masks, weights),
// the "<=" top-p rule and the keep_top_k minimum on exact inputs, host reference vs CPU path vs
// emulated kernel on random and adversarial logits, and every bad input.
//
// Tolerances. Weights are p itself: the reference's double softmax vs fp32, rtol = (E + 40) u
// (E-term denominator, exp, division, and |z - max| < 32 u from rounding z - max). The
// thresholds C_r <= top_p and H > tau are decided in fp32 by the router and in double by the
// reference, so random rows whose double margin is small are regenerated (§3.2 says oracle tests
// must avoid them): C_r has error <= (E + 40) u C_r <= 2e-5 at E = 256, so 1e-4 is kept clear;
// H's fp32 error is at most (13 E) u / (1 - E^(1-q)) (E pow terms of <= 12 u each plus the
// running sum) = 9e-5 at E = 256, q = 1.1, and for q = 1 (13 E) u ln(1/eps) / ln E is smaller,
// so 1e-3 is kept clear.

#include "moekit/routing/dynmole.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "research_test_support.hpp"
#include <catch2/catch.hpp>

using namespace moekit;
using research_test::Logits;
using research_test::Pattern;

namespace {
double weight_rtol(int experts) { return (experts + 40) * research_test::unit_roundoff; }

Logits worked_example() { return {2, 4, {1.5f, 0.8f, -0.2f, -1.0f, 0.2f, 0.1f, 0.0f, -0.1f}}; }

// Is this row within the margins above of one of its thresholds (double arithmetic)?
bool near_threshold(std::vector<float> const& z, routing::DynMoLERule const& rule) {
  int const n = static_cast<int>(z.size());
  double max = -INFINITY;
  for (float v : z) {
    max = std::max(max, double(v));
  }
  std::vector<double> p(z.size());
  double sum = 0;
  for (int e = 0; e < n; ++e) {
    p[e] = std::exp(double(z[e]) - max);
    sum += p[e];
  }
  for (double& v : p) {
    v /= sum;
  }
  std::vector<int> order(z.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return z[a] > z[b]; });
  double c = 0;
  for (int r = 0; r < n; ++r) {
    c += p[order[r]];
    if (r >= rule.keep_top_k && std::fabs(c - rule.top_p) < 1e-4) {
      return true;
    }
  }
  double const h = host::reference_tsallis_entropy(p, rule.entropy_index, rule.entropy_eps);
  return rule.entropy_threshold < 1.f && std::fabs(h - rule.entropy_threshold) < 1e-3;
}

// make_logits, with every row near a threshold replaced by a fresh row of the same pattern.
Logits logits_away_from_thresholds(std::int64_t tokens, int experts, Pattern pattern, std::uint32_t seed,
                                   routing::DynMoLERule const& rule) {
  Logits l = route_test::make_logits(tokens, experts, pattern, seed);
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::vector<float> row(l.values.begin() + t * experts, l.values.begin() + (t + 1) * experts);
    for (std::uint32_t attempt = 1; near_threshold(row, rule); ++attempt) {
      REQUIRE(attempt < 200);
      Logits const fresh = route_test::make_logits(1, experts, pattern, seed * 7919u + attempt);
      row = fresh.values;
    }
    std::copy(row.begin(), row.end(), l.values.begin() + t * experts);
  }
  return l;
}
}  // namespace

TEST_CASE("DynMoLE reproduces the worked example of ALGORITHMS.md 3.2", "[routing][emu][dynmole]") {
  Logits const l = worked_example();
  auto const r = routing::dynmole_router(4);  // defaults q = 1.1, tau = 0.9, top_p = 0.75, keep_top_k = 2
  // Token 0: top-p keeps rank 0, keep_top_k raises it to {0, 1}. Token 1: H > 0.9 broadcasts
  // to all four, in rank order. Weights p, not renormalised. Printed to 7 decimals: atol 1e-7.
  research_test::check_example(r, l, {0, 1, 4, 4, 0, 1, 2, 3},
                               {0.5677451f, 0.2819339f, 0.f, 0.f, 0.2886514f, 0.2611826f, 0.2363278f, 0.2138382f}, 0,
                               1e-7);

  // The entropies and the keep masks. fp32 entropy error <= (13 E) u / (1 - E^(-0.1)) = 2.4e-5.
  float const expected_h[2] = {0.7576237f, 0.9951008f};
  float const expected_mask[2][4] = {{1, 1, 0, 0}, {1, 1, 1, 1}};
  for (int t = 0; t < 2; ++t) {
    float const* z = &l.values[t * 4];
    routing::SoftmaxNormaliser const norm = routing::softmax_normaliser(z, 4);
    float const h = routing::dynmole_entropy([&](int e) { return routing::softmax_entry(z[e], norm); }, 4, 1.1f, 1e-5f);
    CHECK(std::fabs(h - expected_h[t]) <= 13 * 4 * research_test::unit_roundoff / (1 - std::pow(4.0, -0.1)));
    float mask[4];
    CHECK(routing::dynmole_keep_mask(z, 4, r.rule, mask) == (t == 0 ? 2 : 4));
    for (int e = 0; e < 4; ++e) {
      CHECK(mask[e] == expected_mask[t][e]);
    }
  }
}

TEST_CASE("DynMoLE: the expert that crosses top_p is dropped; C_r == top_p is kept", "[routing][emu][dynmole]") {
  // Uniform over 4: p = 0.25 exactly, C = 0.25, 0.5, 0.75, 1 exactly (broadcast off: tau = 1).
  Logits const uniform{1, 4, {0.f, 0.f, 0.f, 0.f}};
  routing::DynMoLERule rule{.entropy_threshold = 1.f, .top_p = 0.75f, .keep_top_k = 1};
  research_test::check_example(routing::dynmole_router(4, rule), uniform, {0, 1, 2, 4}, {0.25f, 0.25f, 0.25f, 0.f}, 0,
                               0);
  rule.top_p = 0.7f;
  research_test::check_example(routing::dynmole_router(4, rule), uniform, {0, 1, 4, 4}, {0.25f, 0.25f, 0.f, 0.f}, 0, 0);
  // keep_top_k raises the kept count above what top-p allows (ties in rank order by index).
  rule.keep_top_k = 3;
  research_test::check_example(routing::dynmole_router(4, rule), uniform, {0, 1, 2, 4}, {0.25f, 0.25f, 0.25f, 0.f}, 0,
                               0);
  // The same row with broadcast on (tau = 0.9 < H ~ 1): every expert.
  rule.entropy_threshold = 0.9f;
  research_test::check_example(routing::dynmole_router(4, rule), uniform, {0, 1, 2, 3}, {0.25f, 0.25f, 0.25f, 0.25f}, 0,
                               0);
}

TEST_CASE("DynMoLE: host reference, CPU path and device kernel agree", "[routing][emu][dynmole]") {
  struct Case {
    int experts;
    routing::DynMoLERule rule;
  };
  auto const c = GENERATE(Case{2, {.keep_top_k = 1}}, Case{4, {}},
                          Case{6, {.entropy_index = 1.0f, .entropy_threshold = 0.8f, .top_p = 0.5f}},
                          Case{8, {.entropy_index = 0.5f, .entropy_threshold = 0.95f, .keep_top_k = 1}},
                          Case{60, {.entropy_index = 2.0f, .entropy_threshold = 0.7f, .top_p = 0.6f, .keep_top_k = 3}},
                          Case{256, {}}, Case{256, {.entropy_threshold = 1.0f, .top_p = 0.9f, .keep_top_k = 8}},
                          Case{7, {.entropy_index = 1.3f, .entropy_threshold = 2.0f, .top_p = 0.3f, .keep_top_k = 7}},
                          Case{3, {.top_p = 1.0f, .keep_top_k = 3}});
  auto const tokens = GENERATE(std::int64_t{1}, std::int64_t{37}, std::int64_t{200});
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::one_expert, Pattern::masked, Pattern::coarse);
  CAPTURE(c.experts, c.rule.entropy_index, c.rule.entropy_threshold, c.rule.top_p, c.rule.keep_top_k, tokens,
          route_test::name(pattern));
  if (pattern == Pattern::masked && c.experts < 3) {
    SUCCEED("skipped: the masked pattern would mask whole rows when E < 3");
    return;
  }
  Logits const l =
      logits_away_from_thresholds(tokens, c.experts, pattern, 57u + static_cast<std::uint32_t>(tokens), c.rule);
  auto const r = routing::dynmole_router(c.experts, c.rule);
  auto const reference = research_test::compare_all_paths(r, l, weight_rtol(c.experts), 1e-30);

  // Kept experts form a prefix of the slots, at least keep_top_k of them (or every unmasked
  // expert: -inf experts are never kept); every kept weight is p (so their sum is at most 1);
  // dynmole_keep_mask marks exactly the kept ids.
  std::vector<float> mask(static_cast<std::size_t>(c.experts));
  for (std::int64_t t = 0; t < tokens; ++t) {
    int kept = 0;
    double sum = 0;
    for (int j = 0; j < c.experts; ++j) {
      int const id = reference.ids[t * c.experts + j];
      if (id < c.experts) {
        REQUIRE(j == kept);
        ++kept;
        sum += reference.weights[t * c.experts + j];
      }
    }
    int unmasked = 0;
    for (int e = 0; e < c.experts; ++e) {
      unmasked += l.values[t * c.experts + e] != -std::numeric_limits<float>::infinity() ? 1 : 0;
    }
    REQUIRE(kept >= std::min(c.rule.keep_top_k, unmasked));
    REQUIRE(sum <= 1 + 1e-5);
    int const mask_kept = routing::dynmole_keep_mask(&l.values[t * c.experts], c.experts, c.rule, mask.data());
    REQUIRE(mask_kept == kept);
    for (int j = 0; j < kept; ++j) {
      REQUIRE(mask[reference.ids[t * c.experts + j]] == 1.f);
    }
    REQUIRE(std::accumulate(mask.begin(), mask.end(), 0.f) == float(kept));
  }
}

TEST_CASE("DynMoLE: a NaN row on the device, T = 0", "[routing][emu][dynmole]") {
  research_test::check_nonfinite_policy(routing::dynmole_router(6), route_test::make_logits(3, 6, Pattern::random, 8),
                                        4);
  research_test::check_nonfinite_policy(routing::dynmole_router(256),
                                        route_test::make_logits(3, 256, Pattern::random, 9), 255);
  Logits const empty{0, 6, {}};
  CHECK(route_test::host_reference(routing::dynmole_router(6), empty).status == Status::ok);
  CHECK(route_test::cpu_route(routing::dynmole_router(6), empty).status == Status::ok);
  CHECK(route_test::device_route(routing::dynmole_router(6), empty, 1).status == Status::ok);
}

TEST_CASE("DynMoLE: bad parameters are refused with a message, outputs untouched", "[routing][emu][dynmole]") {
  using research_test::expect_rejected;
  Logits const l1 = route_test::make_logits(3, 1, Pattern::random, 1);
  expect_rejected(routing::dynmole_router(1, {.keep_top_k = 1}), l1, Status::invalid_argument,
                  "E must be >= 2 (entropy normalisation)");
  Logits const l = route_test::make_logits(3, 6, Pattern::random, 1);
  expect_rejected(routing::dynmole_router(6, {.entropy_index = 0.f}), l, Status::invalid_argument,
                  "entropy_index must be in (0, 2]");
  expect_rejected(routing::dynmole_router(6, {.entropy_index = 2.5f}), l, Status::invalid_argument,
                  "entropy_index must be in (0, 2]");
  expect_rejected(routing::dynmole_router(6, {.entropy_index = research_test::nan_value}), l, Status::invalid_argument,
                  "entropy_index");
  expect_rejected(routing::dynmole_router(6, {.top_p = 0.f}), l, Status::invalid_argument, "top_p must be in (0, 1]");
  expect_rejected(routing::dynmole_router(6, {.top_p = 1.5f}), l, Status::invalid_argument, "top_p must be in (0, 1]");
  expect_rejected(routing::dynmole_router(6, {.keep_top_k = 0}), l, Status::invalid_argument,
                  "keep_top_k must be in [1, E]");
  expect_rejected(routing::dynmole_router(6, {.keep_top_k = 7}), l, Status::invalid_argument,
                  "keep_top_k must be in [1, E]");
  expect_rejected(routing::dynmole_router(6, {.entropy_threshold = 0.f}), l, Status::invalid_argument,
                  "entropy_threshold must be > 0");
  expect_rejected(routing::dynmole_router(6, {.entropy_eps = 0.f}), l, Status::invalid_argument,
                  "entropy_eps must be finite and > 0");
  expect_rejected(routing::DynMoLE<4>{.experts = 6}, l, Status::unsupported_config, "MaxExperts=4");
}
