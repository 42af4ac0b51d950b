// The similarity / retrieval router and SALOVA (ALGORITHMS.md §4.2): the worked example (scores,
// both orders, softmax weights, BCE and all_pairs margin values and gradients), key masks,
// clamp_k, every weight mode on every path, the weights' backward and dL/dtheta vs fp64 central
// differences, and every bad input.
//
// Tolerances (u = 2^-24): scores as in prototype_test (scale (2 D + 8) u). Weights: one and raw
// are exact; sigmoid within 2 ulp + reference rounding, 8 u; softmax over k <= 8 selected scores:
// (k + 8) u for the sum, exp and division plus |s_j - s_0| u for rounding each difference. Losses and their
// gradients are computed in fp64 and rounded once: compared with the example's printed digits
// (atol 1e-8 on 9 digits) and with fp64 central differences (step 1e-6: 1e-7 + 1e-6 |g|).

#include "moekit/routing/similarity.hpp"

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "research_test_support.hpp"
#include <catch2/catch.hpp>

using namespace moekit;
using research_test::Logits;
using research_test::Pattern;
using research_test::ScorePath;
using routing::Similarity;
using routing::SimilarityOrder;
using routing::SimilarityWeight;

namespace {
constexpr double u = research_test::unit_roundoff;

std::vector<float> const example_q = {1.0f, 0.5f, 0.0f, -0.5f};
std::vector<float> const example_keys = {0.9f, 0.4f, 0.1f, -0.3f, 0.0f, 1.0f, 0.0f,  0.0f,  -1.0f, 0.0f,  0.5f, 0.5f,
                                         0.5f, 0.5f, 0.5f, 0.6f,  1.0f, 0.6f, -0.2f, -0.4f, 0.2f,  -0.1f, 1.0f, 0.0f};
std::vector<double> const example_s = {2.682050659, 1.109733909, -2.265234857, 0.947981532, 2.665494632, 0.324896821};
std::vector<float> const example_y = {1, 0, 0, 0, 0, 1};

void require_close(double got, double expected, double atol, double rtol) {
  INFO("got " << got << ", expected " << expected);
  REQUIRE(std::fabs(got - expected) <= atol + rtol * std::fabs(expected));
}

HostTensor<float const, 2> view(std::vector<float> const& v, std::int64_t rows, std::int64_t cols) {
  return HostTensor<float const, 2>::row_major(v.data(), {rows, cols});
}
HostTensor<float, 2> out(std::vector<float>& v, std::int64_t rows, std::int64_t cols) {
  return HostTensor<float, 2>::row_major(v.data(), {rows, cols});
}

// The example's scores with the SALOVA scale exp(1) (fp32), on the host loop.
std::vector<float> example_scores() {
  std::vector<float> s(6);
  REQUIRE(routing::similarity_scores(routing::salova_scale(), view(example_q, 1, 4), view(example_keys, 6, 4),
                                     out(s, 1, 6)) == Status::ok);
  return s;
}

routing::SimilarityRouter<8> router(int keys, int k, SimilarityOrder order, SimilarityWeight weight) {
  return {.keys = keys, .k = k, .order = order, .weight = weight};
}
}  // namespace

