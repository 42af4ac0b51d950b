// ProMoE routing contrastive loss, RCL (ALGORITHMS.md §4.1): the worked example (value, Γ,
// dL/dP, dL/dX), the K = 2 case where both tokens sit in both sets (L = ln 2), unconditional
// tokens, gradients w.r.t. prototypes AND token inputs against central finite differences of an
// fp64 copy of the formula, host reference vs emulated device on random and adversarial inputs,
// determinism across schedules and grids, and every bad input.
//
// Tolerances. Reference and device both evaluate in fp64 and round once to fp32; they differ
// only by fp64 reassociation (1e-15 relative, amplified by 1/τ and by the normalisations'
// cancellation to well below 1e-9 of each tensor's largest entry) and so by at most one fp32
// rounding: |a - b| <= 2u|b| + 1e-9 max|tensor|. Against the worked example: the inputs such as
// 0.8 are not fp32 numbers (u relative each); the cosine logits amplify by 1/τ ≈ 14, the two
// normalisations by at most 2 more: 30 u ≈ 2e-6 relative to each tensor's largest entry.

#include "moekit/balancing/contrastive_loss.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "moekit/balancing/contrastive_loss_launch.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/emu/launch_config.hpp"
#include "moekit/host/adaptive_loss_reference.hpp"

using namespace moekit;

