#pragma once
// The oracle for the adaptive balancers (ALGORITHMS.md §2.8, §3.2, §3.4, §4.1), written from
// the formulas independently of the device code: plain loops, std::stable_sort for rankings,
// every probability, entropy, mean and gradient in double (rounded to fp32 on output).
//
//   reference_loss(DynMoLELoss, LossInputs, LossOutputs)          DynMoLE L_router
//   reference_loss(LoraMixerLoss, LossInputs, LossOutputs)        LoRA-Mixer L_RSL
//   reference_contrastive_loss(RoutingContrastiveLoss, in, out)   ProMoE RCL
//   reference_bias_update(ExpertBias<host>)                       aux-loss-free bias step
//
// Checked mode: bad parameters, bad buffers and non-finite inputs return a Status with a
// message before anything is written. Threshold decisions (DynMoLE's C_r <= top_p and
// Ĥ > τ) are taken in double here and in fp32 on the device: inputs within ~1e-6 of a
// threshold may legitimately differ (§3.2).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "moekit/balancing/contrastive_loss.hpp"
#include "moekit/balancing/detail/token_loss_common.hpp"
#include "moekit/balancing/dynmole_loss.hpp"
#include "moekit/balancing/expert_bias.hpp"
#include "moekit/balancing/lora_mixer_loss.hpp"
#include "moekit/balancing/loss_buffers.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace host {

namespace detail::adaptive {

// Experts by descending logit, ties to the lower index (the logits are finite or -inf here).
inline std::vector<int> rank_experts(float const* z, int experts) {
  std::vector<int> order(static_cast<std::size_t>(experts));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [z](int a, int b) { return z[a] > z[b]; });
  return order;
}

inline std::vector<double> softmax(float const* z, int experts) {
  double m = -INFINITY;
  for (int e = 0; e < experts; ++e) {
    m = std::max(m, double(z[e]));
  }
  std::vector<double> p(static_cast<std::size_t>(experts));
  double sum = 0.0;
  for (int e = 0; e < experts; ++e) {
    p[e] = std::exp(double(z[e]) - m);
    sum += p[e];
  }
  for (double& v : p) {
    v /= sum;
  }
  return p;
}

// ln p_e = (z_e - m) - ln Σ exp(z - m); -inf where z_e = -inf.
inline std::vector<double> log_softmax(float const* z, int experts) {
  double m = -INFINITY;
  for (int e = 0; e < experts; ++e) {
    m = std::max(m, double(z[e]));
  }
  double sum = 0.0;
  for (int e = 0; e < experts; ++e) {
    sum += std::exp(double(z[e]) - m);
  }
  std::vector<double> l(static_cast<std::size_t>(experts));
  for (int e = 0; e < experts; ++e) {
    l[e] = double(z[e]) - m - std::log(sum);
  }
  return l;
}

struct LossResult {
  double value = 0.0;
  std::vector<double> grad;  // [T, E]
  std::vector<long long> counts;
  std::vector<double> f, p;
};

inline void write(LossResult const& r, balancing::LossInputs<MemorySpace::host> const& in,
                  balancing::LossOutputs<MemorySpace::host> const& out) {
  std::int64_t const tokens = in.logits.extent(0);
  auto const experts = static_cast<int>(in.logits.extent(1));
  *out.value = static_cast<float>(r.value);
  if (out.grad.data != nullptr) {
    for (std::int64_t t = 0; t < tokens; ++t) {
      for (int e = 0; e < experts; ++e) {
        out.grad(t, e) = static_cast<float>(r.grad[static_cast<std::size_t>(t * experts + e)]);
      }
    }
  }
  for (int e = 0; e < experts; ++e) {
    if (out.counts != nullptr) {
      out.counts[e] = r.counts[e];
    }
    if (out.f != nullptr) {
      out.f[e] = static_cast<float>(r.f[e]);
    }
    if (out.P != nullptr) {
      out.P[e] = static_cast<float>(r.p[e]);
    }
  }
}

template <class L>
[[nodiscard]] Status check(L const& loss, char const* what, balancing::LossInputs<MemorySpace::host> const& in,
                           balancing::LossOutputs<MemorySpace::host> const& out) {
  if (Status s = balancing::detail::token_loss::check_loss_buffers(in, out, what); !s) {
    return s;
  }
  if (in.logits.extent(1) > (1 << 24)) {
    return error(Status::unsupported_config, "%s: E=%lld exceeds 2^24 experts", what,
                 static_cast<long long>(in.logits.extent(1)));
  }
  if (Status s = loss.validate(static_cast<int>(in.logits.extent(1))); !s) {
    return s;
  }
  return balancing::detail::token_loss::check_valid_logits(in.logits, in.valid, what);
}