TEST_CASE("similarity router reproduces the worked example of ALGORITHMS.md 4.2", "[routing][emu][similarity]") {
  // Scores c n(q).n(k_i), c = e: printed to 9 digits; fp32 bound c (2 D + 8) u; c itself is
  // fp32(e) (relative u).
  double const scale = std::exp(1.0);
  double const atol = scale * (2 * 4 + 8) * u + 3 * u;
  for (ScorePath path : {ScorePath::host, ScorePath::device, ScorePath::reference}) {
    auto const [status, s] = research_test::similarity_scores(path, Similarity::cosine, routing::salova_scale().value(),
                                                              example_q, example_keys, 1, 6, 4, 6);
    REQUIRE(status == Status::ok);
    for (int i = 0; i < 6; ++i) {
      require_close(s[i], example_s[i], atol, 0);
    }
  }
  CHECK(routing::salova_scale().value() == fp32::exp(1.f));
  std::vector<float> const s = example_scores();
  Logits const l{1, 6, s};
  // score_desc ids [0, 4, 1]; SALOVA's index_asc [0, 1, 4]; weights one.
  research_test::check_example(router(6, 3, SimilarityOrder::score_desc, SimilarityWeight::one), l, {0, 4, 1},
                               {1.f, 1.f, 1.f}, 0, 0);
  research_test::check_example(routing::salova_router(6, 3), l, {0, 1, 4}, {1.f, 1.f, 1.f}, 0, 0);
  // softmax over the three selected, in score order; permuted with the ids in index order. On
  // the printed scores (fp64 rounded once to fp32) so only the softmax's own error counts:
  // (k + 16) u relative (3-term sum, exp, division, |s_j - s_0| < 2 rounding) + 1e-9 printing.
  std::vector<float> const printed(example_s.begin(), example_s.end());
  Logits const p{1, 6, printed};
  double const softmax_rtol = (3 + 16) * u;
  research_test::check_example(router(6, 3, SimilarityOrder::score_desc, SimilarityWeight::softmax), p, {0, 4, 1},
                               {0.456382597f, 0.448888919f, 0.094728484f}, softmax_rtol, 1e-9);
  research_test::check_example(router(6, 3, SimilarityOrder::index_asc, SimilarityWeight::softmax), p, {0, 1, 4},
                               {0.456382597f, 0.094728484f, 0.448888919f}, softmax_rtol, 1e-9);
  // raw weights are the scores themselves.
  research_test::check_example(router(6, 3, SimilarityOrder::score_desc, SimilarityWeight::raw), l, {0, 4, 1},
                               {s[0], s[4], s[1]}, 0, 0);
  // The SALOVA preset's k = 5 clamps to S when fewer keys exist.
  research_test::check_example(routing::salova_router(4), Logits{1, 4, {s[0], s[1], s[2], s[3]}}, {0, 1, 2, 3, 4},
                               {1.f, 1.f, 1.f, 1.f, 0.f}, 0, 0);

  // BCE and the all_pairs margin with y = [1, 0, 0, 0, 0, 1] (8 pairs), first on the computed
  // scores: their error (<= 2.6e-6 each, above) moves both losses by at most 2.6e-6 (the
  // gradients' absolute values sum to <= 1), BCE's gradient by at most 1e-7.
  float bce = -1.f, margin = -1.f;
  std::vector<float> g_bce(6, -7.f), g_margin(6, -7.f);
  REQUIRE(routing::similarity_bce_loss(view(s, 1, 6), view(example_y, 1, 6), &bce, out(g_bce, 1, 6)) == Status::ok);
  REQUIRE(routing::similarity_margin_loss(view(s, 1, 6), view(example_y, 1, 6), 0.2f, &margin, out(g_margin, 1, 6)) ==
          Status::ok);
  require_close(bce, 1.01861304, 3e-6, 0);
  require_close(margin, 0.566495448, 3e-6, 0);
  double const expected_bce[6] = {-0.010673475, 0.125346583, 0.015673902, 0.120118178, 0.155826599, -0.069913803};
  double const expected_margin[6] = {-0.125, 0.125, 0, 0.125, 0.25, -0.375};
  for (int i = 0; i < 6; ++i) {
    require_close(g_bce[i], expected_bce[i], 1e-6, 0);
    CHECK(g_margin[i] == float(expected_margin[i]));  // sums of +-1/8: exact
  }
  // And at the printed scores (fp64 inputs rounded to fp32 once): 1e-7.
  REQUIRE(routing::similarity_bce_loss(view(printed, 1, 6), view(example_y, 1, 6), &bce, out(g_bce, 1, 6)) ==
          Status::ok);
  REQUIRE(routing::similarity_margin_loss(view(printed, 1, 6), view(example_y, 1, 6), 0.2f, &margin) == Status::ok);
  require_close(bce, 1.01861304, 1e-7, 0);
  require_close(margin, 0.566495448, 1e-7, 0);
  for (int i = 0; i < 6; ++i) {
    require_close(g_bce[i], expected_bce[i], 1e-8, 0);
  }
}

