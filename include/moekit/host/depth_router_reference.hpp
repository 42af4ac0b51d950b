#pragma once
// The oracle for the depth and token routers (ALGORITHMS.md §4.3-§4.6), written independently of
// routing/depth.hpp, token_skip.hpp and layer_router.hpp: plain loops, std::stable_sort with an
// explicit comparator, losses and gradients in double from the formulas.
//
// What must agree bit for bit with the routers (selections, decisions) is decided on fp32
// scores, so those scores are recomputed here in fp32 in the order the routers document (the
// "lane order" dot product, the MLPs' fmaf chains) and on them the selection is made; everything
// derived (probabilities, losses, gradients, ŝ) is then computed in double from those scores and
// rounded once into the output buffers. Checked mode as in the routers: bad parameters and
// non-finite inputs return a Status before anything is written.
//
// The losses are also exposed on double inputs (reference_*_loss), so tests can compare their
// gradients with central finite differences.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/routing/depth.hpp"
#include "moekit/routing/layer_router.hpp"
#include "moekit/routing/token_skip.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace host {

namespace depth_reference {

// Positions in selection order: `first` ones before all others, then larger score first, NaN
// after every number, equal scores (and NaN among NaN) by ascending position.
inline std::vector<std::int64_t> order_by_score(std::vector<float> const& score, std::vector<bool> const& first) {
  std::vector<std::int64_t> order(score.size());
  std::iota(order.begin(), order.end(), std::int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) {
    auto const ua = static_cast<std::size_t>(a), ub = static_cast<std::size_t>(b);
    if (first[ua] != first[ub]) {
      return bool(first[ua]);
    }
    if (first[ua]) {
      return false;
    }
    bool const na = std::isnan(score[ua]), nb = std::isnan(score[ub]);
    if (na || nb) {
      return !na && nb;
    }
    return score[ua] > score[ub];
  });
  return order;
}

// The routers' fp32 dot product: lane l sums k = l, l + 32, ... with fma, then lanes are
// combined pairwise, lane l with lane l XOR o, for o = 16, 8, 4, 2, 1.
template <class A, class B>
float lane_dot_fp32(A const* a, B const* b, std::int64_t n) {
  std::array<float, 32> lane{};
  for (int l = 0; l < 32; ++l) {
    float acc = 0.f;
    for (std::int64_t k = l; k < n; k += 32) {
      acc = std::fma(static_cast<float>(a[k]), static_cast<float>(b[k]), acc);
    }
    lane[static_cast<std::size_t>(l)] = acc;
  }
  for (int o = 16; o >= 1; o /= 2) {
    std::array<float, 32> next{};
    for (int l = 0; l < 32; ++l) {
      next[static_cast<std::size_t>(l)] = lane[static_cast<std::size_t>(l)] + lane[static_cast<std::size_t>(l ^ o)];
    }
    lane = next;
  }
  return lane[0];
}

inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }
inline double softplus(double z) { return std::max(z, 0.0) + std::log1p(std::exp(-std::fabs(z))); }

template <class View>
bool wanted(View const& v) {
  return routing::depth_detail::present(v);
}

}  // namespace depth_reference

// ---------------------------------------------------------------------------------------------
// Losses on double inputs, with their gradients (grad may be empty: not wanted).

// MoD: L = mean_i softplus(r_i) − y_i r_i; ∂L/∂r_i = (σ(r_i) − y_i)/n.
inline double reference_mod_aux_loss(std::span<double const> r, std::span<std::uint8_t const> y,
                                     std::span<double> grad = {}) {
  double sum = 0.0;
  auto const n = static_cast<double>(r.size());
  for (std::size_t i = 0; i < r.size(); ++i) {
    double const yi = y[i] != 0 ? 1.0 : 0.0;
    sum += y[i] != 0 ? depth_reference::softplus(r[i]) - r[i] : depth_reference::softplus(r[i]);  // no 0·(−∞)
    if (!grad.empty()) {
      grad[i] = (depth_reference::sigmoid(r[i]) - yi) / n;
    }
  }
  return r.empty() ? 0.0 : sum / n;
}

