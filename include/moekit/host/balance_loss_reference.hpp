#pragma once
// The oracle for the fP balance losses and the router z-loss (ALGORITHMS.md §2.0-§2.7, §3.1),
// written from each section's formulas and independently of the device path: counting sets by
// std::stable_sort of the logits (ties to the lower index), scores, their sums and every
// product in double, token sums in increasing t, each output rounded to fp32 once at the end
// (§2.0 precision). Checked mode: bad parameters, bad buffers, a mask entry other than 0/1, a
// NaN or +inf logit in a valid row, or a valid row of -inf only, return a Status and a message
// before anything is written (padded rows are not read).
//
// One overload `Status host::reference_loss(policy, LossInputs<host> const&, LossOutputs<host> const&)`
// per policy. A global aux loss's state (C in host memory) is updated like the device path does.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "moekit/balancing/adamoe_loss.hpp"
#include "moekit/balancing/deepseek_v3_seq_loss.hpp"
#include "moekit/balancing/dit_moe_loss.hpp"
#include "moekit/balancing/fp_loss.hpp"
#include "moekit/balancing/gshard_loss.hpp"
#include "moekit/balancing/hf_load_balancing_loss.hpp"
#include "moekit/balancing/loss_buffers.hpp"
#include "moekit/balancing/loss_checks.hpp"
#include "moekit/balancing/megatron_aux_loss.hpp"
#include "moekit/balancing/megatron_global_aux_loss.hpp"
#include "moekit/balancing/megatron_seq_aux_loss.hpp"
#include "moekit/balancing/switch_loss.hpp"
#include "moekit/balancing/z_loss.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace host {

using HostLossInputs = balancing::LossInputs<MemorySpace::host>;
using HostLossOutputs = balancing::LossOutputs<MemorySpace::host>;

namespace detail {

// Everything per token that the losses use, in double.
struct LossRows {
  std::int64_t tokens = 0;
  int experts = 0;
  std::vector<char> valid;    // [T] after broadcasting the mask
  std::vector<double> q;      // [T, E] score (valid rows only)
  std::vector<double> slope;  // [T, E] d of the gradient lemma
  std::vector<char> in_set;   // [T, E] counting-set membership
  [[nodiscard]] std::size_t at(std::int64_t t, int e) const { return static_cast<std::size_t>(t * experts + e); }
};

// Buffers, parameters, mask values and finiteness, in the order the device path checks them.
// `mask_period`: token t reads valid[t % mask_period].
template <class Policy>
Status check_loss(char const* who, Policy const& policy, HostLossInputs const& in, HostLossOutputs const& out,
                  std::int64_t mask_period, bool check_policy_shape = true) {
  if (Status s = balancing::check_loss_logits(who, in); !s) {
    return s;
  }
  std::int64_t const tokens = in.logits.extent(0);
  int const experts = static_cast<int>(in.logits.extent(1));
  if (Status s = policy.validate(experts); !s) {
    return s;
  }
  if (check_policy_shape) {
    if (Status s = policy.check_shape(tokens, in.valid_entries); !s) {
      return s;
    }
  }
  if (Status s = balancing::check_loss_outputs(who, in, out); !s) {
    return s;
  }
  if (in.valid != nullptr) {
    for (std::int64_t i = 0; i < std::min(tokens, mask_period); ++i) {
      if (in.valid[i] > 1) {
        return error(Status::invalid_argument, "%s: valid mask entry %lld is %d (expected 0 or 1)", who,
                     static_cast<long long>(i), int(in.valid[i]));
      }
    }
  }
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (in.valid != nullptr && in.valid[t % mask_period] == 0) {
      continue;
    }
    bool any = false;
    for (int e = 0; e < experts; ++e) {
      float const v = in.logits(t, e);
      if (std::isnan(v) || v == INFINITY) {
        return error(Status::invalid_argument, "%s: non-finite router logit %g at token %lld, expert %d", who,
                     double(v), static_cast<long long>(t), e);
      }
      any = any || v != -INFINITY;
    }
    if (!any) {
      return error(Status::invalid_argument, "%s: all experts masked (-inf) at token %lld", who,
                   static_cast<long long>(t));
    }
  }
  return Status::ok;
}