TEST_CASE("similarity router: key masks, -inf scores and clamp_k", "[routing][emu][similarity]") {
  std::vector<float> const s = example_scores();
  Logits const l{1, 6, s};
  // Mask keys 0 and 4 (the two best): score order picks 1, 3, 5.
  std::vector<std::uint8_t> const mask = {0, 1, 1, 1, 0, 1};
  auto r = router(6, 3, SimilarityOrder::score_desc, SimilarityWeight::one);
  r.key_valid = mask.data();
  research_test::check_example(r, l, {1, 3, 5}, {1.f, 1.f, 1.f}, 0, 0);
  // Four valid keys, k = 5: clamped to four; a -inf score is not selectable either.
  r.k = 5;
  research_test::check_example(r, l, {1, 3, 5, 2, 6}, {1.f, 1.f, 1.f, 1.f, 0.f}, 0, 0);
  Logits minus_inf = l;
  minus_inf.at(0, 2) = -INFINITY;
  research_test::check_example(r, minus_inf, {1, 3, 5, 6, 6}, {1.f, 1.f, 1.f, 0.f, 0.f}, 0, 0);
  // All keys masked: k_eff = 0, every slot empty.
  std::vector<std::uint8_t> const none(6, 0);
  r.key_valid = none.data();
  research_test::check_example(r, l, {6, 6, 6, 6, 6}, {0.f, 0.f, 0.f, 0.f, 0.f}, 0, 0);
  // Per-query masks [N_q, S].
  Logits const two{2, 6, {s[0], s[1], s[2], s[3], s[4], s[5], s[0], s[1], s[2], s[3], s[4], s[5]}};
  std::vector<std::uint8_t> const per_query = {1, 1, 1, 1, 1, 1, 0, 0, 1, 0, 0, 1};
  auto q = router(6, 2, SimilarityOrder::index_asc, SimilarityWeight::one);
  q.key_valid = per_query.data();
  q.key_mask_per_query = true;
  q.token_count = 2;
  research_test::check_example(q, two, {0, 4, 2, 5}, {1.f, 1.f, 1.f, 1.f}, 0, 0);
  // Without clamp_k a query with too few valid keys is an error on the host (checked mode).
  auto strict = router(6, 3, SimilarityOrder::score_desc, SimilarityWeight::one);
  strict.clamp_k = false;
  strict.key_valid = per_query.data();
  strict.key_mask_per_query = true;
  strict.token_count = 2;
  research_test::expect_rejected_by_reference(strict, two, Status::invalid_argument,
                                              "k exceeds number of valid keys (query 1: k=3, 2 valid)");
  // k = 0 and S = 0 route nothing.
  research_test::check_example(router(6, 0, SimilarityOrder::score_desc, SimilarityWeight::one), l, {}, {}, 0, 0);
  Logits const no_keys{3, 0, {}};
  auto const empty = router(0, 2, SimilarityOrder::index_asc, SimilarityWeight::softmax);
  Logits const none_routed = no_keys;
  CHECK(route_test::cpu_route(empty, none_routed).ids == std::vector<int>(6, 0));
  CHECK(route_test::host_reference(empty, none_routed).ids == std::vector<int>(6, 0));
}

TEST_CASE("similarity router: host reference, CPU path and device kernel agree", "[routing][emu][similarity]") {
  struct Case {
    int keys, k;
    SimilarityOrder order;
    SimilarityWeight weight;
    int mask;  // 0 none, 1 shared, 2 per query
  };
  using O = SimilarityOrder;
  using W = SimilarityWeight;
  auto const c = GENERATE(Case{1, 1, O::score_desc, W::one, 0}, Case{6, 3, O::index_asc, W::one, 0},
                          Case{6, 5, O::index_asc, W::softmax, 1}, Case{60, 8, O::score_desc, W::softmax, 2},
                          Case{256, 5, O::index_asc, W::sigmoid, 1}, Case{37, 8, O::score_desc, W::raw, 2},
                          Case{9, 8, O::index_asc, W::raw, 1}, Case{256, 8, O::score_desc, W::softmax, 0});
  auto const tokens = GENERATE(std::int64_t{1}, std::int64_t{37}, std::int64_t{300});
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::one_expert, Pattern::masked, Pattern::coarse);
  CAPTURE(c.keys, c.k, int(c.order), int(c.weight), c.mask, tokens, route_test::name(pattern));
  if (pattern == Pattern::masked && c.keys < 3) {
    SUCCEED("skipped: the masked pattern would mask whole rows when S < 3");
    return;
  }
  Logits const l = route_test::make_logits(tokens, c.keys, pattern, 101u + static_cast<std::uint32_t>(c.keys));
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(c.mask == 2 ? tokens * c.keys : c.keys));
  for (std::size_t i = 0; i < mask.size(); ++i) {
    mask[i] = (i * 13 + 5) % 7 < 5 ? 1 : 0;
  }
  auto r = router(c.keys, c.k, c.order, c.weight);
  if (c.mask > 0) {
    r.key_valid = mask.data();
    r.key_mask_per_query = c.mask == 2;
    r.token_count = tokens;
  }
  // Softmax: k-term sum, exp and division (k + 8) u, plus |s_j - s_0| u <= 20 u for rounding the
  // difference, in the numerator and in each denominator term: (k + 48) u.
  double const rtol = c.weight == W::sigmoid ? 8 * u : c.weight == W::softmax ? (c.k + 48) * u : 0;
  auto const reference = research_test::compare_all_paths(r, l, rtol, 1e-30);
  for (std::int64_t t = 0; t < tokens; ++t) {
    int last = -1;
    bool empty = false;
    for (int j = 0; j < c.k; ++j) {
      int const id = reference.ids[t * c.k + j];
      if (id == c.keys) {
        empty = true;
        continue;
      }
      REQUIRE(!empty);  // empty slots only at the end
      REQUIRE(r.key_allowed(t, id));
      REQUIRE(l.values[t * c.keys + id] != -INFINITY);
      if (c.order == O::index_asc) {
        REQUIRE(id > last);
        last = id;
      }
    }
  }
}

