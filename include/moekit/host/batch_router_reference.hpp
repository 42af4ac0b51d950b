#pragma once
// The oracle for the batch-scope routers (ALGORITHMS.md §1.8, §2.9, §2.10), written
// independently of their kernels: plain loops over compacted real tokens, std::stable_sort for
// the selections, double for weights and gradients. Checked mode: bad parameters and bad logits
// return a Status with a message before anything is written.
//
// How each result is compared with the device:
//  - expert choice: S is the §1.0 fp32 softmax (core/fp32_math.hpp's exp, sequential sum, true
//    division), so token ids and gates must match bit for bit;
//  - Sinkhorn and SSR with use_ot: the fp32 iteration of the spec, run here in plain loops (sums
//    in ascending index, products through fmaf, the same exp/log), so plan, ids, iteration count
//    and the convergence flag must match bit for bit; weights are computed in double here
//    (Sinkhorn: sigmoid/softmax of z; SSR: Pi renormalised over U), so they match to fp32
//    rounding;
//  - SSR without use_ot: top-k of z (exact), softmax renormalised in double (rounding).
// Gradients: reference_sinkhorn_backward expands the chain rule term by term;
// reference_ssr_backward differentiates a double-precision log-domain iteration in forward mode
// (one tangent per plan entry) until plan and tangents have converged, which is independent of
// the E x E implicit solve routing::ssr_backward uses.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/host/top_k_reference.hpp"
#include "moekit/routing/expert_choice.hpp"
#include "moekit/routing/sinkhorn.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace host {

namespace detail {

inline bool real_token(std::uint8_t const* valid, std::int64_t t) { return valid == nullptr || valid[t] != 0; }

inline std::vector<std::int64_t> real_tokens(std::int64_t tokens, std::uint8_t const* valid) {
  std::vector<std::int64_t> rows;
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (real_token(valid, t)) {
      rows.push_back(t);
    }
  }
  return rows;
}

// The §1.0 softmax in fp32: max, sum of exp(z - max) in ascending expert, true division.
inline std::vector<float> softmax_fp32(std::vector<float> const& z) {
  float m = z[0];
  for (float v : z) {
    m = v > m ? v : m;
  }
  float sum = 0.f;
  for (float v : z) {
    sum += fp32::exp(v - m);
  }
  std::vector<float> p(z.size());
  for (std::size_t e = 0; e < z.size(); ++e) {
    p[e] = fp32::exp(z[e] - m) / sum;
  }
  return p;
}

// Writes the empty slot (id E, weight 0) and a zero plan row for a padding token.
inline void empty_row(routing::TransportBuffers<MemorySpace::host> const& b, std::int64_t t, int experts, int k) {
  for (int j = 0; j < k; ++j) {
    b.ids(t, j) = experts;
    b.weights(t, j) = 0.f;
  }
  if (b.plan.data != nullptr) {
    for (int e = 0; e < experts; ++e) {
      b.plan(t, e) = 0.f;
    }
  }
}

}  // namespace detail

