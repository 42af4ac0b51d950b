// ProMoE prototype routing (ALGORITHMS.md §4.1) and the cosine score kernel: the worked example
// (Z, ids, weights, the K = 2 case, an unconditional token, dZ/dx0 and dZ/dp0), the score kernel
// vs its host loop vs the fp64 reference (fp32 and bf16 inputs, zero-norm rows, -inf padding
// columns, determinism), gradients vs fp64 central differences, the router on every path, and
// every bad input.
//
// Tolerances (u = 2^-24):
// - cosine scores: the three H-term fmaf sums have relative error <= H u, each square root
//   halves it, the product, division and scale add 3 u, and |x.p| <= |x||p|, so
//   |dZ| <= scale (2 H + 6) u; we use scale (2 H + 8) u. Dot scores: scale (H + 1) u sum|x_h p_h|.
// - router weights: identity weights are the input scores (exact); sigmoid is within 2 ulp (4 u)
//   of the double value, plus 1 u of rounding the reference: 8 u; softmax as in top_k_test,
//   (N_E + 40) u.
// - gradients: computed in fp64 and rounded once (u relative) vs central differences with step
//   1e-6 on an fp64 copy of the formula (truncation ~1e-12 h^2 terms, cancellation ~1e-10): we
//   allow 1e-7 + 1e-6 |g|.

#include "moekit/routing/prototype.hpp"

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "research_test_support.hpp"
#include <catch2/catch.hpp>

#include "moekit/core/float16.hpp"
#include "moekit/routing/cosine_scores.hpp"

using namespace moekit;
using research_test::Logits;
using research_test::Pattern;
using research_test::ScorePath;
using routing::PrototypeActivation;
using routing::Similarity;

namespace {
constexpr double u = research_test::unit_roundoff;

std::vector<float> const example_p = {1.0f, 0.5f, 0.0f, 0.0f, 0.0f, 1.0f, 0.5f, 0.0f, 0.5f, 0.0f, 0.0f, 1.0f};
std::vector<float> const example_x = {1.0f, 0.8f, 0.2f, 0.1f, 0.1f, 0.6f, 0.9f, 0.3f};
std::vector<double> const example_z = {0.963229283, 0.619218825, 0.412812550, 0.317470316, 0.833359580, 0.277786527};

double cosine_atol(double scale, std::int64_t hidden) { return scale * double(2 * hidden + 8) * u; }

// Z(x, p) in fp64, the formula the gradients are of.
double score_fp64(Similarity similarity, double scale, std::vector<double> const& x, std::vector<double> const& p) {
  double xx = 0, pp = 0, xp = 0;
  for (std::size_t h = 0; h < x.size(); ++h) {
    xx += x[h] * x[h];
    pp += p[h] * p[h];
    xp += x[h] * p[h];
  }
  if (similarity == Similarity::dot) {
    return scale * xp;
  }
  return scale * xp / (std::max(std::sqrt(xx), 1e-12) * std::max(std::sqrt(pp), 1e-12));
}

void require_close(double got, double expected, double atol, double rtol) {
  INFO("got " << got << ", expected " << expected);
  REQUIRE(std::fabs(got - expected) <= atol + rtol * std::fabs(expected));
}

std::vector<float> random_matrix(std::int64_t rows, std::int64_t cols, std::uint32_t seed, float sd = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, sd);
  std::vector<float> v(static_cast<std::size_t>(rows * cols));
  for (float& f : v) {
    f = normal(rng);
  }
  return v;
}
}  // namespace