TEST_CASE("similarity weights backward and dL/dtheta match fp64 central differences",
          "[routing][similarity][gradient]") {
  auto const weight =
      GENERATE(SimilarityWeight::one, SimilarityWeight::raw, SimilarityWeight::sigmoid, SimilarityWeight::softmax);
  auto const order = GENERATE(SimilarityOrder::score_desc, SimilarityOrder::index_asc);
  std::int64_t const queries = 3;
  int const keys = 7, k = 3;
  Logits const l = route_test::make_logits(queries, keys, Pattern::random, 44);
  auto const r = router(keys, k, order, weight);
  auto const routed = route_test::cpu_route(r, l);
  REQUIRE(routed.status == Status::ok);
  std::mt19937 rng(9);
  std::normal_distribution<float> normal(0.f, 1.f);
  std::vector<float> g(static_cast<std::size_t>(queries * k));
  for (float& v : g) {
    v = normal(rng);
  }
  std::vector<float> ds(static_cast<std::size_t>(queries * keys), -7.f);
  REQUIRE(routing::similarity_weights_backward(r, view(l.values, queries, keys),
                                               HostTensor<int const, 2>::row_major(routed.ids.data(), {queries, k}),
                                               view(g, queries, k), out(ds, queries, keys)) == Status::ok);
  std::vector<double> s(l.values.begin(), l.values.end());
  auto loss = [&]() {  // sum_j g_j w_j(s) with the selection held fixed, fp64
    double total = 0;
    for (std::int64_t q = 0; q < queries; ++q) {
      double max = -INFINITY, sum = 0;
      for (int j = 0; j < k; ++j) {
        max = std::max(max, s[q * keys + routed.ids[q * k + j]]);
      }
      for (int j = 0; j < k; ++j) {
        sum += std::exp(s[q * keys + routed.ids[q * k + j]] - max);
      }
      for (int j = 0; j < k; ++j) {
        double const v = s[q * keys + routed.ids[q * k + j]];
        double const w = weight == SimilarityWeight::one       ? 1
                         : weight == SimilarityWeight::raw     ? v
                         : weight == SimilarityWeight::sigmoid ? 1 / (1 + std::exp(-v))
                                                               : std::exp(v - max) / sum;
        total += g[q * k + j] * w;
      }
    }
    return total;
  };
  double const h = 1e-6;
  for (std::size_t i = 0; i < s.size(); ++i) {
    double const keep = s[i];
    s[i] = keep + h;
    double const up = loss();
    s[i] = keep - h;
    double const down = loss();
    s[i] = keep;
    require_close(ds[i], (up - down) / (2 * h), 1e-7, 1e-6);
  }
  // dL/dtheta for s = exp(theta) cos: sum ds * s, vs a difference in theta of the fp64 loss.
  double dtheta = 0;
  REQUIRE(routing::logit_scale_gradient(view(l.values, queries, keys), view(ds, queries, keys), &dtheta) == Status::ok);
  auto loss_at_scale = [&](double factor) {
    std::vector<double> const keep = s;
    for (double& v : s) {
      v *= factor;
    }
    double const value = loss();
    s = keep;
    return value;
  };
  require_close(dtheta, (loss_at_scale(std::exp(h)) - loss_at_scale(std::exp(-h))) / (2 * h), 1e-7, 1e-6);
}