inline LossRows loss_rows(HostLossInputs const& in, std::int64_t mask_period, balancing::LossScore score, int count_k) {
  LossRows r;
  r.tokens = in.logits.extent(0);
  r.experts = static_cast<int>(in.logits.extent(1));
  auto const n = static_cast<std::size_t>(r.tokens * r.experts);
  r.valid.assign(static_cast<std::size_t>(r.tokens), 1);
  r.q.assign(n, 0.0);
  r.slope.assign(n, 0.0);
  r.in_set.assign(n, 0);
  std::vector<int> order(static_cast<std::size_t>(r.experts));
  for (std::int64_t t = 0; t < r.tokens; ++t) {
    if (in.valid != nullptr && in.valid[t % mask_period] == 0) {
      r.valid[t] = 0;
      continue;
    }
    // Counting set: the count_k largest logits, ties to the lower index (stable sort).
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return in.logits(t, a) > in.logits(t, b); });
    for (int j = 0; j < count_k; ++j) {
      r.in_set[r.at(t, order[j])] = 1;
    }
    if (score == balancing::LossScore::softmax) {
      double m = -INFINITY;
      for (int e = 0; e < r.experts; ++e) {
        m = std::max(m, double(in.logits(t, e)));
      }
      double sum = 0.0;
      for (int e = 0; e < r.experts; ++e) {
        sum += std::exp(double(in.logits(t, e)) - m);
      }
      for (int e = 0; e < r.experts; ++e) {
        double const p = std::exp(double(in.logits(t, e)) - m) / sum;
        r.q[r.at(t, e)] = p;
        r.slope[r.at(t, e)] = p;
      }
    } else {
      std::vector<double> sigma(static_cast<std::size_t>(r.experts));
      double sum = 0.0;
      for (int e = 0; e < r.experts; ++e) {
        sigma[e] = 1.0 / (1.0 + std::exp(-double(in.logits(t, e))));
        sum += sigma[e];
      }
      double const denominator = sum + 1e-20;
      for (int e = 0; e < r.experts; ++e) {
        r.q[r.at(t, e)] = sigma[e] / denominator;
        r.slope[r.at(t, e)] = sigma[e] * (1.0 - sigma[e]) / denominator;
      }
    }
  }
  return r;
}

// Counts, score sums and valid tokens of one group of token ids (in increasing t).
struct GroupStats {
  std::vector<long long> counts;
  std::vector<double> sums;
  long long n = 0;
};

inline GroupStats group_stats(LossRows const& r, std::vector<std::int64_t> const& members) {
  GroupStats g;
  g.counts.assign(static_cast<std::size_t>(r.experts), 0);
  g.sums.assign(static_cast<std::size_t>(r.experts), 0.0);
  for (std::int64_t t : members) {
    if (r.valid[t] == 0) {
      continue;
    }
    ++g.n;
    for (int e = 0; e < r.experts; ++e) {
      g.counts[e] += r.in_set[r.at(t, e)];
      g.sums[e] += r.q[r.at(t, e)];
    }
  }
  return g;
}

inline std::vector<std::int64_t> all_tokens(std::int64_t tokens) {
  std::vector<std::int64_t> v(static_cast<std::size_t>(tokens));
  std::iota(v.begin(), v.end(), std::int64_t{0});
  return v;
}