namespace {

constexpr double u32 = 5.9604644775390625e-8;

float nan_value() { return std::numeric_limits<float>::quiet_NaN(); }

struct Problem {
  std::int64_t tokens = 0, hidden = 0;
  int experts = 0, k = 0;
  std::vector<float> x, p;           // [T, H], [N_E, H]
  std::vector<int> ids;              // [T, K]
  std::vector<std::uint8_t> uncond;  // [T] or empty
};

struct Run {
  Status status = Status::internal_error;
  float value = -7.f;
  std::vector<float> grad_p, grad_x;
};

template <MemorySpace Space>
std::pair<balancing::ContrastiveInputs<Space>, balancing::ContrastiveOutputs<Space>> buffers(Problem const& pr,
                                                                                             Run& r) {
  r.grad_p.assign(static_cast<std::size_t>(pr.experts * pr.hidden), -7.f);
  r.grad_x.assign(static_cast<std::size_t>(pr.tokens * pr.hidden), -7.f);
  balancing::ContrastiveInputs<Space> in{
      TensorView<float const, 2, Space>::row_major(pr.x.data(), {pr.tokens, pr.hidden}),
      TensorView<float const, 2, Space>::row_major(pr.p.data(), {pr.experts, pr.hidden}),
      TensorView<int const, 2, Space>::row_major(pr.ids.data(), {pr.tokens, pr.k}),
      pr.uncond.empty() ? nullptr : pr.uncond.data()};
  balancing::ContrastiveOutputs<Space> out{
      &r.value, TensorView<float, 2, Space>::row_major(r.grad_p.data(), {pr.experts, pr.hidden}),
      TensorView<float, 2, Space>::row_major(r.grad_x.data(), {pr.tokens, pr.hidden})};
  return {in, out};
}

Run host_reference(balancing::RoutingContrastiveLoss const& loss, Problem const& pr) {
  Run r;
  auto [in, out] = buffers<MemorySpace::host>(pr, r);
  r.status = host::reference_contrastive_loss(loss, in, out);
  return r;
}

Run device_rcl(balancing::RoutingContrastiveLoss const& loss, Problem const& pr, std::uint64_t seed,
               unsigned max_blocks = 0, std::size_t bytes = std::size_t(-1)) {
  emu::LaunchOptions o;
  o.schedule_seed = seed;
  o.racecheck = true;
  o.max_resident_blocks = 2;
  emu::ScopedLaunchOptions const guard(o);
  Run r;
  auto [in, out] = buffers<MemorySpace::device>(pr, r);
  std::size_t const need = balancing::loss_workspace_size(loss, pr.experts, pr.hidden);
  bytes = bytes == std::size_t(-1) ? need : bytes;
  std::vector<unsigned char> storage(bytes + 256);
  Workspace w(storage.data() + (256 - reinterpret_cast<std::uintptr_t>(storage.data()) % 256) % 256, bytes);
  r.status = balancing::loss(loss, in, out, w, nullptr, max_blocks);
  return r;
}

// The test's own fp64 copy of §4.1 (value and Γ), over double inputs.
struct Rcl {
  double value = 0.0;
  std::vector<int> active;
  std::vector<double> gamma;  // [N_a, N_a]
};

Rcl rcl_double(balancing::RoutingContrastiveLoss const& loss, Problem const& pr, std::vector<double> const& x,
               std::vector<double> const& p) {
  auto const hs = static_cast<std::size_t>(pr.hidden);
  std::vector<std::vector<std::int64_t>> sets(static_cast<std::size_t>(pr.experts));
  int const read = loss.use_top_k ? pr.k : 1;
  for (std::int64_t t = 0; t < pr.tokens; ++t) {
    if (!pr.uncond.empty() && pr.uncond[t]) {
      continue;
    }
    for (int j = 0; j < read; ++j) {
      int const e = pr.ids[static_cast<std::size_t>(t * pr.k + j)];
      if (e >= 0 && e < pr.experts && std::find(sets[e].begin(), sets[e].end(), t) == sets[e].end()) {
        sets[e].push_back(t);
      }
    }
  }
  Rcl r;
  for (int e = 0; e < pr.experts; ++e) {
    if (!sets[e].empty()) {
      r.active.push_back(e);
    }
  }
  auto const na = static_cast<int>(r.active.size());
  if (na < 2) {
    return r;
  }
  auto unit = [](std::vector<double> v) {
    double s = 0.0;
    for (double a : v) {
      s += a * a;
    }
    double const n = std::max(std::sqrt(s), 1e-12);
    for (double& a : v) {
      a /= n;
    }
    return v;
  };
  std::vector<std::vector<double>> np, nm;
  for (int e : r.active) {
    std::vector<double> pe(hs), me(hs, 0.0);
    for (std::size_t h = 0; h < hs; ++h) {
      pe[h] = p[e * hs + h];
      for (std::int64_t t : sets[e]) {
        me[h] += x[t * hs + h] / double(sets[e].size());
      }
    }
    np.push_back(unit(pe));
    nm.push_back(unit(me));
  }
  r.gamma.assign(static_cast<std::size_t>(na * na), 0.0);
  for (int i = 0; i < na; ++i) {
    std::vector<double> l(static_cast<std::size_t>(na));
    for (int j = 0; j < na; ++j) {
      double dot = 0.0;
      for (std::size_t h = 0; h < hs; ++h) {
        dot += np[i][h] * nm[j][h];
      }
      l[j] = dot / double(loss.temperature);
    }
    double const m = *std::max_element(l.begin(), l.end());
    double s = 0.0;
    for (double v : l) {
      s += std::exp(v - m);
    }
    r.value += (m + std::log(s) - l[i]) * double(loss.lam) / na;
    for (int j = 0; j < na; ++j) {
      r.gamma[i * na + j] = double(loss.lam) / na * (std::exp(l[j] - m) / s - (i == j));
    }
  }
  return r;
}

Problem worked_example() {
  Problem pr;
  pr.tokens = 2;
  pr.hidden = 4;
  pr.experts = 3;
  pr.k = 1;
  pr.p = {1.0f, 0.5f, 0.0f, 0.0f, 0.0f, 1.0f, 0.5f, 0.0f, 0.5f, 0.0f, 0.0f, 1.0f};
  pr.x = {1.0f, 0.8f, 0.2f, 0.1f, 0.1f, 0.6f, 0.9f, 0.3f};
  pr.ids = {0, 1};
  return pr;
}

balancing::RoutingContrastiveLoss example_loss() { return {.temperature = 0.07f, .lam = 1.f, .use_top_k = true}; }

double max_abs(std::vector<float> const& v) {
  double m = 0.0;
  for (float a : v) {
    m = std::max(m, double(std::fabs(a)));
  }
  return m;
}

void require_tensor(std::vector<float> const& got, std::vector<double> const& want, double rel_of_max,
                    char const* what) {
  REQUIRE(got.size() == want.size());
  double m = 0.0;
  for (double w : want) {
    m = std::max(m, std::fabs(w));
  }
  for (std::size_t i = 0; i < got.size(); ++i) {
    INFO(what << " entry " << i << ": got " << got[i] << ", want " << want[i]);
    REQUIRE(std::fabs(got[i] - want[i]) <= rel_of_max * m);
  }
}

void require_agree(Run const& a, Run const& ref) {
  REQUIRE(a.status == ref.status);
  REQUIRE(std::fabs(double(a.value) - ref.value) <= 2 * u32 * std::fabs(ref.value) + 1e-12);
  for (auto [got, want] : {std::pair{&a.grad_p, &ref.grad_p}, std::pair{&a.grad_x, &ref.grad_x}}) {
    double const m = max_abs(*want);
    for (std::size_t i = 0; i < got->size(); ++i) {
      INFO("entry " << i << ": " << (*got)[i] << " vs " << (*want)[i]);
      REQUIRE(std::fabs(double((*got)[i]) - (*want)[i]) <= 2 * u32 * std::fabs((*want)[i]) + 1e-9 * m);
    }
  }
}

std::uint32_t bits(float f) {
  std::uint32_t b;
  std::memcpy(&b, &f, 4);
  return b;
}

void require_identical(Run const& a, Run const& b) {
  REQUIRE(a.status == b.status);
  REQUIRE(bits(a.value) == bits(b.value));
  for (std::size_t i = 0; i < a.grad_p.size(); ++i) {
    REQUIRE(bits(a.grad_p[i]) == bits(b.grad_p[i]));
  }
  for (std::size_t i = 0; i < a.grad_x.size(); ++i) {
    REQUIRE(bits(a.grad_x[i]) == bits(b.grad_x[i]));
  }
}

// Random problem: x around a per-expert direction (well-conditioned centroids) plus noise;
// each conditional token picks K distinct experts, some slots are the sentinel N_E or repeat
// an earlier slot (both take no part), some tokens are unconditional.
Problem random_problem(std::int64_t tokens, std::int64_t hidden, int experts, int k, bool with_uncond,
                       std::uint32_t seed) {
  Problem pr;
  pr.tokens = tokens;
  pr.hidden = hidden;
  pr.experts = experts;
  pr.k = k;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (std::int64_t i = 0; i < experts * hidden; ++i) {
    pr.p.push_back(normal(rng));
  }
  std::vector<int> order(static_cast<std::size_t>(experts));
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (int e = 0; e < experts; ++e) {
      order[e] = e;
    }
    std::shuffle(order.begin(), order.end(), rng);
    for (int j = 0; j < k; ++j) {
      int id = order[j];
      if (t % 11 == 5 && j == k - 1) {
        id = experts;  // empty slot
      } else if (t % 13 == 7 && j > 0) {
        id = order[0];  // repeated id: counted once
      }
      pr.ids.push_back(id);
    }
    for (std::int64_t h = 0; h < hidden; ++h) {
      pr.x.push_back(pr.p[static_cast<std::size_t>(order[0] * hidden + h)] + 0.5f * normal(rng));
    }
  }
  if (with_uncond) {
    for (std::int64_t t = 0; t < tokens; ++t) {
      pr.uncond.push_back(t % 4 == 2);
    }
  }
  return pr;
}

}  // namespace

