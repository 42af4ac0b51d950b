#pragma once
// Shared by the DynMoLE and LoRA-Mixer loss tests: logits generators (random and adversarial),
// the two ways to run a loss (host reference in fp64; the device path under the emulator with
// a schedule seed and a grid cap), and bitwise / toleranced comparisons.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

#include "moekit/balancing/adaptive_loss_launch.hpp"
#include "moekit/balancing/loss_buffers.hpp"
#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/emu/launch_config.hpp"
#include "moekit/host/adaptive_loss_reference.hpp"

namespace adaptive_test {

using moekit::Diagnostics;
using moekit::MemorySpace;
using moekit::Status;

inline constexpr double u32 = 5.9604644775390625e-8;  // 2^-24, the fp32 unit roundoff
inline constexpr float inf = std::numeric_limits<float>::infinity();
inline constexpr float nan = std::numeric_limits<float>::quiet_NaN();

struct Logits {
  std::int64_t tokens = 0;
  int experts = 0;
  std::vector<float> values;        // [tokens, experts]
  std::vector<std::uint8_t> valid;  // [tokens]; empty = all valid
  float& at(std::int64_t t, int e) { return values[static_cast<std::size_t>(t * experts + e)]; }
  float at(std::int64_t t, int e) const { return values[static_cast<std::size_t>(t * experts + e)]; }
  std::uint8_t const* valid_ptr() const { return valid.empty() ? nullptr : valid.data(); }
  bool is_valid(std::int64_t t) const { return valid.empty() || valid[static_cast<std::size_t>(t)] != 0; }
};

enum class Pattern {
  random,      // N(0, 2)
  ties,        // values from {-1, 0, 1}: many exact ties
  one_expert,  // every token prefers expert 0 by 10
  masked,      // random, every third expert at -inf (never a whole row; none when E < 3)
  sharp        // N(0, 6): near one-hot rows, tiny probabilities
};

inline char const* name(Pattern p) {
  switch (p) {
    case Pattern::random: return "random";
    case Pattern::ties: return "ties";
    case Pattern::one_expert: return "one_expert";
    case Pattern::masked: return "masked";
    case Pattern::sharp: return "sharp";
  }
  return "?";
}

inline void fill_row(Logits& l, std::int64_t t, Pattern pattern, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.f, 2.f);
  std::normal_distribution<float> wide(0.f, 6.f);
  std::uniform_int_distribution<int> three(-1, 1);
  for (int e = 0; e < l.experts; ++e) {
    float v = 0.f;
    switch (pattern) {
      case Pattern::random: v = normal(rng); break;
      case Pattern::ties: v = float(three(rng)); break;
      case Pattern::one_expert: v = e == 0 ? 10.f : normal(rng); break;
      case Pattern::masked: v = (e % 3 == 1 && l.experts >= 3) ? -inf : normal(rng); break;
      case Pattern::sharp: v = wide(rng); break;
    }
    l.at(t, e) = v;
  }
}

// `padding`: every fifth token invalid (0 = no mask).
inline Logits make_logits(std::int64_t tokens, int experts, Pattern pattern, std::uint32_t seed, bool padding = false) {
  Logits l{tokens, experts, std::vector<float>(static_cast<std::size_t>(tokens * experts)), {}};
  std::mt19937 rng(seed);
  for (std::int64_t t = 0; t < tokens; ++t) {
    fill_row(l, t, pattern, rng);
  }
  if (padding) {
    l.valid.resize(static_cast<std::size_t>(tokens));
    for (std::int64_t t = 0; t < tokens; ++t) {
      l.valid[static_cast<std::size_t>(t)] = (t % 5 == 3) ? 0 : 1;
    }
  }
  return l;
}

struct LossRun {
  Status status = Status::internal_error;
  float value = -7.f;
  std::vector<float> grad;
  std::vector<long long> counts;
  std::vector<float> f, P;
  Diagnostics diagnostics{};
};