TEST_CASE("similarity BCE and margin losses match fp64 central differences", "[routing][similarity][gradient]") {
  std::int64_t const queries = 4, keys = 9;
  Logits const l = route_test::make_logits(queries, keys, Pattern::random, 5);
  std::vector<float> y(static_cast<std::size_t>(queries * keys));
  for (std::size_t i = 0; i < y.size(); ++i) {
    y[i] = (i * 5 + 1) % 7 < 2 ? 1.f : 0.f;
  }
  float bce = 0, margin = 0;
  std::vector<float> g_bce(y.size()), g_margin(y.size());
  REQUIRE(routing::similarity_bce_loss(view(l.values, queries, keys), view(y, queries, keys), &bce,
                                       out(g_bce, queries, keys)) == Status::ok);
  REQUIRE(routing::similarity_margin_loss(view(l.values, queries, keys), view(y, queries, keys), 0.2f, &margin,
                                          out(g_margin, queries, keys)) == Status::ok);
  std::vector<double> s(l.values.begin(), l.values.end());
  auto bce_fp64 = [&]() {
    double sum = 0;
    for (std::size_t i = 0; i < s.size(); ++i) {
      sum += std::log(1 + std::exp(s[i])) - y[i] * s[i];
    }
    return sum / double(s.size());
  };
  auto margin_fp64 = [&]() {
    double sum = 0, pairs = 0;
    for (std::size_t p = 0; p < s.size(); ++p) {
      for (std::size_t n = 0; n < s.size(); ++n) {
        if (y[p] == 1 && y[n] == 0) {
          sum += std::max(0.0, 0.2 + s[n] - s[p]);
          pairs += 1;
        }
      }
    }
    return sum / pairs;
  };
  require_close(bce, bce_fp64(), 0, 2 * u);
  require_close(margin, margin_fp64(), 0, 2 * u);
  double const h = 1e-6;
  for (std::size_t i = 0; i < s.size(); ++i) {
    double const keep = s[i];
    s[i] = keep + h;
    double const bce_up = bce_fp64(), margin_up = margin_fp64();
    s[i] = keep - h;
    double const bce_down = bce_fp64(), margin_down = margin_fp64();
    s[i] = keep;
    require_close(g_bce[i], (bce_up - bce_down) / (2 * h), 1e-7, 1e-6);
    // The hinge is piecewise linear; no pair sits within h of its kink for these scores.
    require_close(g_margin[i], (margin_up - margin_down) / (2 * h), 1e-7, 1e-6);
  }
  // No positive (or no negative): margin 0 and no gradient; an empty matrix: BCE 0.
  std::vector<float> const zeros(y.size(), 0.f);
  REQUIRE(routing::similarity_margin_loss(view(l.values, queries, keys), view(zeros, queries, keys), 0.2f, &margin,
                                          out(g_margin, queries, keys)) == Status::ok);
  CHECK(margin == 0.f);
  CHECK(g_margin == std::vector<float>(y.size(), 0.f));
  REQUIRE(routing::similarity_bce_loss(view(l.values, 0, keys), view(y, 0, keys), &bce) == Status::ok);
  CHECK(bce == 0.f);
}

TEST_CASE("similarity router: a NaN row on the device, T = 0", "[routing][emu][similarity]") {
  research_test::check_nonfinite_policy(router(9, 4, SimilarityOrder::index_asc, SimilarityWeight::softmax),
                                        route_test::make_logits(3, 9, Pattern::random, 6), 3);
  // A NaN score is never selected on the device (the row is counted).
  Logits l = route_test::make_logits(1, 5, Pattern::random, 7);
  l.at(0, 2) = research_test::nan_value;
  auto const device = route_test::device_route(router(5, 5, SimilarityOrder::score_desc, SimilarityWeight::one), l, 1);
  CHECK(device.diagnostics.nonfinite_rows == 1);
  CHECK(device.ids[4] == 5);
  for (int j = 0; j < 4; ++j) {
    CHECK(device.ids[j] != 2);
  }
  Logits const empty{0, 6, {}};
  auto const r = routing::salova_router(6);
  CHECK(route_test::host_reference(r, empty).status == Status::ok);
  CHECK(route_test::cpu_route(r, empty).status == Status::ok);
  CHECK(route_test::device_route(r, empty, 1).status == Status::ok);
}