inline bool is_valid(std::uint8_t const* valid, std::int64_t t) { return valid == nullptr || valid[t] != 0; }

}  // namespace detail::adaptive

// DynMoLE (§3.2): L_router = λ_dyn L_ent + λ_aux L_bal over the valid rows; f = F, P = P,
// counts = kept (token, expert) pairs.
[[nodiscard]] inline Status reference_loss(balancing::DynMoLELoss const& loss,
                                           balancing::LossInputs<MemorySpace::host> const& in,
                                           balancing::LossOutputs<MemorySpace::host> const& out) {
  namespace d = detail::adaptive;
  if (Status s = d::check(loss, "DynMoLE loss", in, out); !s) {
    return s;
  }
  std::int64_t const tokens = in.logits.extent(0);
  auto const experts = static_cast<int>(in.logits.extent(1));
  auto const ex = static_cast<std::size_t>(experts);
  double const q = loss.router.entropy_index;
  double const eps = loss.router.entropy_eps;
  double const norm = q == 1.0 ? std::log(double(experts)) : 1.0 - std::pow(double(experts), 1.0 - q);

  d::LossResult r;
  r.grad.assign(static_cast<std::size_t>(tokens) * ex, 0.0);
  r.counts.assign(ex, 0);
  r.f.assign(ex, 0.0);
  r.p.assign(ex, 0.0);
  std::vector<std::vector<double>> probs(static_cast<std::size_t>(tokens));
  std::vector<std::vector<char>> masks(static_cast<std::size_t>(tokens));
  long long n = 0;
  double entropy_sum = 0.0;
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (!d::is_valid(in.valid, t)) {
      continue;
    }
    ++n;
    float const* z = in.logits.pointer(t, 0);
    std::vector<double> const p = d::softmax(z, experts);
    double h = 0.0;
    for (int e = 0; e < experts; ++e) {
      h += q == 1.0 ? -(p[e] + eps) * std::log(p[e] + eps) : std::pow(p[e] + eps, q);
    }
    h = q == 1.0 ? h / norm : (1.0 - h) / norm;
    entropy_sum += h;
    std::vector<char> m(ex, 0);
    if (loss.router.entropy_threshold < 1.f && h > double(loss.router.entropy_threshold)) {
      std::fill(m.begin(), m.end(), 1);
    } else {
      std::vector<int> const order = d::rank_experts(z, experts);
      double cumulative = 0.0;
      for (int rank = 0; rank < experts; ++rank) {
        cumulative += p[order[rank]];
        if (rank >= loss.router.keep_top_k && cumulative > double(loss.router.top_p)) {
          break;
        }
        m[order[rank]] = 1;
      }
    }
    for (int e = 0; e < experts; ++e) {
      if (z[e] == -INFINITY) {
        m[e] = 0;  // masked experts are never kept
      }
      r.counts[e] += m[e];
      r.f[e] += p[e] * m[e];
      r.p[e] += p[e];
    }
    probs[t] = p;
    masks[t] = m;
  }
  if (n == 0) {
    std::fill(r.f.begin(), r.f.end(), 0.0);
    d::write(r, in, out);
    return Status::ok;
  }
  double const nd = double(n);
  double balance = 0.0;
  for (int e = 0; e < experts; ++e) {
    r.f[e] /= nd;
    r.p[e] /= nd;
    balance += r.f[e] * r.p[e];
  }
  double const l_ent = entropy_sum / nd;
  double const l_bal = double(experts) * balance;
  r.value = double(loss.router_dyn_loss_coef) * l_ent + double(loss.router_aux_loss_coef) * l_bal;
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (!d::is_valid(in.valid, t)) {
      continue;
    }
    std::vector<double> const& p = probs[t];
    std::vector<double> g(ex);
    double mean = 0.0;
    for (int e = 0; e < experts; ++e) {
      double const dent =
          q == 1.0 ? -(std::log(p[e] + eps) + 1.0) / (nd * norm) : -q * std::pow(p[e] + eps, q - 1.0) / (nd * norm);
      double const dbal = double(experts) / nd * (masks[t][e] * r.p[e] + r.f[e]);
      g[e] = double(loss.router_dyn_loss_coef) * dent + double(loss.router_aux_loss_coef) * dbal;
      mean += p[e] * g[e];
    }
    for (int e = 0; e < experts; ++e) {
      r.grad[static_cast<std::size_t>(t) * ex + e] = p[e] * (g[e] - mean);
    }
  }
  d::write(r, in, out);
  return Status::ok;
}