// Outputs start at -7 (a value no loss writes) so that "untouched" can be checked.
template <MemorySpace Space>
std::pair<moekit::balancing::LossInputs<Space>, moekit::balancing::LossOutputs<Space>> buffers(Logits const& l,
                                                                                               LossRun& r) {
  auto const e = static_cast<std::size_t>(l.experts);
  r.grad.assign(static_cast<std::size_t>(l.tokens) * e, -7.f);
  r.counts.assign(e, -7);
  r.f.assign(e, -7.f);
  r.P.assign(e, -7.f);
  using moekit::TensorView;
  moekit::balancing::LossInputs<Space> in{
      TensorView<float const, 2, Space>::row_major(l.values.data(), {l.tokens, l.experts}), l.valid_ptr()};
  moekit::balancing::LossOutputs<Space> out{
      &r.value, TensorView<float, 2, Space>::row_major(r.grad.data(), {l.tokens, l.experts}), r.counts.data(),
      r.f.data(), r.P.data()};
  return {in, out};
}

template <class L>
LossRun host_reference(L const& loss, Logits const& l) {
  LossRun r;
  auto [in, out] = buffers<MemorySpace::host>(l, r);
  r.status = moekit::host::reference_loss(loss, in, out);
  return r;
}

// The device path under the emulator: shuffled schedule, racecheck, two resident blocks, grids
// capped at `max_blocks` (0: no cap).
template <class L>
LossRun device_loss(L const& loss, Logits const& l, std::uint64_t seed, unsigned max_blocks = 0,
                    std::size_t workspace_bytes = std::size_t(-1)) {
  moekit::emu::LaunchOptions o;
  o.schedule_seed = seed;
  o.racecheck = true;
  o.max_resident_blocks = 2;
  moekit::emu::ScopedLaunchOptions const guard(o);
  LossRun r;
  auto [in, out] = buffers<MemorySpace::device>(l, r);
  std::size_t const need = moekit::balancing::loss_workspace_size(loss, l.tokens, l.experts);
  std::size_t const bytes = workspace_bytes == std::size_t(-1) ? need : workspace_bytes;
  std::vector<unsigned char> workspace(bytes + 256);
  void* base = workspace.data() + (256 - reinterpret_cast<std::uintptr_t>(workspace.data()) % 256) % 256;
  moekit::Workspace w(base, bytes);
  r.status = moekit::balancing::loss(loss, in, out, w, nullptr, max_blocks, &r.diagnostics);
  return r;
}

inline std::uint32_t bits(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}

inline void require_identical(LossRun const& a, LossRun const& b) {
  REQUIRE(a.status == b.status);
  REQUIRE(bits(a.value) == bits(b.value));
  REQUIRE(a.counts == b.counts);
  REQUIRE(a.grad.size() == b.grad.size());
  for (std::size_t i = 0; i < a.grad.size(); ++i) {
    INFO("gradient entry " << i);
    REQUIRE(bits(a.grad[i]) == bits(b.grad[i]));
  }
  for (std::size_t i = 0; i < a.f.size(); ++i) {
    REQUIRE(bits(a.f[i]) == bits(b.f[i]));
    REQUIRE(bits(a.P[i]) == bits(b.P[i]));
  }
}

// |got - want| <= tol (scalars), with context on failure.
inline void require_close(double got, double want, double tol, char const* what) {
  INFO(what << ": got " << got << ", want " << want << ", tolerance " << tol);
  REQUIRE(std::fabs(got - want) <= tol);
}

// ---- The test's own fp64 copy of each loss (for finite differences and for tolerances) ----
//
// Besides the value and gradient it returns, for each output, the magnitude of the terms that
// were added up to form it ("scale"): an fp32 computation of a sum of terms with relative errors
// <= k u has an absolute error <= k u * scale, however much the terms cancel. That is what the
// tolerances below are made of.

struct Expected {
  double value = 0.0;
  double value_scale = 0.0;
  std::vector<double> grad, grad_scale;  // [T, E]
  std::vector<double> f, P;              // [E]
  std::vector<long long> counts;         // [E]
  double spread = 0.0;                   // max over valid rows of max z - min finite z
};

