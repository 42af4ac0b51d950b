// Expert-choice routing (ALGORITHMS.md §1.8): the worked example (T = 7, E = 3, c = 1, with the
// exact tie between tokens 2 and 5), capacity rounding and clamping, host reference vs emulated
// device kernels on random and adversarial inputs (ties, -inf, padding, E up to 256, E not a
// power of two, T = 0 / 1, C clamped to T, all three selection-kernel sizes), determinism over
// schedule seeds and grid sizes, the gradient against central differences, and every bad input.
//
// Comparisons are exact: host and device compute S with the same fp32 softmax (§1.0) and rank
// the same fp32 values, so token ids, gates and the per-token view must agree bit for bit.

#include "moekit/routing/expert_choice.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/emu/launch_config.hpp"
#include "moekit/host/batch_router_reference.hpp"

using namespace moekit;

namespace {

constexpr float inf = std::numeric_limits<float>::infinity();
constexpr float nan_value = std::numeric_limits<float>::quiet_NaN();

struct Problem {
  std::int64_t tokens = 0;
  int experts = 0;
  std::vector<float> logits;        // [T, E]
  std::vector<std::uint8_t> valid;  // empty: every token real
  float& at(std::int64_t t, int e) { return logits[static_cast<std::size_t>(t * experts + e)]; }
};

struct Routed {
  Status status = Status::internal_error;
  std::int64_t capacity = 0;
  std::vector<int> token_ids;  // [E, C]
  std::vector<float> gates;    // [E, C]
  std::vector<int> token_experts;
  std::vector<float> token_gates;
  std::vector<int> counts;
  Diagnostics diagnostics{};
};

template <MemorySpace Space>
routing::ExpertChoiceBuffers<Space> buffers(routing::ExpertChoice const& r, Problem const& p, Routed& out,
                                            bool per_token) {
  out.capacity = r.capacity(p.tokens);
  auto const ec = static_cast<std::size_t>(r.experts * out.capacity);
  auto const te = static_cast<std::size_t>(p.tokens * r.experts);
  out.token_ids.assign(ec, -7);  // a value no router writes
  out.gates.assign(ec, -7.f);
  routing::ExpertChoiceBuffers<Space> b;
  b.logits = TensorView<float const, 2, Space>::row_major(p.logits.data(), {p.tokens, r.experts});
  b.valid = p.valid.empty() ? nullptr : p.valid.data();
  b.token_ids = TensorView<int, 2, Space>::row_major(out.token_ids.data(), {r.experts, out.capacity});
  b.gates = TensorView<float, 2, Space>::row_major(out.gates.data(), {r.experts, out.capacity});
  if (per_token) {
    out.token_experts.assign(te, -7);
    out.token_gates.assign(te, -7.f);
    out.counts.assign(static_cast<std::size_t>(p.tokens), -7);
    b.token_experts = TensorView<int, 2, Space>::row_major(out.token_experts.data(), {p.tokens, r.experts});
    b.token_gates = TensorView<float, 2, Space>::row_major(out.token_gates.data(), {p.tokens, r.experts});
    b.token_counts = out.counts.data();
  }
  return b;
}

Routed host_reference(routing::ExpertChoice const& r, Problem const& p, bool per_token = true) {
  Routed out;
  out.status = host::reference_expert_choice(r, buffers<MemorySpace::host>(r, p, out, per_token));
  return out;
}

// The device kernels under the emulator: shuffled schedule, racecheck, two resident blocks.
Routed device_route(routing::ExpertChoice const& r, Problem const& p, std::uint64_t seed, unsigned max_blocks = 0,
                    bool per_token = true) {
  emu::LaunchOptions o;
  o.schedule_seed = seed;
  o.racecheck = true;
  o.max_resident_blocks = 2;
  emu::ScopedLaunchOptions const guard(o);
  Routed out;
  std::vector<std::byte> workspace(r.workspace_size(p.tokens) + 256);
  void* aligned = workspace.data() + (256 - reinterpret_cast<std::uintptr_t>(workspace.data()) % 256) % 256;
  out.status = routing::route(r, buffers<MemorySpace::device>(r, p, out, per_token), aligned,
                              r.workspace_size(p.tokens), &out.diagnostics, nullptr, max_blocks);
  return out;
}

std::vector<std::uint32_t> bits(std::vector<float> const& v) {
  std::vector<std::uint32_t> b(v.size());
  std::memcpy(b.data(), v.data(), v.size() * sizeof(float));
  return b;
}

void require_identical(Routed const& a, Routed const& b) {
  REQUIRE(a.status == b.status);
  REQUIRE(a.capacity == b.capacity);
  REQUIRE(a.token_ids == b.token_ids);
  REQUIRE(bits(a.gates) == bits(b.gates));
  REQUIRE(a.token_experts == b.token_experts);
  REQUIRE(bits(a.token_gates) == bits(b.token_gates));
  REQUIRE(a.counts == b.counts);
}

Problem worked_example() {
  return {7,
          3,
          {3.f,  2.8f, -1.f, 2.f, 0.f, 0.f,  0.f, -1.f, 2.f,  0.f, 2.f,
           0.5f, 0.f,  -1.f, 3.f, 0.f, -1.f, 2.f, 0.5f, 0.5f, 0.5f},
          {}};
}

}  // namespace

