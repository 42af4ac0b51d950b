#pragma once
// Shared by the fP-loss and z-loss tests: logits generators (random and adversarial), the two
// ways to run a loss (host reference; device path under the emulator with a schedule seed and a
// grid cap), and the comparisons: counts exactly, value/gradient/f/P within a stated tolerance,
// or bit for bit between device runs.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "moekit/balancing/fp_loss_kernels.hpp"
#include "moekit/balancing/z_loss_kernels.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/workspace.hpp"
#include "moekit/emu/launch_config.hpp"
#include "moekit/host/reference.hpp"

namespace loss_test {

using moekit::MemorySpace;
using moekit::Status;

inline constexpr float sentinel = -7.f;  // a value no loss writes to an untouched output

struct Logits {
  std::int64_t tokens = 0;
  int experts = 0;
  std::vector<float> values;  // [tokens, experts]
  float& at(std::int64_t t, int e) { return values[static_cast<std::size_t>(t * experts + e)]; }
  float at(std::int64_t t, int e) const { return values[static_cast<std::size_t>(t * experts + e)]; }
};

// The common inputs of ALGORITHMS.md §2.0.
inline Logits z_example() {
  return {3, 4, {1.0f, 0.5f, -0.5f, 0.2f, 0.3f, 1.2f, 0.1f, -0.4f, 0.9f, -0.2f, 0.6f, 0.0f}};
}
inline Logits z2_example() {
  return {3, 4, {0.2f, -0.1f, 0.7f, 0.4f, -0.3f, 0.8f, 0.5f, 0.1f, 0.6f, 0.0f, -0.6f, 0.9f}};
}
inline Logits stack(Logits const& a, Logits const& b) {
  Logits r{a.tokens + b.tokens, a.experts, a.values};
  r.values.insert(r.values.end(), b.values.begin(), b.values.end());
  return r;
}

enum class Pattern {
  random,      // N(0, 2)
  ties,        // values from {-1, 0, 1}: many exact ties
  one_expert,  // every token prefers expert 0 by a margin
  masked,      // random, with every third expert at -inf (never a whole row)
  coarse,      // multiples of 1/4
  large        // N(0, 30): saturated softmax and sigmoid
};

inline char const* name(Pattern p) {
  switch (p) {
    case Pattern::random: return "random";
    case Pattern::ties: return "ties";
    case Pattern::one_expert: return "one_expert";
    case Pattern::masked: return "masked";
    case Pattern::coarse: return "coarse";
    case Pattern::large: return "large";
  }
  return "?";
}

inline Logits make_logits(std::int64_t tokens, int experts, Pattern pattern, std::uint32_t seed) {
  Logits l{tokens, experts, std::vector<float>(static_cast<std::size_t>(tokens * experts))};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 2.f);
  std::normal_distribution<float> wide(0.f, 30.f);
  std::uniform_int_distribution<int> three(-1, 1);
  std::uniform_int_distribution<int> quarter(-8, 8);
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (int e = 0; e < experts; ++e) {
      float v = 0.f;
      switch (pattern) {
        case Pattern::random: v = normal(rng); break;
        case Pattern::ties: v = float(three(rng)); break;
        case Pattern::one_expert: v = e == 0 ? 10.f : normal(rng); break;
        case Pattern::masked:
          v = (e % 3 == 1 && experts > 1) ? -std::numeric_limits<float>::infinity() : normal(rng);
          break;
        case Pattern::coarse: v = float(quarter(rng)) / 4.f; break;
        case Pattern::large: v = wide(rng); break;
      }
      l.at(t, e) = v;
    }
  }
  return l;
}

// A padding mask with about `padded_percent` % zeros (seeded).
inline std::vector<std::uint8_t> make_mask(std::int64_t tokens, int padded_percent, std::uint32_t seed) {
  std::vector<std::uint8_t> m(static_cast<std::size_t>(tokens), 1);
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> percent(0, 99);
  for (auto& v : m) {
    v = percent(rng) < padded_percent ? 0 : 1;
  }
  return m;
}

struct Result {
  Status status = Status::internal_error;
  float value = sentinel;
  std::vector<float> grad;
  std::vector<long long> counts;
  std::vector<float> f;
  std::vector<float> P;
};

// What a run is given beyond the logits.
struct Run {
  std::vector<std::uint8_t> const* mask = nullptr;
  std::int64_t valid_entries = -1;
  bool want_grad = true;
};

template <MemorySpace Space>
struct Buffers {
  moekit::balancing::LossInputs<Space> in;
  moekit::balancing::LossOutputs<Space> out;
};

template <MemorySpace Space>
Buffers<Space> buffers(Logits const& l, Run const& run, Result& r) {
  auto const n = static_cast<std::size_t>(l.tokens * l.experts);
  auto const e = static_cast<std::size_t>(l.experts);
  r.grad.assign(n, sentinel);
  r.counts.assign(e, -7);
  r.f.assign(e, sentinel);
  r.P.assign(e, sentinel);
  using moekit::TensorView;
  Buffers<Space> b;
  b.in.logits = TensorView<float const, 2, Space>::row_major(l.values.data(), {l.tokens, l.experts});
  b.in.valid = run.mask != nullptr ? run.mask->data() : nullptr;
  b.in.valid_entries = run.valid_entries;
  b.out.value = &r.value;
  b.out.grad = TensorView<float, 2, Space>::row_major(run.want_grad ? r.grad.data() : nullptr, {l.tokens, l.experts});
  b.out.counts = r.counts.data();
  b.out.f = r.f.data();
  b.out.P = r.P.data();
  return b;
}