// The members of each of B sequences of S tokens in the given layout.
inline std::vector<std::vector<std::int64_t>> sequences(int batch, std::int64_t seq_len, std::int64_t tokens,
                                                        balancing::SequenceLayout layout) {
  std::int64_t const s_len = seq_len != 0 ? seq_len : tokens / batch;
  std::vector<std::vector<std::int64_t>> groups(static_cast<std::size_t>(batch));
  for (int b = 0; b < batch; ++b) {
    for (std::int64_t s = 0; s < s_len; ++s) {
      groups[b].push_back(layout == balancing::SequenceLayout::batch_major ? b * s_len + s : s * batch + b);
    }
  }
  return groups;
}

// L = sum_g multiplier_g sum_i F_{g,i} P_{g,i}; dL/dz_{t,j} = multiplier_g / N_g d_{t,j} (F_j - sum_i F_i q_{t,i})
// for t in group g; then every output. f_log: the f written for logging.
inline void write_fp(LossRows const& r, std::vector<std::vector<std::int64_t>> const& groups,
                     std::vector<GroupStats> const& stats, std::vector<std::vector<double>> const& F,
                     std::vector<double> const& multiplier, std::vector<double> const& f_log,
                     HostLossOutputs const& out) {
  double value = 0.0;
  for (std::size_t g = 0; g < groups.size(); ++g) {
    if (stats[g].n == 0) {
      continue;
    }
    double v = 0.0;
    for (int e = 0; e < r.experts; ++e) {
      v += F[g][e] * (stats[g].sums[e] / double(stats[g].n));
    }
    value += multiplier[g] * v;
  }
  *out.value = static_cast<float>(value);
  if (out.grad.data != nullptr) {
    for (std::int64_t t = 0; t < r.tokens; ++t) {
      for (int e = 0; e < r.experts; ++e) {
        out.grad(t, e) = 0.f;
      }
    }
    for (std::size_t g = 0; g < groups.size(); ++g) {
      for (std::int64_t t : groups[g]) {
        if (r.valid[t] == 0) {
          continue;
        }
        double dot = 0.0;
        for (int e = 0; e < r.experts; ++e) {
          dot += F[g][e] * r.q[r.at(t, e)];
        }
        double const a = multiplier[g] / double(stats[g].n);
        for (int e = 0; e < r.experts; ++e) {
          out.grad(t, e) = static_cast<float>(a * r.slope[r.at(t, e)] * (F[g][e] - dot));
        }
      }
    }
  }
  long long n = 0;
  for (auto const& s : stats) {
    n += s.n;
  }
  for (int e = 0; e < r.experts; ++e) {
    long long c = 0;
    double sum = 0.0;
    for (auto const& s : stats) {
      c += s.counts[e];
      sum += s.sums[e];
    }
    if (out.counts != nullptr) {
      out.counts[e] = c;
    }
    if (out.f != nullptr) {
      out.f[e] = static_cast<float>(f_log[e]);
    }
    if (out.P != nullptr) {
      out.P[e] = n == 0 ? 0.f : static_cast<float>(sum / double(n));
    }
  }
}

// One group with coefficient F_i = counts_i / divisor (0 when nothing is valid) and the given
// multiplier; f is logged as F / log_divisor.
inline void write_single_group(LossRows const& r, GroupStats const& s, double divisor, double multiplier,
                               double log_divisor, HostLossOutputs const& out) {
  std::vector<double> F(static_cast<std::size_t>(r.experts), 0.0);
  for (int e = 0; e < r.experts; ++e) {
    F[e] = s.n == 0 ? 0.0 : double(s.counts[e]) / divisor;
  }
  std::vector<double> f_log(F);
  for (double& v : f_log) {
    v /= log_divisor;
  }
  write_fp(r, {all_tokens(r.tokens)}, {s}, {F}, {multiplier}, f_log, out);
}

}  // namespace detail