TEST_CASE("expert choice reproduces the worked example of ALGORITHMS.md 1.8", "[routing][emu]") {
  routing::ExpertChoice const r{.experts = 3, .capacity_factor = 1.0};
  Problem const p = worked_example();
  CHECK(r.capacity(7) == 2);  // c T / E = 2.333 -> 2

  // S in fp32, as printed in the example (6 or 7 decimals: within half a unit of the 6th, 5e-7).
  std::vector<std::vector<float>> const s = {{0.5443521f, 0.4456778f, 0.0099702f}, {0.786986f, 0.106507f, 0.106507f},
                                             {0.1141952f, 0.0420101f, 0.8437947f}, {0.0996236f, 0.7361247f, 0.1642516f},
                                             {0.0466126f, 0.0171478f, 0.9362396f}, {0.1141952f, 0.0420101f, 0.8437947f},
                                             {1.f / 3, 1.f / 3, 1.f / 3}};
  for (std::int64_t t = 0; t < 7; ++t) {
    routing::SoftmaxNormaliser const n = routing::softmax_normaliser(&p.logits[static_cast<std::size_t>(t * 3)], 3);
    for (int e = 0; e < 3; ++e) {
      float const v = routing::softmax_entry(p.logits[static_cast<std::size_t>(t * 3 + e)], n);
      CHECK(std::fabs(v - s[t][e]) <= 5e-7);
    }
  }
  // Tokens 2 and 5 have the same logits, hence bit-identical S: an exact tie.
  CHECK(std::memcmp(&p.logits[6], &p.logits[15], 3 * sizeof(float)) == 0);

  Routed const host = host_reference(r, p);
  REQUIRE(host.status == Status::ok);
  CHECK(host.token_ids == std::vector<int>{1, 0, 3, 0, 4, 2});  // token 2 beats token 5 by index
  std::vector<float> const gates = {0.786986f, 0.5443521f, 0.7361247f, 0.4456778f, 0.9362396f, 0.8437947f};
  for (std::size_t i = 0; i < gates.size(); ++i) {
    CHECK(std::fabs(host.gates[i] - gates[i]) <= 5e-7);
  }
  // Token 0 gets experts 0 and 1; tokens 5 and 6 get none.
  CHECK(host.counts == std::vector<int>{2, 1, 1, 1, 1, 0, 0});
  CHECK(std::vector<int>(host.token_experts.begin(), host.token_experts.begin() + 3) == std::vector<int>{0, 1, 3});
  CHECK(std::vector<int>(host.token_experts.begin() + 15, host.token_experts.end()) ==
        std::vector<int>{3, 3, 3, 3, 3, 3});
  CHECK(host.token_gates[0] == host.gates[1]);
  CHECK(host.token_gates[1] == host.gates[3]);
  CHECK(host.token_gates[2] == 0.f);

  for (auto [seed, blocks] : {std::pair{0ull, 0u}, std::pair{3ull, 1u}, std::pair{9ull, 2u}}) {
    Routed const device = device_route(r, p, seed, blocks);
    require_identical(host, device);
    CHECK(device.diagnostics.nonfinite_rows == 0);
  }
}