template <class Policy>
Result host_loss(Policy const& p, Logits const& l, Run const& run = {}) {
  Result r;
  auto const b = buffers<MemorySpace::host>(l, run, r);
  r.status = moekit::host::reference_loss(p, b.in, b.out);
  return r;
}

// A caller-owned workspace aligned to 256 bytes, as cudaMalloc gives.
struct WorkspaceBuffer {
  std::vector<std::byte> storage;
  std::byte* base = nullptr;
  explicit WorkspaceBuffer(std::size_t bytes) : storage(bytes + 256) {
    auto const a = reinterpret_cast<std::uintptr_t>(storage.data());
    base = storage.data() + ((256 - a % 256) % 256);
  }
};

// The device path under the emulator: schedule `seed` (0: in order), racecheck, initcheck, two resident
// blocks, grids capped at `max_blocks` (0: as many as useful). `workspace_bytes` < 0: exactly
// what loss_workspace_size asks.
template <class Policy>
Result device_loss(Policy const& p, Logits const& l, std::uint64_t seed, unsigned max_blocks = 0, Run const& run = {},
                   std::int64_t workspace_bytes = -1) {
  moekit::emu::LaunchOptions o;
  o.schedule_seed = seed;
  o.racecheck = true;
  o.initcheck = true;
  o.max_resident_blocks = 2;
  moekit::emu::ScopedLaunchOptions const guard(o);
  Result r;
  auto const b = buffers<MemorySpace::device>(l, run, r);
  std::size_t const need = moekit::balancing::loss_workspace_size(p, l.tokens, l.experts);
  std::size_t const bytes = workspace_bytes < 0 ? need : static_cast<std::size_t>(workspace_bytes);
  WorkspaceBuffer buffer(bytes);
  moekit::Workspace ws(buffer.base, bytes);
  r.status = moekit::balancing::loss(p, b.in, b.out, ws, nullptr, max_blocks);
  return r;
}

// |got - expected| <= atol + rtol |expected|; NaN only where expected has NaN.
inline void require_close(float got, double expected, double rtol, double atol, std::string const& what) {
  INFO(what << ": got " << got << ", expected " << expected);
  if (std::isnan(expected)) {
    REQUIRE(std::isnan(got));
    return;
  }
  REQUIRE(std::fabs(double(got) - expected) <= atol + rtol * std::fabs(expected));
}

inline void require_close(std::vector<float> const& got, std::vector<double> const& expected, double rtol, double atol,
                          char const* what) {
  REQUIRE(got.size() == expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    require_close(got[i], expected[i], rtol, atol, std::string(what) + "[" + std::to_string(i) + "]");
  }
}

inline std::vector<double> widen(std::vector<float> const& v) { return {v.begin(), v.end()}; }

// Device against the reference: status, counts exactly; value, gradient, f, P within tolerance.
inline void require_same_loss(Result const& expected, Result const& got, double rtol, double atol) {
  REQUIRE(got.status == expected.status);
  REQUIRE(got.counts == expected.counts);
  require_close(got.value, expected.value, rtol, atol, "value");
  require_close(got.grad, widen(expected.grad), rtol, atol, "gradient");
  require_close(got.f, widen(expected.f), rtol, atol, "f");
  require_close(got.P, widen(expected.P), rtol, atol, "P");
}

inline bool same_bits(float a, float b) {
  std::uint32_t x, y;
  std::memcpy(&x, &a, 4);
  std::memcpy(&y, &b, 4);
  return x == y;
}

// Bit-identical results (determinism across schedules and grid sizes).
inline void require_identical(Result const& a, Result const& b) {
  REQUIRE(a.status == b.status);
  REQUIRE(a.counts == b.counts);
  REQUIRE(same_bits(a.value, b.value));
  REQUIRE(a.grad.size() == b.grad.size());
  for (std::size_t i = 0; i < a.grad.size(); ++i) {
    INFO("gradient entry " << i);
    REQUIRE(same_bits(a.grad[i], b.grad[i]));
  }
  for (std::size_t i = 0; i < a.f.size(); ++i) {
    REQUIRE(same_bits(a.f[i], b.f[i]));
    REQUIRE(same_bits(a.P[i], b.P[i]));
  }
}

// Nothing written: every output still holds the sentinel.
inline void require_untouched(Result const& r) {
  REQUIRE(same_bits(r.value, sentinel));
  for (float v : r.grad) {
    REQUIRE(same_bits(v, sentinel));
  }
  for (long long c : r.counts) {
    REQUIRE(c == -7);
  }
  for (std::size_t i = 0; i < r.f.size(); ++i) {
    REQUIRE(same_bits(r.f[i], sentinel));
    REQUIRE(same_bits(r.P[i], sentinel));
  }
}

}  // namespace loss_test