TEST_CASE("RCL: the worked example of ALGORITHMS.md 4.1 (K = 1)", "[balancing][emu]") {
  Problem const pr = worked_example();
  auto const loss = example_loss();
  Rcl const d = rcl_double(loss, pr, {pr.x.begin(), pr.x.end()}, {pr.p.begin(), pr.p.end()});
  REQUIRE(d.active == std::vector<int>{0, 1});
  std::vector<double> const gamma = {-4.926120017e-05, 4.926120017e-05, 2.241196280e-02, -2.241196280e-02};
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(d.gamma[i] == Approx(gamma[i]).epsilon(2e-6));
  }
  std::vector<double> const grad_p = {-6.477577863e-05,
                                      1.295515573e-04,
                                      4.058447508e-04,
                                      1.191421855e-04,
                                      1.948730850e-01,
                                      7.860959545e-02,
                                      -1.572191909e-01,
                                      -5.420513952e-02,
                                      0,
                                      0,
                                      0,
                                      0};
  std::vector<double> const grad_x = {-0.117394236, 0.126514140,  0.086760126, -0.011691005,
                                      0.021550194,  -0.127882668, 0.061868987, 0.062974977};
  for (Run const& r : {host_reference(loss, pr), device_rcl(loss, pr, 0), device_rcl(loss, pr, 3, 1)}) {
    REQUIRE(r.status == Status::ok);
    CHECK(r.value == Approx(0.0229790558).epsilon(2e-6));
    require_tensor(r.grad_p, grad_p, 2e-6, "dL/dP");
    require_tensor(r.grad_x, grad_x, 2e-6, "dL/dX");
    for (int h = 8; h < 12; ++h) {
      CHECK(r.grad_p[h] == 0.f);  // expert 2 has no token: no RCL gradient
    }
  }

  // A third, unconditional token (c = null_id, ids = [N_E]) takes no part.
  Problem with_null = pr;
  with_null.tokens = 3;
  with_null.x.insert(with_null.x.end(), {0.3f, -0.2f, 0.7f, 1.1f});
  with_null.ids.push_back(3);
  with_null.uncond = {0, 0, 1};
  for (Run const& r : {host_reference(loss, with_null), device_rcl(loss, with_null, 1)}) {
    REQUIRE(r.status == Status::ok);
    CHECK(r.value == Approx(0.0229790558).epsilon(2e-6));
    require_tensor(r.grad_p, grad_p, 2e-6, "dL/dP");
    for (int h = 0; h < 4; ++h) {
      CHECK(r.grad_x[static_cast<std::size_t>(8 + h)] == 0.f);
    }
  }
}

