// The production routers' backward (routing/top_k_backward.hpp): the gradient examples of
// ALGORITHMS.md 1.11, then every scoring mode against fp64 central finite differences of the
// weights (selection held fixed), and the device kernel against the CPU path bit for bit.
//
// Tolerance against finite differences: the gradient is computed in fp32 from fp32 scores;
// each term carries a few ulp of relative error (exp, sigmoid within 2 ulp, sums over <= E
// terms in slot/expert order), so |error| <= (E + 16) * 2^-24 * (sum of |terms|) bounds it; we
// use that bound with the sum of |terms| replaced by max(1, |rho| * sum |g|). The finite
// difference itself (h = 1e-4 in double on a smooth function) is exact to ~1e-8.

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "route_test_support.hpp"
#include <catch2/catch.hpp>

#include "moekit/cpu/route.hpp"
#include "moekit/routing/route_backward.hpp"

using namespace moekit;

namespace {

double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

// The weights of a fixed selection as a function of z, in double (the formulas of §1).
std::vector<double> weights_of(routing::TopK<8> const& r, std::vector<double> const& z, std::vector<int> const& ids) {
  std::vector<double> w(ids.size());
  double sum = 0;
  if (r.scoring == routing::ScoreFunction::softmax) {
    double m = -INFINITY, total = 0;
    for (double v : z) {
      m = std::max(m, v);
    }
    for (double v : z) {
      total += std::exp(v - m);
    }
    for (std::size_t j = 0; j < ids.size(); ++j) {
      w[j] = std::exp(z[ids[j]] - m) / total;
    }
  } else if (r.scoring == routing::ScoreFunction::sigmoid) {
    for (std::size_t j = 0; j < ids.size(); ++j) {
      w[j] = sigmoid(z[ids[j]]);
    }
  } else {
    for (std::size_t j = 0; j < ids.size(); ++j) {
      w[j] = std::exp(z[ids[j]] - z[ids[0]]);
    }
  }
  for (double v : w) {
    sum += v;
  }
  bool const normalise = r.norm_topk_prob || r.scoring == routing::ScoreFunction::softmax_of_selected;
  for (double& v : w) {
    v = (normalise ? v / sum : v) * r.routed_scaling_factor;
  }
  return w;
}

std::vector<double> weights_of(routing::GroupedTopK<8> const& r, std::vector<double> const& z,
                               std::vector<int> const& ids) {
  std::vector<double> s(ids.size());
  double m = -INFINITY, total = 0, sum = 0;
  for (double v : z) {
    m = std::max(m, v);
  }
  for (double v : z) {
    total += std::exp(v - m);
  }
  for (std::size_t j = 0; j < ids.size(); ++j) {
    s[j] = r.scoring == routing::ScoreFunction::softmax ? std::exp(z[ids[j]] - m) / total : sigmoid(z[ids[j]]);
    sum += s[j];
  }
  bool const biased = r.method == routing::TopKMethod::noaux_tc;
  bool const normalise = r.norm_topk_prob && (biased || r.k > 1);
  for (double& v : s) {
    v = normalise ? v / (sum + 1e-20) : v;
    v *= biased || !normalise ? r.routed_scaling_factor : 1.0;
  }
  return s;
}

// Routes one token, then checks backward_token against central differences of the weights.
template <class R>
void check_gradient(R const& r, std::vector<float> const& z, std::vector<float> const& g) {
  std::vector<int> ids(static_cast<std::size_t>(r.slots()));
  std::vector<float> w(ids.size());
  r.route_token(0, z.data(), ids.data(), w.data());
  std::vector<float> grad(z.size());
  backward_token(r, z.data(), ids.data(), g.data(), grad.data());
  double const h = 1e-4;
  double scale = 0;
  for (float v : g) {
    scale += std::fabs(v);
  }
  scale = std::max(1.0, scale * r.routed_scaling_factor);
  double const tolerance = (double(z.size()) + 16) * std::ldexp(1.0, -24) * scale;
  for (std::size_t e = 0; e < z.size(); ++e) {
    std::vector<double> up(z.begin(), z.end()), down(z.begin(), z.end());
    up[e] += h;
    down[e] -= h;
    std::vector<double> const wu = weights_of(r, up, ids), wd = weights_of(r, down, ids);
    double fd = 0;
    for (std::size_t j = 0; j < ids.size(); ++j) {
      fd += g[j] * (wu[j] - wd[j]) / (2 * h);
    }
    INFO("expert " << e << ": backward " << grad[e] << ", finite difference " << fd);
    REQUIRE(std::fabs(grad[e] - fd) <= tolerance);
  }
}

std::vector<float> token(int i) {
  return i == 0 ? std::vector<float>{1.2f, -0.3f, 2.5f, 0.8f, -1.1f, 2.1f, 0.0f, 1.7f}
                : std::vector<float>{-0.5f, 0.9f, 0.3f, 1.6f, 2.2f, -0.8f, 1.1f, 0.4f};
}

}  // namespace