// γ-MoD: CE = mean_i −log softmax(l_i)[y_i] over n tokens, logits [n, 2]; ∂CE/∂l_i = (softmax − onehot)/n.
inline double reference_gamma_mod_ce(std::span<double const> logits, std::span<std::uint8_t const> y,
                                     std::span<double> grad = {}) {
  std::size_t const n = y.size();
  double sum = 0.0;
  for (std::size_t i = 0; i < n; ++i) {
    double const l0 = logits[2 * i], l1 = logits[2 * i + 1];
    double const m = std::max(l0, l1);
    double const lse = m + std::log(std::exp(l0 - m) + std::exp(l1 - m));
    sum += lse - (y[i] != 0 ? l1 : l0);
    if (!grad.empty()) {
      double const p1 = std::exp(l1 - lse), p0 = std::exp(l0 - lse);
      grad[2 * i] = (p0 - (y[i] != 0 ? 0.0 : 1.0)) / double(n);
      grad[2 * i + 1] = (p1 - (y[i] != 0 ? 1.0 : 0.0)) / double(n);
    }
  }
  return n == 0 ? 0.0 : sum / double(n);
}

// FTP [moekit]: ŝ_b = mean_i σ(−u_bi); L_s = mean_b max(s − ŝ_b, 0); u [batch, length].
// skip_rate (size batch) and grad (size batch·length) may be empty.
inline double reference_skip_rate_loss(std::span<double const> u, std::int64_t batch, std::int64_t length,
                                       double sparsity, std::span<double> grad = {}, std::span<double> skip_rate = {}) {
  double total = 0.0;
  for (std::int64_t b = 0; b < batch; ++b) {
    double shat = 0.0;
    for (std::int64_t i = 0; i < length; ++i) {
      shat += depth_reference::sigmoid(-u[static_cast<std::size_t>(b * length + i)]);
    }
    shat = length > 0 ? shat / double(length) : 0.0;
    if (!skip_rate.empty()) {
      skip_rate[static_cast<std::size_t>(b)] = shat;
    }
    bool const active = length > 0 && sparsity > shat;
    total += active ? sparsity - shat : 0.0;
    for (std::int64_t i = 0; !grad.empty() && i < length; ++i) {
      double const v = u[static_cast<std::size_t>(b * length + i)];
      grad[static_cast<std::size_t>(b * length + i)] =
          active ? depth_reference::sigmoid(v) * depth_reference::sigmoid(-v) / (double(batch) * double(length)) : 0.0;
    }
  }
  return batch > 0 ? total / double(batch) : 0.0;
}

// Dr.LLM effective-number class weights: w_c = (1 − β)/(1 − β^{n_c}), α_c = 3 w_c / Σ w.
inline std::array<double, 3> reference_focal_alpha(double beta, std::array<double, 3> const& counts) {
  std::array<double, 3> w{};
  for (std::size_t c = 0; c < 3; ++c) {
    w[c] = (1.0 - beta) / (1.0 - std::pow(beta, counts[c]));
  }
  double const sum = w[0] + w[1] + w[2];
  return {3.0 * w[0] / sum, 3.0 * w[1] / sum, 3.0 * w[2] / sum};
}

// Dr.LLM focal loss over items z [n, 3], labels y [n]: (1/divisor) Σ −α_y (1 − p_y)^γ log p_y.
inline double reference_focal_loss(std::span<double const> z, std::span<std::int8_t const> y,
                                   std::array<double, 3> const& alpha, double gamma, double divisor,
                                   std::span<double> grad = {}) {
  double sum = 0.0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    double const* zi = &z[3 * i];
    double const m = std::max({zi[0], zi[1], zi[2]});
    double const lse = m + std::log(std::exp(zi[0] - m) + std::exp(zi[1] - m) + std::exp(zi[2] - m));
    double p[3];
    for (int c = 0; c < 3; ++c) {
      p[c] = std::exp(zi[c] - lse);
    }
    int const t = y[i];
    double const log_p = zi[t] - lse;
    double one_minus = 0.0;
    for (int c = 0; c < 3; ++c) {
      one_minus += c == t ? 0.0 : p[c];
    }
    sum += -alpha[static_cast<std::size_t>(t)] * std::pow(one_minus, gamma) * log_p;
    if (!grad.empty()) {
      double coef = -alpha[static_cast<std::size_t>(t)];
      if (gamma != 0.0) {
        coef = one_minus == 0.0
                   ? 0.0
                   : alpha[static_cast<std::size_t>(t)] *
                         (gamma * std::pow(one_minus, gamma - 1.0) * p[t] * log_p - std::pow(one_minus, gamma));
      }
      for (int c = 0; c < 3; ++c) {
        grad[3 * i + static_cast<std::size_t>(c)] = coef * ((c == t ? 1.0 : 0.0) - p[c]) / divisor;
      }
    }
  }
  return sum / divisor;
}

// ---------------------------------------------------------------------------------------------
// Mixture-of-Depths (§4.5)

