// Aux-loss-free balancing (ALGORITHMS.md §2.8): the selection-with-bias example through the
// DeepSeek-V3 router (loads, then the bias after one sign step), the rule table on A = [7,2,1,2]
// for sign / proportional / decaying (n = 0, 1000, 9000), one primal-dual step with its
// Lagrangian computed here from the formula, host update = device update = reference bit for
// bit on random states, load accumulation (host vs device, any grid), and every bad input.
//
// Bits: the update is fp64 arithmetic on integers followed by one fp32 rounding and one fp32
// add, the same operations on host and device, so results are compared bitwise. Against the
// printed numbers (7 significant digits): 5e-7 relative.

#include "moekit/balancing/expert_bias.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "moekit/balancing/expert_bias_launch.hpp"
#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/cpu/route.hpp"
#include "moekit/emu/launch_config.hpp"
#include "moekit/host/adaptive_loss_reference.hpp"
#include "moekit/routing/grouped_top_k.hpp"
#include "moekit/routing/route.hpp"

using namespace moekit;
using balancing::BiasRule;

namespace {

// Caller-owned state: b, A and n.
struct State {
  std::vector<float> bias;
  std::vector<long long> loads;
  long long updates = 0;

  template <MemorySpace Space>
  balancing::ExpertBias<Space> view(BiasRule rule, double u, double n0 = 1000.0) {
    balancing::ExpertBias<Space> s;
    s.rule = rule;
    s.update_rate = u;
    s.decay_steps = n0;
    s.bias = TensorView<float, 1, Space>::row_major(bias.data(), {static_cast<std::int64_t>(bias.size())});
    s.loads = TensorView<long long, 1, Space>::row_major(loads.data(), {static_cast<std::int64_t>(loads.size())});
    s.updates = &updates;
    return s;
  }
};

State make_state(std::vector<float> bias, std::vector<long long> loads, long long n = 0) {
  return {std::move(bias), std::move(loads), n};
}

emu::LaunchOptions emulator_options(std::uint64_t seed) {
  emu::LaunchOptions o;
  o.schedule_seed = seed;
  o.racecheck = true;
  o.max_resident_blocks = 2;
  return o;
}

std::uint32_t bits(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

void require_same_state(State const& a, State const& b) {
  REQUIRE(a.bias.size() == b.bias.size());
  for (std::size_t e = 0; e < a.bias.size(); ++e) {
    INFO("expert " << e << ": " << a.bias[e] << " vs " << b.bias[e]);
    REQUIRE(bits(a.bias[e]) == bits(b.bias[e]));
  }
  REQUIRE(a.loads == b.loads);
  REQUIRE(a.updates == b.updates);
}

// The common logits of ALGORITHMS.md §2.0 (T = 3, E = 4).
std::vector<float> const common_z = {1.0f, 0.5f, -0.5f, 0.2f, 0.3f, 1.2f, 0.1f, -0.4f, 0.9f, -0.2f, 0.6f, 0.0f};

// DeepSeek-V3 selection (sigmoid, noaux_tc, one group), k = 2, bias from the state.
routing::GroupedTopK<8> biased_router(float const* bias) { return routing::deepseek_v3_router(4, 2, 1, 1, 1.f, bias); }

struct Routed {
  std::vector<int> ids = std::vector<int>(6, -7);
  std::vector<float> weights = std::vector<float>(6, -7.f);
};

template <MemorySpace Space>
routing::RouteBuffers<Space> route_buffers(Routed& r) {
  return {TensorView<float const, 2, Space>::row_major(common_z.data(), {3, 4}),
          TensorView<int, 2, Space>::row_major(r.ids.data(), {3, 2}),
          TensorView<float, 2, Space>::row_major(r.weights.data(), {3, 2})};
}

Routed route_on_device(float const* bias, std::uint64_t seed) {
  emu::ScopedLaunchOptions const guard(emulator_options(seed));
  Routed r;
  Diagnostics d{};
  REQUIRE(routing::route(biased_router(bias), route_buffers<MemorySpace::device>(r), &d, nullptr) == Status::ok);
  return r;
}

}  // namespace

TEST_CASE("bias: selection with bias and one sign step (ALGORITHMS.md 2.8 example)", "[balancing][emu]") {
  State device = make_state({-0.2f, 0.f, 0.1f, 0.15f}, {0, 0, 0, 0});
  auto const policy = device.view<MemorySpace::device>(BiasRule::sign, 1e-3);
  REQUIRE(policy.selection_bias() == device.bias.data());

  // The selection keys κ = fp32(σ(z) + b): one fp32 add on a sigmoid within 2 ulp.
  double const kappa[3][4] = {{0.5310586, 0.6224593, 0.4775407, 0.6998340},
                              {0.3744425, 0.7685248, 0.6249792, 0.5513123},
                              {0.5109495, 0.4501660, 0.7456563, 0.65}};
  for (int t = 0; t < 3; ++t) {
    for (int e = 0; e < 4; ++e) {
      float const k = fp32::sigmoid(common_z[static_cast<std::size_t>(t * 4 + e)]) + device.bias[e];
      CHECK(k == Approx(kappa[t][e]).epsilon(5e-7 + 3 * 6e-8));
    }
  }
  Routed const r = route_on_device(policy.selection_bias(), 3);
  CHECK(r.ids == std::vector<int>{3, 1, 1, 2, 2, 3});  // unbiased would be [0,1], [1,0], [0,2]
  std::vector<double> const w = {0.4690242, 0.5309758, 0.5941418, 0.4058582, 0.5635689, 0.4364311};
  for (std::size_t i = 0; i < w.size(); ++i) {
    CHECK(r.weights[i] == Approx(w[i]).epsilon(1e-6));  // normalised unbiased sigmoids (7 digits + a few ulp)
  }
  {
    emu::ScopedLaunchOptions const guard(emulator_options(5));
    auto const ids = DeviceTensor<int const, 2>::row_major(r.ids.data(), {3, 2});
    REQUIRE(balancing::accumulate_loads(policy, ids, nullptr, nullptr, nullptr) == Status::ok);
    CHECK(device.loads == std::vector<long long>{0, 2, 2, 2});  // c̄ = 1.5
    REQUIRE(balancing::update_bias(policy, nullptr) == Status::ok);
  }
  double const after[4] = {-0.199, -0.001, 0.099, 0.149};
  for (int e = 0; e < 4; ++e) {
    CHECK(device.bias[e] == Approx(after[e]).epsilon(1e-7));  // two fp32 roundings of values ~0.1
  }
  CHECK(device.loads == std::vector<long long>{0, 0, 0, 0});
  CHECK(device.updates == 1);

  // The host path: CPU routing, host accumulation and update, and the reference: same bits.
  State host = make_state({-0.2f, 0.f, 0.1f, 0.15f}, {0, 0, 0, 0});
  State reference = host;
  auto const h = host.view<MemorySpace::host>(BiasRule::sign, 1e-3);
  Routed cpu;
  REQUIRE(cpu::route(biased_router(h.selection_bias()), route_buffers<MemorySpace::host>(cpu)) == Status::ok);
  CHECK(cpu.ids == r.ids);
  REQUIRE(balancing::accumulate_loads(h, HostTensor<int const, 2>::row_major(cpu.ids.data(), {3, 2}), nullptr) ==
          Status::ok);
  reference.loads = host.loads;
  REQUIRE(balancing::update_bias(h) == Status::ok);
  REQUIRE(host::reference_bias_update(reference.view<MemorySpace::host>(BiasRule::sign, 1e-3)) == Status::ok);
  require_same_state(host, device);
  require_same_state(reference, device);
}

TEST_CASE("bias: the three rules on A = [7,2,1,2] (ALGORITHMS.md 2.8 table)", "[balancing][emu]") {
  struct Case {
    BiasRule rule;
    long long n;
    std::vector<double> delta;
  };
  std::vector<double> const proportional = {-1.333333e-3, 3.333333e-4, 6.666667e-4, 3.333333e-4};
  auto scaled = [&](double f) {
    std::vector<double> v = proportional;
    for (double& x : v) {
      x *= f;
    }
    return v;
  };
  auto const c =
      GENERATE_COPY(Case{BiasRule::sign, 0, {-1e-3, 1e-3, 1e-3, 1e-3}}, Case{BiasRule::proportional, 0, proportional},
                    Case{BiasRule::decaying, 0, proportional},     // n = 0: the same as proportional
                    Case{BiasRule::decaying, 1000, scaled(0.5)},   // u_n = 5e-4
                    Case{BiasRule::decaying, 9000, scaled(0.1)});  // u_n = 1e-4
  CAPTURE(balancing::to_string(c.rule), c.n);
  State host = make_state({0.f, 0.f, 0.f, 0.f}, {7, 2, 1, 2}, c.n);
  State device = host;
  State reference = host;
  REQUIRE(balancing::update_bias(host.view<MemorySpace::host>(c.rule, 1e-3)) == Status::ok);
  REQUIRE(host::reference_bias_update(reference.view<MemorySpace::host>(c.rule, 1e-3)) == Status::ok);
  {
    emu::ScopedLaunchOptions const guard(emulator_options(1));
    REQUIRE(balancing::update_bias(device.view<MemorySpace::device>(c.rule, 1e-3), nullptr) == Status::ok);
  }
  for (int e = 0; e < 4; ++e) {
    INFO("expert " << e);
    // b = 0 + fp32(Δ): one fp32 rounding (3e-8) of a value printed with 7 digits (5e-7).
    CHECK(host.bias[e] == Approx(c.delta[e]).epsilon(5e-7 + 6e-8));
  }
  require_same_state(host, device);
  require_same_state(host, reference);
  CHECK(host.loads == std::vector<long long>(4, 0));
  CHECK(host.updates == c.n + 1);
  if (c.rule == BiasRule::decaying && c.n == 0) {
    State p = make_state({0.f, 0.f, 0.f, 0.f}, {7, 2, 1, 2});
    REQUIRE(balancing::update_bias(p.view<MemorySpace::host>(BiasRule::proportional, 1e-3)) == Status::ok);
    CHECK(p.bias == host.bias);
  }
}

TEST_CASE("bias: one primal-dual step and its Lagrangian (ALGORITHMS.md 2.8)", "[balancing][emu]") {
  // γ = σ(z), L = K T / E = 1.5, p⁰ = 0, sign with u = 0.1.
  double gamma[3][4];
  for (int t = 0; t < 3; ++t) {
    for (int e = 0; e < 4; ++e) {
      gamma[t][e] = 1.0 / (1.0 + std::exp(-double(common_z[static_cast<std::size_t>(t * 4 + e)])));
    }
  }
  double const target = 1.5;
  State s = make_state({0.f, 0.f, 0.f, 0.f}, {0, 0, 0, 0});
  auto const policy = s.view<MemorySpace::device>(BiasRule::sign, 0.1);
  emu::ScopedLaunchOptions const guard(emulator_options(2));
  auto x_of = [](Routed const& r) {
    std::vector<std::vector<int>> x(3, std::vector<int>(4, 0));
    for (int t = 0; t < 3; ++t) {
      for (int j = 0; j < 2; ++j) {
        x[t][r.ids[static_cast<std::size_t>(t * 2 + j)]] = 1;
      }
    }
    return x;
  };
  // 𝓛(x, p) = Σ (γ + p) x - L Σ p (any x with exactly K ones per row).
  auto lagrangian = [&](std::vector<std::vector<int>> const& x, std::vector<float> const& p) {
    double v = 0.0;
    for (int t = 0; t < 3; ++t) {
      for (int e = 0; e < 4; ++e) {
        v += (gamma[t][e] + p[e]) * x[t][e];
      }
    }
    for (float pe : p) {
      v -= target * pe;
    }
    return v;
  };
  Routed const r0 = route_on_device(s.bias.data(), 2);
  auto const x0 = x_of(r0);
  std::vector<float> const p0 = s.bias;
  REQUIRE(balancing::accumulate_loads(policy, DeviceTensor<int const, 2>::row_major(r0.ids.data(), {3, 2}), nullptr,
                                      nullptr, nullptr) == Status::ok);
  std::vector<long long> const a0 = s.loads;
  CHECK(a0 == std::vector<long long>{3, 2, 1, 0});
  double const l0 = lagrangian(x0, p0);
  CHECK(l0 == Approx(4.053091).epsilon(5e-7));

  REQUIRE(balancing::update_bias(policy, nullptr) == Status::ok);
  CHECK(s.bias == std::vector<float>{-0.1f, -0.1f, 0.1f, 0.1f});  // p¹ = u sign(L - A)
  std::vector<float> const p1 = s.bias;
  Routed const r1 = route_on_device(s.bias.data(), 4);
  auto const x1 = x_of(r1);
  CHECK(x1 == std::vector<std::vector<int>>{{1, 0, 0, 1}, {0, 1, 1, 0}, {1, 0, 1, 0}});
  REQUIRE(balancing::accumulate_loads(policy, DeviceTensor<int const, 2>::row_major(r1.ids.data(), {3, 2}), nullptr,
                                      nullptr, nullptr) == Status::ok);
  CHECK(s.loads == std::vector<long long>{2, 1, 2, 1});
  double const l1 = lagrangian(x1, p1);
  CHECK(l1 == Approx(3.931002).epsilon(5e-7));

  // Switching benefits B_i = Σ_k (γ_ik + p¹_k)(x¹_ik - x⁰_ik) >= 0 and the ε-weighted violation
  // Σ_k ε_k (A_k - L)² with sign's ε_k = u / |L - A_k|.
  double const want_b[3] = {0.1273747, 0.1505367, 0.0};
  double sum_b = 0.0;
  for (int t = 0; t < 3; ++t) {
    double b = 0.0;
    for (int e = 0; e < 4; ++e) {
      b += (gamma[t][e] + p1[e]) * (x1[t][e] - x0[t][e]);
    }
    CHECK(b >= 0.0);
    CHECK(b == Approx(want_b[t]).margin(5e-7));
    sum_b += b;
  }
  double violation = 0.0;
  for (int e = 0; e < 4; ++e) {
    double const gap = double(a0[e]) - target;
    violation += 0.1 / std::fabs(gap) * gap * gap;
  }
  CHECK(violation == Approx(0.4).epsilon(1e-12));
  // The monotone-improvement identity: Δ𝓛 = Σ B - Σ ε (A - L)² (exact up to fp64 rounding; p¹
  // is the fp32 value ±0.1f on both sides, so the identity holds for it exactly).
  double const step = double(p1[2]);  // u as stored: fp32(0.1)
  double violation_stored = 0.0;
  for (int e = 0; e < 4; ++e) {
    violation_stored += step * std::fabs(double(a0[e]) - target);
  }
  CHECK(l1 - l0 == Approx(sum_b - violation_stored).margin(1e-12));
  CHECK(l1 - l0 == Approx(-0.1220887).margin(5e-7));
  CHECK(sum_b - violation == Approx(0.2779113 - 0.4).margin(5e-7));
}

TEST_CASE("bias: host update, device update and reference agree bit for bit on random states", "[balancing][emu]") {
  auto const experts = GENERATE(1, 3, 8, 60, 256, 300);
  auto const rule = GENERATE(BiasRule::sign, BiasRule::proportional, BiasRule::decaying);
  auto const u = GENERATE(0.0, 1e-3, 0.37);
  CAPTURE(experts, balancing::to_string(rule), u);
  std::mt19937 rng(static_cast<std::uint32_t>(experts * 13 + int(rule)));
  std::uniform_int_distribution<long long> load(0, 5000);
  std::normal_distribution<float> bias(0.f, 0.05f);
  State host;
  for (int e = 0; e < experts; ++e) {
    host.bias.push_back(bias(rng));
    host.loads.push_back(e % 7 == 3 ? 0 : load(rng));  // some idle experts
  }
  host.updates = 12345;
  State device = host, reference = host;
  for (int step = 0; step < 3; ++step) {
    REQUIRE(balancing::update_bias(host.view<MemorySpace::host>(rule, u, 250.0)) == Status::ok);
    REQUIRE(host::reference_bias_update(reference.view<MemorySpace::host>(rule, u, 250.0)) == Status::ok);
    {
      emu::ScopedLaunchOptions const guard(emulator_options(std::uint64_t(step) + 1));
      REQUIRE(balancing::update_bias(device.view<MemorySpace::device>(rule, u, 250.0), nullptr) == Status::ok);
    }
    require_same_state(host, device);
    require_same_state(host, reference);
    for (int e = 0; e < experts; ++e) {  // next step's loads; once all equal (sign(0) = 0), once all zero (c̄ = 0)
      long long const v = step == 0 ? 17 : (step == 1 ? 0 : load(rng));
      host.loads[e] = device.loads[e] = reference.loads[e] = v;
    }
  }
  // Equal loads and zero loads leave b unchanged for every rule.
  State equal = make_state({0.25f, -0.5f, 0.125f}, {4, 4, 4}), zero = make_state({0.25f, -0.5f, 0.125f}, {0, 0, 0});
  REQUIRE(balancing::update_bias(equal.view<MemorySpace::host>(rule, 0.1)) == Status::ok);
  REQUIRE(balancing::update_bias(zero.view<MemorySpace::host>(rule, 0.1)) == Status::ok);
  CHECK(equal.bias == std::vector<float>{0.25f, -0.5f, 0.125f});
  CHECK(zero.bias == std::vector<float>{0.25f, -0.5f, 0.125f});
}

TEST_CASE("bias: load accumulation on the device equals the host's for any grid", "[balancing][emu]") {
  auto const experts = GENERATE(1, 5, 64, 256);
  auto const k = GENERATE(1, 3, 8);
  auto const tokens = GENERATE(std::int64_t{0}, std::int64_t{1}, std::int64_t{97}, std::int64_t{600});
  CAPTURE(experts, k, tokens);
  std::mt19937 rng(static_cast<std::uint32_t>(experts * 100 + k * 7 + tokens));
  std::uniform_int_distribution<int> id(0, experts);  // E is the empty slot
  std::vector<int> ids(static_cast<std::size_t>(tokens * k));
  for (int& i : ids) {
    i = id(rng);
  }
  std::vector<std::uint8_t> valid(static_cast<std::size_t>(tokens));
  for (std::size_t t = 0; t < valid.size(); ++t) {
    valid[t] = t % 4 != 1;
  }
  State host = make_state(std::vector<float>(static_cast<std::size_t>(experts), 0.f),
                          std::vector<long long>(static_cast<std::size_t>(experts), 5));
  REQUIRE(balancing::accumulate_loads(host.view<MemorySpace::host>(BiasRule::sign, 1e-3),
                                      HostTensor<int const, 2>::row_major(ids.data(), {tokens, k}),
                                      valid.data()) == Status::ok);
  std::vector<long long> want(static_cast<std::size_t>(experts), 5);
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (int j = 0; j < k; ++j) {
      int const e = ids[static_cast<std::size_t>(t * k + j)];
      if (valid[t] && e < experts) {
        ++want[e];
      }
    }
  }
  CHECK(host.loads == want);
  for (unsigned max_blocks : {0u, 1u, 3u}) {
    State device = make_state(host.bias, std::vector<long long>(static_cast<std::size_t>(experts), 5));
    Diagnostics d{};
    emu::ScopedLaunchOptions const guard(emulator_options(max_blocks + 7));
    REQUIRE(balancing::accumulate_loads(device.view<MemorySpace::device>(BiasRule::sign, 1e-3),
                                        DeviceTensor<int const, 2>::row_major(ids.data(), {tokens, k}), valid.data(),
                                        &d, nullptr, max_blocks) == Status::ok);
    CHECK(device.loads == want);
    CHECK(d.invalid_ids == 0);
  }
}