// §2.1: f_i = c_i / N (argmax counts), L = alpha E sum_i f_i P_i.
[[nodiscard]] inline Status reference_loss(balancing::SwitchLoss const& p, HostLossInputs const& in,
                                           HostLossOutputs const& out) {
  std::int64_t const tokens = in.logits.extent(0);
  if (Status s = detail::check_loss("balance loss", p, in, out, tokens); !s) {
    return s;
  }
  auto const r = detail::loss_rows(in, tokens, balancing::LossScore::softmax, 1);
  auto const s = detail::group_stats(r, detail::all_tokens(tokens));
  detail::write_single_group(r, s, double(s.n), double(p.alpha) * r.experts, 1.0, out);
  return Status::ok;
}

// §2.2: identical to §2.1 with lambda = coefficient.
[[nodiscard]] inline Status reference_loss(balancing::GShardLoss const& p, HostLossInputs const& in,
                                           HostLossOutputs const& out) {
  std::int64_t const tokens = in.logits.extent(0);
  if (Status s = detail::check_loss("balance loss", p, in, out, tokens); !s) {
    return s;
  }
  auto const r = detail::loss_rows(in, tokens, balancing::LossScore::softmax, 1);
  auto const s = detail::group_stats(r, detail::all_tokens(tokens));
  detail::write_single_group(r, s, double(s.n), double(p.coefficient) * r.experts, 1.0, out);
  return Status::ok;
}

// §2.3: pooled rows of L layers, mask [B*S] broadcast; f_i = c_i / R (sum K), aux = E sum f P.
// f is logged in the generic normalisation c / (K R).
[[nodiscard]] inline Status reference_loss(balancing::HfLoadBalancingLoss const& p, HostLossInputs const& in,
                                           HostLossOutputs const& out) {
  std::int64_t const tokens = in.logits.extent(0);
  std::int64_t const per_layer = p.num_layers >= 1 ? tokens / p.num_layers : tokens;
  if (Status s = detail::check_loss("balance loss", p, in, out, per_layer); !s) {
    return s;
  }
  int const k = p.num_experts_per_tok;
  auto const r = detail::loss_rows(in, per_layer, balancing::LossScore::softmax, k);
  auto const s = detail::group_stats(r, detail::all_tokens(tokens));
  detail::write_single_group(r, s, double(s.n), double(p.router_aux_loss_coef) * r.experts, double(k), out);
  return Status::ok;
}

// §2.4a: f_i = c_i / (K N), L = coeff E sum f P, softmax or nsigmoid.
[[nodiscard]] inline Status reference_loss(balancing::MegatronAuxLoss const& p, HostLossInputs const& in,
                                           HostLossOutputs const& out) {
  std::int64_t const tokens = in.logits.extent(0);
  if (Status s = detail::check_loss("balance loss", p, in, out, tokens); !s) {
    return s;
  }
  int const k = p.moe_router_topk;
  auto const r = detail::loss_rows(in, tokens, p.score, k);
  auto const s = detail::group_stats(r, detail::all_tokens(tokens));
  detail::write_single_group(r, s, double(k) * double(s.n), double(p.moe_aux_loss_coeff) * r.experts, 1.0, out);
  return Status::ok;
}

// §2.7: Megatron aux with lambda = alpha, softmax.
[[nodiscard]] inline Status reference_loss(balancing::DitMoeLoss const& p, HostLossInputs const& in,
                                           HostLossOutputs const& out) {
  std::int64_t const tokens = in.logits.extent(0);
  if (Status s = detail::check_loss("balance loss", p, in, out, tokens); !s) {
    return s;
  }
  int const k = p.num_experts_per_tok;
  auto const r = detail::loss_rows(in, tokens, balancing::LossScore::softmax, k);
  auto const s = detail::group_stats(r, detail::all_tokens(tokens));
  detail::write_single_group(r, s, double(k) * double(s.n), double(p.aux_loss_alpha) * r.experts, 1.0, out);
  return Status::ok;
}