TEST_CASE("expert choice capacity: round half to even in double, C_min, clamped to T", "[routing]") {
  auto cap = [](double c, std::int64_t t, int e, int c_min = 1) {
    return routing::ExpertChoice{.experts = e, .capacity_factor = c, .min_capacity = c_min}.capacity(t);
  };
  CHECK(cap(1.0, 7, 3) == 2);   // 2.333
  CHECK(cap(1.0, 6, 4) == 2);   // 1.5 -> 2 (even)
  CHECK(cap(1.0, 10, 4) == 2);  // 2.5 -> 2 (even)
  CHECK(cap(1.0, 14, 4) == 4);  // 3.5 -> 4 (even)
  CHECK(cap(2.0, 4096, 64) == 128);
  CHECK(cap(0.5, 4, 8) == 1);      // 0.25 -> 0 -> C_min = 1
  CHECK(cap(0.5, 64, 8, 4) == 4);  // the reference's min_expert_capacity = 4
  CHECK(cap(8.0, 5, 2) == 5);      // 20 -> clamped to T = 5
  CHECK(cap(1.0, 3, 8, 4) == 3);   // C_min 4 -> clamped to T = 3
  CHECK(cap(1.0, 0, 8) == 0);      // T = 0: nothing
  CHECK(cap(1.0, 1, 256) == 1);
  CHECK(routing::round_half_even(0.5) == 0.0);
  CHECK(routing::round_half_even(1.5) == 2.0);
  CHECK(routing::round_half_even(2.4999999) == 2.0);
}

namespace {

enum class Pattern { random, ties, one_expert, masked, peaked };

Problem make_problem(std::int64_t tokens, int experts, Pattern pattern, std::uint32_t seed, bool padding) {
  Problem p{tokens, experts, std::vector<float>(static_cast<std::size_t>(tokens * experts)), {}};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 2.f);
  std::uniform_int_distribution<int> three(-1, 1);
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (int e = 0; e < experts; ++e) {
      float v = 0.f;
      switch (pattern) {
        case Pattern::random: v = normal(rng); break;
        case Pattern::ties: v = float(three(rng)); break;  // many exact ties in S across tokens
        case Pattern::one_expert: v = e == 0 ? 10.f : normal(rng); break;
        case Pattern::masked: v = (e % 3 == 1 && experts > 1) ? -inf : normal(rng); break;
        case Pattern::peaked: v = (t % 5 == 0) ? 30.f * float(e == 0) : normal(rng); break;  // S = 1 and tiny
      }
      p.at(t, e) = v;
    }
  }
  if (padding) {
    p.valid.resize(static_cast<std::size_t>(tokens));
    for (std::int64_t t = 0; t < tokens; ++t) {
      p.valid[static_cast<std::size_t>(t)] = (t * 7 + seed) % 4 != 0 ? 1 : 0;
      if (p.valid[static_cast<std::size_t>(t)] == 0 && t % 2 == 0) {
        p.at(t, 0) = nan_value;  // padding rows are never read by the host nor refused
      }
    }
  }
  return p;
}

char const* name(Pattern p) {
  switch (p) {
    case Pattern::random: return "random";
    case Pattern::ties: return "ties";
    case Pattern::one_expert: return "one_expert";
    case Pattern::masked: return "masked";
    case Pattern::peaked: return "peaked";
  }
  return "?";
}

// Properties every result has, independent of the reference: C distinct tokens per expert in
// selection order, gates equal to the padding-masked S, the per-token view its transpose.
void check_invariants(routing::ExpertChoice const& r, Problem const& p, Routed const& out) {
  std::int64_t const c = out.capacity;
  for (int e = 0; e < r.experts; ++e) {
    std::vector<bool> seen(static_cast<std::size_t>(p.tokens), false);
    for (std::int64_t j = 0; j < c; ++j) {
      int const t = out.token_ids[static_cast<std::size_t>(e * c + j)];
      REQUIRE((t >= 0 && t < p.tokens));
      REQUIRE(!seen[static_cast<std::size_t>(t)]);
      seen[static_cast<std::size_t>(t)] = true;
      if (j > 0) {
        float const prev = out.gates[static_cast<std::size_t>(e * c + j - 1)];
        float const cur = out.gates[static_cast<std::size_t>(e * c + j)];
        int const prev_t = out.token_ids[static_cast<std::size_t>(e * c + j - 1)];
        REQUIRE((prev > cur || (prev == cur && prev_t < t)));
      }
    }
  }
  std::int64_t total = 0;
  for (int count : out.counts) {
    total += count;
  }
  REQUIRE(total == r.experts * c);
}

}  // namespace