// LoRA-Mixer (§3.4): L_RSL = alpha Σ p̄ f̄ - lambda mean_t H_t over the valid rows; f = f̄,
// P = p̄, counts = top-k assignments (masked experts excluded).
[[nodiscard]] inline Status reference_loss(balancing::LoraMixerLoss const& loss,
                                           balancing::LossInputs<MemorySpace::host> const& in,
                                           balancing::LossOutputs<MemorySpace::host> const& out) {
  namespace d = detail::adaptive;
  if (Status s = d::check(loss, "LoRA-Mixer RSL", in, out); !s) {
    return s;
  }
  std::int64_t const tokens = in.logits.extent(0);
  auto const experts = static_cast<int>(in.logits.extent(1));
  auto const ex = static_cast<std::size_t>(experts);

  d::LossResult r;
  r.grad.assign(static_cast<std::size_t>(tokens) * ex, 0.0);
  r.counts.assign(ex, 0);
  r.f.assign(ex, 0.0);
  r.p.assign(ex, 0.0);
  long long n = 0;
  double entropy_sum = 0.0;
  std::vector<double> entropy(static_cast<std::size_t>(tokens), 0.0);
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (!d::is_valid(in.valid, t)) {
      continue;
    }
    ++n;
    float const* z = in.logits.pointer(t, 0);
    std::vector<double> const p = d::softmax(z, experts);
    std::vector<double> const lp = d::log_softmax(z, experts);
    double h = 0.0;
    for (int e = 0; e < experts; ++e) {
      h -= p[e] > 0.0 ? p[e] * lp[e] : 0.0;
      r.p[e] += p[e];
    }
    entropy[t] = h;
    entropy_sum += h;
    std::vector<int> const order = d::rank_experts(z, experts);
    for (int rank = 0; rank < loss.top_k; ++rank) {
      if (z[order[rank]] != -INFINITY) {
        ++r.counts[order[rank]];
      }
    }
  }
  if (n != 0) {
    double const nd = double(n);
    double balance = 0.0;
    for (int e = 0; e < experts; ++e) {
      r.f[e] = double(r.counts[e]) / (nd * loss.top_k);
      r.p[e] /= nd;
      balance += r.p[e] * r.f[e];
    }
    r.value = double(loss.alpha) * balance - double(loss.lambda) * entropy_sum / nd;
    for (std::int64_t t = 0; t < tokens; ++t) {
      if (!d::is_valid(in.valid, t)) {
        continue;
      }
      float const* z = in.logits.pointer(t, 0);
      std::vector<double> const p = d::softmax(z, experts);
      std::vector<double> const lp = d::log_softmax(z, experts);
      double fbar = 0.0;
      for (int e = 0; e < experts; ++e) {
        fbar += p[e] * r.f[e];
      }
      for (int e = 0; e < experts; ++e) {
        r.grad[static_cast<std::size_t>(t) * ex + e] =
            p[e] > 0.0
                ? p[e] * (double(loss.alpha) / nd * (r.f[e] - fbar) + double(loss.lambda) / nd * (lp[e] + entropy[t]))
                : 0.0;
      }
    }
  }
  d::write(r, in, out);
  return Status::ok;
}