// Expert choice (§1.8), checked.
[[nodiscard]] inline Status reference_expert_choice(routing::ExpertChoice const& r,
                                                    routing::ExpertChoiceBuffers<MemorySpace::host> const& b) {
  if (Status s = routing::check_expert_choice_buffers(r, b); !s) {
    return s;
  }
  if (Status s = routing::check_valid_rows_finite(b.logits, b.valid, "router logits"); !s) {
    return s;
  }
  std::int64_t const tokens = b.logits.extent(0);
  int const experts = r.experts;
  std::int64_t const capacity = r.capacity(tokens);
  // columns[e][t] = S[t, e], 0 for padding tokens.
  std::vector<std::vector<float>> columns(static_cast<std::size_t>(experts),
                                          std::vector<float>(static_cast<std::size_t>(tokens), 0.f));
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (!detail::real_token(b.valid, t)) {
      continue;
    }
    std::vector<float> const p = detail::softmax_fp32(detail::row(b.logits, t));
    for (int e = 0; e < experts; ++e) {
      columns[e][static_cast<std::size_t>(t)] = p[e];
    }
  }
  // marks[t][e] = slot of t in expert e's list, or -1.
  std::vector<std::vector<int>> marks(static_cast<std::size_t>(tokens), std::vector<int>(experts, -1));
  std::vector<int> const all_tokens = detail::all_indices(static_cast<int>(tokens));
  for (int e = 0; e < experts; ++e) {
    std::vector<int> const order = detail::selection_order(columns[e], all_tokens);
    for (std::int64_t j = 0; j < capacity; ++j) {
      int const t = order[static_cast<std::size_t>(j)];
      b.token_ids(e, j) = t;
      b.gates(e, j) = columns[e][static_cast<std::size_t>(t)];
      marks[static_cast<std::size_t>(t)][e] = static_cast<int>(j);
    }
  }
  if (b.token_experts.data != nullptr) {
    for (std::int64_t t = 0; t < tokens; ++t) {
      int count = 0;
      for (int e = 0; e < experts; ++e) {
        int const slot = marks[static_cast<std::size_t>(t)][e];
        if (slot >= 0) {
          b.token_experts(t, count) = e;
          b.token_gates(t, count) = b.gates(e, slot);
          ++count;
        }
      }
      if (b.token_counts != nullptr) {
        b.token_counts[t] = count;
      }
      for (int j = count; j < experts; ++j) {
        b.token_experts(t, j) = experts;
        b.token_gates(t, j) = 0.f;
      }
    }
  }
  return Status::ok;
}

// Sinkhorn's final scalings, for tests and inspection: d0 over the real tokens in order, d1.
struct SinkhornScalings {
  std::vector<float> d0;
  std::vector<float> d1;
};

// Sinkhorn (§2.9), checked; the fp32 iteration on the real tokens.
template <int MaxK>
[[nodiscard]] Status reference_sinkhorn(routing::SinkhornRouter<MaxK> const& r,
                                        routing::TransportBuffers<MemorySpace::host> const& b,
                                        routing::SinkhornResult* result, SinkhornScalings* scalings = nullptr) {
  if (Status s = routing::detail::check_transport_buffers(r, b); !s) {
    return s;
  }
  if (result == nullptr) {
    return error(Status::invalid_argument, "sinkhorn: result must not be null");
  }
  if (Status s = routing::check_sinkhorn_logits(b.logits, b.valid); !s) {
    return s;
  }
  std::int64_t const tokens = b.logits.extent(0);
  int const experts = r.experts;
  std::vector<std::int64_t> const rows = detail::real_tokens(tokens, b.valid);
  std::size_t const m = rows.size();
  auto const n = static_cast<std::size_t>(experts);
  std::vector<float> kernel(m * n);
  for (std::size_t i = 0; i < m; ++i) {
    for (std::size_t e = 0; e < n; ++e) {
      kernel[i * n + e] = fp32::exp(b.logits(rows[i], static_cast<std::int64_t>(e)));
    }
  }
  std::vector<float> d0(m, 1.f), d1(n, 1.f), d1_old(n, 1.f);
  float const inv_tokens = m > 0 ? 1.f / static_cast<float>(m) : 0.f;
  float const inv_experts = 1.f / static_cast<float>(experts);
  float err = 1e9f;
  int iterations = 0;
  while (m > 0 && err > r.tol && iterations < r.max_iters) {
    for (std::size_t i = 0; i < m; ++i) {
      float s = 0.f;
      for (std::size_t j = 0; j < n; ++j) {
        s = std::fma(d1[j], kernel[i * n + j], s);
      }
      d0[i] = inv_tokens / (s + routing::sinkhorn_epsilon);
    }
    for (std::size_t j = 0; j < n; ++j) {
      float s = 0.f;
      for (std::size_t i = 0; i < m; ++i) {
        s = std::fma(d0[i], kernel[i * n + j], s);
      }
      d1[j] = inv_experts / (s + routing::sinkhorn_epsilon);
    }
    float sum = 0.f;
    for (std::size_t j = 0; j < n; ++j) {
      sum += std::fabs(d1_old[j] - d1[j]);
    }
    err = sum / static_cast<float>(experts);
    d1_old = d1;
    ++iterations;
  }
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (!detail::real_token(b.valid, t)) {
      detail::empty_row(b, t, experts, r.k);
    }
  }
  for (std::size_t i = 0; i < m; ++i) {
    std::int64_t const t = rows[i];
    std::vector<float> pi(n);
    for (std::size_t j = 0; j < n; ++j) {
      pi[j] = (d1[j] * kernel[i * n + j]) * d0[i];
    }
    std::vector<int> const order = detail::selection_order(pi, detail::all_indices(experts));
    std::vector<float> const z = detail::row(b.logits, t);
    std::vector<double> const p = detail::softmax_double(z);
    for (int j = 0; j < r.k; ++j) {
      int const e = order[static_cast<std::size_t>(j)];
      b.ids(t, j) = e;
      b.weights(t, j) = static_cast<float>(r.k == 1 ? detail::sigmoid_double(z[e]) : p[e]);
    }
    if (b.plan.data != nullptr) {
      for (std::size_t j = 0; j < n; ++j) {
        b.plan(t, static_cast<std::int64_t>(j)) = pi[j];
      }
    }
  }
  if (scalings != nullptr) {
    *scalings = {d0, d1};
  }
  *result = routing::SinkhornResult{
      .iterations = iterations, .converged = m == 0 || err <= r.tol, .error = m == 0 ? 0.f : err};
  return Status::ok;
}

