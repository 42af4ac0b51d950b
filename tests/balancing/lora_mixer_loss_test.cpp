// LoRA-Mixer RSL (ALGORITHMS.md §3.4): the worked example (L_RSL, f̄, p̄, H and the gradient
// rows), the signed-λ decision (λ > 0 raises the entropy as Eq. 5 is printed, λ < 0 lowers it as
// the prose describes), finite differences of an fp64 copy, host reference vs emulated device
// on random and adversarial logits, determinism, bad inputs, and the preservation helper.
//
// Tolerances: require_matches in adaptive_loss_test_support.hpp, k = (2E + spread + 40) u on the
// magnitude of the summed terms; the worked example adds 5e-7 relative for its 7-digit print.

#include "moekit/balancing/lora_mixer_loss.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "adaptive_loss_test_support.hpp"
#include <catch2/catch.hpp>

#include "moekit/balancing/adaptive_loss_launch.hpp"

using namespace moekit;
using adaptive_test::Expected;
using adaptive_test::Logits;
using adaptive_test::LossRun;
using adaptive_test::Pattern;
using adaptive_test::u32;

namespace {

Logits example_logits() { return {2, 4, {1.0f, 0.0f, -1.0f, 0.5f, 0.3f, 2.0f, -0.5f, 0.3f}, {}}; }

balancing::LoraMixerLoss make_loss(int k, float alpha, float lambda) {
  balancing::LoraMixerLoss l;
  l.top_k = k;
  l.alpha = alpha;
  l.lambda = lambda;
  return l;
}

double mean_entropy(Logits const& l, std::vector<double> const& zd) {
  double h = 0.0;
  for (std::int64_t t = 0; t < l.tokens; ++t) {
    std::vector<double> z(zd.begin() + t * l.experts, zd.begin() + (t + 1) * l.experts);
    for (double p : adaptive_test::softmax_row(z)) {
      h -= p > 0 ? p * std::log(p) : 0.0;
    }
  }
  return h / double(l.tokens);
}

}  // namespace

TEST_CASE("LoRA-Mixer: the worked example of ALGORITHMS.md 3.4, host and device", "[balancing][emu]") {
  Logits const l = example_logits();
  auto const loss = make_loss(2, 1.f, 0.1f);
  Expected const x = adaptive_test::lora_mixer_expected(loss, l, adaptive_test::as_double(l));
  std::vector<double> const grad = {0.0455459, -0.0137596, -0.0162877, -0.0154985,
                                    0.0075546, 0.0137186,  -0.0130514, -0.0082217};
  double const pbar[4] = {0.3001006, 0.4326203, 0.0604288, 0.2068502};
  double const fbar[4] = {0.5, 0.25, 0, 0.25};
  for (auto const& run : {adaptive_test::host_reference(loss, l), adaptive_test::device_loss(loss, l, 0),
                          adaptive_test::device_loss(loss, l, 3, 1)}) {
    REQUIRE(run.status == Status::ok);
    double const k = (2.0 * 4 + x.spread + 40.0) * u32;
    adaptive_test::require_close(run.value, 0.2032342, 5e-7 * 0.2032342 + k * x.value_scale, "L_RSL");
    // top-2: token 0 -> {0, 3}; token 1 -> {1, 0} (0 and 3 tie at 0.3: the lower index wins).
    CHECK(run.counts == std::vector<long long>{2, 1, 0, 1});
    for (int e = 0; e < 4; ++e) {
      CHECK(run.f[e] == float(fbar[e]));  // c_i / (N k): exact in fp32
      adaptive_test::require_close(run.P[e], pbar[e], 5e-7 * pbar[e] + k * pbar[e], "p-bar");
    }
    for (std::size_t i = 0; i < grad.size(); ++i) {
      INFO("gradient entry " << i);
      adaptive_test::require_close(run.grad[i], grad[i], 5e-7 * std::fabs(grad[i]) + k * x.grad_scale[i], "gradient");
    }
  }
  // H = [1.1929791, 0.9406952] (the per-token stats the kernels keep).
  double const h[2] = {1.1929791, 0.9406952};
  for (int t = 0; t < 2; ++t) {
    auto const s = loss.token_stats(&l.values[static_cast<std::size_t>(t) * 4], 4);
    // -Σ p ln p with ln p = (z - max) - ln S: each term within (|z - max| + 6) u of p |ln p| + p (9 u).
    adaptive_test::require_close(s.scalar, h[t], 5e-7 * h[t] + 9 * u32 * (h[t] + 1.0), "H");
  }
}