TEST_CASE("ProMoE reproduces the worked example of ALGORITHMS.md 4.1", "[routing][emu][promoe]") {
  // Z on the host loop, the kernel and the reference: printed to 9 digits, fp32 bound 2(H+4)u.
  for (ScorePath path : {ScorePath::host, ScorePath::device, ScorePath::reference}) {
    auto const [status, z] =
        research_test::similarity_scores(path, Similarity::cosine, 1.f, example_x, example_p, 2, 3, 4, 4);
    REQUIRE(status == Status::ok);
    for (int i = 0; i < 6; ++i) {
      require_close(z[i / 3 * 4 + i % 3], example_z[i], cosine_atol(1, 4), 0);
    }
    CHECK(z[3] == -INFINITY);  // the unconditional expert's column
    CHECK(z[7] == -INFINITY);
  }
  auto const [status, z] =
      research_test::similarity_scores(ScorePath::device, Similarity::cosine, 1.f, example_x, example_p, 2, 3, 4, 4);
  REQUIRE(status == Status::ok);
  Logits const scores{2, 4, z};
  // K = 1, identity: ids [[0], [1]], weights the cosines (exact: identity passes Z through).
  research_test::check_example(routing::promoe_router(3, 1), scores, {0, 1}, {z[0], z[5]}, 0, 0);
  research_test::check_example(routing::promoe_router(3, 1), scores, {0, 1}, {float(example_z[0]), float(example_z[4])},
                               0, cosine_atol(1, 4));
  // K = 2: ids [[0, 1], [1, 0]].
  research_test::check_example(routing::promoe_router(3, 2), scores, {0, 1, 1, 0},
                               {float(example_z[0]), float(example_z[1]), float(example_z[4]), float(example_z[3])}, 0,
                               cosine_atol(1, 4));
  // A third token with c = null_id: id N_E = 3, weight exactly 1, its scores unused.
  Logits three = scores;
  for (int e = 0; e < 4; ++e) {
    three.values.push_back(e == 3 ? -INFINITY : 0.5f);
  }
  three.tokens = 3;
  std::vector<std::uint8_t> const uncond = {0, 0, 1};
  auto r = routing::promoe_router(3, 1);
  r.uncond_mask = uncond.data();
  r.token_count = 3;
  research_test::check_example(r, three, {0, 1, 3}, {z[0], z[5], 1.f}, 0, 0);
  r.k = 2;  // K = 2: the unconditional token's second slot is empty (id 4, weight 0)
  research_test::check_example(r, three, {0, 1, 1, 0, 3, 4}, {z[0], z[1], z[5], z[4], 1.f, 0.f}, 0, 0);

  // Gating derivative for (t = 0, e = 0), computed in fp64 and rounded once: 2e-8 covers the
  // 9 printed digits and the rounding.
  float dx[4], dp[4];
  routing::similarity_score_gradient(Similarity::cosine, 1.f, example_x.data(), example_p.data(), 4, dx, dp);
  double const expected_dx[4] = {0.118062761, -0.111956066, -0.113991631, -0.056995816};
  double const expected_dp[4] = {-0.082562510, 0.165125020, 0.137604183, 0.068802092};
  for (int h = 0; h < 4; ++h) {
    require_close(dx[h], expected_dx[h], 2e-8, 0);
    require_close(dp[h], expected_dp[h], 2e-8, 0);
  }
}