TEST_CASE("expert choice: host reference and device kernels agree bit for bit", "[routing][emu]") {
  struct Shape {
    int experts;
    std::int64_t tokens;
    double c;
  };
  auto const shape =
      GENERATE(Shape{1, 1, 1.0}, Shape{3, 7, 1.0}, Shape{8, 37, 2.0}, Shape{7, 300, 1.0}, Shape{60, 129, 0.5},
               Shape{256, 40, 2.0}, Shape{5, 1100, 2.0}, Shape{4, 6, 8.0}, Shape{16, 3, 1.0});
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::one_expert, Pattern::masked, Pattern::peaked);
  auto const padding = GENERATE(false, true);
  CAPTURE(shape.experts, shape.tokens, shape.c, name(pattern), padding);
  routing::ExpertChoice const r{.experts = shape.experts, .capacity_factor = shape.c};
  Problem const p = make_problem(shape.tokens, shape.experts, pattern,
                                 static_cast<std::uint32_t>(shape.tokens * 31 + shape.experts), padding);
  Routed const host = host_reference(r, p);
  REQUIRE(host.status == Status::ok);
  check_invariants(r, p, host);
  Routed const device = device_route(r, p, 0);
  require_identical(host, device);
  CHECK(device.diagnostics.nonfinite_rows == 0);
  if (shape.experts * shape.tokens <= 5000) {
    require_identical(device, device_route(r, p, 17, 1));
    require_identical(device, device_route(r, p, 23, 3));
  }
  // Without the per-token view the [E, C] outputs are the same.
  Routed const lean = device_route(r, p, 5, 2, false);
  CHECK(lean.token_ids == host.token_ids);
  CHECK(bits(lean.gates) == bits(host.gates));
}

TEST_CASE("expert choice: the largest routing group (4096 tokens) on the 16-item kernel", "[routing][emu]") {
  routing::ExpertChoice const r{.experts = 6, .capacity_factor = 1.25};
  Problem const p = make_problem(4096, 6, Pattern::ties, 77, false);
  Routed const host = host_reference(r, p);
  REQUIRE(host.status == Status::ok);
  CHECK(host.capacity == 853);  // 1.25 * 4096 / 6 = 853.33
  check_invariants(r, p, host);
  require_identical(host, device_route(r, p, 12, 4));
}

TEST_CASE("expert choice: padding tokens have gate 0 and fill slots only when real tokens run out", "[routing][emu]") {
  // 4 tokens, 2 real (0 and 3); E = 2, c = 4 -> C = min(8, T) = 4: every expert takes every
  // token, the real ones first (their S > 0), then padding with gate 0 by token index.
  routing::ExpertChoice const r{.experts = 2, .capacity_factor = 4.0};
  Problem p{4, 2, {0.5f, -0.5f, 9.f, 9.f, 9.f, 9.f, -1.f, 1.f}, {1, 0, 0, 1}};
  Routed const host = host_reference(r, p);
  REQUIRE(host.status == Status::ok);
  CHECK(host.token_ids == std::vector<int>{0, 3, 1, 2, 3, 0, 1, 2});
  CHECK(host.gates[2] == 0.f);
  CHECK(host.gates[3] == 0.f);
  CHECK(host.counts == std::vector<int>{2, 2, 2, 2});
  require_identical(host, device_route(r, p, 1));
}