// SSR (§2.10), checked; with use_ot the fp32 log-domain iteration on the real tokens.
template <int MaxK>
[[nodiscard]] Status reference_ssr(routing::SelectiveSinkhornRouter<MaxK> const& r,
                                   routing::TransportBuffers<MemorySpace::host> const& b, routing::SsrResult* result) {
  if (Status s = routing::detail::check_transport_buffers(r, b); !s) {
    return s;
  }
  if (result == nullptr) {
    return error(Status::invalid_argument, "ssr: result must not be null");
  }
  if (Status s = routing::check_ssr_logits(r, b.logits, b.valid); !s) {
    return s;
  }
  std::int64_t const tokens = b.logits.extent(0);
  int const experts = r.experts;
  std::vector<std::int64_t> const rows = detail::real_tokens(tokens, b.valid);
  std::size_t const m = rows.size();
  auto const n = static_cast<std::size_t>(experts);
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (!detail::real_token(b.valid, t)) {
      for (int j = 0; j < r.k; ++j) {
        b.ids(t, j) = experts;
        b.weights(t, j) = 0.f;
      }
    }
  }
  if (!r.use_ot) {
    for (std::int64_t t : rows) {
      std::vector<float> const z = detail::row(b.logits, t);
      std::vector<int> const order = detail::selection_order(z, detail::all_indices(experts));
      std::vector<double> const p = detail::softmax_double(z);
      double sum = 0;
      for (int j = 0; j < r.k; ++j) {
        sum += p[order[static_cast<std::size_t>(j)]];
      }
      for (int j = 0; j < r.k; ++j) {
        int const e = order[static_cast<std::size_t>(j)];
        b.ids(t, j) = e;
        b.weights(t, j) = static_cast<float>(p[e] / sum);
      }
    }
    *result = routing::SsrResult{.iterations = 0, .converged = true, .used_ot = false};
    return Status::ok;
  }
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (!detail::real_token(b.valid, t) && b.plan.data != nullptr) {
      for (int e = 0; e < experts; ++e) {
        b.plan(t, e) = 0.f;
      }
    }
  }
  std::vector<float> log_kernel(m * n);
  for (std::size_t i = 0; i < m; ++i) {
    std::vector<float> const z = detail::row(b.logits, rows[i]);
    std::vector<float> const c = r.cost == routing::TransportCost::softmax ? detail::softmax_fp32(z) : z;
    for (std::size_t e = 0; e < n; ++e) {
      log_kernel[i * n + e] = c[e] / r.xi;
    }
  }
  float const target = static_cast<float>(m) / static_cast<float>(experts);
  float const log_target = fp32::log(target);
  std::vector<float> lu(m, 0.f), lv(n, 0.f), plan(m * n, 0.f);
  int iterations = 0;
  bool converged = m == 0;
  float row_error = 0.f, column_error = 0.f;
  while (m > 0 && iterations < r.max_iter) {
    for (std::size_t j = 0; j < n; ++j) {
      float mx = -INFINITY;
      for (std::size_t i = 0; i < m; ++i) {
        mx = std::max(mx, log_kernel[i * n + j] + lu[i]);
      }
      float s = 0.f;
      for (std::size_t i = 0; i < m; ++i) {
        s += fp32::exp((log_kernel[i * n + j] + lu[i]) - mx);
      }
      lv[j] = log_target - (mx + fp32::log(s));
    }
    float row_sq = 0.f;
    for (std::size_t i = 0; i < m; ++i) {
      float mx = -INFINITY;
      for (std::size_t j = 0; j < n; ++j) {
        mx = std::max(mx, log_kernel[i * n + j] + lv[j]);
      }
      float s = 0.f;
      for (std::size_t j = 0; j < n; ++j) {
        s += fp32::exp((log_kernel[i * n + j] + lv[j]) - mx);
      }
      lu[i] = -(mx + fp32::log(s));
      float row = 0.f;
      for (std::size_t j = 0; j < n; ++j) {
        plan[i * n + j] = fp32::exp((lu[i] + log_kernel[i * n + j]) + lv[j]);
        row += plan[i * n + j];
      }
      float const dev = row - 1.f;
      row_sq = std::fma(dev, dev, row_sq);
    }
    float column_sq = 0.f;
    for (std::size_t j = 0; j < n; ++j) {
      float column = 0.f;
      for (std::size_t i = 0; i < m; ++i) {
        column += plan[i * n + j];
      }
      float const dev = column - target;
      column_sq = std::fma(dev, dev, column_sq);
    }
    row_error = std::sqrt(row_sq);
    column_error = std::sqrt(column_sq);
    ++iterations;
    if (row_error < r.delta && column_error < r.delta) {
      converged = true;
      break;
    }
  }
  for (std::size_t i = 0; i < m; ++i) {
    std::int64_t const t = rows[i];
    std::vector<float> const pi(plan.begin() + static_cast<std::ptrdiff_t>(i * n),
                                plan.begin() + static_cast<std::ptrdiff_t>((i + 1) * n));
    std::vector<int> const order = detail::selection_order(pi, detail::all_indices(experts));
    double mass = 0;
    for (int j = 0; j < r.k; ++j) {
      mass += double(pi[order[static_cast<std::size_t>(j)]]);
    }
    for (int j = 0; j < r.k; ++j) {
      int const e = order[static_cast<std::size_t>(j)];
      b.ids(t, j) = e;
      b.weights(t, j) = static_cast<float>(double(pi[e]) / mass);
    }
    if (b.plan.data != nullptr) {
      for (std::size_t j = 0; j < n; ++j) {
        b.plan(t, static_cast<std::int64_t>(j)) = pi[j];
      }
    }
  }
  *result = routing::SsrResult{.iterations = iterations,
                               .converged = converged,
                               .used_ot = true,
                               .row_error = row_error,
                               .column_error = column_error};
  return Status::ok;
}