TEST_CASE("cosine scores: kernel, host loop and fp64 reference agree", "[routing][emu][promoe][scores]") {
  struct Case {
    std::int64_t tokens, count, hidden, columns;
    Similarity similarity;
    float scale;
  };
  auto const c = GENERATE(Case{0, 3, 4, 3, Similarity::cosine, 1.f}, Case{1, 1, 1, 1, Similarity::cosine, 1.f},
                          Case{37, 12, 64, 13, Similarity::cosine, 1.f}, Case{300, 3, 5, 5, Similarity::cosine, 2.5f},
                          Case{16, 256, 8, 256, Similarity::cosine, 1.f}, Case{50, 7, 33, 7, Similarity::dot, 0.5f},
                          Case{9, 6, 1152, 8, Similarity::cosine, 2.7182817f});
  CAPTURE(c.tokens, c.count, c.hidden, c.columns, int(c.similarity), c.scale);
  std::vector<float> x = random_matrix(c.tokens, c.hidden, 3u + static_cast<std::uint32_t>(c.hidden));
  std::vector<float> p = random_matrix(c.count, c.hidden, 4u + static_cast<std::uint32_t>(c.count), 0.02f);
  // A zero token and a zero prototype: their cosines are exactly 0 (F.normalize's floor).
  if (c.tokens > 2) {
    std::fill(x.begin() + c.hidden, x.begin() + 2 * c.hidden, 0.f);
  }
  if (c.count > 2) {
    std::fill(p.begin() + 2 * c.hidden, p.begin() + 3 * c.hidden, 0.f);
  }
  auto run = [&](ScorePath path, std::uint64_t seed = 0, unsigned blocks = 0) {
    auto result = research_test::similarity_scores(path, c.similarity, c.scale, x, p, c.tokens, c.count, c.hidden,
                                                   c.columns, seed, blocks);
    REQUIRE(result.first == Status::ok);
    return result.second;
  };
  auto const device = run(ScorePath::device);
  auto const host = run(ScorePath::host);
  auto const reference = run(ScorePath::reference);
  // Bits: the host loop and every schedule / grid of the kernel.
  route_test::Routed a, b;
  a.status = b.status = Status::ok;
  a.weights = device;
  b.weights = host;
  route_test::require_identical(a, b);
  b.weights = run(ScorePath::device, 77, 1);
  route_test::require_identical(a, b);
  b.weights = run(ScorePath::device, 78, 3);
  route_test::require_identical(a, b);
  for (std::int64_t t = 0; t < c.tokens; ++t) {
    for (std::int64_t e = 0; e < c.columns; ++e) {
      float const z = device[t * c.columns + e];
      if (e >= c.count) {
        REQUIRE(z == -INFINITY);
        continue;
      }
      double atol = cosine_atol(c.scale, c.hidden);
      if (c.similarity == Similarity::dot) {
        double s = 0;
        for (std::int64_t h = 0; h < c.hidden; ++h) {
          s += std::fabs(double(x[t * c.hidden + h]) * p[e * c.hidden + h]);
        }
        atol = c.scale * double(c.hidden + 1) * u * s;
      }
      require_close(z, reference[t * c.columns + e], atol, 0);
      if (c.similarity == Similarity::cosine && ((c.tokens > 2 && t == 1) || (c.count > 2 && e == 2))) {
        REQUIRE(z == 0.f);
      }
    }
  }
}

TEST_CASE("cosine scores: bf16 inputs give the fp32 scores of their exact fp32 values", "[routing][emu][scores]") {
  std::int64_t const tokens = 40, count = 12, hidden = 48;
  std::vector<float> xf = random_matrix(tokens, hidden, 8), pf = random_matrix(count, hidden, 9);
  std::vector<bf16_t> xb, pb;
  for (float& v : xf) {
    xb.push_back(bf16_t(v));
    v = float(xb.back());
  }
  for (float& v : pf) {
    pb.push_back(bf16_t(v));
    v = float(pb.back());
  }
  auto const from_bf16 = research_test::similarity_scores(ScorePath::device, Similarity::cosine, 1.f, xb, pb, tokens,
                                                          count, hidden, count + 1, 3);
  auto const from_f32 = research_test::similarity_scores(ScorePath::device, Similarity::cosine, 1.f, xf, pf, tokens,
                                                         count, hidden, count + 1, 4);
  auto const reference = research_test::similarity_scores(ScorePath::reference, Similarity::cosine, 1.f, xb, pb, tokens,
                                                          count, hidden, count + 1);
  REQUIRE(from_bf16.first == Status::ok);
  REQUIRE(from_f32.first == Status::ok);
  REQUIRE(reference.first == Status::ok);
  CHECK(from_bf16.second == from_f32.second);
  for (std::size_t i = 0; i < reference.second.size(); ++i) {
    if (i % (count + 1) != static_cast<std::size_t>(count)) {
      require_close(from_bf16.second[i], reference.second[i], cosine_atol(1, hidden), 0);
    }
  }
}

