#pragma once
// Shared by the per-token router tests: logits generators (random and adversarial), the three
// ways to run a router (host reference, CPU path, emulated device kernel under a schedule
// seed), and the comparison: ids exactly, weights within a stated tolerance.
//
// Every per-token router's oracle is an overload of moekit::host::reference_route(router, buffers).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/cpu/route.hpp"
#include "moekit/emu/launch_config.hpp"
#include "moekit/host/research_router_reference.hpp"
#include "moekit/host/top_k_reference.hpp"
#include "moekit/routing/route.hpp"

namespace route_test {

using moekit::Diagnostics;
using moekit::MemorySpace;
using moekit::Status;

struct Logits {
  std::int64_t tokens = 0;
  int experts = 0;
  std::vector<float> values;  // [tokens, experts]
  float& at(std::int64_t t, int e) { return values[static_cast<std::size_t>(t * experts + e)]; }
};

enum class Pattern {
  random,      // N(0, 2)
  ties,        // values from {-1, 0, 1}: many exact ties
  one_expert,  // every token prefers expert 0 by a margin
  masked,      // random, with about a third of the experts at -inf (never a whole row)
  coarse       // random multiples of 1/4: ties between groups and within them
};

inline char const* name(Pattern p) {
  switch (p) {
    case Pattern::random: return "random";
    case Pattern::ties: return "ties";
    case Pattern::one_expert: return "one_expert";
    case Pattern::masked: return "masked";
    case Pattern::coarse: return "coarse";
  }
  return "?";
}

inline Logits make_logits(std::int64_t tokens, int experts, Pattern pattern, std::uint32_t seed) {
  Logits l{tokens, experts, std::vector<float>(static_cast<std::size_t>(tokens * experts))};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 2.f);
  std::uniform_int_distribution<int> three(-1, 1);
  std::uniform_int_distribution<int> quarter(-8, 8);
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (int e = 0; e < experts; ++e) {
      float v = 0.f;
      switch (pattern) {
        case Pattern::random: v = normal(rng); break;
        case Pattern::ties: v = float(three(rng)); break;
        case Pattern::one_expert: v = e == 0 ? 10.f : normal(rng); break;
        case Pattern::masked: v = (e % 3 == 1) ? -std::numeric_limits<float>::infinity() : normal(rng); break;
        case Pattern::coarse: v = float(quarter(rng)) / 4.f; break;
      }
      l.at(t, e) = v;
    }
  }
  return l;
}

struct Routed {
  Status status = Status::internal_error;
  std::vector<int> ids;
  std::vector<float> weights;
  Diagnostics diagnostics{};
};

template <MemorySpace Space, class R>
moekit::routing::RouteBuffers<Space> buffers(R const& r, Logits const& l, Routed& out) {
  auto const k = static_cast<std::size_t>(r.slots());
  out.ids.assign(static_cast<std::size_t>(l.tokens) * k, -7);  // a value no router writes
  out.weights.assign(static_cast<std::size_t>(l.tokens) * k, -7.f);
  using moekit::TensorView;
  return {TensorView<float const, 2, Space>::row_major(l.values.data(), {l.tokens, l.experts}),
          TensorView<int, 2, Space>::row_major(out.ids.data(), {l.tokens, r.slots()}),
          TensorView<float, 2, Space>::row_major(out.weights.data(), {l.tokens, r.slots()})};
}

template <class R>
Routed host_reference(R const& r, Logits const& l) {
  Routed out;
  out.status = moekit::host::reference_route(r, buffers<MemorySpace::host>(r, l, out));
  return out;
}

template <class R>
Routed cpu_route(R const& r, Logits const& l) {
  Routed out;
  out.status = moekit::cpu::route(r, buffers<MemorySpace::host>(r, l, out));
  return out;
}

// The device kernel under the emulator: shuffled schedule, racecheck, two resident blocks, and
// a grid capped at `max_blocks` (0: one thread per token).
template <class R>
Routed device_route(R const& r, Logits const& l, std::uint64_t seed, unsigned max_blocks = 0) {
  moekit::emu::LaunchOptions o;
  o.schedule_seed = seed;
  o.racecheck = true;
  o.max_resident_blocks = 2;
  moekit::emu::ScopedLaunchOptions const guard(o);
  Routed out;
  out.status =
      moekit::routing::route(r, buffers<MemorySpace::device>(r, l, out), &out.diagnostics, nullptr, max_blocks);
  return out;
}

// ids exactly; weights within |a - b| <= atol + rtol |b| (NaN only where the reference has NaN).
inline void require_same_routing(Routed const& expected, Routed const& got, double rtol, double atol) {
  REQUIRE(got.status == expected.status);
  REQUIRE(got.ids == expected.ids);
  REQUIRE(got.weights.size() == expected.weights.size());
  for (std::size_t i = 0; i < got.weights.size(); ++i) {
    double const a = got.weights[i], b = expected.weights[i];
    if (std::isnan(b)) {
      REQUIRE(std::isnan(a));
      continue;
    }
    INFO("slot " << i << ": got " << a << ", expected " << b);
    REQUIRE(std::fabs(a - b) <= atol + rtol * std::fabs(b));
  }
}

// Bitwise equality of two runs (determinism across seeds and grid sizes).
inline void require_identical(Routed const& a, Routed const& b) {
  REQUIRE(a.status == b.status);
  REQUIRE(a.ids == b.ids);
  REQUIRE(a.weights.size() == b.weights.size());
  for (std::size_t i = 0; i < a.weights.size(); ++i) {
    std::uint32_t x, y;
    std::memcpy(&x, &a.weights[i], 4);
    std::memcpy(&y, &b.weights[i], 4);
    REQUIRE(x == y);
  }
}

}  // namespace route_test