// dL/dz through Sinkhorn's weights, term by term: weight (t, j) is p_{t, e_j} (k > 1) or
// sigmoid(z_{t, e_0}) (k = 1); dp_e/dz_m = p_e (delta_em - p_m), dsigma/dz = sigma (1 - sigma).
template <int MaxK>
[[nodiscard]] Status reference_sinkhorn_backward(routing::SinkhornRouter<MaxK> const& r,
                                                 routing::TransportGradBuffers const& b) {
  if (Status s = routing::detail::check_grad_buffers(r, b, "sinkhorn backward"); !s) {
    return s;
  }
  for (std::int64_t t = 0; t < b.logits.extent(0); ++t) {
    std::vector<double> dz(static_cast<std::size_t>(r.experts), 0.0);
    if (detail::real_token(b.valid, t)) {
      std::vector<float> const z = detail::row(b.logits, t);
      std::vector<double> const p = detail::softmax_double(z);
      for (int j = 0; j < r.k; ++j) {
        int const e = b.ids(t, j);
        double const g = b.grad_weights(t, j);
        if (r.k == 1) {
          double const s = detail::sigmoid_double(z[e]);
          dz[e] += g * s * (1.0 - s);
          continue;
        }
        for (int mm = 0; mm < r.experts; ++mm) {
          dz[mm] += g * p[e] * ((e == mm ? 1.0 : 0.0) - p[mm]);
        }
      }
    }
    for (int e = 0; e < r.experts; ++e) {
      b.grad_logits(t, e) = static_cast<float>(dz[e]);
    }
  }
  return Status::ok;
}