TEST_CASE("cosine scores backward matches fp64 central differences", "[routing][promoe][gradient]") {
  auto const similarity = GENERATE(Similarity::cosine, Similarity::dot);
  auto const scale = GENERATE(1.f, 2.7182817f);
  std::int64_t const tokens = 5, count = 4, hidden = 7;
  std::vector<float> const x = random_matrix(tokens, hidden, 11), p = random_matrix(count, hidden, 12),
                           g = random_matrix(tokens, count, 13);
  std::vector<float> dx(static_cast<std::size_t>(tokens * hidden), -7.f), dp(static_cast<std::size_t>(count * hidden));
  auto host = [](std::vector<float> const& v, std::int64_t r, std::int64_t c) {
    return HostTensor<float const, 2>::row_major(v.data(), {r, c});
  };
  REQUIRE(routing::cosine_scores_backward(similarity, scale, host(x, tokens, hidden), host(p, count, hidden),
                                          host(g, tokens, count),
                                          HostTensor<float, 2>::row_major(dx.data(), {tokens, hidden}),
                                          HostTensor<float, 2>::row_major(dp.data(), {count, hidden})) == Status::ok);
  // L = sum_{t,e} g[t,e] Z[t,e] in fp64.
  std::vector<double> xd(x.begin(), x.end()), pd(p.begin(), p.end());
  auto loss = [&]() {
    double l = 0;
    for (std::int64_t t = 0; t < tokens; ++t) {
      for (std::int64_t e = 0; e < count; ++e) {
        std::vector<double> xr(xd.begin() + t * hidden, xd.begin() + (t + 1) * hidden);
        std::vector<double> pr(pd.begin() + e * hidden, pd.begin() + (e + 1) * hidden);
        l += g[t * count + e] * score_fp64(similarity, scale, xr, pr);
      }
    }
    return l;
  };
  double const h = 1e-6;
  auto central = [&](std::vector<double>& v, std::size_t i) {
    double const keep = v[i];
    v[i] = keep + h;
    double const up = loss();
    v[i] = keep - h;
    double const down = loss();
    v[i] = keep;
    return (up - down) / (2 * h);
  };
  for (std::size_t i = 0; i < xd.size(); ++i) {
    require_close(dx[i], central(xd, i), 1e-7, 1e-6);
  }
  for (std::size_t i = 0; i < pd.size(); ++i) {
    require_close(dp[i], central(pd, i), 1e-7, 1e-6);
  }

  // At a zero token n(x) = x / 1e-12, so dZ/dx = scale n(p) / 1e-12 (§4.1); the scale is huge,
  // the relative check is what matters.
  std::vector<float> const zero(7, 0.f);
  float gx[7];
  routing::similarity_score_gradient(Similarity::cosine, scale, zero.data(), p.data(), 7, gx, nullptr);
  double norm = 0;
  for (int i = 0; i < 7; ++i) {
    norm += double(p[i]) * p[i];
  }
  for (int i = 0; i < 7; ++i) {
    require_close(gx[i], scale * p[i] / std::sqrt(norm) / 1e-12, 0, 2 * u);
  }
}