TEST_CASE("router gradients reproduce ALGORITHMS.md 1.11", "[routing]") {
  std::vector<float> const g = {1.f, -1.f};
  std::vector<int> ids(2);
  std::vector<float> w(2), grad(8);
  auto const mixtral = routing::mixtral_router(8, 2);
  mixtral.route_token(0, token(0).data(), ids.data(), w.data());
  backward_token(mixtral, token(0).data(), ids.data(), g.data(), grad.data());
  CHECK(grad[2] == Approx(0.4805215).epsilon(1e-6));
  CHECK(grad[5] == Approx(-0.4805215).epsilon(1e-6));
  CHECK(grad[0] == 0.f);

  auto const qwen = routing::qwen_moe_router(8, 2, false);
  qwen.route_token(0, token(0).data(), ids.data(), w.data());
  backward_token(qwen, token(0).data(), ids.data(), g.data(), grad.data());
  double const expected[8] = {-0.0119234, -0.0026605, 0.3205373,  -0.0079925,
                              -0.0011954, -0.2735161, -0.0035912, -0.0196583};
  for (int e = 0; e < 8; ++e) {
    CHECK(grad[e] == Approx(expected[e]).epsilon(2e-6).margin(1e-7));
  }

  float const bias[8] = {0.05f, -0.05f, -0.10f, 0.f, 0.20f, 0.f, 0.15f, -0.15f};
  auto const v3 = routing::deepseek_v3_router(8, 2, 4, 2, 2.5f, bias);
  v3.route_token(1, token(1).data(), ids.data(), w.data());
  REQUIRE(ids == std::vector<int>{4, 6});
  backward_token(v3, token(1).data(), ids.data(), g.data(), grad.data());
  CHECK(grad[4] == Approx(0.1236584).epsilon(2e-6));
  CHECK(grad[6] == Approx(-0.3095969).epsilon(2e-6));
  CHECK(grad[0] == 0.f);
}

TEST_CASE("router gradients match fp64 finite differences", "[routing]") {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal(0.f, 1.5f);
  std::normal_distribution<float> upstream(0.f, 1.f);
  for (int trial = 0; trial < 20; ++trial) {
    int const experts = 5 + trial * 3;
    int const k = 1 + trial % 6;
    std::vector<float> z(static_cast<std::size_t>(experts)), g(static_cast<std::size_t>(k));
    for (float& v : z) {
      v = normal(rng);
    }
    for (float& v : g) {
      v = upstream(rng);
    }
    CAPTURE(trial, experts, k);
    for (auto scoring : {routing::ScoreFunction::softmax, routing::ScoreFunction::sigmoid,
                         routing::ScoreFunction::softmax_of_selected}) {
      for (bool norm : {false, true}) {
        check_gradient(
            routing::TopK<8>{
                .experts = experts, .k = k, .scoring = scoring, .norm_topk_prob = norm, .routed_scaling_factor = 1.5f},
            z, g);
      }
    }
    std::vector<float> bias(static_cast<std::size_t>(experts));
    for (float& b : bias) {
      b = 0.1f * normal(rng);
    }
    for (bool norm : {false, true}) {
      check_gradient(routing::GroupedTopK<8>{.experts = experts,
                                             .k = k,
                                             .method = routing::TopKMethod::noaux_tc,
                                             .norm_topk_prob = norm,
                                             .routed_scaling_factor = 2.5f,
                                             .correction_bias = bias.data()},
                     z, g);
      check_gradient(routing::GroupedTopK<8>{.experts = experts,
                                             .k = k,
                                             .method = routing::TopKMethod::greedy,
                                             .scoring = routing::ScoreFunction::softmax,
                                             .norm_topk_prob = norm,
                                             .routed_scaling_factor = 16.f},
                     z, g);
    }
  }
}

TEST_CASE("router backward: device kernel = CPU path, bit for bit", "[routing][emu]") {
  auto const l = route_test::make_logits(77, 64, route_test::Pattern::random, 9);
  auto const r = routing::deepseek_v3_router(64, 6, 8, 3, 2.5f, nullptr);
  auto const routed = route_test::cpu_route(r, l);
  REQUIRE(routed.status == Status::ok);
  std::vector<float> g(routed.weights.size());
  for (std::size_t i = 0; i < g.size(); ++i) {
    g[i] = float(int(i % 7) - 3) / 4.f;
  }
  std::vector<float> cpu_grad(l.values.size(), -1.f), device_grad(l.values.size(), -2.f);
  auto buffers = [&](auto space, std::vector<float>& out) {
    constexpr MemorySpace s = decltype(space)::value;
    return routing::BackwardBuffers<s>{TensorView<float const, 2, s>::row_major(l.values.data(), {77, 64}),
                                       TensorView<int const, 2, s>::row_major(routed.ids.data(), {77, 6}),
                                       TensorView<float const, 2, s>::row_major(g.data(), {77, 6}),
                                       TensorView<float, 2, s>::row_major(out.data(), {77, 64})};
  };
  REQUIRE(cpu::route_backward(r, buffers(std::integral_constant<MemorySpace, MemorySpace::host>{}, cpu_grad)) ==
          Status::ok);
  emu::LaunchOptions o;
  o.schedule_seed = 3;
  emu::ScopedLaunchOptions const guard(o);
  REQUIRE(routing::route_backward(r, buffers(std::integral_constant<MemorySpace, MemorySpace::device>{}, device_grad),
                                  nullptr, 1) == Status::ok);
  CHECK(cpu_grad == device_grad);
  auto bad = buffers(std::integral_constant<MemorySpace, MemorySpace::host>{}, cpu_grad);
  bad.weight_grad.extents[1] = 5;
  clear_error_message();
  CHECK(cpu::route_backward(r, bad) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("weight gradient"));
}