TEST_CASE("expert choice: T = 0 routes nothing, T = 1 gives every expert that token", "[routing][emu]") {
  routing::ExpertChoice const r{.experts = 5, .capacity_factor = 2.0};
  Problem const empty{0, 5, {}, {}};
  CHECK(host_reference(r, empty).status == Status::ok);
  CHECK(device_route(r, empty, 1).status == Status::ok);
  Problem const one{1, 5, {0.f, 1.f, 2.f, 3.f, -inf}, {}};
  Routed const host = host_reference(r, one);
  REQUIRE(host.status == Status::ok);
  CHECK(host.token_ids == std::vector<int>{0, 0, 0, 0, 0});
  CHECK(host.gates[4] == 0.f);  // exp(-inf) = 0: chosen, with gate 0, since C = T = 1
  CHECK(host.counts == std::vector<int>{5});
  require_identical(host, device_route(r, one, 2));
}

TEST_CASE("expert choice: non-finite logits, host refuses and device counts", "[routing][emu]") {
  routing::ExpertChoice const r{.experts = 4, .capacity_factor = 1.0};
  struct Case {
    float a, b;
    char const* fragment;
  };
  auto const c = GENERATE(Case{nan_value, 0.f, "non-finite value nan at token 5, expert 2"},
                          Case{inf, 0.f, "non-finite value inf at token 5, expert 2"},
                          Case{-inf, -inf, "all experts masked (-inf) at token 5"});
  Problem p = make_problem(12, 4, Pattern::random, 4, false);
  p.at(5, 2) = c.a;
  if (c.b != 0.f) {
    p.at(5, 0) = p.at(5, 1) = p.at(5, 3) = c.b;
  }
  clear_error_message();
  Routed const host = host_reference(r, p);
  CHECK(host.status == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains(c.fragment));
  CHECK(host.token_ids == std::vector<int>(host.token_ids.size(), -7));
  CHECK(host.counts == std::vector<int>(12, -7));

  Routed const device = device_route(r, p, 6);
  REQUIRE(device.status == Status::ok);
  CHECK(device.diagnostics.nonfinite_rows == 1);
  // C = 3 <= 11 finite tokens, and the bad token's scores (NaN, or 0 for a masked row) rank
  // below every finite token's positive S: the result is the reference's with token 5 as padding.
  Problem as_padding = p;
  as_padding.valid.assign(12, 1);
  as_padding.valid[5] = 0;
  Routed const expected = host_reference(r, as_padding);
  CHECK(device.token_ids == expected.token_ids);
  CHECK(bits(device.gates) == bits(expected.gates));
}

TEST_CASE("expert choice: gradient matches central differences", "[routing]") {
  // L = sum_{e, r} G_er gates_er with the selection held fixed; gates are S = softmax(z) in
  // double here. Central differences in fp64 with h = 1e-6: truncation O(h^2) ~ 1e-12, rounding
  // ~1e-16 / h ~ 1e-10; the analytic gradient is rounded to fp32: |diff| <= 1e-6 |g| + 1e-9.
  routing::ExpertChoice const r{.experts = 5, .capacity_factor = 1.5};
  Problem p = make_problem(9, 5, Pattern::random, 8, true);
  Routed const fwd = host_reference(r, p);
  REQUIRE(fwd.status == Status::ok);
  std::int64_t const c = fwd.capacity;
  std::vector<float> upstream(static_cast<std::size_t>(5 * c));
  for (std::size_t i = 0; i < upstream.size(); ++i) {
    upstream[i] = float(int(i * 37 % 11) - 5) / 4.f;
  }
  std::vector<float> grad(static_cast<std::size_t>(9 * 5), -7.f);
  REQUIRE(routing::expert_choice_backward(r, HostTensor<float const, 2>::row_major(p.logits.data(), {9, 5}),
                                          p.valid.data(),
                                          HostTensor<int const, 2>::row_major(fwd.token_ids.data(), {5, c}),
                                          HostTensor<float const, 2>::row_major(upstream.data(), {5, c}),
                                          HostTensor<float, 2>::row_major(grad.data(), {9, 5})) == Status::ok);
  std::vector<double> z(p.logits.begin(), p.logits.end());
  auto loss = [&](std::vector<double> const& zz) {
    double l = 0;
    for (int e = 0; e < 5; ++e) {
      for (std::int64_t j = 0; j < c; ++j) {
        int const t = fwd.token_ids[static_cast<std::size_t>(e * c + j)];
        if (p.valid[static_cast<std::size_t>(t)] == 0) {
          continue;  // gate 0 whatever z is
        }
        double mx = -INFINITY, sum = 0;
        for (int f = 0; f < 5; ++f) {
          mx = std::max(mx, zz[static_cast<std::size_t>(t * 5 + f)]);
        }
        for (int f = 0; f < 5; ++f) {
          sum += std::exp(zz[static_cast<std::size_t>(t * 5 + f)] - mx);
        }
        l += upstream[static_cast<std::size_t>(e * c + j)] * std::exp(zz[static_cast<std::size_t>(t * 5 + e)] - mx) /
             sum;
      }
    }
    return l;
  };
  for (std::size_t i = 0; i < z.size(); ++i) {
    std::vector<double> plus = z, minus = z;
    plus[i] += 1e-6;
    minus[i] -= 1e-6;
    double const fd = (loss(plus) - loss(minus)) / 2e-6;
    INFO("entry " << i);
    CHECK(std::fabs(grad[i] - fd) <= 1e-6 * std::fabs(fd) + 1e-9);
  }
}