TEST_CASE("LoRA-Mixer: lambda is signed; > 0 raises the routing entropy, < 0 lowers it", "[balancing][emu]") {
  Logits const l = adaptive_test::make_logits(64, 8, Pattern::random, 21);
  auto const zd = adaptive_test::as_double(l);
  double const before = mean_entropy(l, zd);
  for (float lambda : {0.1f, -0.1f}) {
    CAPTURE(lambda);
    auto const loss = make_loss(2, 0.f, lambda);
    LossRun const run = adaptive_test::device_loss(loss, l, 1);
    REQUIRE(run.status == Status::ok);
    // value = -lambda * mean H, so its sign tells which way the loss pulls.
    adaptive_test::require_close(run.value, -double(lambda) * before, 1e-5 * before, "value");
    std::vector<double> stepped(zd);
    for (std::size_t i = 0; i < stepped.size(); ++i) {
      stepped[i] -= 1.0 * run.grad[i];  // one gradient-descent step on the loss
    }
    double const after = mean_entropy(l, stepped);
    if (lambda > 0) {
      CHECK(after > before);  // Eq. 5 as printed: flatter routing
    } else {
      CHECK(after < before);  // the prose: sharper routing
    }
  }
}

TEST_CASE("LoRA-Mixer: gradients match central finite differences in fp64", "[balancing]") {
  struct Case {
    int k;
    float alpha, lambda;
    std::int64_t tokens;
    int experts;
    Pattern pattern;
  };
  auto const c = GENERATE(Case{2, 1.f, 0.1f, 2, 4, Pattern::random}, Case{3, 0.5f, -0.2f, 9, 7, Pattern::random},
                          Case{1, 2.f, 0.3f, 6, 5, Pattern::masked}, Case{5, 1.f, 1.f, 4, 5, Pattern::sharp});
  CAPTURE(c.k, c.alpha, c.lambda, c.tokens, c.experts, adaptive_test::name(c.pattern));
  auto const loss = make_loss(c.k, c.alpha, c.lambda);
  Logits const l = c.tokens == 2 ? example_logits() : adaptive_test::make_logits(c.tokens, c.experts, c.pattern, 5);
  auto zd = adaptive_test::as_double(l);
  Expected const x = adaptive_test::lora_mixer_expected(loss, l, zd);
  LossRun const reference = adaptive_test::host_reference(loss, l);
  REQUIRE(reference.status == Status::ok);
  double max_grad = 0.0;
  for (double g : x.grad) {
    max_grad = std::max(max_grad, std::fabs(g));
  }
  double const h = 1e-6;
  for (std::size_t i = 0; i < zd.size(); ++i) {
    if (zd[i] == -INFINITY) {
      continue;  // a masked expert has no derivative (its gradient is 0 by definition)
    }
    double const z0 = zd[i];
    zd[i] = z0 + h;
    Expected const up = adaptive_test::lora_mixer_expected(loss, l, zd);
    zd[i] = z0 - h;
    Expected const down = adaptive_test::lora_mixer_expected(loss, l, zd);
    zd[i] = z0;
    INFO("entry " << i);
    adaptive_test::require_close(reference.grad[i], x.grad[i], u32 * std::fabs(x.grad[i]) + 1e-30, "reference");
    if (up.counts != x.counts || down.counts != x.counts) {
      continue;  // the step moves a tie of the (constant, stop-gradient) counts: not differentiable here
    }
    adaptive_test::require_close((up.value - down.value) / (2 * h), x.grad[i], 1e-8 * max_grad + 1e-9,
                                 "finite difference");
  }
}

TEST_CASE("LoRA-Mixer: host reference and device agree on random and adversarial logits", "[balancing][emu]") {
  struct Shape {
    std::int64_t tokens;
    int experts, k;
  };
  auto const shape = GENERATE(Shape{1, 1, 1}, Shape{1, 4, 2}, Shape{7, 3, 3}, Shape{127, 8, 2}, Shape{129, 6, 4},
                              Shape{300, 16, 8}, Shape{40, 37, 5}, Shape{20, 256, 8});
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::one_expert, Pattern::masked, Pattern::sharp);
  auto const padding = GENERATE(false, true);
  CAPTURE(shape.tokens, shape.experts, shape.k, adaptive_test::name(pattern), padding);
  auto const loss = make_loss(shape.k, 1.5f, -0.25f);
  auto const seed = static_cast<std::uint32_t>(shape.tokens * 7 + shape.experts);
  Logits const l = adaptive_test::make_logits(shape.tokens, shape.experts, pattern, seed, padding);
  Expected const x = adaptive_test::lora_mixer_expected(loss, l, adaptive_test::as_double(l));
  adaptive_test::require_matches(adaptive_test::host_reference(loss, l), x, shape.experts);
  LossRun const device = adaptive_test::device_loss(loss, l, 0);
  adaptive_test::require_matches(device, x, shape.experts);
  adaptive_test::require_identical(device, adaptive_test::device_loss(loss, l, 8, 1));
  adaptive_test::require_identical(device, adaptive_test::device_loss(loss, l, 9, 3));
  if (shape.experts == 1) {  // E = 1: f = P = 1, L = alpha, gradient 0
    CHECK(device.value == 1.5f);
    for (float g : device.grad) {
      CHECK(g == 0.f);
    }
  }
}