// ProMoE RCL (§4.1) in double: sets, centroids, cosine logits, cross-entropy, and the exact
// gradients w.r.t. the prototypes and the token inputs.
[[nodiscard]] inline Status reference_contrastive_loss(balancing::RoutingContrastiveLoss const& loss,
                                                       balancing::ContrastiveInputs<MemorySpace::host> const& in,
                                                       balancing::ContrastiveOutputs<MemorySpace::host> const& out) {
  if (Status s = balancing::check_contrastive_buffers(loss, in, out); !s) {
    return s;
  }
  std::int64_t const tokens = in.x.extent(0);
  std::int64_t const hidden = in.x.extent(1);
  auto const experts = static_cast<int>(in.prototypes.extent(0));
  std::int64_t const k = in.ids.extent(1);
  auto const conditional = [&](std::int64_t t) { return in.uncond == nullptr || in.uncond[t] == 0; };
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::int64_t h = 0; h < hidden; ++h) {
      if (!std::isfinite(in.x(t, h))) {
        return error(Status::invalid_argument, "rcl: non-finite routing score input x %g at token %lld, feature %lld",
                     double(in.x(t, h)), static_cast<long long>(t), static_cast<long long>(h));
      }
    }
    for (std::int64_t j = 0; j < k && conditional(t); ++j) {
      if (in.ids(t, j) < 0) {
        return error(Status::invalid_argument, "rcl: negative expert id %d at token %lld, slot %lld", in.ids(t, j),
                     static_cast<long long>(t), static_cast<long long>(j));
      }
    }
  }
  for (int e = 0; e < experts; ++e) {
    for (std::int64_t h = 0; h < hidden; ++h) {
      if (!std::isfinite(in.prototypes(e, h))) {
        return error(Status::invalid_argument,
                     "rcl: non-finite routing score input prototype %g at expert %d, feature %lld",
                     double(in.prototypes(e, h)), e, static_cast<long long>(h));
      }
    }
  }

  // Assignment sets (a token counted once per expert).
  std::vector<std::vector<std::int64_t>> members(static_cast<std::size_t>(experts));
  std::int64_t const read = loss.use_top_k ? k : 1;
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (!conditional(t)) {
      continue;
    }
    for (std::int64_t j = 0; j < read; ++j) {
      int const id = in.ids(t, j);
      if (id >= experts) {
        continue;
      }
      auto& m = members[static_cast<std::size_t>(id)];
      if (m.empty() || m.back() != t) {
        m.push_back(t);
      }
    }
  }
  std::vector<int> active;
  for (int e = 0; e < experts; ++e) {
    if (!members[e].empty()) {
      active.push_back(e);
    }
  }
  auto const na = static_cast<int>(active.size());
  auto const hs = static_cast<std::size_t>(hidden);
  std::vector<double> grad_p(static_cast<std::size_t>(experts) * hs, 0.0);
  std::vector<double> grad_x(static_cast<std::size_t>(tokens) * hs, 0.0);
  double value = 0.0;
  if (na >= 2) {
    // Normalised prototypes and centroids of the active experts, with their norms.
    auto normalise = [&](std::vector<double> const& v, std::vector<double>& n) {
      double s = 0.0;
      for (double x : v) {
        s += x * x;
      }
      double const norm = std::max(std::sqrt(s), 1e-12);
      n.resize(v.size());
      for (std::size_t h = 0; h < v.size(); ++h) {
        n[h] = v[h] / norm;
      }
      return std::sqrt(s);
    };
    std::vector<std::vector<double>> np(static_cast<std::size_t>(na)), nm(static_cast<std::size_t>(na));
    std::vector<double> norm_p(static_cast<std::size_t>(na)), norm_m(static_cast<std::size_t>(na));
    for (int i = 0; i < na; ++i) {
      int const e = active[i];
      std::vector<double> p(hs), m(hs, 0.0);
      for (std::int64_t h = 0; h < hidden; ++h) {
        p[h] = in.prototypes(e, h);
      }
      for (std::int64_t t : members[e]) {
        for (std::int64_t h = 0; h < hidden; ++h) {
          m[h] += in.x(t, h);
        }
      }
      for (double& v : m) {
        v /= double(members[e].size());
      }
      norm_p[i] = normalise(p, np[i]);
      norm_m[i] = normalise(m, nm[i]);
    }
    double const tau = loss.temperature;
    double const lam = loss.lam;
    std::vector<double> gamma(static_cast<std::size_t>(na) * na);
    for (int i = 0; i < na; ++i) {
      std::vector<double> l(static_cast<std::size_t>(na));
      double mx = -INFINITY;
      for (int j = 0; j < na; ++j) {
        double dot = 0.0;
        for (std::size_t h = 0; h < hs; ++h) {
          dot += np[i][h] * nm[j][h];
        }
        l[j] = dot / tau;
        mx = std::max(mx, l[j]);
      }
      double sum = 0.0;
      for (int j = 0; j < na; ++j) {
        sum += std::exp(l[j] - mx);
      }
      value += mx + std::log(sum) - l[i];
      for (int j = 0; j < na; ++j) {
        gamma[static_cast<std::size_t>(i) * na + j] = lam / na * (std::exp(l[j] - mx) / sum - (i == j ? 1.0 : 0.0));
      }
    }
    value *= lam / na;
    // Through the normalisation: dL/dv = (I - n n^T) g / ||v|| (or g / 1e-12 at ||v|| <= 1e-12).
    auto back = [&](std::vector<double> const& n, double norm, std::vector<double> const& g) {
      std::vector<double> r(hs);
      if (norm <= 1e-12) {
        for (std::size_t h = 0; h < hs; ++h) {
          r[h] = g[h] / 1e-12;
        }
        return r;
      }
      double ng = 0.0;
      for (std::size_t h = 0; h < hs; ++h) {
        ng += n[h] * g[h];
      }
      for (std::size_t h = 0; h < hs; ++h) {
        r[h] = (g[h] - n[h] * ng) / norm;
      }
      return r;
    };
    for (int i = 0; i < na; ++i) {
      std::vector<double> gp(hs, 0.0), gm(hs, 0.0);
      for (int j = 0; j < na; ++j) {
        for (std::size_t h = 0; h < hs; ++h) {
          gp[h] += gamma[static_cast<std::size_t>(i) * na + j] * nm[j][h] / tau;
          gm[h] += gamma[static_cast<std::size_t>(j) * na + i] * np[j][h] / tau;
        }
      }
      std::vector<double> const dp = back(np[i], norm_p[i], gp);
      std::vector<double> const dm = back(nm[i], norm_m[i], gm);
      int const e = active[i];
      double const share = 1.0 / double(members[e].size());
      for (std::size_t h = 0; h < hs; ++h) {
        grad_p[static_cast<std::size_t>(e) * hs + h] = dp[h];
      }
      for (std::int64_t t : members[e]) {
        for (std::size_t h = 0; h < hs; ++h) {
          grad_x[static_cast<std::size_t>(t) * hs + h] += share * dm[h];
        }
      }
    }
  }
  *out.value = static_cast<float>(value);
  if (out.grad_prototypes.data != nullptr) {
    for (int e = 0; e < experts; ++e) {
      for (std::int64_t h = 0; h < hidden; ++h) {
        out.grad_prototypes(e, h) = static_cast<float>(grad_p[static_cast<std::size_t>(e) * hs + h]);
      }
    }
  }
  if (out.grad_x.data != nullptr) {
    for (std::int64_t t = 0; t < tokens; ++t) {
      for (std::int64_t h = 0; h < hidden; ++h) {
        out.grad_x(t, h) = static_cast<float>(grad_x[static_cast<std::size_t>(t) * hs + h]);
      }
    }
  }
  return Status::ok;
}

