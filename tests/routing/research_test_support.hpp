#pragma once
// Helpers for the research router tests (null experts, DynMoLE, top-any, ProMoE, similarity), on
// top of route_test_support.hpp: the three-way comparison with determinism checks, worked
// examples on every path, rejected parameters, and the non-finite policy.

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "route_test_support.hpp"
#include <catch2/catch.hpp>

#include "moekit/core/error_message.hpp"
#include "moekit/routing/cosine_scores.hpp"

namespace research_test {

using moekit::Status;
using route_test::Logits;
using route_test::Pattern;
using route_test::Routed;

inline constexpr double unit_roundoff = 0x1p-24;  // u: fp32 rounding error bound, relative
inline constexpr float nan_value = std::numeric_limits<float>::quiet_NaN();
inline constexpr float inf_value = std::numeric_limits<float>::infinity();

// Host reference, CPU path and the emulated kernel agree (ids exactly, weights within
// atol + rtol |w|); other schedules and grid sizes give the kernel's bits again; no
// non-finite row is counted. Returns the reference's result.
template <class R>
Routed compare_all_paths(R const& r, Logits const& l, double rtol, double atol) {
  auto const reference = route_test::host_reference(r, l);
  REQUIRE(reference.status == Status::ok);
  route_test::require_same_routing(reference, route_test::cpu_route(r, l), rtol, atol);
  auto const device = route_test::device_route(r, l, 0);
  route_test::require_same_routing(reference, device, rtol, atol);
  CHECK(device.diagnostics.nonfinite_rows == 0);
  route_test::require_identical(device, route_test::device_route(r, l, 21, 1));
  route_test::require_identical(device, route_test::device_route(r, l, 22, 2));
  route_test::require_identical(device, route_test::cpu_route(r, l));  // one route_token, same bits
  return reference;
}

// A worked example: every path reproduces the given ids and weights.
template <class R>
void check_example(R const& r, Logits const& l, std::vector<int> const& ids, std::vector<float> const& weights,
                   double rtol, double atol) {
  Routed expected;
  expected.status = Status::ok;
  expected.ids = ids;
  expected.weights = weights;
  route_test::require_same_routing(expected, route_test::host_reference(r, l), rtol, atol);
  route_test::require_same_routing(expected, route_test::cpu_route(r, l), rtol, atol);
  route_test::require_same_routing(expected, route_test::device_route(r, l, 0), rtol, atol);
  route_test::require_same_routing(expected, route_test::device_route(r, l, 7, 1), rtol, atol);
}

// Bad parameters: every entry point returns `code` with a message containing `fragment`, and
// no output is written.
template <class R>
void expect_rejected(R const& r, Logits const& l, Status code, char const* fragment) {
  moekit::clear_error_message();
  auto const cpu = route_test::cpu_route(r, l);
  CHECK(cpu.status == code);
  CHECK_THAT(std::string(moekit::last_error_message()), Catch::Contains(fragment));
  for (int id : cpu.ids) {
    CHECK(id == -7);
  }
  moekit::clear_error_message();
  auto const reference = route_test::host_reference(r, l);
  CHECK(reference.status == code);
  CHECK_THAT(std::string(moekit::last_error_message()), Catch::Contains(fragment));
  for (int id : reference.ids) {
    CHECK(id == -7);
  }
  auto const device = route_test::device_route(r, l, 0);
  CHECK(device.status == code);
  for (int id : device.ids) {
    CHECK(id == -7);
  }
}

// Checked only where T is known (host reference, validate_inputs): same contract.
template <class R>
void expect_rejected_by_reference(R const& r, Logits const& l, Status code, char const* fragment) {
  moekit::clear_error_message();
  auto const reference = route_test::host_reference(r, l);
  CHECK(reference.status == code);
  CHECK_THAT(std::string(moekit::last_error_message()), Catch::Contains(fragment));
  for (int id : reference.ids) {
    CHECK(id == -7);
  }
  for (float w : reference.weights) {
    CHECK(w == -7.f);
  }
}

// §0 non-finite policy for a router over [3, E] logits with the bad value at token 1, expert
// `bad_expert`: the checked paths refuse, naming token and expert; the kernel counts one row and
// keeps every id in [0, E], and the two good tokens route as in the clean batch.
template <class R>
void check_nonfinite_policy(R const& r, Logits l, int bad_expert) {
  struct Case {
    float value;
    bool whole_row;
    char const* fragment;
  };
  std::string const at = "at token 1, expert " + std::to_string(bad_expert);
  for (Case const c : {Case{nan_value, false, "nan"}, Case{inf_value, false, "inf"},
                       Case{-inf_value, true, "all experts masked (-inf) at token 1"}}) {
    Logits bad = l;
    for (int e = 0; e < l.experts; ++e) {
      if (c.whole_row || e == bad_expert) {
        bad.at(1, e) = c.value;
      }
    }
    moekit::clear_error_message();
    auto const cpu = route_test::cpu_route(r, bad);
    CHECK(cpu.status == Status::invalid_argument);
    std::string const message = moekit::last_error_message();
    CHECK_THAT(message, Catch::Contains(c.fragment));
    if (!c.whole_row) {
      CHECK_THAT(message, Catch::Contains(at));
    }
    CHECK(cpu.ids == std::vector<int>(cpu.ids.size(), -7));
    CHECK(route_test::host_reference(r, bad).status == Status::invalid_argument);

    auto const device = route_test::device_route(r, bad, 3);
    REQUIRE(device.status == Status::ok);
    CHECK(device.diagnostics.nonfinite_rows == 1);
    for (int id : device.ids) {
      CHECK((id >= 0 && id <= r.num_experts()));
    }
    // The other tokens route as in the clean batch (same side inputs, same token indices).
    int const k = r.slots();
    auto const clean = route_test::cpu_route(r, l);
    REQUIRE(clean.status == Status::ok);
    for (std::int64_t t : {0, 2}) {
      for (int j = 0; j < k; ++j) {
        CHECK(device.ids[t * k + j] == clean.ids[t * k + j]);
        CHECK(device.weights[t * k + j] == clean.weights[t * k + j]);
      }
    }
  }
}

// Logits with `extra` columns of `value` appended to every row (ProMoE's unconditional columns).
inline Logits append_columns(Logits const& l, int extra, float value) {
  Logits out{l.tokens, l.experts + extra, {}};
  for (std::int64_t t = 0; t < l.tokens; ++t) {
    for (int e = 0; e < l.experts; ++e) {
      out.values.push_back(l.values[static_cast<std::size_t>(t * l.experts + e)]);
    }
    for (int e = 0; e < extra; ++e) {
      out.values.push_back(value);
    }
  }
  return out;
}

// Similarity scores [rows, columns] of x [rows, hidden] against p [count, hidden] (columns >=
// count), by the host loop, the emulated kernel (schedule seed, grid cap) or the fp64 reference.
enum class ScorePath { host, device, reference };

template <class In>
std::pair<Status, std::vector<float>>
similarity_scores(ScorePath path, moekit::routing::Similarity similarity, float scale, std::vector<In> const& x,
                  std::vector<In> const& p, std::int64_t rows, std::int64_t count, std::int64_t hidden,
                  std::int64_t columns, std::uint64_t seed = 0, unsigned max_blocks = 0) {
  using moekit::MemorySpace;
  using moekit::TensorView;
  std::vector<float> z(static_cast<std::size_t>(rows * columns), -7.f);
  Status s = Status::internal_error;
  if (path == ScorePath::device) {
    moekit::emu::LaunchOptions o;
    o.schedule_seed = seed;
    o.racecheck = true;
    o.max_resident_blocks = 2;
    moekit::emu::ScopedLaunchOptions const guard(o);
    using V = TensorView<In const, 2, MemorySpace::device>;
    s = moekit::routing::cosine_scores(
        similarity, scale, V::row_major(x.data(), {rows, hidden}), V::row_major(p.data(), {count, hidden}),
        TensorView<float, 2, MemorySpace::device>::row_major(z.data(), {rows, columns}), nullptr, max_blocks);
  } else {
    using V = TensorView<In const, 2, MemorySpace::host>;
    auto const xv = V::row_major(x.data(), {rows, hidden});
    auto const pv = V::row_major(p.data(), {count, hidden});
    auto const zv = TensorView<float, 2, MemorySpace::host>::row_major(z.data(), {rows, columns});
    s = path == ScorePath::host ? moekit::routing::cosine_scores(similarity, scale, xv, pv, zv)
                                : moekit::host::reference_cosine_scores(similarity, scale, xv, pv, zv);
  }
  return {s, z};
}

}  // namespace research_test