TEST_CASE("similarity router and losses: bad inputs are refused with a message, outputs untouched",
          "[routing][emu][similarity]") {
  using research_test::expect_rejected;
  Logits const l = route_test::make_logits(3, 6, Pattern::random, 1);
  clear_error_message();  // (no [T, -1] buffers can be made: the router's own check)
  CHECK(router(6, -1, SimilarityOrder::score_desc, SimilarityWeight::one).validate() == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("k must be >= 0"));
  auto strict = router(6, 7, SimilarityOrder::score_desc, SimilarityWeight::one);
  strict.clamp_k = false;
  expect_rejected(strict, l, Status::invalid_argument, "k exceeds number of valid keys");
  expect_rejected(routing::SimilarityRouter<4>{.keys = 6, .k = 5}, l, Status::unsupported_config, "MaxK=4");
  std::vector<std::uint8_t> const mask(12, 1);
  auto per_query = router(6, 2, SimilarityOrder::score_desc, SimilarityWeight::one);
  per_query.key_valid = mask.data();
  per_query.key_mask_per_query = true;
  per_query.token_count = 2;
  research_test::expect_rejected_by_reference(per_query, l, Status::invalid_argument,
                                              "the key mask holds 2 queries, the batch has 3");
  Logits nan_score = l;
  nan_score.at(1, 4) = research_test::nan_value;
  research_test::expect_rejected_by_reference(routing::salova_router(6), nan_score, Status::invalid_argument,
                                              "routing scores: non-finite value nan at token 1, expert 4");

  // Scales: a fixed scale must be > 0 (the SALOVA learned scale is exp(theta)).
  std::vector<float> s(6, -7.f);
  clear_error_message();
  CHECK(routing::similarity_scores(routing::SimilarityScale{.scale = 0.f}, view(example_q, 1, 4),
                                   view(example_keys, 6, 4), out(s, 1, 6)) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("scale must be > 0"));
  CHECK(routing::similarity_scores(routing::salova_scale(research_test::nan_value), view(example_q, 1, 4),
                                   view(example_keys, 6, 4), out(s, 1, 6)) == Status::invalid_argument);
  CHECK(routing::similarity_scores(routing::salova_scale(100.f), view(example_q, 1, 4), view(example_keys, 6, 4),
                                   out(s, 1, 6)) == Status::invalid_argument);
  clear_error_message();
  CHECK(routing::similarity_scores(routing::salova_scale(), view(example_q, 1, 0), view(example_keys, 6, 0),
                                   out(s, 1, 6)) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("(H or D) must be >= 1"));
  CHECK(s == std::vector<float>(6, -7.f));

  // Losses: non-finite scores, targets outside their range, a missing output.
  std::vector<float> scores = example_scores(), y = example_y, g(6, -7.f);
  float loss = -7.f;
  scores[3] = research_test::inf_value;
  clear_error_message();
  CHECK(routing::similarity_bce_loss(view(scores, 1, 6), view(y, 1, 6), &loss, out(g, 1, 6)) ==
        Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("non-finite routing score inf at query 0, key 3"));
  scores = example_scores();
  y[2] = 0.5f;  // a soft target: fine for BCE, not for the margin loss
  CHECK(routing::similarity_bce_loss(view(scores, 1, 6), view(y, 1, 6), &loss) == Status::ok);
  clear_error_message();
  CHECK(routing::similarity_margin_loss(view(scores, 1, 6), view(y, 1, 6), 0.2f, &loss, out(g, 1, 6)) ==
        Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("target 0.5 at query 0, key 2 must be 0 or 1"));
  y[2] = 1.5f;
  CHECK(routing::similarity_bce_loss(view(scores, 1, 6), view(y, 1, 6), &loss) == Status::invalid_argument);
  CHECK(routing::similarity_bce_loss(view(scores, 1, 6), view(example_y, 1, 6), nullptr) == Status::invalid_argument);
  CHECK(g == std::vector<float>(6, -7.f));
}