inline std::vector<double> softmax_row(std::vector<double> const& z) {
  double m = -INFINITY;
  for (double v : z) {
    m = std::max(m, v);
  }
  double s = 0.0;
  for (double v : z) {
    s += std::exp(v - m);
  }
  std::vector<double> p(z.size());
  for (std::size_t i = 0; i < z.size(); ++i) {
    p[i] = std::exp(z[i] - m) / s;
  }
  return p;
}

inline std::vector<int> rank_row(std::vector<double> const& z) {
  std::vector<int> order(z.size());
  for (std::size_t i = 0; i < z.size(); ++i) {
    order[i] = static_cast<int>(i);
  }
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return z[a] > z[b]; });
  return order;
}

inline double row_spread(std::vector<double> const& z) {
  double hi = -INFINITY, lo = INFINITY;
  for (double v : z) {
    if (v != -INFINITY) {
      hi = std::max(hi, v);
      lo = std::min(lo, v);
    }
  }
  return hi - lo;
}

// DynMoLE entropy of one row and the cumulative sums the keep rule compares (double).
struct DynMoLERow {
  std::vector<double> p;
  double entropy = 0.0;
  std::vector<char> mask;
  double min_threshold_gap = INFINITY;  // distance of Ĥ and of every C_r that matters from its threshold
};

inline DynMoLERow dynmole_row(std::vector<double> const& z, moekit::balancing::DynMoLERouting const& r) {
  DynMoLERow row;
  auto const n = static_cast<int>(z.size());
  row.p = softmax_row(z);
  double const q = r.entropy_index, eps = r.entropy_eps;
  double const norm = q == 1.0 ? std::log(double(n)) : 1.0 - std::pow(double(n), 1.0 - q);
  double h = 0.0;
  for (double p : row.p) {
    h += q == 1.0 ? -(p + eps) * std::log(p + eps) : std::pow(p + eps, q);
  }
  row.entropy = q == 1.0 ? h / norm : (1.0 - h) / norm;
  row.mask.assign(static_cast<std::size_t>(n), 0);
  if (r.entropy_threshold < 1.f) {
    row.min_threshold_gap = std::fabs(row.entropy - double(r.entropy_threshold));
  }
  if (r.entropy_threshold < 1.f && row.entropy > double(r.entropy_threshold)) {
    std::fill(row.mask.begin(), row.mask.end(), 1);
  } else {
    std::vector<int> const order = rank_row(z);
    double c = 0.0;
    for (int k = 0; k < n; ++k) {
      c += row.p[order[k]];
      if (k >= r.keep_top_k) {
        row.min_threshold_gap = std::min(row.min_threshold_gap, std::fabs(c - double(r.top_p)));
        if (c > double(r.top_p)) {
          break;
        }
      }
      row.mask[order[k]] = 1;
    }
  }
  for (int e = 0; e < n; ++e) {
    if (z[e] == -INFINITY) {
      row.mask[e] = 0;
    }
  }
  return row;
}

inline std::vector<double> row_of(Logits const& l, std::int64_t t) {
  std::vector<double> z(static_cast<std::size_t>(l.experts));
  for (int e = 0; e < l.experts; ++e) {
    z[e] = l.at(t, e);
  }
  return z;
}