TEST_CASE("RCL: K = 2 puts both tokens in both sets, L = ln 2 (ALGORITHMS.md 4.1)", "[balancing][emu]") {
  Problem pr = worked_example();
  pr.k = 2;
  pr.ids = {0, 1, 1, 0};
  auto loss = example_loss();
  for (Run const& r : {host_reference(loss, pr), device_rcl(loss, pr, 2)}) {
    REQUIRE(r.status == Status::ok);
    // m_0 = m_1: the two logits of each row are equal, so each row's cross-entropy is ln 2
    // exactly in fp64; one fp32 rounding.
    CHECK(r.value == Approx(0.693147181).epsilon(u32));
  }
  // Top-1 sets instead (use_top_k = false): A_0 = {0}, A_1 = {1}, the K = 1 example again.
  loss.use_top_k = false;
  CHECK(host_reference(loss, pr).value == Approx(0.0229790558).epsilon(2e-6));
  CHECK(device_rcl(loss, pr, 4).value == Approx(0.0229790558).epsilon(2e-6));
}

TEST_CASE("RCL: gradients w.r.t. prototypes and inputs match central finite differences", "[balancing]") {
  struct Case {
    std::int64_t tokens, hidden;
    int experts, k;
    bool top_k, uncond;
    float tau, lam;
  };
  auto const c = GENERATE(Case{2, 4, 3, 1, true, false, 0.07f, 1.f}, Case{9, 5, 4, 2, true, true, 0.1f, 1.f},
                          Case{12, 3, 5, 3, false, false, 0.5f, 2.f}, Case{16, 6, 6, 2, true, false, 0.07f, 10.f});
  CAPTURE(c.tokens, c.hidden, c.experts, c.k, c.top_k, c.uncond, c.tau, c.lam);
  balancing::RoutingContrastiveLoss const loss{.temperature = c.tau, .lam = c.lam, .use_top_k = c.top_k};
  Problem const pr =
      c.tokens == 2 ? worked_example() : random_problem(c.tokens, c.hidden, c.experts, c.k, c.uncond, 31);
  Run const ref = host_reference(loss, pr);
  REQUIRE(ref.status == Status::ok);
  std::vector<double> x(pr.x.begin(), pr.x.end()), p(pr.p.begin(), pr.p.end());
  double const m = std::max(max_abs(ref.grad_p), max_abs(ref.grad_x));
  double const h = 1e-6;
  auto check = [&](std::vector<double>& v, std::vector<float> const& grad, char const* what) {
    for (std::size_t i = 0; i < v.size(); ++i) {
      double const v0 = v[i];
      v[i] = v0 + h;
      double const up = rcl_double(loss, pr, x, p).value;
      v[i] = v0 - h;
      double const down = rcl_double(loss, pr, x, p).value;
      v[i] = v0;
      INFO(what << " entry " << i);
      // Truncation h^2 |L'''| ~ 1e-12 (|L'''| grows like 1/τ^3), rounding 1e-16 / h; the
      // reference's output is one fp32 rounding of an fp64 value.
      double const fd = (up - down) / (2 * h);
      REQUIRE(std::fabs(fd - grad[i]) <= u32 * std::fabs(fd) + 1e-7 * m + 1e-9);
    }
  };
  check(p, ref.grad_p, "dL/dP");
  check(x, ref.grad_x, "dL/dX");
}

