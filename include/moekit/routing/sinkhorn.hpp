#pragma once
// Transport routers: a balanced transport plan over the batch replaces per-token top-k.
//
// SinkhornRouter (ALGORITHMS.md §2.9, Megatron `moe_router_load_balancing_type = "sinkhorn"`,
// S-BASE): K = exp(z), Megatron's iteration with eps = 1e-8, no max-subtraction,
//   d0_t = (1/T) / (sum_j d1_j K_tj + eps);  d1_j = (1/E) / (sum_t d0_t K_tj + eps);
//   err = mean_j |d1_old_j - d1_j|, repeated while err > tol (a NaN err stops, as in Megatron),
//   at most max_iters times; Pi_tj = (d1_j K_tj) d0_t. U_t = top-k of Pi_t; weights: sigmoid(z)
//   (k = 1) or softmax(z) (k > 1) at U_t, not renormalised. The plan has no gradient; the
//   weights do (sinkhorn_backward).
//
// SelectiveSinkhornRouter (§2.10, SSR, moekit's definition of the paper): with use_ot, on the
// m real tokens, C = softmax(z) (or z), log-domain Sinkhorn in fp32 with the column update first:
//   lv_j = log(m/E) - LSE_t(C_tj/xi + lu_t);  lu_t = -LSE_j(C_tj/xi + lv_j);
//   Pi = exp(lu + C/xi + lv); stop when ||Pi 1 - 1||_2 < delta and ||Pi^T 1 - m/E||_2 < delta;
//   U_t = top-k of Pi_t; alpha = Pi renormalised over U_t. Without use_ot (most training steps,
//   and inference): softmax top-k renormalised (Mixtral). ssr_backward gives the implicit
//   gradient of the converged plan (an E x E solve in double) or none (detach).
//
// Arithmetic (§0): every sum runs in ascending index with explicit fmaf for products, the
// same on host and device, so the host reference's fp32 iteration and the kernels agree bit
// for bit; LSE is two-pass (max, then sum of exp(a - max)) with core/fp32_math.hpp's exp/log.
// Padding rows (valid[t] = 0) are left out of the iteration (T = m real tokens) and get the
// empty slot (id E, weight 0) and a zero plan row.
//
// Non-convergence is not an error: there is no NotConverged Status, so the entry points return
// Status::ok with `converged = false` in the result (the last plan is used), and say so there.
//
// Device path: one block of transport_block_threads threads runs the whole iteration (fixed-order
// sums, barriers between the row and column passes), so results do not depend on the schedule;
// the grid is always one block. Workspace: workspace_size(T) bytes. Rows the host would refuse
// (NaN, +inf, every expert at -inf, and for Sinkhorn a logit > 88) are counted in
// Diagnostics::nonfinite_rows and flow through the formulas (NaN ranks last; ids stay in [0, E]).

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "moekit/arch/arch.hpp"
#include "moekit/config.hpp"
#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/core/workspace.hpp"
#include "moekit/routing/concept.hpp"
#include "moekit/routing/expert_choice.hpp"
#include "moekit/routing/ranking.hpp"
#include "moekit/routing/route.hpp"
#include "moekit/routing/route_buffers.hpp"
#include "moekit/routing/scores.hpp"
#include "moekit/routing/top_k.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

inline constexpr float sinkhorn_epsilon = 1e-8f;   // Megatron's eps
inline constexpr float sinkhorn_max_logit = 88.f;  // exp(88.72...) overflows fp32

enum class TransportCost {
  softmax,  // C = softmax(z) (SSR default)
  linear    // C = z
};

enum class TransportGradient {
  implicit,  // differentiate the converged plan (E x E solve)
  detach     // no gradient through the plan on OT steps
};

// What an iteration did. converged = false means max_iters was reached (or the error became
// NaN) and the last plan was used: the moekit form of ALGORITHMS.md's non-fatal NotConverged.
struct SinkhornResult {
  int iterations = 0;
  bool converged = false;
  float error = 0.f;  // the last err = mean_j |d1_old_j - d1_j|
};

struct SsrResult {
  int iterations = 0;
  bool converged = false;
  bool used_ot = false;      // false: softmax top-k (no plan; `plan` is not written)
  float row_error = 0.f;     // ||Pi 1 - 1||_2 at exit
  float column_error = 0.f;  // ||Pi^T 1 - m/E||_2 at exit
};

template <int MaxK = 8>
struct SinkhornRouter {
  static constexpr RouterScope scope = RouterScope::per_batch;
  static constexpr int max_slots = MaxK;

  int experts = 0;       // E (num_moe_experts)
  int k = 0;             // moe_router_topk
  float tol = 1e-4f;     // Megatron's tol
  int max_iters = 1000;  // moekit's cap (Megatron has none)

  [[nodiscard]] Status validate() const {
    if (experts < 1) {
      return error(Status::invalid_argument, "sinkhorn router: num_experts must be >= 1 (got %d)", experts);
    }
    if (k < 1 || k > experts) {
      return error(Status::invalid_argument, "sinkhorn router: k must satisfy 1 <= k <= E (got k=%d, E=%d)", k,
                   experts);
    }
    if (k > MaxK) {
      return error(Status::unsupported_config,
                   "sinkhorn router: k=%d exceeds this instantiation's MaxK=%d; use SinkhornRouter<%d>", k, MaxK, k);
    }
    if (!(tol >= 0.f) || !std::isfinite(tol)) {
      return error(Status::invalid_argument, "sinkhorn router: tol must be finite and >= 0 (got %g)", double(tol));
    }
    if (max_iters < 1) {
      return error(Status::invalid_argument, "sinkhorn router: max_iters must be >= 1 (got %d)", max_iters);
    }
    return Status::ok;
  }

  [[nodiscard]] std::size_t workspace_size(std::int64_t tokens) const noexcept;
};