// DynMoLE in fp64 over z (double logits [T, E], the mask of valid rows as in `l`).
inline Expected dynmole_expected(moekit::balancing::DynMoLELoss const& loss, Logits const& l,
                                 std::vector<double> const& zd) {
  Expected x;
  int const n = l.experts;
  auto const ne = static_cast<std::size_t>(n);
  x.grad.assign(static_cast<std::size_t>(l.tokens) * ne, 0.0);
  x.grad_scale.assign(x.grad.size(), 0.0);
  x.f.assign(ne, 0.0);
  x.P.assign(ne, 0.0);
  x.counts.assign(ne, 0);
  double const q = loss.router.entropy_index, eps = loss.router.entropy_eps;
  double const norm = q == 1.0 ? std::log(double(n)) : 1.0 - std::pow(double(n), 1.0 - q);
  std::vector<DynMoLERow> rows(static_cast<std::size_t>(l.tokens));
  long long valid = 0;
  double entropy_sum = 0.0, entropy_scale = 0.0;
  for (std::int64_t t = 0; t < l.tokens; ++t) {
    if (!l.is_valid(t)) {
      continue;
    }
    ++valid;
    std::vector<double> z(zd.begin() + t * n, zd.begin() + (t + 1) * n);
    x.spread = std::max(x.spread, row_spread(z));
    rows[t] = dynmole_row(z, loss.router);
    entropy_sum += rows[t].entropy;
    double terms = 1.0;
    for (double p : rows[t].p) {
      terms += q == 1.0 ? std::fabs((p + eps) * std::log(p + eps)) : std::pow(p + eps, q);
    }
    entropy_scale += terms / std::fabs(norm);
    for (int e = 0; e < n; ++e) {
      x.counts[e] += rows[t].mask[e];
      x.f[e] += rows[t].p[e] * rows[t].mask[e];
      x.P[e] += rows[t].p[e];
    }
  }
  if (valid == 0) {
    std::fill(x.f.begin(), x.f.end(), 0.0);
    return x;
  }
  double const nd = double(valid);
  double balance = 0.0;
  for (int e = 0; e < n; ++e) {
    x.f[e] /= nd;
    x.P[e] /= nd;
    balance += x.f[e] * x.P[e];
  }
  double const lam_dyn = loss.router_dyn_loss_coef, lam_aux = loss.router_aux_loss_coef;
  x.value = lam_dyn * entropy_sum / nd + lam_aux * n * balance;
  x.value_scale = std::fabs(lam_dyn) * entropy_scale / nd + std::fabs(lam_aux) * n * balance;
  for (std::int64_t t = 0; t < l.tokens; ++t) {
    if (!l.is_valid(t)) {
      continue;
    }
    auto const& row = rows[t];
    std::vector<double> g(ne), ga(ne);
    double mean = 0.0, mean_abs = 0.0;
    for (int e = 0; e < n; ++e) {
      double const p = row.p[e];
      double const dent =
          q == 1.0 ? -(std::log(p + eps) + 1.0) / (nd * norm) : -q * std::pow(p + eps, q - 1.0) / (nd * norm);
      double const dbal = double(n) / nd * (row.mask[e] * x.P[e] + x.f[e]);
      g[e] = lam_dyn * dent + lam_aux * dbal;
      ga[e] = std::fabs(lam_dyn * dent) + std::fabs(lam_aux * dbal);
      mean += p * g[e];
      mean_abs += p * ga[e];
    }
    for (int e = 0; e < n; ++e) {
      std::size_t const i = static_cast<std::size_t>(t) * ne + e;
      x.grad[i] = row.p[e] * (g[e] - mean);
      x.grad_scale[i] = row.p[e] * (ga[e] + mean_abs);
    }
  }
  return x;
}