template <class T>
[[nodiscard]] Status reference_mod(routing::MixtureOfDepths const& router,
                                   routing::MixtureOfDepthsBuffers<MemorySpace::host, T> const& b) {
  routing::depth_detail::SequenceShape sh;
  if (Status s = routing::depth_detail::check_buffers(router, b, sh); !s) {
    return s;
  }
  using depth_reference::wanted;
  bool const from_x = wanted(b.x);
  std::int64_t const B = sh.batch, S = sh.length, H = sh.hidden;
  if (from_x) {
    for (std::int64_t k = 0; k < H; ++k) {
      if (!std::isfinite(static_cast<float>(b.weight(k)))) {
        return error(Status::invalid_argument, "MixtureOfDepths: non-finite router weight at index %lld",
                     static_cast<long long>(k));
      }
    }
  }
  std::vector<float> r(static_cast<std::size_t>(B * S));
  for (std::int64_t s = 0; s < B; ++s) {
    for (std::int64_t i = 0; i < S; ++i) {
      if (from_x) {
        for (std::int64_t k = 0; k < H; ++k) {
          if (!std::isfinite(static_cast<float>(b.x(s, i, k)))) {
            return error(Status::invalid_argument,
                         "MixtureOfDepths: non-finite router input at sequence %lld, position %lld, feature %lld",
                         static_cast<long long>(s), static_cast<long long>(i), static_cast<long long>(k));
          }
        }
      }
      float const v = from_x ? depth_reference::lane_dot_fp32(b.x.pointer(s, i, 0), b.weight.data, H) : b.scores(s, i);
      if (std::isnan(v) || v == INFINITY) {
        return error(Status::invalid_argument,
                     "MixtureOfDepths: non-finite routing score at sequence %lld, position %lld",
                     static_cast<long long>(s), static_cast<long long>(i));
      }
      r[static_cast<std::size_t>(s * S + i)] = v;
    }
  }
  std::vector<double> rd(r.begin(), r.end());
  std::vector<std::uint8_t> y(r.size(), 0);
  for (std::int64_t s = 0; s < B; ++s) {
    std::vector<float> const score(r.begin() + s * S, r.begin() + (s + 1) * S);
    std::vector<std::int64_t> order = depth_reference::order_by_score(score, std::vector<bool>(score.size(), false));
    order.resize(static_cast<std::size_t>(sh.capacity));
    std::sort(order.begin(), order.end());
    for (std::size_t j = 0; j < order.size(); ++j) {
      y[static_cast<std::size_t>(s * S + order[j])] = 1;
      if (wanted(b.selected)) {
        b.selected(s, static_cast<std::int64_t>(j)) = static_cast<int>(order[j]);
      }
    }
  }
  std::vector<double> grad(r.size());
  double const loss = reference_mod_aux_loss(rd, y, grad);
  for (std::int64_t s = 0; s < B; ++s) {
    for (std::int64_t i = 0; i < S; ++i) {
      auto const at = static_cast<std::size_t>(s * S + i);
      if (from_x) {
        b.scores_out(s, i) = r[at];
      }
      if (wanted(b.keep)) {
        b.keep(s, i) = y[at];
      }
      if (wanted(b.grad_scores)) {
        b.grad_scores(s, i) = static_cast<float>(grad[at]);
      }
    }
  }
  if (wanted(b.aux_loss)) {
    b.aux_loss(0) = static_cast<float>(loss);
  }
  return Status::ok;
}

// out = x + r·f for the selected rows (in double, rounded once).
[[nodiscard]] inline Status reference_combine(routing::CombineBuffers<MemorySpace::host> const& b) {
  if (Status s = routing::depth_detail::check_combine(b); !s) {
    return s;
  }
  std::int64_t const S = b.x.extent(1);
  for (std::int64_t s = 0; s < b.selected.extent(0); ++s) {
    int last = -1;
    for (std::int64_t j = 0; j < b.selected.extent(1); ++j) {
      int const p = b.selected(s, j);
      if (p == S) {
        last = static_cast<int>(S);
        continue;
      }
      if (p < 0 || p >= S || p <= last) {
        return error(Status::invalid_argument, "combine: selected[%lld, %lld] = %d is not ascending in [0, S)",
                     static_cast<long long>(s), static_cast<long long>(j), p);
      }
      last = p;
    }
  }
  for (std::int64_t s = 0; s < b.selected.extent(0); ++s) {
    for (std::int64_t j = 0; j < b.selected.extent(1); ++j) {
      int const p = b.selected(s, j);
      if (p == S) {
        continue;
      }
      for (std::int64_t h = 0; h < b.x.extent(2); ++h) {
        b.x(s, p, h) = static_cast<float>(double(b.x(s, p, h)) + double(b.scale(s, p)) * double(b.update(s, j, h)));
      }
    }
  }
  return Status::ok;
}