template <int MaxK = 8>
struct SelectiveSinkhornRouter {
  static constexpr RouterScope scope = RouterScope::per_batch;
  static constexpr int max_slots = MaxK;

  int experts = 0;
  int k = 0;
  bool use_ot = false;  // this step routes with the plan (the caller decides; see ssr_use_ot)
  float xi = 0.05f;     // entropic regulariser
  float delta = 1e-4f;  // stopping threshold on the marginal errors
  int max_iter = 100;
  TransportCost cost = TransportCost::softmax;
  TransportGradient grad_mode = TransportGradient::implicit;

  [[nodiscard]] Status validate() const {
    if (experts < 1) {
      return error(Status::invalid_argument, "ssr router: num_experts must be >= 1 (got %d)", experts);
    }
    if (k < 1 || k > experts) {
      return error(Status::invalid_argument, "ssr router: k must satisfy 1 <= k <= E (got k=%d, E=%d)", k, experts);
    }
    if (k > MaxK) {
      return error(Status::unsupported_config,
                   "ssr router: k=%d exceeds this instantiation's MaxK=%d; use SelectiveSinkhornRouter<%d>", k, MaxK,
                   k);
    }
    if (!(xi > 0.f) || !std::isfinite(xi)) {
      return error(Status::invalid_argument, "ssr router: xi must be finite and > 0 (got %g)", double(xi));
    }
    if (!(delta > 0.f) || !std::isfinite(delta)) {
      return error(Status::invalid_argument, "ssr router: delta must be finite and > 0 (got %g)", double(delta));
    }
    if (max_iter < 1) {
      return error(Status::invalid_argument, "ssr router: max_iter must be >= 1 (got %d)", max_iter);
    }
    if (cost != TransportCost::softmax && cost != TransportCost::linear) {
      return error(Status::invalid_argument, "ssr router: unknown cost %d", static_cast<int>(cost));
    }
    if (grad_mode != TransportGradient::implicit && grad_mode != TransportGradient::detach) {
      return error(Status::invalid_argument, "ssr router: unknown grad_mode %d", static_cast<int>(grad_mode));
    }
    return Status::ok;
  }

  [[nodiscard]] std::size_t workspace_size(std::int64_t tokens) const noexcept;
};

static_assert(diagnose_router<SinkhornRouter<8>>() && BatchRouter<SinkhornRouter<8>>);
static_assert(diagnose_router<SelectiveSinkhornRouter<8>>() && BatchRouter<SelectiveSinkhornRouter<8>>);