TEST_CASE("RCL: host reference and device agree on random and adversarial inputs", "[balancing][emu]") {
  struct Case {
    std::int64_t tokens, hidden;
    int experts, k;
  };
  auto const c = GENERATE(Case{1, 4, 2, 1}, Case{5, 1, 3, 2}, Case{130, 16, 12, 1}, Case{130, 33, 12, 2},
                          Case{300, 8, 40, 3}, Case{64, 20, 7, 7});
  auto const top_k = GENERATE(true, false);
  auto const uncond = GENERATE(false, true);
  CAPTURE(c.tokens, c.hidden, c.experts, c.k, top_k, uncond);
  balancing::RoutingContrastiveLoss const loss{.temperature = 0.07f, .lam = 1.f, .use_top_k = top_k};
  Problem const pr = random_problem(c.tokens, c.hidden, c.experts, c.k, uncond,
                                    static_cast<std::uint32_t>(c.tokens * 3 + c.hidden + c.k));
  Run const ref = host_reference(loss, pr);
  REQUIRE(ref.status == Status::ok);
  Run const dev = device_rcl(loss, pr, 0);
  require_agree(dev, ref);
  require_identical(dev, device_rcl(loss, pr, 7, 1));
  require_identical(dev, device_rcl(loss, pr, 8, 3));
}

TEST_CASE("RCL: fewer than two active experts, T = 0, all unconditional, zero norms", "[balancing][emu]") {
  auto const loss = example_loss();
  auto zero_everywhere = [](Run const& r) {
    REQUIRE(r.status == Status::ok);
    CHECK(r.value == 0.f);
    CHECK(r.grad_p == std::vector<float>(r.grad_p.size(), 0.f));
    CHECK(r.grad_x == std::vector<float>(r.grad_x.size(), 0.f));
  };
  Problem one = worked_example();
  one.ids = {1, 1};  // a single active expert
  zero_everywhere(host_reference(loss, one));
  zero_everywhere(device_rcl(loss, one, 1));
  Problem empty = worked_example();
  empty.tokens = 0;
  empty.x.clear();
  empty.ids.clear();
  zero_everywhere(host_reference(loss, empty));
  zero_everywhere(device_rcl(loss, empty, 1));
  Problem all_uncond = worked_example();
  all_uncond.uncond = {1, 1};
  zero_everywhere(host_reference(loss, all_uncond));
  zero_everywhere(device_rcl(loss, all_uncond, 1));

  // A zero prototype has cosine exactly 0 with everything (n(0) = 0): both paths agree, and its
  // gradient is g / 1e-12 (∂n/∂v = I / 1e-12 at ||v|| <= 1e-12).
  Problem zero_norm = random_problem(20, 5, 4, 2, false, 77);
  std::fill(zero_norm.p.begin() + 5, zero_norm.p.begin() + 10, 0.f);
  Run const ref = host_reference(loss, zero_norm);
  require_agree(device_rcl(loss, zero_norm, 2), ref);
}