// ---------------------------------------------------------------------------------------------
// γ-MoD (§4.6): masked tokens always kept, then the routable ones by p (fp32 σ(l1 − l0)).

template <class T>
[[nodiscard]] Status reference_gamma_mod(routing::GammaMod const& router,
                                         routing::GammaModBuffers<MemorySpace::host, T> const& b) {
  routing::depth_detail::SequenceShape sh;
  if (Status s = routing::depth_detail::check_buffers(router, b, sh); !s) {
    return s;
  }
  using depth_reference::wanted;
  bool const from_x = wanted(b.x);
  std::int64_t const B = sh.batch, S = sh.length, H = sh.hidden;
  std::vector<float> l(static_cast<std::size_t>(2 * B * S));
  for (std::int64_t s = 0; s < B; ++s) {
    for (std::int64_t i = 0; i < S; ++i) {
      for (int c = 0; c < 2; ++c) {
        float v;
        if (from_x) {
          for (std::int64_t k = 0; k < H; ++k) {
            if (!std::isfinite(static_cast<float>(b.x(s, i, k))) ||
                !std::isfinite(static_cast<float>(b.weight(c, k)))) {
              return error(Status::invalid_argument,
                           "GammaMod: non-finite router input at sequence %lld, position %lld",
                           static_cast<long long>(s), static_cast<long long>(i));
            }
          }
          v = depth_reference::lane_dot_fp32(b.x.pointer(s, i, 0), b.weight.pointer(c, 0), H);
        } else {
          v = b.logits(s, i, c);
        }
        if (std::isnan(v) || v == INFINITY) {
          return error(Status::invalid_argument, "GammaMod: non-finite router logit at sequence %lld, position %lld",
                       static_cast<long long>(s), static_cast<long long>(i));
        }
        l[static_cast<std::size_t>(2 * (s * S + i) + c)] = v;
      }
      if (l[static_cast<std::size_t>(2 * (s * S + i))] == -INFINITY &&
          l[static_cast<std::size_t>(2 * (s * S + i) + 1)] == -INFINITY) {
        return error(Status::invalid_argument, "GammaMod: both logits -inf at sequence %lld, position %lld",
                     static_cast<long long>(s), static_cast<long long>(i));
      }
    }
  }
  std::vector<std::uint8_t> y(static_cast<std::size_t>(B * S), 0);
  for (std::int64_t s = 0; s < B; ++s) {
    std::vector<float> p(static_cast<std::size_t>(S));
    std::vector<bool> masked(static_cast<std::size_t>(S), false);
    std::int64_t routable = 0;
    for (std::int64_t i = 0; i < S; ++i) {
      auto const at = static_cast<std::size_t>(s * S + i);
      p[static_cast<std::size_t>(i)] = fp32::sigmoid(l[2 * at + 1] - l[2 * at]);
      masked[static_cast<std::size_t>(i)] = wanted(b.masked) && b.masked(s, i) != 0;
      routable += masked[static_cast<std::size_t>(i)] ? 0 : 1;
    }
    if (router.mode == routing::ModInference::topk) {
      auto const skip = static_cast<std::int64_t>(std::floor(router.routing_ratio * double(routable) + 1e-9));
      std::vector<std::int64_t> const order = depth_reference::order_by_score(p, masked);
      for (std::int64_t j = 0; j < S - skip; ++j) {
        y[static_cast<std::size_t>(s * S + order[static_cast<std::size_t>(j)])] = 1;
      }
    } else {
      for (std::int64_t i = 0; i < S; ++i) {
        float const pi = p[static_cast<std::size_t>(i)];
        bool const pass = S > 1 ? pi > router.prefill_threshold : pi >= router.decode_threshold;
        y[static_cast<std::size_t>(s * S + i)] = masked[static_cast<std::size_t>(i)] || pass ? 1 : 0;
      }
    }
  }
  std::vector<double> ld(l.begin(), l.end());
  std::vector<double> grad(ld.size());
  double const ce = reference_gamma_mod_ce(ld, y, grad);
  for (std::int64_t s = 0; s < B; ++s) {
    std::int64_t count = 0;
    for (std::int64_t i = 0; i < S; ++i) {
      auto const at = static_cast<std::size_t>(s * S + i);
      if (from_x) {
        b.logits_out(s, i, 0) = l[2 * at];
        b.logits_out(s, i, 1) = l[2 * at + 1];
      }
      if (wanted(b.probs)) {
        b.probs(s, i) = static_cast<float>(depth_reference::sigmoid(ld[2 * at + 1] - ld[2 * at]));
      }
      if (wanted(b.keep)) {
        b.keep(s, i) = y[at];
      }
      if (wanted(b.grad_logits)) {
        b.grad_logits(s, i, 0) = static_cast<float>(grad[2 * at]);
        b.grad_logits(s, i, 1) = static_cast<float>(grad[2 * at + 1]);
      }
      if (y[at] != 0 && wanted(b.selected)) {
        b.selected(s, count) = static_cast<int>(i);
      }
      count += y[at];
    }
    for (std::int64_t j = count; wanted(b.selected) && j < S; ++j) {
      b.selected(s, j) = static_cast<int>(S);
    }
    if (wanted(b.counts)) {
      b.counts(s) = static_cast<int>(count);
    }
  }
  if (wanted(b.loss)) {
    b.loss(0) = static_cast<float>(ce);
  }
  return Status::ok;
}