namespace detail {

// The converged SSR plan in double on the real tokens ([m, E]), and optionally its tangents
// d plan / d C (one [m, E] block per entry of C, C = softmax(z) or z), by running the
// log-domain iteration with forward-mode derivatives until the marginals and the tangents stop
// moving (or `max_iterations`).
struct SsrDoublePlan {
  std::vector<double> plan;      // [m, E]
  std::vector<double> tangents;  // [m * E directions][m, E] when asked for
  bool converged = false;
};

inline SsrDoublePlan ssr_plan_double(std::vector<double> const& cost, std::size_t m, std::size_t n, double xi,
                                     bool with_tangents, int max_iterations = 200000) {
  std::size_t const dirs = with_tangents ? m * n : 0;
  std::vector<double> x(m * n);
  for (std::size_t i = 0; i < m * n; ++i) {
    x[i] = cost[i] / xi;
  }
  double const log_target = std::log(double(m) / double(n));
  std::vector<double> lu(m, 0.0), lv(n, 0.0), dlu(dirs * m, 0.0), dlv(dirs * n, 0.0), w(m * n);
  auto dx = [&](std::size_t d, std::size_t i, std::size_t j) { return d == i * n + j ? 1.0 / xi : 0.0; };
  SsrDoublePlan out;
  out.plan.assign(m * n, 0.0);
  for (int it = 0; it < max_iterations; ++it) {
    double tangent_change = 0;
    for (std::size_t j = 0; j < n; ++j) {  // columns: lv = log(m/n) - LSE_i(x + lu)
      double mx = -INFINITY;
      for (std::size_t i = 0; i < m; ++i) {
        mx = std::max(mx, x[i * n + j] + lu[i]);
      }
      double s = 0;
      for (std::size_t i = 0; i < m; ++i) {
        s += std::exp(x[i * n + j] + lu[i] - mx);
      }
      double const lse = mx + std::log(s);
      lv[j] = log_target - lse;
      for (std::size_t i = 0; i < m; ++i) {
        w[i * n + j] = std::exp(x[i * n + j] + lu[i] - lse);
      }
      for (std::size_t d = 0; d < dirs; ++d) {
        double v = 0;
        for (std::size_t i = 0; i < m; ++i) {
          v -= w[i * n + j] * (dx(d, i, j) + dlu[d * m + i]);
        }
        tangent_change = std::max(tangent_change, std::fabs(v - dlv[d * n + j]));
        dlv[d * n + j] = v;
      }
    }
    for (std::size_t i = 0; i < m; ++i) {  // rows: lu = -LSE_j(x + lv)
      double mx = -INFINITY;
      for (std::size_t j = 0; j < n; ++j) {
        mx = std::max(mx, x[i * n + j] + lv[j]);
      }
      double s = 0;
      for (std::size_t j = 0; j < n; ++j) {
        s += std::exp(x[i * n + j] + lv[j] - mx);
      }
      double const lse = mx + std::log(s);
      lu[i] = -lse;
      for (std::size_t j = 0; j < n; ++j) {
        w[i * n + j] = std::exp(x[i * n + j] + lv[j] - lse);
      }
      for (std::size_t d = 0; d < dirs; ++d) {
        double v = 0;
        for (std::size_t j = 0; j < n; ++j) {
          v -= w[i * n + j] * (dx(d, i, j) + dlv[d * n + j]);
        }
        tangent_change = std::max(tangent_change, std::fabs(v - dlu[d * m + i]));
        dlu[d * m + i] = v;
      }
    }
    double column_error = 0;
    for (std::size_t j = 0; j < n; ++j) {
      double c = 0;
      for (std::size_t i = 0; i < m; ++i) {
        out.plan[i * n + j] = std::exp(lu[i] + x[i * n + j] + lv[j]);
        c += out.plan[i * n + j];
      }
      column_error = std::max(column_error, std::fabs(c - double(m) / double(n)));
    }
    if (column_error < 1e-14 * std::max(1.0, double(m) / double(n)) && tangent_change < 1e-12) {
      out.converged = true;
      break;
    }
  }
  if (with_tangents) {
    out.tangents.assign(dirs * m * n, 0.0);
    for (std::size_t d = 0; d < dirs; ++d) {
      for (std::size_t i = 0; i < m; ++i) {
        for (std::size_t j = 0; j < n; ++j) {
          out.tangents[(d * m + i) * n + j] = out.plan[i * n + j] * (dlu[d * m + i] + dx(d, i, j) + dlv[d * n + j]);
        }
      }
    }
  }
  return out;
}

template <int MaxK>
std::vector<double> ssr_cost_double(routing::SelectiveSinkhornRouter<MaxK> const& r, HostTensor<float const, 2> z,
                                    std::vector<std::int64_t> const& rows) {
  auto const n = static_cast<std::size_t>(r.experts);
  std::vector<double> cost(rows.size() * n);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    std::vector<float> const zr = row(z, rows[i]);
    std::vector<double> const p = softmax_double(zr);
    for (std::size_t e = 0; e < n; ++e) {
      cost[i * n + e] = r.cost == routing::TransportCost::softmax ? p[e] : double(zr[e]);
    }
  }
  return cost;
}

}  // namespace detail

