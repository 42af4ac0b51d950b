#pragma once
// The oracle for TopK and GroupedTopK (ALGORITHMS.md §1.1, §1.3-§1.7), written independently of
// the routers' route_token: selection with std::stable_sort over fp32 keys (NaN last, ties to
// the lower index), weights computed in double from the formulas. Checked mode: bad parameters
// and non-finite logits return a Status with a message, before anything is written.
// Selections must match the device bit for bit; weights to fp32 rounding.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <vector>

#include "moekit/config.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/routing/checked_logits.hpp"
#include "moekit/routing/grouped_top_k.hpp"
#include "moekit/routing/route_buffers.hpp"
#include "moekit/routing/top_k.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace host {

namespace detail {
// Indices of `keys` in selection order: descending key, NaN last, ties by ascending index.
inline std::vector<int> selection_order(std::vector<float> const& keys, std::vector<int> const& candidates) {
  std::vector<int> order = candidates;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    float const ka = keys[a], kb = keys[b];
    if (std::isnan(ka) || std::isnan(kb)) {
      return !std::isnan(ka) && std::isnan(kb) ? true : (std::isnan(ka) && std::isnan(kb) ? a < b : false);
    }
    return ka > kb || (ka == kb && a < b);
  });
  return order;
}

inline std::vector<int> all_indices(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

inline std::vector<double> softmax_double(std::vector<float> const& z) {
  double m = -INFINITY;
  for (float v : z) {
    m = std::max(m, double(v));
  }
  std::vector<double> p(z.size());
  double sum = 0;
  for (std::size_t e = 0; e < z.size(); ++e) {
    p[e] = std::exp(double(z[e]) - m);
    sum += p[e];
  }
  for (double& v : p) {
    v /= sum;
  }
  return p;
}

inline double sigmoid_double(float z) { return 1.0 / (1.0 + std::exp(-double(z))); }

template <class R>
Status check(R const& router, routing::RouteBuffers<MemorySpace::host> const& b) {
  if (Status s = routing::check_route_buffers(router, b); !s) {
    return s;
  }
  return routing::check_logits_finite(b.logits);
}

inline std::vector<float> row(HostTensor<float const, 2> const& logits, std::int64_t t) {
  std::vector<float> z(static_cast<std::size_t>(logits.extent(1)));
  for (std::size_t e = 0; e < z.size(); ++e) {
    z[e] = logits(t, static_cast<std::int64_t>(e));
  }
  return z;
}
}  // namespace detail

template <int MaxK>
[[nodiscard]] Status reference_route(routing::TopK<MaxK> const& r, routing::RouteBuffers<MemorySpace::host> const& b) {
  if (Status s = detail::check(r, b); !s) {
    return s;
  }
  for (std::int64_t t = 0; t < b.logits.extent(0); ++t) {
    std::vector<float> z = detail::row(b.logits, t);
    if (r.round_logits_to_bf16) {
      for (float& v : z) {
        v = routing::round_to_bf16(v);
      }
    }
    std::vector<int> const order = detail::selection_order(z, detail::all_indices(r.experts));
    std::vector<double> const p = detail::softmax_double(z);
    std::vector<double> w(static_cast<std::size_t>(r.k));
    double sum = 0;
    for (int j = 0; j < r.k; ++j) {
      int const e = order[static_cast<std::size_t>(j)];
      switch (r.scoring) {
        case routing::ScoreFunction::softmax: w[j] = p[e]; break;
        case routing::ScoreFunction::sigmoid: w[j] = detail::sigmoid_double(z[e]); break;
        case routing::ScoreFunction::softmax_of_selected: w[j] = std::exp(double(z[e]) - double(z[order[0]])); break;
      }
      sum += w[j];
    }
    bool const normalise = r.norm_topk_prob || r.scoring == routing::ScoreFunction::softmax_of_selected;
    for (int j = 0; j < r.k; ++j) {
      b.ids(t, j) = order[static_cast<std::size_t>(j)];
      b.weights(t, j) = static_cast<float>((normalise ? w[j] / sum : w[j]) * r.routed_scaling_factor);
    }
  }
  return Status::ok;
}

template <int MaxK>
[[nodiscard]] Status reference_route(routing::GroupedTopK<MaxK> const& r,
                                     routing::RouteBuffers<MemorySpace::host> const& b) {
  if (Status s = detail::check(r, b); !s) {
    return s;
  }
  bool const biased = r.method == routing::TopKMethod::noaux_tc;
  bool const softmax = r.scoring == routing::ScoreFunction::softmax;
  int const groups = r.method == routing::TopKMethod::greedy ? 1 : r.n_group;
  int const group_size = r.experts / groups;
  for (std::int64_t t = 0; t < b.logits.extent(0); ++t) {
    std::vector<float> const z = detail::row(b.logits, t);
    std::vector<double> const p = detail::softmax_double(z);
    // Selection keys in fp32, exactly as specified: the logit, or fp32(sigmoid) + bias.
    std::vector<float> key = z;
    if (biased) {
      routing::SoftmaxNormaliser const n = routing::softmax_normaliser(z.data(), r.experts);
      for (int e = 0; e < r.experts; ++e) {
        float const s = softmax ? routing::softmax_entry(z[e], n) : fp32::sigmoid(z[e]);
        key[e] = s + (r.correction_bias ? r.correction_bias[e] : 0.f);
      }
    }
    std::vector<int> candidates;
    if (groups == 1) {
      candidates = detail::all_indices(r.experts);
    } else {
      std::vector<float> group_score(static_cast<std::size_t>(groups));
      for (int g = 0; g < groups; ++g) {
        std::vector<int> members(static_cast<std::size_t>(group_size));
        std::iota(members.begin(), members.end(), g * group_size);
        std::vector<int> const in_group = detail::selection_order(key, members);
        group_score[g] = biased ? key[in_group[0]] + key[in_group[1]] : key[in_group[0]];
      }
      std::vector<int> const group_order = detail::selection_order(group_score, detail::all_indices(groups));
      for (int i = 0; i < r.topk_group; ++i) {
        for (int e = 0; e < group_size; ++e) {
          candidates.push_back(group_order[static_cast<std::size_t>(i)] * group_size + e);
        }
      }
    }
    std::vector<int> const order = detail::selection_order(key, candidates);
    std::vector<double> s(static_cast<std::size_t>(r.k));
    double sum = 0;
    for (int j = 0; j < r.k; ++j) {
      int const e = order[static_cast<std::size_t>(j)];
      s[j] = softmax ? p[e] : detail::sigmoid_double(z[e]);
      sum += s[j];
    }
    bool const normalise = r.norm_topk_prob && (biased || r.k > 1);
    bool const scale = biased || !normalise;
    for (int j = 0; j < r.k; ++j) {
      double const w = (normalise ? s[j] / (sum + 1e-20) : s[j]) * (scale ? r.routed_scaling_factor : 1.0);
      b.ids(t, j) = order[static_cast<std::size_t>(j)];
      b.weights(t, j) = static_cast<float>(w);
    }
  }
  return Status::ok;
}

}  // namespace host
MOEKIT_NAMESPACE_END