// The m layers of lowest ARank (ties to the lower layer), ascending.
[[nodiscard]] inline Status reference_select_mod_layers(std::vector<double> const& arank, int m,
                                                        std::vector<int>& layers) {
  if (m < 0 || m > static_cast<int>(arank.size())) {
    return error(Status::invalid_argument, "select_mod_layers: m out of range");
  }
  for (double v : arank) {
    if (!std::isfinite(v)) {
      return error(Status::invalid_argument, "select_mod_layers: non-finite ARank");
    }
  }
  std::vector<std::pair<double, int>> keyed;
  for (std::size_t i = 0; i < arank.size(); ++i) {
    keyed.emplace_back(arank[i], static_cast<int>(i));
  }
  std::sort(keyed.begin(), keyed.end());  // (ARank, layer): ties to the lower layer
  layers.clear();
  for (int j = 0; j < m; ++j) {
    layers.push_back(keyed[static_cast<std::size_t>(j)].second);
  }
  std::sort(layers.begin(), layers.end());
  return Status::ok;
}

// ---------------------------------------------------------------------------------------------
// FTP token skip (§4.4, moekit's definitions)

namespace depth_reference {
// u for features f (fp32, the router's order: per hidden unit an fma chain over the 4 features
// from 0, + b1, ReLU; per class an fma chain over the 64 units from 0, + b2; u = z_keep − z_skip).
inline float token_skip_u(routing::TokenSkipRouter const& r, std::array<float, 4> const& f) {
  std::array<float, 64> h{};
  for (int j = 0; j < 64; ++j) {
    float acc = 0.f;
    for (int k = 0; k < 4; ++k) {
      acc = std::fma(r.w1[4 * j + k], f[static_cast<std::size_t>(k)], acc);
    }
    acc += r.b1[j];
    h[static_cast<std::size_t>(j)] = acc < 0.f ? 0.f : acc;
  }
  float z[2];
  for (int c = 0; c < 2; ++c) {
    float acc = 0.f;
    for (int j = 0; j < 64; ++j) {
      acc = std::fma(r.w2[64 * c + j], h[static_cast<std::size_t>(j)], acc);
    }
    z[c] = acc + r.b2[c];
  }
  return z[1] - z[0];
}

// Block 0: a_i = (Σ_{q=i}^{L−1} 1/(q+1)) / (L − i), the sum in double over ascending q.
inline float uniform_attention(std::int64_t i, std::int64_t length) {
  double sum = 0.0;
  for (std::int64_t q = i; q < length; ++q) {
    sum += 1.0 / double(q + 1);
  }
  return static_cast<float>(sum / double(length - i));
}

inline float index_fraction(std::int64_t i, std::int64_t length) {
  return length > 1 ? float(i) / float(length - 1) : 0.f;
}

inline Status check_mlp(routing::TokenSkipRouter const& r) {
  for (int k = 0; k < 256; ++k) {
    if (!std::isfinite(r.w1[k]) || (k < 64 && !std::isfinite(r.b1[k])) || (k < 128 && !std::isfinite(r.w2[k])) ||
        (k < 2 && !std::isfinite(r.b2[k]))) {
      return error(Status::invalid_argument, "TokenSkipRouter: non-finite MLP weight");
    }
  }
  return Status::ok;
}

inline Status attention(HostTensor<float const, 2> const& a, std::int64_t s, std::int64_t length,
                        std::vector<float>& out) {
  out.assign(static_cast<std::size_t>(length), 0.f);
  for (std::int64_t i = 0; i < length; ++i) {
    float const v = wanted(a) ? a(s, i) : uniform_attention(i, length);
    if (!std::isfinite(v)) {
      return error(Status::invalid_argument, "TokenSkipRouter: non-finite attention score at sequence %lld",
                   static_cast<long long>(s));
    }
    out[static_cast<std::size_t>(i)] = v;
  }
  return Status::ok;
}
}  // namespace depth_reference