TEST_CASE("ProMoE weights backward matches fp64 central differences", "[routing][promoe][gradient]") {
  auto const activation =
      GENERATE(PrototypeActivation::identity, PrototypeActivation::sigmoid, PrototypeActivation::softmax);
  int const n = 6, k = 2;
  std::int64_t const tokens = 4;
  std::vector<float> z = random_matrix(tokens, n, 21, 0.5f);
  Logits l{tokens, n + 1, {}};
  l = research_test::append_columns(Logits{tokens, n, z}, 1, -INFINITY);
  std::vector<std::uint8_t> const uncond = {0, 1, 0, 0};
  routing::PrototypeRouter<8> r{.routed_experts = n, .k = k, .activation = activation};
  r.uncond_mask = uncond.data();
  r.token_count = tokens;
  auto const routed = route_test::cpu_route(r, l);
  REQUIRE(routed.status == Status::ok);
  std::vector<float> const g = random_matrix(tokens, k, 22);
  std::vector<float> dz(static_cast<std::size_t>(tokens * n), -7.f);
  REQUIRE(routing::prototype_weights_backward(r,
                                              HostTensor<float const, 2>::row_major(l.values.data(), {tokens, n + 1}),
                                              HostTensor<int const, 2>::row_major(routed.ids.data(), {tokens, k}),
                                              HostTensor<float const, 2>::row_major(g.data(), {tokens, k}),
                                              HostTensor<float, 2>::row_major(dz.data(), {tokens, n})) == Status::ok);
  // L = sum_j g_j A(Z)[ids_j] with the selection held fixed, in fp64.
  std::vector<double> zd(z.begin(), z.end());
  auto loss = [&]() {
    double total = 0;
    for (std::int64_t t = 0; t < tokens; ++t) {
      if (uncond[t]) {
        continue;
      }
      double max = -INFINITY, sum = 0;
      for (int e = 0; e < n; ++e) {
        max = std::max(max, zd[t * n + e]);
      }
      for (int e = 0; e < n; ++e) {
        sum += std::exp(zd[t * n + e] - max);
      }
      for (int j = 0; j < k; ++j) {
        double const v = zd[t * n + routed.ids[t * k + j]];
        double const a = activation == PrototypeActivation::identity  ? v
                         : activation == PrototypeActivation::sigmoid ? 1 / (1 + std::exp(-v))
                                                                      : std::exp(v - max) / sum;
        total += g[t * k + j] * a;
      }
    }
    return total;
  };
  double const h = 1e-6;
  for (std::size_t i = 0; i < zd.size(); ++i) {
    double const keep = zd[i];
    zd[i] = keep + h;
    double const up = loss();
    zd[i] = keep - h;
    double const down = loss();
    zd[i] = keep;
    require_close(dz[i], (up - down) / (2 * h), 1e-7, 1e-6);
  }
  for (int e = 0; e < n; ++e) {
    CHECK(dz[n + e] == 0.f);  // the unconditional token
  }
}

TEST_CASE("ProMoE: host reference, CPU path and device kernel agree", "[routing][emu][promoe]") {
  struct Case {
    int n, uncond, k;
    PrototypeActivation activation;
  };
  auto const c = GENERATE(Case{1, 1, 1, PrototypeActivation::identity}, Case{3, 1, 1, PrototypeActivation::identity},
                          Case{12, 1, 1, PrototypeActivation::identity}, Case{12, 1, 2, PrototypeActivation::sigmoid},
                          Case{12, 1, 3, PrototypeActivation::softmax}, Case{7, 3, 2, PrototypeActivation::identity},
                          Case{255, 1, 8, PrototypeActivation::softmax}, Case{60, 0, 6, PrototypeActivation::sigmoid},
                          Case{5, 2, 5, PrototypeActivation::identity});
  auto const tokens = GENERATE(std::int64_t{1}, std::int64_t{36}, std::int64_t{37}, std::int64_t{300});
  std::int64_t const per_sample = tokens % 4 == 0 ? 4 : 1;  // one mask flag per sample of 4 tokens, or per token
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::one_expert, Pattern::masked, Pattern::coarse);
  CAPTURE(c.n, c.uncond, c.k, int(c.activation), tokens, per_sample, route_test::name(pattern));
  if (pattern == Pattern::masked && c.n < 3) {
    SUCCEED("skipped: the masked pattern would mask whole rows when N_E < 3");
    return;
  }
  Logits const l = research_test::append_columns(
      route_test::make_logits(tokens, c.n, pattern, 91u + static_cast<std::uint32_t>(c.n)), c.uncond, -INFINITY);
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(tokens / per_sample));
  for (std::size_t i = 0; i < mask.size(); ++i) {
    mask[i] = (i * 7 + 3) % 5 < 2 ? 1 : 0;  // about 40% unconditional samples
  }
  routing::PrototypeRouter<8> r{
      .routed_experts = c.n, .uncond_experts = c.uncond, .k = c.k, .activation = c.activation};
  if (pattern == Pattern::masked) {
    r.k = std::min(c.k, c.n - (c.n + 1) / 3);  // a -inf pick would have weight -inf
  }
  if (c.uncond > 0) {
    r.uncond_mask = mask.data();
    r.tokens_per_sample = per_sample;
    r.token_count = tokens;
  }
  double const rtol = c.activation == PrototypeActivation::identity  ? 0
                      : c.activation == PrototypeActivation::sigmoid ? 8 * u
                                                                     : (c.n + 40) * u;
  auto const reference = research_test::compare_all_paths(r, l, rtol, 1e-30);
  int const slots = r.slots();
  for (std::int64_t t = 0; t < tokens; ++t) {
    bool const unconditional = c.uncond > 0 && mask[t / per_sample] != 0;
    for (int j = 0; j < slots; ++j) {
      int const id = reference.ids[t * slots + j];
      float const w = reference.weights[t * slots + j];
      if (unconditional) {
        REQUIRE(id == (j < c.uncond ? c.n + j : c.n + c.uncond));
        REQUIRE(w == (j < c.uncond ? 1.f : 0.f));
      } else {
        REQUIRE(id == (j < r.k ? id : c.n + c.uncond));
        REQUIRE((j >= r.k || id < c.n));
      }
    }
  }
}