namespace detail {
// §2.4b / §2.6: per sequence b, f_{b,i} = c_{b,i} / (K S_b), value = (1/B) sum_b lambda E sum_i f P.
inline Status sequence_loss(LossRows const& r, int batch, std::int64_t seq_len, balancing::SequenceLayout layout, int k,
                            double lambda, HostLossOutputs const& out) {
  auto const groups = sequences(batch, seq_len, r.tokens, layout);
  std::vector<GroupStats> stats;
  std::vector<std::vector<double>> F;
  std::vector<double> multiplier;
  long long n = 0;
  std::vector<long long> total(static_cast<std::size_t>(r.experts), 0);
  for (auto const& members : groups) {
    stats.push_back(group_stats(r, members));
    auto const& s = stats.back();
    std::vector<double> f(static_cast<std::size_t>(r.experts), 0.0);
    for (int e = 0; e < r.experts; ++e) {
      f[e] = s.n == 0 ? 0.0 : double(s.counts[e]) / (double(k) * double(s.n));
      total[e] += s.counts[e];
    }
    n += s.n;
    F.push_back(f);
    multiplier.push_back(lambda * r.experts / batch);
  }
  std::vector<double> f_log(static_cast<std::size_t>(r.experts), 0.0);
  for (int e = 0; e < r.experts; ++e) {
    f_log[e] = n == 0 ? 0.0 : double(total[e]) / (double(k) * double(n));
  }
  write_fp(r, groups, stats, F, multiplier, f_log, out);
  return Status::ok;
}
}  // namespace detail

[[nodiscard]] inline Status reference_loss(balancing::MegatronSeqAuxLoss const& p, HostLossInputs const& in,
                                           HostLossOutputs const& out) {
  std::int64_t const tokens = in.logits.extent(0);
  if (Status s = detail::check_loss("balance loss", p, in, out, tokens); !s) {
    return s;
  }
  auto const r = detail::loss_rows(in, tokens, p.score, p.moe_router_topk);
  return detail::sequence_loss(r, p.batch, p.seq_len, p.layout, p.moe_router_topk, double(p.moe_aux_loss_coeff), out);
}

[[nodiscard]] inline Status reference_loss(balancing::DeepSeekV3SeqLoss const& p, HostLossInputs const& in,
                                           HostLossOutputs const& out) {
  std::int64_t const tokens = in.logits.extent(0);
  if (Status s = detail::check_loss("balance loss", p, in, out, tokens); !s) {
    return s;
  }
  auto const r = detail::loss_rows(in, tokens, balancing::LossScore::nsigmoid, p.num_experts_per_tok);
  return detail::sequence_loss(r, p.batch, p.seq_len, p.layout, p.num_experts_per_tok, double(p.aux_loss_alpha), out);
}

// §2.4c: C += c, m += 1, f_i = (C_i / m) / (K N), L = coeff E sum f P. The state's C is in host memory.
[[nodiscard]] inline Status reference_loss(balancing::MegatronGlobalAuxLoss const& p, HostLossInputs const& in,
                                           HostLossOutputs const& out) {
  std::int64_t const tokens = in.logits.extent(0);
  if (Status s = detail::check_loss("balance loss", p, in, out, tokens); !s) {
    return s;
  }
  int const k = p.moe_router_topk;
  auto const r = detail::loss_rows(in, tokens, p.score, k);
  auto const s = detail::group_stats(r, detail::all_tokens(tokens));
  balancing::GlobalAuxState& state = *p.state;
  state.m += 1;
  std::vector<double> F(static_cast<std::size_t>(r.experts), 0.0);
  for (int e = 0; e < r.experts; ++e) {
    state.C[e] += s.counts[e];
    F[e] = s.n == 0 ? 0.0 : double(state.C[e]) / double(state.m) / (double(k) * double(s.n));
  }
  detail::write_fp(r, {detail::all_tokens(tokens)}, {s}, {F}, {double(p.moe_aux_loss_coeff) * r.experts}, F, out);
  return Status::ok;
}