TEST_CASE("LoRA-Mixer: T = 0 gives zeros; bad parameters are refused with outputs untouched", "[balancing][emu]") {
  Logits const empty{0, 4, {}, {}};
  for (auto const& run : {adaptive_test::host_reference(make_loss(2, 1.f, 0.1f), empty),
                          adaptive_test::device_loss(make_loss(2, 1.f, 0.1f), empty, 1)}) {
    REQUIRE(run.status == Status::ok);
    CHECK(run.value == 0.f);
    CHECK(run.counts == std::vector<long long>(4, 0));
  }
  Logits const l = adaptive_test::make_logits(3, 4, Pattern::random, 1);
  auto expect_rejected = [&](balancing::LoraMixerLoss const& loss, char const* fragment) {
    clear_error_message();
    LossRun const host = adaptive_test::host_reference(loss, l);
    CHECK(host.status == Status::invalid_argument);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    CHECK(host.value == -7.f);
    CHECK(host.grad == std::vector<float>(host.grad.size(), -7.f));
    clear_error_message();
    LossRun const device = adaptive_test::device_loss(loss, l, 1);
    CHECK(device.status == Status::invalid_argument);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    CHECK(device.value == -7.f);
    CHECK(device.counts == std::vector<long long>(4, -7));
  };
  expect_rejected(make_loss(0, 1.f, 0.f), "top_k must be in [1, E] (got k=0, E=4)");
  expect_rejected(make_loss(5, 1.f, 0.f), "top_k must be in [1, E] (got k=5, E=4)");
  expect_rejected(make_loss(2, adaptive_test::nan, 0.f), "alpha and lambda must be finite");
  expect_rejected(make_loss(2, 1.f, adaptive_test::inf), "alpha and lambda must be finite");
  auto negative_beta = make_loss(2, 1.f, 0.f);
  negative_beta.beta = -1.f;
  expect_rejected(negative_beta, "beta must be finite and >= 0");

  Logits bad = l;
  bad.at(2, 0) = adaptive_test::nan;
  clear_error_message();
  CHECK(adaptive_test::host_reference(make_loss(2, 1.f, 0.f), bad).status == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("non-finite value nan at token 2, expert 0"));
  LossRun const device = adaptive_test::device_loss(make_loss(2, 1.f, 0.f), bad, 2);
  REQUIRE(device.status == Status::ok);
  CHECK(device.diagnostics.nonfinite_rows == 1);
}

TEST_CASE("LoRA-Mixer: expert preservation value and gradient", "[balancing]") {
  std::vector<float> const theta = {0.5f, -1.25f, 2.f, 0.f};
  std::vector<float> const theta0 = {0.25f, -1.f, 1.f, 0.5f};
  std::vector<float> grad(4, -7.f);
  balancing::LoraMixerLoss loss;
  loss.beta = 0.5f;
  double value = -7.0;
  auto view = [](std::vector<float> const& v) { return HostTensor<float const, 1>::row_major(v.data(), {4}); };
  auto grad_view = HostTensor<float, 1>::row_major(grad.data(), {4});
  REQUIRE(balancing::preservation_loss(loss, view(theta), view(theta0), &value, grad_view) == Status::ok);
  // beta * (0.0625 + 0.0625 + 1 + 0.25) = 0.6875; gradient 2 beta (θ - θ0): exact in fp32.
  CHECK(value == 0.6875);
  CHECK(grad == std::vector<float>{0.25f, -0.25f, 1.f, -0.5f});
  // Central differences of the fp64 value in each coordinate (quadratic: exact up to rounding).
  for (int i = 0; i < 4; ++i) {
    double const h = 1.0 / 1024;  // a power of two keeps θ ± h exact in fp32
    std::vector<float> up = theta, down = theta;
    up[i] += float(h);
    down[i] -= float(h);
    double vu = 0, vd = 0;
    REQUIRE(balancing::preservation_loss(loss, view(up), view(theta0), &vu, {}) == Status::ok);
    REQUIRE(balancing::preservation_loss(loss, view(down), view(theta0), &vd, {}) == Status::ok);
    CHECK((vu - vd) / (2 * h) == Approx(grad[i]).margin(1e-12));
  }
  loss.beta = -1.f;
  clear_error_message();
  CHECK(balancing::preservation_loss(loss, view(theta), view(theta0), &value, grad_view) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("beta"));
  loss.beta = 1.f;
  auto short0 = HostTensor<float const, 1>::row_major(theta0.data(), {3});
  CHECK(balancing::preservation_loss(loss, view(theta), short0, &value, grad_view) == Status::invalid_argument);
  std::vector<float> bad = theta;
  bad[1] = adaptive_test::nan;
  CHECK(balancing::preservation_loss(loss, view(bad), view(theta0), &value, grad_view) == Status::invalid_argument);
  CHECK(value == 0.6875);
  CHECK(grad == std::vector<float>{0.25f, -0.25f, 1.f, -0.5f});
}