TEST_CASE("ProMoE end to end: kernel scores then kernel routing equal the host path", "[routing][emu][promoe]") {
  std::int64_t const tokens = 64, hidden = 32;
  int const n = 12;
  std::vector<bf16_t> x, p;
  for (float v : random_matrix(tokens, hidden, 31)) {
    x.push_back(bf16_t(v));
  }
  for (float v : random_matrix(n, hidden, 32, 0.02f)) {
    p.push_back(bf16_t(v));
  }
  auto const device = research_test::similarity_scores(ScorePath::device, Similarity::cosine, 1.f, x, p, tokens, n,
                                                       hidden, n + 1, 5, 2);
  auto const host =
      research_test::similarity_scores(ScorePath::host, Similarity::cosine, 1.f, x, p, tokens, n, hidden, n + 1);
  REQUIRE(device.first == Status::ok);
  REQUIRE(host.first == Status::ok);
  std::vector<std::uint8_t> mask(16);
  mask[3] = mask[9] = 1;
  auto r = routing::promoe_router(n, 2, PrototypeActivation::identity);
  r.uncond_mask = mask.data();
  r.tokens_per_sample = 4;
  r.token_count = tokens;
  auto const on_device = route_test::device_route(r, Logits{tokens, n + 1, device.second}, 6, 1);
  auto const on_host = route_test::cpu_route(r, Logits{tokens, n + 1, host.second});
  route_test::require_identical(on_device, on_host);
  research_test::compare_all_paths(r, Logits{tokens, n + 1, host.second}, 0, 0);
}

TEST_CASE("ProMoE: a NaN row on the device, T = 0", "[routing][emu][promoe]") {
  research_test::check_nonfinite_policy(
      routing::promoe_router(12, 2),
      research_test::append_columns(route_test::make_logits(3, 12, Pattern::random, 6), 1, -INFINITY), 5);
  Logits const empty{0, 13, {}};
  CHECK(route_test::host_reference(routing::promoe_router(12), empty).status == Status::ok);
  CHECK(route_test::cpu_route(routing::promoe_router(12), empty).status == Status::ok);
  CHECK(route_test::device_route(routing::promoe_router(12), empty, 1).status == Status::ok);
}