// The Bernoulli(p) draw of SSR's "selective" step, from a counter-based hash of (seed, step,
// layer): reproducible, independent of call order, the same on host and device. SplitMix64's
// finaliser chained over the three keys; the top 53 bits give u in [0, 1); OT iff u < p.
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::uint64_t splitmix64(std::uint64_t x) noexcept {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr double ssr_uniform(std::uint64_t seed, std::uint64_t step,
                                                              std::uint64_t layer) noexcept {
  std::uint64_t const h = splitmix64(splitmix64(splitmix64(seed) ^ step) ^ layer);
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool ssr_use_ot(std::uint64_t seed, std::uint64_t step, std::uint64_t layer,
                                                           double probability) noexcept {
  return ssr_uniform(seed, step, layer) < probability;
}

template <MemorySpace Space>
struct TransportBuffers {
  TensorView<float const, 2, Space> logits;  // [T, E]
  std::uint8_t const* valid = nullptr;       // [T], 1 = real token; null: all real
  TensorView<int, 2, Space> ids;             // [T, K]; padding rows get E
  TensorView<float, 2, Space> weights;       // [T, K]; padding rows get 0
  TensorView<float, 2, Space> plan;          // [T, E], optional (data null): the plan Pi
};

// Host: what the backward functions read and write.
struct TransportGradBuffers {
  HostTensor<float const, 2> logits;        // [T, E], as in the forward
  std::uint8_t const* valid = nullptr;      // [T], as in the forward
  HostTensor<int const, 2> ids;             // [T, K], the forward's selection (held fixed)
  HostTensor<float const, 2> grad_weights;  // [T, K], dL/dweights
  HostTensor<float, 2> grad_logits;         // [T, E], written: dL/dz
};

namespace detail {

struct SinkhornWorkspace {
  float* kernel;  // [T, E]: exp(z), 0 for padding rows
  float* d0;      // [T]
  float* d1;      // [2, E]: double-buffered, so err compares the old and the new
};
inline SinkhornWorkspace carve_sinkhorn(int experts, std::int64_t tokens, Workspace& w) noexcept {
  return {w.take<float>(static_cast<std::int64_t>(experts) * tokens, "sinkhorn exp(z) [T, E]"),
          w.take<float>(tokens, "sinkhorn d0 [T]"),
          w.take<float>(2 * static_cast<std::int64_t>(experts), "sinkhorn d1 [2, E]")};
}

struct SsrWorkspace {
  float* log_kernel;  // [T, E]: C / xi
  float* plan;        // [T, E]
  float* lu;          // [T]
  float* lv;          // [E]
  float* row_dev;     // [T]: row sum - 1
  float* col_dev;     // [E]: column sum - m/E
};
inline SsrWorkspace carve_ssr(int experts, std::int64_t tokens, Workspace& w) noexcept {
  std::int64_t const te = static_cast<std::int64_t>(experts) * tokens;
  return {w.take<float>(te, "ssr log kernel [T, E]"),  w.take<float>(te, "ssr plan [T, E]"),
          w.take<float>(tokens, "ssr lu [T]"),         w.take<float>(experts, "ssr lv [E]"),
          w.take<float>(tokens, "ssr row errors [T]"), w.take<float>(experts, "ssr column errors [E]")};
}

template <class Router>
Status workspace_error(Status s, Workspace const& w, Router const& r, std::int64_t tokens, char const* who) {
  return error(s, "%s: workspace buffer '%s' needs %zu bytes, %zu left (workspace_size(%lld) = %zu)", who,
               w.failed_buffer(), w.failed_bytes(), w.bytes_left_at_failure(), static_cast<long long>(tokens),
               r.workspace_size(tokens));
}

// Shapes of every buffer, after the router's parameters.
template <class Router, MemorySpace Space>
Status check_transport_buffers(Router const& r, TransportBuffers<Space> const& b) {
  if (Status s = r.validate(); !s) {
    return s;
  }
  std::int64_t const tokens = b.logits.extent(0);
  if (tokens < 0) {
    return error(Status::invalid_argument, "logits: negative token count %lld", static_cast<long long>(tokens));
  }
  if (Status s = check_matrix(b.logits, "logits", tokens, r.experts); !s) {
    return s;
  }
  if (Status s = check_matrix(b.ids, "expert ids", tokens, r.k); !s) {
    return s;
  }
  if (Status s = check_matrix(b.weights, "weights", tokens, r.k); !s) {
    return s;
  }
  if (b.plan.data != nullptr) {
    return check_matrix(b.plan, "transport plan", tokens, r.experts);
  }
  return Status::ok;
}

// What the transport kernels read and write, in one argument.
struct TransportKernelArgs {
  float const* logits;
  std::int64_t logits_stride;
  std::uint8_t const* valid;
  std::int64_t tokens;
  int* ids;
  std::int64_t ids_stride;
  float* weights;
  std::int64_t weights_stride;
  float* plan;  // optional
  std::int64_t plan_stride;
};

inline TransportKernelArgs kernel_args(TransportBuffers<MemorySpace::device> const& b) {
  return {b.logits.data,  b.logits.stride(0),  b.valid,     b.logits.extent(0), b.ids.data, b.ids.stride(0),
          b.weights.data, b.weights.stride(0), b.plan.data, b.plan.stride(0)};
}

[[nodiscard]] MOEKIT_HOST_DEVICE inline bool is_real(std::uint8_t const* valid, std::int64_t t) noexcept {
  return valid == nullptr || valid[t] != 0;
}

// The backward functions' shared checks: parameters, shapes, finite logits on real rows, and a
// selection of k distinct experts in [0, E) on every real row.
template <class Router>
Status check_grad_buffers(Router const& r, TransportGradBuffers const& b, char const* who) {
  if (Status s = r.validate(); !s) {
    return s;
  }
  std::int64_t const tokens = b.logits.extent(0);
  if (Status s = check_matrix(b.logits, "logits", tokens, r.experts); !s) {
    return s;
  }
  if (Status s = check_matrix(b.ids, "expert ids", tokens, r.k); !s) {
    return s;
  }
  if (Status s = check_matrix(b.grad_weights, "gradient of the weights", tokens, r.k); !s) {
    return s;
  }
  if (Status s = check_matrix(b.grad_logits, "gradient of the logits", tokens, r.experts); !s) {
    return s;
  }
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (!is_real(b.valid, t)) {
      continue;
    }
    for (int j = 0; j < r.k; ++j) {
      int const e = b.ids(t, j);
      if (e < 0 || e >= r.experts) {
        return error(Status::invalid_argument, "%s: expert id %d out of [0, %d) at token %lld, slot %d", who, e,
                     r.experts, static_cast<long long>(t), j);
      }
      for (int i = 0; i < j; ++i) {
        if (b.ids(t, i) == e) {
          return error(Status::invalid_argument, "%s: expert %d selected twice at token %lld (slots %d and %d)", who, e,
                       static_cast<long long>(t), i, j);
        }
      }
    }
  }
  return check_valid_rows_finite(b.logits, b.valid, "router logits");
}

inline std::vector<double> softmax_row_double(HostTensor<float const, 2> const& z, std::int64_t t) {
  auto const n = static_cast<std::size_t>(z.extent(1));
  std::vector<double> p(n);
  double mx = -INFINITY;
  for (std::size_t e = 0; e < n; ++e) {
    mx = std::fmax(mx, double(z(t, static_cast<std::int64_t>(e))));
  }
  double sum = 0;
  for (std::size_t e = 0; e < n; ++e) {
    p[e] = std::exp(double(z(t, static_cast<std::int64_t>(e))) - mx);
    sum += p[e];
  }
  for (double& v : p) {
    v /= sum;
  }
  return p;
}

// Solves A x = b in place (A row-major n x n) by Gaussian elimination with partial pivoting;
// false when a pivot is negligible against the matrix's largest entry (singular system).
inline bool solve_dense(std::vector<double>& a, std::vector<double>& b, int n) {
  double scale = 0;
  for (double v : a) {
    scale = std::fmax(scale, std::fabs(v));
  }
  auto at = [&](int i, int j) -> double& { return a[static_cast<std::size_t>(i) * n + j]; };
  for (int c = 0; c < n; ++c) {
    int pivot = c;
    for (int i = c + 1; i < n; ++i) {
      if (std::fabs(at(i, c)) > std::fabs(at(pivot, c))) {
        pivot = i;
      }
    }
    if (!(std::fabs(at(pivot, c)) > 1e-13 * scale)) {
      return false;
    }
    if (pivot != c) {
      for (int j = 0; j < n; ++j) {
        std::swap(at(c, j), at(pivot, j));
      }
      std::swap(b[c], b[pivot]);
    }
    for (int i = c + 1; i < n; ++i) {
      double const f = at(i, c) / at(c, c);
      for (int j = c; j < n; ++j) {
        at(i, j) -= f * at(c, j);
      }
      b[i] -= f * b[c];
    }
  }
  for (int i = n - 1; i >= 0; --i) {
    double s = b[i];
    for (int j = i + 1; j < n; ++j) {
      s -= at(i, j) * b[j];
    }
    b[i] = s / at(i, i);
  }
  return true;
}

}  // namespace detail

template <int MaxK>
std::size_t SinkhornRouter<MaxK>::workspace_size(std::int64_t tokens) const noexcept {
  Workspace w;
  (void)detail::carve_sinkhorn(experts, tokens, w);
  return w.bytes_used();
}

template <int MaxK>
std::size_t SelectiveSinkhornRouter<MaxK>::workspace_size(std::int64_t tokens) const noexcept {
  Workspace w;
  (void)detail::carve_ssr(experts, tokens, w);
  return w.bytes_used();
}

// Host, checked: Sinkhorn's logits must also stay <= 88 (exp overflows fp32 above 88.72).
[[nodiscard]] inline Status check_sinkhorn_logits(HostTensor<float const, 2> logits, std::uint8_t const* valid) {
  if (Status s = check_valid_rows_finite(logits, valid, "sinkhorn: router logits"); !s) {
    return s;
  }
  for (std::int64_t t = 0; t < logits.extent(0); ++t) {
    if (!detail::is_real(valid, t)) {
      continue;
    }
    for (std::int64_t e = 0; e < logits.extent(1); ++e) {
      if (logits(t, e) > sinkhorn_max_logit) {
        return error(Status::invalid_argument,
                     "sinkhorn: logit %g exceeds 88; exp overflows fp32 (token %lld, expert %lld)",
                     double(logits(t, e)), static_cast<long long>(t), static_cast<long long>(e));
      }
    }
  }
  return Status::ok;
}

// Host, checked, for SSR on an OT step: finite logits; with the linear cost, z / xi must stay
// finite and no expert may be -inf for every real token (no plan could meet its marginal).
template <int MaxK>
[[nodiscard]] Status check_ssr_logits(SelectiveSinkhornRouter<MaxK> const& r, HostTensor<float const, 2> logits,
                                      std::uint8_t const* valid) {
  if (Status s = check_valid_rows_finite(logits, valid, "ssr: router logits"); !s) {
    return s;
  }
  if (!r.use_ot || r.cost != TransportCost::linear) {
    return Status::ok;
  }
  bool any_real = false;
  for (std::int64_t e = 0; e < logits.extent(1); ++e) {
    bool reachable = false;
    for (std::int64_t t = 0; t < logits.extent(0); ++t) {
      if (!detail::is_real(valid, t)) {
        continue;
      }
      any_real = true;
      float const z = logits(t, e);
      if (std::isinf(z / r.xi) && z != -INFINITY) {
        return error(Status::invalid_argument, "ssr: logit %g / xi %g overflows fp32 (token %lld, expert %lld)",
                     double(z), double(r.xi), static_cast<long long>(t), static_cast<long long>(e));
      }
      reachable = reachable || z != -INFINITY;
    }
    if (any_real && !reachable) {
      return error(Status::invalid_argument,
                   "ssr: expert %lld is -inf for every token; no plan meets its column marginal (linear cost)",
                   static_cast<long long>(e));
    }
  }
  return Status::ok;
}

// Host: dL/dz through Sinkhorn's weights (§2.9; the plan has no gradient), in double, rounded
// to fp32. k > 1: dL/dz_tj = p_tj (g_tj - sum_{i in U_t} g_ti p_ti), dense over E; k = 1:
// sigmoid'(z) g at the selected expert. Padding rows get 0.
template <int MaxK>
[[nodiscard]] Status sinkhorn_backward(SinkhornRouter<MaxK> const& r, TransportGradBuffers const& b) {
  if (Status s = detail::check_grad_buffers(r, b, "sinkhorn backward"); !s) {
    return s;
  }
  for (std::int64_t t = 0; t < b.logits.extent(0); ++t) {
    for (int e = 0; e < r.experts; ++e) {
      b.grad_logits(t, e) = 0.f;
    }
    if (!detail::is_real(b.valid, t)) {
      continue;
    }
    if (r.k == 1) {
      int const e = b.ids(t, 0);
      double const s = 1.0 / (1.0 + std::exp(-double(b.logits(t, e))));
      b.grad_logits(t, e) = static_cast<float>(s * (1.0 - s) * double(b.grad_weights(t, 0)));
      continue;
    }
    std::vector<double> const p = detail::softmax_row_double(b.logits, t);
    std::vector<double> g(p.size(), 0.0);
    double dot = 0;
    for (int j = 0; j < r.k; ++j) {
      auto const e = static_cast<std::size_t>(b.ids(t, j));
      g[e] = double(b.grad_weights(t, j));
      dot += g[e] * p[e];
    }
    for (std::size_t e = 0; e < p.size(); ++e) {
      b.grad_logits(t, static_cast<std::int64_t>(e)) = static_cast<float>(p[e] * (g[e] - dot));
    }
  }
  return Status::ok;
}

// Host: dL/dz for one SSR step, in double, rounded to fp32. Without use_ot: the softmax top-k
// renormalised gradient alpha_j (g_j - sum_i g_i alpha_i) at U_t. With use_ot and detach: 0.
// With use_ot and implicit (§2.10 step 5): G = (g - <g, alpha>) / sum_U Pi on U_t; H = G o Pi;
// (diag(m/E) - Pi^T Pi + 1 1^T) beta = H^T 1 - Pi^T (H 1); a = H 1 - Pi beta;
// dL/dC = Pi o (G - a 1^T - 1 beta^T) / xi; then through the cost (identity, or the softmax
// Jacobian). `plan` ([T, E], float or double) is the point of linearisation: normally the
// forward's plan output; its accuracy (delta) bounds the gradient's.
template <int MaxK, class PlanT>
[[nodiscard]] Status ssr_backward(SelectiveSinkhornRouter<MaxK> const& r, TransportGradBuffers const& b,
                                  HostTensor<PlanT const, 2> plan) {
  if (Status s = detail::check_grad_buffers(r, b, "ssr backward"); !s) {
    return s;
  }
  std::int64_t const tokens = b.logits.extent(0);
  int const n = r.experts;
  bool const implicit = r.use_ot && r.grad_mode == TransportGradient::implicit;
  std::vector<std::int64_t> rows;  // the real tokens, in order
  for (std::int64_t t = 0; t < tokens; ++t) {
    if (detail::is_real(b.valid, t)) {
      rows.push_back(t);
    }
  }
  if (implicit) {
    if (Status s = detail::check_matrix(plan, "transport plan", tokens, n); !s) {
      return s;
    }
    for (std::int64_t t : rows) {
      double mass = 0;
      for (int e = 0; e < n; ++e) {
        double const v = double(plan(t, e));
        if (!(v >= 0.0) || !std::isfinite(v)) {
          return error(Status::invalid_argument,
                       "ssr backward: plan entry %g at token %lld, expert %d is not finite and >= 0", v,
                       static_cast<long long>(t), e);
        }
      }
      for (int j = 0; j < r.k; ++j) {
        mass += double(plan(t, b.ids(t, j)));
      }
      if (!(mass > 0.0)) {
        return error(Status::invalid_argument,
                     "ssr backward: the plan gives token %lld no mass on its selected experts",
                     static_cast<long long>(t));
      }
    }
  }
  std::vector<double> grad(static_cast<std::size_t>(tokens * n), 0.0);
  auto gz = [&](std::int64_t t, int e) -> double& { return grad[static_cast<std::size_t>(t * n + e)]; };
  if (!r.use_ot) {
    for (std::int64_t t : rows) {
      std::vector<double> const p = detail::softmax_row_double(b.logits, t);
      double sum = 0, dot = 0;
      for (int j = 0; j < r.k; ++j) {
        sum += p[static_cast<std::size_t>(b.ids(t, j))];
      }
      for (int j = 0; j < r.k; ++j) {
        dot += double(b.grad_weights(t, j)) * p[static_cast<std::size_t>(b.ids(t, j))] / sum;
      }
      for (int j = 0; j < r.k; ++j) {
        int const e = b.ids(t, j);
        gz(t, e) = p[static_cast<std::size_t>(e)] / sum * (double(b.grad_weights(t, j)) - dot);
      }
    }
  } else if (implicit && !rows.empty()) {
    auto const m = static_cast<std::int64_t>(rows.size());
    std::vector<double> pi(static_cast<std::size_t>(m * n));
    std::vector<double> h(static_cast<std::size_t>(m * n), 0.0);  // H = G o Pi
    std::vector<double> gmat(static_cast<std::size_t>(m * n), 0.0);
    for (std::int64_t i = 0; i < m; ++i) {
      std::int64_t const t = rows[static_cast<std::size_t>(i)];
      for (int e = 0; e < n; ++e) {
        pi[static_cast<std::size_t>(i * n + e)] = double(plan(t, e));
      }
      double mass = 0, dot = 0;
      for (int j = 0; j < r.k; ++j) {
        mass += pi[static_cast<std::size_t>(i * n + b.ids(t, j))];
      }
      for (int j = 0; j < r.k; ++j) {
        dot += double(b.grad_weights(t, j)) * pi[static_cast<std::size_t>(i * n + b.ids(t, j))] / mass;
      }
      for (int j = 0; j < r.k; ++j) {
        auto const at = static_cast<std::size_t>(i * n + b.ids(t, j));
        gmat[at] = (double(b.grad_weights(t, j)) - dot) / mass;
        h[at] = gmat[at] * pi[at];
      }
    }
    std::vector<double> h_row(static_cast<std::size_t>(m), 0.0), h_col(static_cast<std::size_t>(n), 0.0);
    for (std::int64_t i = 0; i < m; ++i) {
      for (int e = 0; e < n; ++e) {
        h_row[i] += h[static_cast<std::size_t>(i * n + e)];
        h_col[e] += h[static_cast<std::size_t>(i * n + e)];
      }
    }
    std::vector<double> a(static_cast<std::size_t>(n * n), 1.0);  // the 1 1^T gauge term
    std::vector<double> beta = h_col;
    for (int e = 0; e < n; ++e) {
      a[static_cast<std::size_t>(e * n + e)] += double(m) / double(n);
    }
    for (std::int64_t i = 0; i < m; ++i) {
      for (int e = 0; e < n; ++e) {
        double const pe = pi[static_cast<std::size_t>(i * n + e)];
        beta[e] -= pe * h_row[i];
        for (int f = 0; f < n; ++f) {
          a[static_cast<std::size_t>(e * n + f)] -= pe * pi[static_cast<std::size_t>(i * n + f)];
        }
      }
    }
    if (!detail::solve_dense(a, beta, n)) {
      return error(Status::invalid_argument,
                   "ssr backward: the implicit system is singular (the plan splits the experts into disconnected "
                   "groups)");
    }
    for (std::int64_t i = 0; i < m; ++i) {
      std::int64_t const t = rows[static_cast<std::size_t>(i)];
      double a_t = h_row[i];
      for (int e = 0; e < n; ++e) {
        a_t -= pi[static_cast<std::size_t>(i * n + e)] * beta[e];
      }
      std::vector<double> dc(static_cast<std::size_t>(n));
      for (int e = 0; e < n; ++e) {
        auto const at = static_cast<std::size_t>(i * n + e);
        dc[e] = pi[at] * (gmat[at] - a_t - beta[e]) / double(r.xi);
      }
      if (r.cost == TransportCost::linear) {
        for (int e = 0; e < n; ++e) {
          gz(t, e) = dc[e];
        }
      } else {
        std::vector<double> const p = detail::softmax_row_double(b.logits, t);
        double dot = 0;
        for (int e = 0; e < n; ++e) {
          dot += p[e] * dc[e];
        }
        for (int e = 0; e < n; ++e) {
          gz(t, e) = p[e] * (dc[e] - dot);
        }
      }
    }
  }
  for (std::int64_t t = 0; t < tokens; ++t) {
    for (int e = 0; e < n; ++e) {
      b.grad_logits(t, e) = static_cast<float>(gz(t, e));
    }
  }
  return Status::ok;
}

MOEKIT_ARCH_NAMESPACE_BEGIN

inline constexpr int transport_block_threads = 256;

// A row the host refuses for Sinkhorn: non-finite, fully masked, or a logit above 88.
[[nodiscard]] MOEKIT_HOST_DEVICE inline bool sinkhorn_row_refused(float const* z, int n) noexcept {
  bool big = false;
  for (int e = 0; e < n; ++e) {
    big = big || z[e] > sinkhorn_max_logit;
  }
  return big || is_nonfinite_row(z, n);
}

// Writes the empty slot to a padding row (and a zero plan row when the plan is wanted).
MOEKIT_HOST_DEVICE inline void write_padding_row(routing::detail::TransportKernelArgs const& a, std::int64_t t,
                                                 int experts, int k) {
  for (int j = 0; j < k; ++j) {
    a.ids[t * a.ids_stride + j] = experts;
    a.weights[t * a.weights_stride + j] = 0.f;
  }
  if (a.plan != nullptr) {
    for (int e = 0; e < experts; ++e) {
      a.plan[t * a.plan_stride + e] = 0.f;
    }
  }
}

// Megatron's Sinkhorn in one block (§2.9). Phases: K = exp(z) and the real-token count;
// the iteration (d0 by rows, barrier, d1 by columns, barrier, err in thread 0, a barrier that
// broadcasts the decision); selection and weights by rows.
template <int MaxK>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(transport_block_threads, 1)
    sinkhorn_kernel(SinkhornRouter<MaxK> r, routing::detail::TransportKernelArgs a,
                    routing::detail::SinkhornWorkspace w, SinkhornResult* result, Diagnostics* diagnostics) {
  constexpr unsigned threads = transport_block_threads;
  unsigned const tid = arch::thread_rank();
  int const experts = r.experts;
  std::int64_t const tokens = a.tokens;

  std::int64_t real_tokens = 0;
  for (std::int64_t first = 0; first < tokens; first += threads) {
    std::int64_t const t = first + tid;
    bool real = false;
    if (t < tokens) {
      float const* z = a.logits + t * a.logits_stride;
      real = routing::detail::is_real(a.valid, t);
      if (real && sinkhorn_row_refused(z, experts)) {
        arch::atomic_add(&diagnostics->nonfinite_rows, 1ull);
      }
      float* kernel = w.kernel + t * experts;
      for (int e = 0; e < experts; ++e) {
        kernel[e] = real ? fp32::exp(z[e]) : 0.f;  // a zero row adds +0 to every column sum
      }
      w.d0[t] = real ? 1.f : 0.f;  // Megatron starts from ones (seen only when no iteration runs)
    }
    real_tokens += arch::sync_threads_count(real);
  }
  for (std::int64_t j = tid; j < 2 * std::int64_t{experts}; j += threads) {
    w.d1[j] = 1.f;
  }
  arch::sync_threads();

  float const inv_tokens = real_tokens > 0 ? 1.f / static_cast<float>(real_tokens) : 0.f;
  float const inv_experts = 1.f / static_cast<float>(experts);
  int iterations = 0;
  float err = 1e9f;                  // Megatron's initial error: tol >= 1e9 runs no iteration
  float const* d1 = w.d1 + experts;  // the latest d1 (the ones at first)
  bool run = real_tokens > 0 && err > r.tol;
  while (run) {
    float* next = w.d1 + (iterations % 2 == 0 ? 0 : experts);
    for (std::int64_t t = tid; t < tokens; t += threads) {
      if (routing::detail::is_real(a.valid, t)) {
        float const* kernel = w.kernel + t * experts;
        float s = 0.f;
        for (int j = 0; j < experts; ++j) {
          s = ::fmaf(d1[j], kernel[j], s);
        }
        w.d0[t] = inv_tokens / (s + sinkhorn_epsilon);
      }
    }
    arch::sync_threads();
    for (std::int64_t j = tid; j < experts; j += threads) {
      float s = 0.f;
      for (std::int64_t t = 0; t < tokens; ++t) {
        s = ::fmaf(w.d0[t], w.kernel[t * experts + j], s);
      }
      next[j] = inv_experts / (s + sinkhorn_epsilon);
    }
    arch::sync_threads();
    ++iterations;
    bool stop = false;
    if (tid == 0) {
      float sum = 0.f;
      for (int j = 0; j < experts; ++j) {
        sum += ::fabsf(d1[j] - next[j]);
      }
      err = sum / static_cast<float>(experts);
      stop = !(err > r.tol) || iterations >= r.max_iters;
    }
    run = !arch::sync_threads_or(stop);
    d1 = next;
  }

  for (std::int64_t t = tid; t < tokens; t += threads) {
    if (!routing::detail::is_real(a.valid, t)) {
      write_padding_row(a, t, experts, r.k);
      continue;
    }
    float const* z = a.logits + t * a.logits_stride;
    float const* kernel = w.kernel + t * experts;
    float const d0 = w.d0[t];
    auto pi = [d1, kernel, d0](int j) { return (d1[j] * kernel[j]) * d0; };
    int chosen[MaxK];
    top_k<MaxK>(
        experts, r.k, pi, [](int j) { return j; }, chosen);
    int* ids = a.ids + t * a.ids_stride;
    float* weights = a.weights + t * a.weights_stride;
    if (r.k == 1) {
      ids[0] = chosen[0];
      weights[0] = fp32::sigmoid(z[chosen[0]]);
    } else {
      SoftmaxNormaliser const n = softmax_normaliser(z, experts);
      for (int j = 0; j < r.k; ++j) {
        ids[j] = chosen[j];
        weights[j] = softmax_entry(z[chosen[j]], n);
      }
    }
    if (a.plan != nullptr) {
      for (int e = 0; e < experts; ++e) {
        a.plan[t * a.plan_stride + e] = pi(e);
      }
    }
  }
  if (tid == 0) {
    result->iterations = iterations;
    result->converged = real_tokens == 0 || err <= r.tol;
    result->error = real_tokens == 0 ? 0.f : err;
  }
}

// SSR with use_ot, in one block (§2.10 step 3). Phases: log K = C / xi and the real-token
// count; the iteration (lv by columns, barrier, lu and the plan by rows, barrier, column
// sums, barrier, the stopping rule in thread 0, a barrier that broadcasts it); selection and
// alpha by rows.
template <int MaxK>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(transport_block_threads, 1)
    ssr_kernel(SelectiveSinkhornRouter<MaxK> r, routing::detail::TransportKernelArgs a, routing::detail::SsrWorkspace w,
               SsrResult* result, Diagnostics* diagnostics) {
  constexpr unsigned threads = transport_block_threads;
  unsigned const tid = arch::thread_rank();
  int const experts = r.experts;
  std::int64_t const tokens = a.tokens;
  auto real = [&a](std::int64_t t) { return routing::detail::is_real(a.valid, t); };

  std::int64_t m = 0;
  for (std::int64_t first = 0; first < tokens; first += threads) {
    std::int64_t const t = first + tid;
    bool const is_real = t < tokens && real(t);
    if (is_real) {
      float const* z = a.logits + t * a.logits_stride;
      if (is_nonfinite_row(z, experts)) {
        arch::atomic_add(&diagnostics->nonfinite_rows, 1ull);
      }
      float* log_kernel = w.log_kernel + t * experts;
      if (r.cost == TransportCost::softmax) {
        SoftmaxNormaliser const n = softmax_normaliser(z, experts);
        for (int e = 0; e < experts; ++e) {
          log_kernel[e] = softmax_entry(z[e], n) / r.xi;
        }
      } else {
        for (int e = 0; e < experts; ++e) {
          log_kernel[e] = z[e] / r.xi;
        }
      }
      w.lu[t] = 0.f;
    }
    m += arch::sync_threads_count(is_real);
  }

  float const target = static_cast<float>(m) / static_cast<float>(experts);  // m / E
  float const log_target = fp32::log(target);
  int iterations = 0;
  bool converged = m == 0;
  float row_error = 0.f, column_error = 0.f;
  bool run = m > 0;
  while (run) {
    for (std::int64_t j = tid; j < experts; j += threads) {
      float mx = -INFINITY;
      for (std::int64_t t = 0; t < tokens; ++t) {
        if (real(t)) {
          float const v = w.log_kernel[t * experts + j] + w.lu[t];
          mx = v > mx ? v : mx;
        }
      }
      float s = 0.f;
      for (std::int64_t t = 0; t < tokens; ++t) {
        if (real(t)) {
          s += fp32::exp((w.log_kernel[t * experts + j] + w.lu[t]) - mx);
        }
      }
      w.lv[j] = log_target - (mx + fp32::log(s));
    }
    arch::sync_threads();
    for (std::int64_t t = tid; t < tokens; t += threads) {
      if (!real(t)) {
        continue;
      }
      float const* log_kernel = w.log_kernel + t * experts;
      float mx = -INFINITY;
      for (int j = 0; j < experts; ++j) {
        float const v = log_kernel[j] + w.lv[j];
        mx = v > mx ? v : mx;
      }
      float s = 0.f;
      for (int j = 0; j < experts; ++j) {
        s += fp32::exp((log_kernel[j] + w.lv[j]) - mx);
      }
      float const lu = -(mx + fp32::log(s));
      w.lu[t] = lu;
      float row = 0.f;
      for (int j = 0; j < experts; ++j) {
        float const p = fp32::exp((lu + log_kernel[j]) + w.lv[j]);
        w.plan[t * experts + j] = p;
        row += p;
      }
      w.row_dev[t] = row - 1.f;
    }
    arch::sync_threads();
    if (tid == 0) {
      float sq = 0.f;
      for (std::int64_t t = 0; t < tokens; ++t) {
        if (real(t)) {
          sq = ::fmaf(w.row_dev[t], w.row_dev[t], sq);
        }
      }
      row_error = ::sqrtf(sq);
    }
    for (std::int64_t j = tid; j < experts; j += threads) {
      float column = 0.f;
      for (std::int64_t t = 0; t < tokens; ++t) {
        if (real(t)) {
          column += w.plan[t * experts + j];
        }
      }
      w.col_dev[j] = column - target;
    }
    arch::sync_threads();
    ++iterations;
    bool stop = false;
    if (tid == 0) {
      float sq = 0.f;
      for (int j = 0; j < experts; ++j) {
        sq = ::fmaf(w.col_dev[j], w.col_dev[j], sq);
      }
      column_error = ::sqrtf(sq);
      converged = row_error < r.delta && column_error < r.delta;
      stop = converged || iterations >= r.max_iter;
    }
    run = !arch::sync_threads_or(stop);
  }

  for (std::int64_t t = tid; t < tokens; t += threads) {
    if (!real(t)) {
      write_padding_row(a, t, experts, r.k);
      continue;
    }
    float const* pi = w.plan + t * experts;
    int chosen[MaxK];
    top_k<MaxK>(pi, experts, r.k, chosen);
    float mass = 0.f;
    for (int j = 0; j < r.k; ++j) {
      mass += pi[chosen[j]];
    }
    int* ids = a.ids + t * a.ids_stride;
    float* weights = a.weights + t * a.weights_stride;
    for (int j = 0; j < r.k; ++j) {
      ids[j] = chosen[j];
      weights[j] = pi[chosen[j]] / mass;
    }
    if (a.plan != nullptr) {
      for (int e = 0; e < experts; ++e) {
        a.plan[t * a.plan_stride + e] = pi[e];
      }
    }
  }
  if (tid == 0) {
    *result = SsrResult{.iterations = iterations,
                        .converged = converged,
                        .used_ot = true,
                        .row_error = row_error,
                        .column_error = column_error};
  }
}

// SSR without use_ot: softmax top-k renormalised, one thread per token (the Mixtral router's
// own route_token, so the bits are TopK's); padding rows get the empty slot.
template <int MaxK>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(transport_block_threads, 1)
    ssr_softmax_top_k_kernel(SelectiveSinkhornRouter<MaxK> r, routing::detail::TransportKernelArgs a, SsrResult* result,
                             Diagnostics* diagnostics) {
  TopK<MaxK> const router{.experts = r.experts, .k = r.k, .norm_topk_prob = true};
  std::int64_t const stride = std::int64_t{arch::grid_dim().x} * transport_block_threads;
  for (std::int64_t t = std::int64_t{arch::block_rank()} * transport_block_threads + arch::thread_rank(); t < a.tokens;
       t += stride) {
    if (!routing::detail::is_real(a.valid, t)) {
      int* ids = a.ids + t * a.ids_stride;
      float* weights = a.weights + t * a.weights_stride;
      for (int j = 0; j < r.k; ++j) {
        ids[j] = r.experts;
        weights[j] = 0.f;
      }
      continue;
    }
    float const* z = a.logits + t * a.logits_stride;
    if (is_nonfinite_row(z, r.experts)) {
      arch::atomic_add(&diagnostics->nonfinite_rows, 1ull);
    }
    router.route_token(t, z, a.ids + t * a.ids_stride, a.weights + t * a.weights_stride);
  }
  if (arch::block_rank() == 0 && arch::thread_rank() == 0) {
    *result = SsrResult{.iterations = 0, .converged = true, .used_ot = false};
  }
}

// Routes one batch with Sinkhorn on `stream`: no host synchronisation, no allocation. The
// result (iterations, converged, err) is written to `result` in device memory; converged =
// false means max_iters was reached and the last plan was used (still Status::ok).
template <int MaxK>
[[nodiscard]] Status route(SinkhornRouter<MaxK> const& r, TransportBuffers<MemorySpace::device> const& b,
                           SinkhornResult* result, void* workspace, std::size_t workspace_bytes,
                           Diagnostics* diagnostics, arch::Stream stream) {
  if (Status s = routing::detail::check_transport_buffers(r, b); !s) {
    return s;
  }
  if (result == nullptr || diagnostics == nullptr) {
    return error(Status::invalid_argument, "sinkhorn: result and diagnostics must point to device memory");
  }
  std::int64_t const tokens = b.logits.extent(0);
  Workspace w(workspace, workspace_bytes);
  routing::detail::SinkhornWorkspace const parts = routing::detail::carve_sinkhorn(r.experts, tokens, w);
  if (!w.status()) {
    return routing::detail::workspace_error(w.status(), w, r, tokens, "sinkhorn");
  }
  arch::KernelLaunch const l{.grid = 1, .block = transport_block_threads};
  return arch::launch(sinkhorn_kernel<MaxK>, l, stream, r, routing::detail::kernel_args(b), parts, result, diagnostics);
}

// Routes one batch with SSR on `stream`. With r.use_ot, one block runs the iteration; without,
// a per-token grid (capped at `max_blocks` when non-zero) routes softmax top-k. The result goes
// to `result` in device memory.
template <int MaxK>
[[nodiscard]] Status route(SelectiveSinkhornRouter<MaxK> const& r, TransportBuffers<MemorySpace::device> const& b,
                           SsrResult* result, void* workspace, std::size_t workspace_bytes, Diagnostics* diagnostics,
                           arch::Stream stream, unsigned max_blocks = 0) {
  if (Status s = routing::detail::check_transport_buffers(r, b); !s) {
    return s;
  }
  if (result == nullptr || diagnostics == nullptr) {
    return error(Status::invalid_argument, "ssr: result and diagnostics must point to device memory");
  }
  std::int64_t const tokens = b.logits.extent(0);
  Workspace w(workspace, workspace_bytes);
  routing::detail::SsrWorkspace const parts = routing::detail::carve_ssr(r.experts, tokens, w);
  if (!w.status()) {
    return routing::detail::workspace_error(w.status(), w, r, tokens, "ssr");
  }
  if (r.use_ot) {
    arch::KernelLaunch const l{.grid = 1, .block = transport_block_threads};
    return arch::launch(ssr_kernel<MaxK>, l, stream, r, routing::detail::kernel_args(b), parts, result, diagnostics);
  }
  std::int64_t blocks = (tokens + transport_block_threads - 1) / transport_block_threads;
  blocks = blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks);  // one block at least: it writes the result
  if (max_blocks != 0 && blocks > max_blocks) {
    blocks = max_blocks;
  }
  arch::KernelLaunch const l{.grid = static_cast<unsigned>(blocks), .block = transport_block_threads};
  return arch::launch(ssr_softmax_top_k_kernel<MaxK>, l, stream, r, routing::detail::kernel_args(b), result,
                      diagnostics);
}

MOEKIT_ARCH_NAMESPACE_END
}  // namespace routing
MOEKIT_NAMESPACE_END