// The fully converged SSR plan in double ([T, E], zero rows for padding): the point where
// the implicit gradient is exact. Checked like reference_ssr.
template <int MaxK>
[[nodiscard]] Status reference_ssr_converged_plan(routing::SelectiveSinkhornRouter<MaxK> const& r,
                                                  HostTensor<float const, 2> logits, std::uint8_t const* valid,
                                                  std::vector<double>& plan) {
  routing::SelectiveSinkhornRouter<MaxK> ot = r;
  ot.use_ot = true;
  if (Status s = ot.validate(); !s) {
    return s;
  }
  if (Status s = routing::detail::check_matrix(logits, "logits", logits.extent(0), r.experts); !s) {
    return s;
  }
  if (Status s = routing::check_ssr_logits(ot, logits, valid); !s) {
    return s;
  }
  std::vector<std::int64_t> const rows = detail::real_tokens(logits.extent(0), valid);
  auto const n = static_cast<std::size_t>(r.experts);
  detail::SsrDoublePlan const p =
      detail::ssr_plan_double(detail::ssr_cost_double(ot, logits, rows), rows.size(), n, double(r.xi), false);
  plan.assign(static_cast<std::size_t>(logits.extent(0)) * n, 0.0);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    for (std::size_t e = 0; e < n; ++e) {
      plan[static_cast<std::size_t>(rows[i]) * n + e] = p.plan[i * n + e];
    }
  }
  return Status::ok;
}