TEST_CASE("ProMoE and cosine scores: bad inputs are refused with a message, outputs untouched",
          "[routing][emu][promoe]") {
  using research_test::expect_rejected;
  Logits const l = research_test::append_columns(route_test::make_logits(4, 3, Pattern::random, 1), 1, -INFINITY);
  expect_rejected(routing::promoe_router(0, 1), Logits{4, 1, std::vector<float>(4, -INFINITY)},
                  Status::invalid_argument, "num_routed_experts must be >= 1");
  expect_rejected(routing::promoe_router(3, 0), l, Status::invalid_argument,
                  "top_k must be in [1, num_routed_experts]");
  expect_rejected(routing::promoe_router(3, 4), l, Status::invalid_argument,
                  "top_k must be in [1, num_routed_experts]");
  expect_rejected(routing::PrototypeRouter<2>{.routed_experts = 3, .k = 3}, l, Status::unsupported_config, "MaxK=2");
  std::vector<std::uint8_t> const mask(4, 0);
  auto no_uncond = routing::promoe_router(4, 1, PrototypeActivation::identity, false);
  no_uncond.uncond_mask = mask.data();
  no_uncond.token_count = 4;
  expect_rejected(no_uncond, Logits{4, 4, l.values}, Status::invalid_argument,
                  "unconditional tokens require an unconditional expert");
  auto bad_samples = routing::promoe_router(3, 1);
  bad_samples.uncond_mask = mask.data();
  bad_samples.tokens_per_sample = 3;
  bad_samples.token_count = 4;
  expect_rejected(bad_samples, l, Status::invalid_argument, "not a multiple of tokens_per_sample");
  auto wrong_t = routing::promoe_router(3, 1);
  wrong_t.uncond_mask = mask.data();
  wrong_t.token_count = 8;
  research_test::expect_rejected_by_reference(wrong_t, l, Status::invalid_argument,
                                              "uncond_mask was made for 8 tokens, the batch has 4");
  Logits nan_score = l;
  nan_score.at(2, 1) = research_test::nan_value;
  research_test::expect_rejected_by_reference(routing::promoe_router(3, 1), nan_score, Status::invalid_argument,
                                              "routing scores: non-finite value nan at token 2, expert 1");

  // Score kernel parameters and shapes (host loop, kernel and reference alike).
  std::vector<float> x = random_matrix(4, 5, 1), p = random_matrix(3, 5, 2);
  struct Bad {
    Similarity similarity;
    float scale;
    std::int64_t hidden, columns;
    char const* fragment;
  };
  for (Bad const b : {Bad{Similarity::cosine, 0.f, 5, 3, "scale must be > 0"},
                      Bad{Similarity::cosine, -1.f, 5, 3, "scale must be > 0"},
                      Bad{Similarity::dot, research_test::inf_value, 5, 3, "scale must be > 0"},
                      Bad{Similarity::cosine, 1.f, 0, 3, "feature size (H or D) must be >= 1"},
                      Bad{Similarity::cosine, 1.f, 5, 2, "fewer than the 3 prototypes"}}) {
    for (ScorePath path : {ScorePath::host, ScorePath::device, ScorePath::reference}) {
      clear_error_message();
      auto const [status, z] =
          research_test::similarity_scores(path, b.similarity, b.scale, x, p, 4, 3, b.hidden, b.columns);
      CHECK(status == Status::invalid_argument);
      CHECK_THAT(std::string(last_error_message()), Catch::Contains(b.fragment));
      CHECK(z == std::vector<float>(z.size(), -7.f));
    }
  }
  x[7] = research_test::nan_value;  // token 1, feature 2: refused on the host, before any write
  for (ScorePath path : {ScorePath::host, ScorePath::reference}) {
    clear_error_message();
    auto const [status, z] = research_test::similarity_scores(path, Similarity::cosine, 1.f, x, p, 4, 3, 5, 3);
    CHECK(status == Status::invalid_argument);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains("at token 1, feature 2"));
    CHECK(z == std::vector<float>(z.size(), -7.f));
  }
  // On the device a NaN input gives NaN scores for that token only (counted later by the route kernel).
  auto const [status, z] =
      research_test::similarity_scores(ScorePath::device, Similarity::cosine, 1.f, x, p, 4, 3, 5, 3);
  CHECK(status == Status::ok);
  for (int i = 0; i < 12; ++i) {
    CHECK(std::isnan(z[i]) == (i / 3 == 1));
  }
}