// LoRA-Mixer RSL in fp64.
inline Expected lora_mixer_expected(moekit::balancing::LoraMixerLoss const& loss, Logits const& l,
                                    std::vector<double> const& zd) {
  Expected x;
  int const n = l.experts;
  auto const ne = static_cast<std::size_t>(n);
  x.grad.assign(static_cast<std::size_t>(l.tokens) * ne, 0.0);
  x.grad_scale.assign(x.grad.size(), 0.0);
  x.f.assign(ne, 0.0);
  x.P.assign(ne, 0.0);
  x.counts.assign(ne, 0);
  long long valid = 0;
  double entropy_sum = 0.0, entropy_scale = 0.0;
  std::vector<std::vector<double>> probs(static_cast<std::size_t>(l.tokens)), logs(probs.size());
  std::vector<double> entropy(probs.size(), 0.0);
  for (std::int64_t t = 0; t < l.tokens; ++t) {
    if (!l.is_valid(t)) {
      continue;
    }
    ++valid;
    std::vector<double> z(zd.begin() + t * n, zd.begin() + (t + 1) * n);
    x.spread = std::max(x.spread, row_spread(z));
    probs[t] = softmax_row(z);
    double m = -INFINITY, s = 0.0;
    for (double v : z) {
      m = std::max(m, v);
    }
    for (double v : z) {
      s += std::exp(v - m);
    }
    logs[t].resize(ne);
    double h = 0.0, hs = 1.0;
    for (int e = 0; e < n; ++e) {
      logs[t][e] = z[e] - m - std::log(s);
      if (probs[t][e] > 0.0) {
        h -= probs[t][e] * logs[t][e];
        hs += probs[t][e] * (std::fabs(logs[t][e]) + std::fabs(z[e] - m) + 1.0);
      }
      x.P[e] += probs[t][e];
    }
    entropy[t] = h;
    entropy_sum += h;
    entropy_scale += hs;
    std::vector<int> const order = rank_row(z);
    for (int k = 0; k < loss.top_k; ++k) {
      if (z[order[k]] != -INFINITY) {
        ++x.counts[order[k]];
      }
    }
  }
  if (valid == 0) {
    return x;
  }
  double const nd = double(valid);
  double balance = 0.0;
  for (int e = 0; e < n; ++e) {
    x.f[e] = double(x.counts[e]) / (nd * loss.top_k);
    x.P[e] /= nd;
    balance += x.f[e] * x.P[e];
  }
  double const alpha = loss.alpha, lambda = loss.lambda;
  x.value = alpha * balance - lambda * entropy_sum / nd;
  x.value_scale = std::fabs(alpha) * balance + std::fabs(lambda) * entropy_scale / nd;
  for (std::int64_t t = 0; t < l.tokens; ++t) {
    if (!l.is_valid(t)) {
      continue;
    }
    std::vector<double> g(ne, 0.0), ga(ne, 0.0);
    double mean = 0.0, mean_abs = 0.0;
    for (int e = 0; e < n; ++e) {
      double const p = probs[t][e];
      if (p == 0.0) {
        continue;
      }
      g[e] = alpha / nd * x.f[e] + lambda / nd * (logs[t][e] + 1.0);
      ga[e] = std::fabs(alpha / nd * x.f[e]) + std::fabs(lambda / nd) * (std::fabs(logs[t][e]) + x.spread + 2.0);
      mean += p * g[e];
      mean_abs += p * ga[e];
    }
    for (int e = 0; e < n; ++e) {
      std::size_t const i = static_cast<std::size_t>(t) * ne + e;
      double const p = probs[t][e];
      x.grad[i] = p == 0.0 ? 0.0 : p * (g[e] - mean);
      x.grad_scale[i] = p * (ga[e] + mean_abs);
    }
  }
  return x;
}

inline std::vector<double> as_double(Logits const& l) { return {l.values.begin(), l.values.end()}; }

// A run (host reference or device) against the fp64 formulas. Error budget, in units of u = 2^-24
// (the fp32 steps of the per-token pass, each a few ulps): the logit difference z - max feeds
// exp with an absolute error of |z - max| u (spread), the sequential sums over E experts add E u
// each (two of them: the softmax denominator and the back-projection mean), exp / log / pow and
// the divisions add at most 40 u together. Hence k = 2E + spread + 40, applied to the scale of
// the terms summed (see Expected). Counts: exact.
inline void require_matches(LossRun const& run, Expected const& x, int experts) {
  REQUIRE(run.status == Status::ok);
  double const k = (2.0 * experts + x.spread + 40.0) * u32;
  require_close(run.value, x.value, k * x.value_scale + u32 * std::fabs(x.value), "value");
  REQUIRE(run.counts == x.counts);
  for (int e = 0; e < experts; ++e) {
    INFO("expert " << e);
    require_close(run.f[e], x.f[e], k * std::fabs(x.f[e]) + 1e-300, "f");
    require_close(run.P[e], x.P[e], k * std::fabs(x.P[e]) + 1e-300, "P");
  }
  for (std::size_t i = 0; i < x.grad.size(); ++i) {
    INFO("gradient entry " << i << " (token " << i / experts << ", expert " << i % experts << ")");
    require_close(run.grad[i], x.grad[i], k * x.grad_scale[i] + u32 * std::fabs(x.grad[i]), "gradient");
  }
}

}  // namespace adaptive_test