[[nodiscard]] inline Status reference_token_skip(routing::TokenSkipRouter const& router,
                                                 routing::TokenSkipBuffers<MemorySpace::host> const& b) {
  std::int64_t B = 0, L = 0;
  if (Status s = routing::token_skip_detail::check_buffers(router, b, B, L); !s) {
    return s;
  }
  if (Status s = depth_reference::check_mlp(router); !s) {
    return s;
  }
  using depth_reference::wanted;
  std::vector<float> u(static_cast<std::size_t>(B * L));
  std::vector<std::array<float, 4>> f(u.size());
  std::vector<float> a;
  for (std::int64_t s = 0; s < B; ++s) {
    if (Status st = depth_reference::attention(b.attention, s, L, a); !st) {
      return st;
    }
    std::vector<std::int64_t> const by_attention =
        depth_reference::order_by_score(a, std::vector<bool>(a.size(), false));
    std::vector<std::int64_t> rank(static_cast<std::size_t>(L));
    for (std::size_t r = 0; r < by_attention.size(); ++r) {
      rank[static_cast<std::size_t>(by_attention[r])] = static_cast<std::int64_t>(r);
    }
    for (std::int64_t i = 0; i < L; ++i) {
      auto const at = static_cast<std::size_t>(s * L + i);
      f[at] = {depth_reference::index_fraction(i, L), a[static_cast<std::size_t>(i)],
               depth_reference::index_fraction(rank[static_cast<std::size_t>(i)], L),
               static_cast<float>(router.sparsity)};
      u[at] = depth_reference::token_skip_u(router, f[at]);
      if (std::isnan(u[at]) || u[at] == INFINITY) {
        return error(Status::invalid_argument, "TokenSkipRouter: non-finite keep score at sequence %lld, position %lld",
                     static_cast<long long>(s), static_cast<long long>(i));
      }
    }
  }
  auto const skip =
      L > 0 ? std::min<std::int64_t>(static_cast<std::int64_t>(std::floor(router.sparsity * double(L) + 1e-9)), L - 1)
            : 0;
  std::vector<double> ud(u.begin(), u.end());
  std::vector<double> grad(u.size()), skip_rate(static_cast<std::size_t>(B));
  double const loss = reference_skip_rate_loss(ud, B, L, router.sparsity, grad, skip_rate);
  for (std::int64_t s = 0; s < B; ++s) {
    std::vector<float> const score(u.begin() + s * L, u.begin() + (s + 1) * L);
    std::vector<bool> first(static_cast<std::size_t>(L), false);
    if (L > 0) {
      first[0] = true;  // token 0 is always kept
    }
    std::vector<std::int64_t> kept = depth_reference::order_by_score(score, first);
    kept.resize(static_cast<std::size_t>(L - skip));
    std::sort(kept.begin(), kept.end());
    std::vector<std::uint8_t> keep(static_cast<std::size_t>(L), 0);
    for (std::size_t j = 0; j < kept.size(); ++j) {
      keep[static_cast<std::size_t>(kept[j])] = 1;
      if (wanted(b.selected)) {
        b.selected(s, static_cast<std::int64_t>(j)) = static_cast<int>(kept[j]);
      }
    }
    for (std::int64_t i = 0; i < L; ++i) {
      auto const at = static_cast<std::size_t>(s * L + i);
      b.scores(s, i) = u[at];
      for (int k = 0; wanted(b.features) && k < 4; ++k) {
        b.features(s, i, k) = f[at][static_cast<std::size_t>(k)];
      }
      if (wanted(b.keep)) {
        b.keep(s, i) = keep[static_cast<std::size_t>(i)];
      }
      if (wanted(b.grad_scores)) {
        b.grad_scores(s, i) = static_cast<float>(grad[at]);
      }
    }
    if (wanted(b.skip_rate)) {
      b.skip_rate(s) = static_cast<float>(skip_rate[static_cast<std::size_t>(s)]);
    }
  }
  if (wanted(b.loss)) {
    b.loss(0) = static_cast<float>(loss);
  }
  return Status::ok;
}