TEST_CASE("RCL: bad inputs get a Status with a message and leave outputs untouched", "[balancing][emu]") {
  Problem const pr = worked_example();
  auto expect_rejected = [](balancing::RoutingContrastiveLoss const& loss, Problem const& bad, Status code,
                            char const* fragment, bool device_too = true) {
    clear_error_message();
    Run const h = host_reference(loss, bad);
    CHECK(h.status == code);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    CHECK(h.value == -7.f);
    CHECK(h.grad_p == std::vector<float>(h.grad_p.size(), -7.f));
    CHECK(h.grad_x == std::vector<float>(h.grad_x.size(), -7.f));
    if (device_too) {
      clear_error_message();
      Run const d = device_rcl(loss, bad, 1);
      CHECK(d.status == code);
      CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
      CHECK(d.value == -7.f);
      CHECK(d.grad_x == std::vector<float>(d.grad_x.size(), -7.f));
    }
  };
  expect_rejected({.temperature = 0.f}, pr, Status::invalid_argument, "rcl temperature must be > 0");
  expect_rejected({.temperature = -1.f}, pr, Status::invalid_argument, "rcl temperature must be > 0");
  expect_rejected({.lam = nan_value()}, pr, Status::invalid_argument, "routing_contrastive_lam");
  Problem k4 = pr;
  k4.k = 4;
  k4.ids = {0, 1, 2, 0, 1, 0, 2, 1};
  expect_rejected(example_loss(), k4, Status::invalid_argument, "top_k must be in [1, num_routed_experts]");
  Problem nan_x = pr;
  nan_x.x[5] = nan_value();
  expect_rejected(example_loss(), nan_x, Status::invalid_argument, "non-finite routing score input x nan at token 1",
                  false);
  Problem negative = pr;
  negative.ids[1] = -2;
  expect_rejected(example_loss(), negative, Status::invalid_argument, "negative expert id -2 at token 1, slot 0",
                  false);
  // The device takes the negative id as "no expert" (no Status without a synchronisation).
  Problem only_zero = pr;
  only_zero.ids[1] = 3;
  REQUIRE(device_rcl(example_loss(), negative, 1).status == Status::ok);
  CHECK(device_rcl(example_loss(), negative, 1).value == host_reference(example_loss(), only_zero).value);

  clear_error_message();
  std::size_t const need = balancing::loss_workspace_size(example_loss(), 3, 4);
  Run const small = device_rcl(example_loss(), pr, 0, 0, need - 8);
  CHECK(small.status == Status::workspace_too_small);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("loss_workspace_size"));
  CHECK(small.value == -7.f);

  Run r;
  auto [in, out] = buffers<MemorySpace::host>(pr, r);
  auto wrong_p = out;
  wrong_p.grad_prototypes.extents[0] = 2;
  clear_error_message();
  CHECK(host::reference_contrastive_loss(example_loss(), in, wrong_p) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("prototype gradient: expected [3, 4]"));
  auto wrong_h = in;
  wrong_h.x.extents[1] = 3;
  CHECK(host::reference_contrastive_loss(example_loss(), wrong_h, out) == Status::invalid_argument);
  auto no_value = out;
  no_value.value = nullptr;
  CHECK(host::reference_contrastive_loss(example_loss(), in, no_value) == Status::invalid_argument);
  CHECK(r.value == -7.f);
}