// dL/dz for one SSR step (selection held fixed): without use_ot the renormalised-softmax chain
// rule; detach: 0; implicit: forward-mode derivatives of the converged double plan.
template <int MaxK>
[[nodiscard]] Status reference_ssr_backward(routing::SelectiveSinkhornRouter<MaxK> const& r,
                                            routing::TransportGradBuffers const& b) {
  if (Status s = routing::detail::check_grad_buffers(r, b, "ssr backward"); !s) {
    return s;
  }
  if (r.use_ot) {
    if (Status s = routing::check_ssr_logits(r, b.logits, b.valid); !s) {
      return s;
    }
  }
  std::int64_t const tokens = b.logits.extent(0);
  auto const n = static_cast<std::size_t>(r.experts);
  std::vector<std::int64_t> const rows = detail::real_tokens(tokens, b.valid);
  std::size_t const m = rows.size();
  std::vector<double> dz(static_cast<std::size_t>(tokens) * n, 0.0);
  if (!r.use_ot) {
    for (std::int64_t t : rows) {
      std::vector<float> const z = detail::row(b.logits, t);
      // alpha_j = exp(z_j) / sum_{i in U} exp(z_i): d alpha_j / dz_i = alpha_j (delta_ij - alpha_i) on U.
      double mx = -INFINITY;
      for (int j = 0; j < r.k; ++j) {
        mx = std::max(mx, double(z[b.ids(t, j)]));
      }
      std::vector<double> alpha(static_cast<std::size_t>(r.k));
      double sum = 0;
      for (int j = 0; j < r.k; ++j) {
        alpha[j] = std::exp(double(z[b.ids(t, j)]) - mx);
        sum += alpha[j];
      }
      for (double& a : alpha) {
        a /= sum;
      }
      for (int j = 0; j < r.k; ++j) {
        for (int i = 0; i < r.k; ++i) {
          dz[static_cast<std::size_t>(t) * n + b.ids(t, i)] +=
              double(b.grad_weights(t, j)) * alpha[j] * ((i == j ? 1.0 : 0.0) - alpha[i]);
        }
      }
    }
  } else if (r.grad_mode == routing::TransportGradient::implicit && m > 0) {
    std::vector<double> const cost = detail::ssr_cost_double(r, b.logits, rows);
    detail::SsrDoublePlan const p = detail::ssr_plan_double(cost, m, n, double(r.xi), true);
    if (!p.converged) {
      return error(Status::internal_error, "ssr reference backward: the double iteration did not converge");
    }
    // dL/dC for every entry of C, through alpha = plan / sum_U plan.
    std::vector<double> dcost(m * n, 0.0);
    for (std::size_t d = 0; d < m * n; ++d) {
      double const* tangent = &p.tangents[d * m * n];
      double total = 0;
      for (std::size_t i = 0; i < m; ++i) {
        std::int64_t const t = rows[i];
        double mass = 0, dmass = 0;
        for (int j = 0; j < r.k; ++j) {
          mass += p.plan[i * n + b.ids(t, j)];
          dmass += tangent[i * n + b.ids(t, j)];
        }
        for (int j = 0; j < r.k; ++j) {
          std::size_t const at = i * n + b.ids(t, j);
          total += double(b.grad_weights(t, j)) * (tangent[at] - p.plan[at] / mass * dmass) / mass;
        }
      }
      dcost[d] = total;
    }
    for (std::size_t i = 0; i < m; ++i) {
      std::int64_t const t = rows[i];
      if (r.cost == routing::TransportCost::linear) {
        for (std::size_t e = 0; e < n; ++e) {
          dz[static_cast<std::size_t>(t) * n + e] = dcost[i * n + e];
        }
        continue;
      }
      std::vector<double> const q = detail::softmax_double(detail::row(b.logits, t));
      for (std::size_t e = 0; e < n; ++e) {  // dC_c / dz_e = q_c (delta_ce - q_e)
        double v = 0;
        for (std::size_t c = 0; c < n; ++c) {
          v += dcost[i * n + c] * q[c] * ((c == e ? 1.0 : 0.0) - q[e]);
        }
        dz[static_cast<std::size_t>(t) * n + e] = v;
      }
    }
  }
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (std::size_t e = 0; e < n; ++e) {
      b.grad_logits(t, static_cast<std::int64_t>(e)) = static_cast<float>(dz[static_cast<std::size_t>(t) * n + e]);
    }
  }
  return Status::ok;
}

}  // namespace host
MOEKIT_NAMESPACE_END