[[nodiscard]] inline Status reference_token_skip_decode(routing::TokenSkipRouter const& router,
                                                        routing::TokenSkipDecodeBuffers<MemorySpace::host> const& b) {
  std::int64_t B = 0, L = 0;
  if (Status s = routing::token_skip_detail::check_decode_buffers(router, b, B, L); !s) {
    return s;
  }
  if (Status s = depth_reference::check_mlp(router); !s) {
    return s;
  }
  std::vector<float> u(static_cast<std::size_t>(B));
  std::vector<float> a;
  for (std::int64_t s = 0; s < B; ++s) {
    if (Status st = depth_reference::attention(b.attention, s, L, a); !st) {
      return st;
    }
    std::vector<std::int64_t> const order = depth_reference::order_by_score(a, std::vector<bool>(a.size(), false));
    auto const rank = std::find(order.begin(), order.end(), L - 1) - order.begin();
    u[static_cast<std::size_t>(s)] = depth_reference::token_skip_u(
        router, {depth_reference::index_fraction(L - 1, L), a[static_cast<std::size_t>(L - 1)],
                 depth_reference::index_fraction(rank, L), static_cast<float>(router.sparsity)});
    if (std::isnan(u[static_cast<std::size_t>(s)]) || u[static_cast<std::size_t>(s)] == INFINITY) {
      return error(Status::invalid_argument, "TokenSkipRouter decode: non-finite keep score at sequence %lld",
                   static_cast<long long>(s));
    }
  }
  for (std::int64_t s = 0; s < B; ++s) {
    float const v = u[static_cast<std::size_t>(s)];
    b.scores(s) = v;
    // The rule is on the router's fp32 probability: process iff σ(u) >= threshold (token 0 alone: kept).
    b.keep(s) = L == 1 || fp32::sigmoid(v) >= router.decode_threshold ? 1 : 0;
  }
  return Status::ok;
}

// ---------------------------------------------------------------------------------------------
// Dr.LLM layer router (§4.3)

namespace depth_reference {
inline float gelu_tanh_fp32(float x) {
  // 0.5 x (1 + tanh(y)) = x σ(2y), y = sqrt(2/π)(x + 0.044715 x³), with the routers' fp32 steps.
  float const cube = (x * x) * x;
  return x * fp32::sigmoid(1.5957691216057308f * std::fma(0.044715f, cube, x));
}
}  // namespace depth_reference