TEST_CASE("bias: bad parameters and inputs get a Status with a message and change nothing", "[balancing][emu]") {
  State s = make_state({0.5f, -0.25f, 0.f, 1.f}, {3, 1, 0, 4}, 7);
  State const before = s;
  auto expect_rejected = [&](auto const& policy, char const* fragment) {
    clear_error_message();
    CHECK(balancing::update_bias(policy) == Status::invalid_argument);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    require_same_state(s, before);
  };
  expect_rejected(s.view<MemorySpace::host>(BiasRule::sign, -1e-3), "update_rate u must be finite and >= 0");
  expect_rejected(s.view<MemorySpace::host>(BiasRule::sign, std::nan("")), "update_rate u must be finite");
  expect_rejected(s.view<MemorySpace::host>(BiasRule::decaying, 1e-3, 0.0), "decay_steps n0 must be finite and > 0");
  expect_rejected(s.view<MemorySpace::host>(BiasRule::decaying, 1e-3, -5.0), "decay_steps n0");
  auto wrong_loads = s.view<MemorySpace::host>(BiasRule::sign, 1e-3);
  wrong_loads.loads.extents[0] = 3;
  expect_rejected(wrong_loads, "load accumulator has 3 entries, expected E=4");
  auto null_counter = s.view<MemorySpace::host>(BiasRule::sign, 1e-3);
  null_counter.updates = nullptr;
  expect_rejected(null_counter, "null update counter pointer");
  {
    State negative = s;
    negative.loads[2] = -1;
    clear_error_message();
    CHECK(balancing::update_bias(negative.view<MemorySpace::host>(BiasRule::sign, 1e-3)) == Status::invalid_argument);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains("negative load -1 at expert 2"));
    CHECK(negative.bias == before.bias);
  }
  // The layer's E against the state: "expert bias has %d entries, expected E=%d" (§2.11).
  clear_error_message();
  CHECK(s.view<MemorySpace::host>(BiasRule::sign, 1e-3).validate(6) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("expert bias has 4 entries, expected E=6"));
  CHECK(s.view<MemorySpace::device>(BiasRule::sign, 1e-3).validate(4) == Status::ok);

  // Device entry points refuse the same parameters before launching.
  emu::ScopedLaunchOptions const guard(emulator_options(3));
  clear_error_message();
  CHECK(balancing::update_bias(s.view<MemorySpace::device>(BiasRule::sign, -1.0), nullptr) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("update_rate"));
  require_same_state(s, before);

  // Ids outside [0, E]: refused on the host (naming token and slot), counted on the device.
  std::vector<int> ids = {0, 1, 2, 9, 4, 3};
  clear_error_message();
  CHECK(balancing::accumulate_loads(s.view<MemorySpace::host>(BiasRule::sign, 1e-3),
                                    HostTensor<int const, 2>::row_major(ids.data(), {3, 2}),
                                    nullptr) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("expert id 9 out of range [0, 4] at token 1, slot 1"));
  require_same_state(s, before);
  Diagnostics d{};
  REQUIRE(balancing::accumulate_loads(s.view<MemorySpace::device>(BiasRule::sign, 1e-3),
                                      DeviceTensor<int const, 2>::row_major(ids.data(), {3, 2}), nullptr, &d,
                                      nullptr) == Status::ok);
  CHECK(d.invalid_ids == 1);
  CHECK(s.loads == std::vector<long long>{4, 2, 1, 5});  // 0, 1, 2, 3 counted once each; 4 = E is the empty slot
}