TEST_CASE("expert choice: bad parameters and buffers get a Status with a message, outputs untouched",
          "[routing][emu]") {
  Problem const p = make_problem(6, 4, Pattern::random, 1, false);
  auto expect_rejected = [&](routing::ExpertChoice const& r, Status code, char const* fragment) {
    clear_error_message();
    Routed const host = host_reference(r, p);
    CHECK(host.status == code);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    CHECK(host.token_ids == std::vector<int>(host.token_ids.size(), -7));
    CHECK(device_route(r, p, 0).status == code);
  };
  expect_rejected({.experts = 4, .capacity_factor = 0.0}, Status::invalid_argument, "capacity_factor must be > 0");
  expect_rejected({.experts = 4, .capacity_factor = -1.0}, Status::invalid_argument, "capacity_factor must be > 0");
  expect_rejected({.experts = 4, .capacity_factor = std::nan("")}, Status::invalid_argument, "capacity_factor");
  expect_rejected({.experts = 4, .capacity_factor = 1.0, .min_capacity = 0}, Status::invalid_argument, "min_capacity");

  routing::ExpertChoice const r{.experts = 4, .capacity_factor = 1.0};
  Routed out;
  auto b = buffers<MemorySpace::device>(r, p, out, true);
  Diagnostics d{};
  std::vector<std::byte> ws(r.workspace_size(6) + 256);
  void* aligned = ws.data() + (256 - reinterpret_cast<std::uintptr_t>(ws.data()) % 256) % 256;
  auto wrong_c = b;
  wrong_c.token_ids.extents[1] = 3;
  CHECK(routing::route(r, wrong_c, aligned, r.workspace_size(6), &d, nullptr) == Status::invalid_argument);
  auto misaligned = b;
  misaligned.gates.data = reinterpret_cast<float*>(reinterpret_cast<char*>(out.gates.data()) + 1);
  CHECK(routing::route(r, misaligned, aligned, r.workspace_size(6), &d, nullptr) == Status::misaligned);
  auto half_view = b;
  half_view.token_gates = {};
  CHECK(routing::route(r, half_view, aligned, r.workspace_size(6), &d, nullptr) == Status::invalid_argument);
  clear_error_message();
  CHECK(routing::route(r, b, aligned, r.workspace_size(6) - 1, &d, nullptr) == Status::workspace_too_small);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("expert choice scores"));
  CHECK(routing::route(r, b, nullptr, 0, &d, nullptr) == Status::workspace_too_small);
  CHECK(routing::route(r, b, aligned, r.workspace_size(6), nullptr, nullptr) == Status::invalid_argument);
  CHECK(out.token_ids == std::vector<int>(out.token_ids.size(), -7));
  CHECK(out.token_experts == std::vector<int>(out.token_experts.size(), -7));

  // More tokens than one routing group on the device: unsupported, with the limit named.
  Problem const big{4097, 1, std::vector<float>(4097, 0.f), {}};
  routing::ExpertChoice const one{.experts = 1, .capacity_factor = 1.0};
  clear_error_message();
  CHECK(device_route(one, big, 0, 0, false).status == Status::unsupported_config);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("4096"));
  CHECK(host_reference(one, big, false).status == Status::ok);  // the host has no group limit
}