template <class T>
[[nodiscard]] Status reference_layer_router(routing::LayerRouter const& router,
                                            routing::LayerRouterBuffers<MemorySpace::host, T> const& b) {
  if (Status s = routing::layer_router_detail::check_buffers(router, b); !s) {
    return s;
  }
  using depth_reference::wanted;
  std::int64_t const B = b.hidden.extent(0), n = b.hidden.extent(1), d = router.hidden_size;
  for (std::int64_t k = 0; k < 128 * d; ++k) {
    if (!std::isfinite(router.w1[k]) || (k < 128 && !std::isfinite(router.b1[k])) ||
        (k < 384 && !std::isfinite(router.w2[k])) || (k < 3 && !std::isfinite(router.b2[k]))) {
      return error(Status::invalid_argument, "LayerRouter: non-finite router weight");
    }
  }
  for (std::int64_t s = 0; s < B; ++s) {
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t k = 0; k < d; ++k) {
        if (!std::isfinite(static_cast<float>(b.hidden(s, i, k)))) {
          return error(Status::invalid_argument, "LayerRouter: non-finite hidden state at sequence %lld",
                       static_cast<long long>(s));
        }
      }
    }
    if (wanted(b.labels) && (b.labels(s) < 0 || b.labels(s) > 2)) {
      return error(Status::invalid_argument, "LayerRouter: layer label must be 0, 1 or 2 (sequence %lld)",
                   static_cast<long long>(s));
    }
  }
  std::int64_t const W = std::min<std::int64_t>(router.num_windows, n);
  std::int64_t const ws = n / W;  // positions [W·ws, n) are ignored
  std::vector<float> z(static_cast<std::size_t>(3 * B));
  for (std::int64_t s = 0; s < B; ++s) {
    std::array<float, 3> sum{};
    for (std::int64_t w = 0; w < W; ++w) {
      std::vector<float> m(static_cast<std::size_t>(d));
      for (std::int64_t k = 0; k < d; ++k) {
        float acc = 0.f;
        for (std::int64_t q = w * ws; q < (w + 1) * ws; ++q) {
          acc += static_cast<float>(b.hidden(s, q, k));
        }
        m[static_cast<std::size_t>(k)] = acc / float(ws);
      }
      std::array<float, 128> g{};
      for (int j = 0; j < 128; ++j) {
        g[static_cast<std::size_t>(j)] = depth_reference::gelu_tanh_fp32(
            depth_reference::lane_dot_fp32(router.w1 + j * d, m.data(), d) + router.b1[j]);
      }
      for (int c = 0; c < 3; ++c) {
        float acc = 0.f;
        for (int j = 0; j < 128; ++j) {
          acc = std::fma(router.w2[128 * c + j], g[static_cast<std::size_t>(j)], acc);
        }
        sum[static_cast<std::size_t>(c)] += acc + router.b2[c];
      }
    }
    for (int c = 0; c < 3; ++c) {
      z[static_cast<std::size_t>(3 * s + c)] = sum[static_cast<std::size_t>(c)] / float(W);
      if (!std::isfinite(z[static_cast<std::size_t>(3 * s + c)])) {
        return error(Status::invalid_argument, "LayerRouter: non-finite layer logits at sequence %lld",
                     static_cast<long long>(s));
      }
    }
  }
  std::vector<double> zd(z.begin(), z.end());
  std::array<double, 3> const alpha = reference_focal_alpha(router.focal_beta, router.class_counts);
  double const divisor = router.loss_normaliser > 0.0 ? router.loss_normaliser : double(B);
  std::vector<double> grad(zd.size());
  double loss = 0.0;
  if (wanted(b.labels)) {
    std::vector<std::int8_t> y(static_cast<std::size_t>(B));
    for (std::int64_t s = 0; s < B; ++s) {
      y[static_cast<std::size_t>(s)] = b.labels(s);
    }
    loss = reference_focal_loss(zd, y, alpha, router.focal_gamma, divisor, grad);
  }
  for (std::int64_t s = 0; s < B; ++s) {
    double const* zi = &zd[static_cast<std::size_t>(3 * s)];
    double const m = std::max({zi[0], zi[1], zi[2]});
    double const e[3] = {std::exp(zi[0] - m), std::exp(zi[1] - m), std::exp(zi[2] - m)};
    double const q[3] = {e[0] / (e[0] + e[1] + e[2]), e[1] / (e[0] + e[1] + e[2]), e[2] / (e[0] + e[1] + e[2])};
    // Decision: argmax of the fp32 logits (ties to the lower class), or of the penalty blend.
    int decision = 0;
    if (router.static_routing) {
      decision = 1;
    } else if (router.use_router_penalty) {
      double const p = router.router_penalty;
      double f[3];
      for (int c = 0; c < 3; ++c) {
        if (p <= -0.5) {
          double const t = (p + 1.0) / 0.5;
          f[c] = (1.0 - t) * (c == 0 ? 1.0 : 0.0) + t * q[c];
        } else if (p <= 0.5) {
          double const t = p + 0.5;
          f[c] = (1.0 - t) * q[c] + t * (c == 1 ? 1.0 : 0.0);
        } else {
          double const t = (p - 0.5) / 0.5;
          f[c] = (1.0 - t) * (c == 1 ? 1.0 : 0.0) + t * (c == 2 ? 1.0 : 0.0);
        }
      }
      decision = int(std::max_element(f, f + 3) - f);  // the first maximum: ties to the lower class
    } else {
      float const* zf = &z[static_cast<std::size_t>(3 * s)];
      decision = int(std::max_element(zf, zf + 3) - zf);
    }
    b.decisions(s) = static_cast<std::int8_t>(decision);
    for (int c = 0; c < 3; ++c) {
      auto const at = static_cast<std::size_t>(3 * s + c);
      if (wanted(b.logits)) {
        b.logits(s, c) = z[at];
      }
      if (wanted(b.probs)) {
        b.probs(s, c) = static_cast<float>(q[c]);
      }
      if (wanted(b.grad_logits)) {
        b.grad_logits(s, c) = static_cast<float>(grad[at]);
      }
      if (wanted(b.grad_window_logits)) {
        b.grad_window_logits(s, c) = static_cast<float>(grad[at] / double(W));
      }
    }
  }
  if (wanted(b.loss)) {
    b.loss(0) = static_cast<float>(loss);
  }
  return Status::ok;
}

}  // namespace host
MOEKIT_NAMESPACE_END