// §3.1: f_i = c_i / (k N); f~ = f for true experts, the mean null f for null experts;
// L = coef (n+m) sum f~ P (times k with hf_scale_by_k).
[[nodiscard]] inline Status reference_loss(balancing::AdaMoeLoss const& p, HostLossInputs const& in,
                                           HostLossOutputs const& out) {
  std::int64_t const tokens = in.logits.extent(0);
  if (Status s = detail::check_loss("balance loss", p, in, out, tokens); !s) {
    return s;
  }
  int const k = p.num_experts_per_tok;
  auto const r = detail::loss_rows(in, tokens, balancing::LossScore::softmax, k);
  auto const s = detail::group_stats(r, detail::all_tokens(tokens));
  int const n_true = r.experts - p.num_null_experts;
  std::vector<double> f(static_cast<std::size_t>(r.experts), 0.0);
  double null_mean = 0.0;
  for (int e = 0; e < r.experts; ++e) {
    f[e] = s.n == 0 ? 0.0 : double(s.counts[e]) / (double(k) * double(s.n));
    if (e >= n_true) {
      null_mean += f[e] / p.num_null_experts;
    }
  }
  if (p.null_grouping) {
    for (int e = n_true; e < r.experts; ++e) {
      f[e] = null_mean;
    }
  }
  double const multiplier = double(p.router_aux_loss_coef) * r.experts * (p.hf_scale_by_k ? k : 1);
  detail::write_fp(r, {detail::all_tokens(tokens)}, {s}, {f}, {multiplier}, f, out);
  return Status::ok;
}

// §2.5: L_z = c_z (1/N) sum_t v_t l_t^2, dL_z/dz_{t,j} = (2 c_z / N) v_t l_t p_{t,j}. Writes the
// value and the gradient only.
[[nodiscard]] inline Status reference_loss(balancing::ZLoss const& p, HostLossInputs const& in,
                                           HostLossOutputs const& out) {
  std::int64_t const tokens = in.logits.extent(0);
  if (Status s = detail::check_loss("router z-loss", p, in, out, tokens); !s) {
    return s;
  }
  int const experts = static_cast<int>(in.logits.extent(1));
  std::vector<double> l(static_cast<std::size_t>(tokens), 0.0);
  std::vector<char> valid(static_cast<std::size_t>(tokens), 0);
  double sum = 0.0;
  long long n = 0;
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (in.valid != nullptr && in.valid[t] == 0) {
      continue;
    }
    valid[t] = 1;
    double m = -INFINITY;
    for (int e = 0; e < experts; ++e) {
      m = std::max(m, double(in.logits(t, e)));
    }
    double denominator = 0.0;
    for (int e = 0; e < experts; ++e) {
      denominator += std::exp(double(in.logits(t, e)) - m);
    }
    l[t] = m + std::log(denominator);
    sum += l[t] * l[t];
    ++n;
  }
  double const coef = double(p.z_loss_coef);
  *out.value = n == 0 ? 0.f : static_cast<float>(coef * sum / double(n));
  if (out.grad.data != nullptr) {
    for (std::int64_t t = 0; t < tokens; ++t) {
      double m = -INFINITY;
      double denominator = 0.0;
      if (valid[t] != 0) {
        for (int e = 0; e < experts; ++e) {
          m = std::max(m, double(in.logits(t, e)));
        }
        for (int e = 0; e < experts; ++e) {
          denominator += std::exp(double(in.logits(t, e)) - m);
        }
      }
      for (int e = 0; e < experts; ++e) {
        out.grad(t, e) = valid[t] == 0 ? 0.f
                                       : static_cast<float>(2.0 * coef / double(n) * l[t] *
                                                            (std::exp(double(in.logits(t, e)) - m) / denominator));
      }
    }
  }
  return Status::ok;
}

}  // namespace host
MOEKIT_NAMESPACE_END