// One aux-loss-free update step (§2.8) from the formulas: c̄ = ΣA/E, e_j = c̄ - A_j in double,
// Δ_j per rule, b_j <- fp32(b_j + fp32(Δ_j)), A <- 0, n <- n + 1. Same contract as
// balancing::update_bias.
[[nodiscard]] inline Status reference_bias_update(balancing::ExpertBias<MemorySpace::host> const& s) {
  auto const experts = static_cast<int>(s.bias.extent(0));
  if (Status st = s.validate(experts); !st) {
    return st;
  }
  if (*s.updates < 0) {
    return error(Status::invalid_argument, "bias update: negative update counter n=%lld", *s.updates);
  }
  long long total = 0;
  for (int e = 0; e < experts; ++e) {
    if (s.loads(e) < 0) {
      return error(Status::invalid_argument, "bias update: negative load %lld at expert %d", s.loads(e), e);
    }
    if (!std::isfinite(s.bias(e))) {
      return error(Status::invalid_argument, "bias update: non-finite bias %g at expert %d", double(s.bias(e)), e);
    }
    total += s.loads(e);
  }
  double const cbar = double(total) / double(experts);
  double const u = s.update_rate;
  double const n0 = s.decay_steps;
  double const n = double(*s.updates);
  for (int e = 0; e < experts; ++e) {
    double const err = cbar - double(s.loads(e));
    double delta = 0.0;
    switch (s.rule) {
      case balancing::BiasRule::sign: delta = err > 0.0 ? u : (err < 0.0 ? -u : 0.0); break;
      case balancing::BiasRule::proportional: delta = cbar == 0.0 ? 0.0 : u * err / cbar; break;
      case balancing::BiasRule::decaying: delta = cbar == 0.0 ? 0.0 : u * n0 / (n0 + n) * err / cbar; break;
    }
    s.bias(e) = s.bias(e) + static_cast<float>(delta);
    s.loads(e) = 0;
  }
  *s.updates += 1;
  return Status::ok;
}

}  // namespace host
MOEKIT_NAMESPACE_END
