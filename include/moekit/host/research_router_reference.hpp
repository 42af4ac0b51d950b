#pragma once
// The oracle for the research per-token routers (ALGORITHMS.md §3.1 AdaMoE null experts, §3.2
// DynMoLE, §3.6 top-any, §4.1 ProMoE, §4.2 similarity router) and for the similarity scores,
// written independently of the routers' route_token: rank orders with std::stable_sort (NaN
// last, ties to the lower index), probabilities, entropies and weights in double from the
// formulas. Where a section defines a decision on fp32 values (§3.6's "fp32 product of the
// softmax outputs", §4.1's top-K of the fp32 activation S), the decision uses those fp32 values,
// computed with the policy's shared fp32 score functions; DynMoLE's thresholds are decided in
// double (tests keep inputs away from them, as §3.2 says). Checked mode: bad parameters,
// non-finite scores and bad side inputs return a Status with a message before anything is written.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <utility>
#include <vector>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/routing/checked_logits.hpp"
#include "moekit/routing/cosine_scores.hpp"
#include "moekit/routing/dynmole.hpp"
#include "moekit/routing/null_experts.hpp"
#include "moekit/routing/prototype.hpp"
#include "moekit/routing/route_buffers.hpp"
#include "moekit/routing/scores.hpp"
#include "moekit/routing/similarity.hpp"
#include "moekit/routing/top_any.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace host {

namespace research_detail {
using Buffers = routing::RouteBuffers<MemorySpace::host>;

// Candidates in selection order: descending key, NaN after everything, ties by ascending index.
inline std::vector<int> ranked(std::vector<float> const& key, std::vector<int> candidates) {
  std::stable_sort(candidates.begin(), candidates.end(), [&](int a, int b) {
    bool const na = std::isnan(key[a]), nb = std::isnan(key[b]);
    if (na != nb) {
      return nb;
    }
    return !na && key[a] > key[b];  // equal keys keep their (ascending) input order
  });
  return candidates;
}

inline std::vector<int> first_n(int n) {
  std::vector<int> v(static_cast<std::size_t>(n));
  std::iota(v.begin(), v.end(), 0);
  return v;
}

inline std::vector<float> row_of(HostTensor<float const, 2> const& m, std::int64_t t, int columns) {
  std::vector<float> r(static_cast<std::size_t>(columns));
  for (int e = 0; e < columns; ++e) {
    r[e] = m(t, e);
  }
  return r;
}

// softmax of the first n entries, in double.
inline std::vector<double> softmax(std::vector<float> const& z, int n) {
  double max = -INFINITY;
  for (int e = 0; e < n; ++e) {
    max = std::max(max, double(z[e]));
  }
  std::vector<double> p(static_cast<std::size_t>(n));
  double sum = 0;
  for (int e = 0; e < n; ++e) {
    p[e] = std::exp(double(z[e]) - max);
    sum += p[e];
  }
  for (double& v : p) {
    v /= sum;
  }
  return p;
}

inline double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

template <class R>
Status check(R const& r, Buffers const& b, char const* what) {
  if (Status s = routing::check_route_buffers(r, b); !s) {
    return s;
  }
  if (Status s = routing::check_logits_finite(b.logits, what); !s) {
    return s;
  }
  return r.validate_inputs(b.logits.extent(0));
}

inline void write_slot(Buffers const& b, std::int64_t t, int j, int id, double w) {
  b.ids(t, j) = id;
  b.weights(t, j) = static_cast<float>(w);
}
}  // namespace research_detail

// AdaMoE (§3.1): top-k over all n + m logits, weights renormalised over the selected true experts.
template <int MaxK>
[[nodiscard]] Status reference_route(routing::NullExperts<MaxK> const& r, research_detail::Buffers const& b) {
  if (Status s = research_detail::check(r, b, "router logits"); !s) {
    return s;
  }
  int const experts = r.num_experts();
  for (std::int64_t t = 0; t < b.logits.extent(0); ++t) {
    std::vector<float> const z = research_detail::row_of(b.logits, t, experts);
    std::vector<int> const order = research_detail::ranked(z, research_detail::first_n(experts));
    std::vector<double> const p = research_detail::softmax(z, experts);
    double true_sum = 0;
    int active = 0;
    for (int j = 0; j < r.k; ++j) {
      if (order[j] < r.true_experts) {
        true_sum += p[order[j]];
        ++active;
      }
    }
    for (int j = 0; j < r.k; ++j) {
      int const e = order[j];
      research_detail::write_slot(b, t, j, e, e < r.true_experts && true_sum > 0 ? p[e] / true_sum : 0.0);
    }
    if (r.num_true != nullptr) {
      r.num_true[t] = active;
    }
  }
  return Status::ok;
}

// The normalised Tsallis entropy of §3.2 in double.
inline double reference_tsallis_entropy(std::vector<double> const& p, double q, double eps) {
  double const n = static_cast<double>(p.size());
  if (q == 1.0) {
    double h = 0;
    for (double v : p) {
      h -= (v + eps) * std::log(v + eps);
    }
    return h / std::log(n);
  }
  double s = 0;
  for (double v : p) {
    s += std::pow(v + eps, q);
  }
  return (1 - s) / (1 - std::pow(n, 1 - q));
}

// DynMoLE (§3.2): kept experts in rank order, then empty slots; weights p, not renormalised.
template <int MaxExperts>
[[nodiscard]] Status reference_route(routing::DynMoLE<MaxExperts> const& r, research_detail::Buffers const& b) {
  if (Status s = research_detail::check(r, b, "router logits"); !s) {
    return s;
  }
  int const n = r.experts;
  routing::DynMoLERule const& rule = r.rule;
  for (std::int64_t t = 0; t < b.logits.extent(0); ++t) {
    std::vector<float> const z = research_detail::row_of(b.logits, t, n);
    std::vector<int> const order = research_detail::ranked(z, research_detail::first_n(n));
    std::vector<double> const p = research_detail::softmax(z, n);
    double const entropy = reference_tsallis_entropy(p, rule.entropy_index, rule.entropy_eps);
    std::vector<bool> keep(static_cast<std::size_t>(n), false);
    double cumulative = 0;
    for (int rank = 0; rank < n; ++rank) {
      cumulative += p[order[rank]];
      keep[rank] = cumulative <= double(rule.top_p) || rank < rule.keep_top_k;
    }
    if (rule.entropy_threshold < 1.f && entropy > double(rule.entropy_threshold)) {
      keep.assign(keep.size(), true);
    }
    int slot = 0;
    for (int rank = 0; rank < n; ++rank) {
      if (keep[rank] && z[order[rank]] != -INFINITY) {  // -inf masks the expert (§0), even when broadcast
        research_detail::write_slot(b, t, slot++, order[rank], p[order[rank]]);
      }
    }
    for (; slot < n; ++slot) {
      research_detail::write_slot(b, t, slot, n, 0.0);
    }
  }
  return Status::ok;
}

// Top-any (§3.6): decisions on the fp32 softmax outputs, weights renormalised over the kept
// slots in double; a dropped slot keeps its place with id E.
template <int MaxK>
[[nodiscard]] Status reference_route(routing::TopAnyThreshold<MaxK> const& r, research_detail::Buffers const& b) {
  if (Status s = research_detail::check(r, b, "router logits"); !s) {
    return s;
  }
  std::int64_t const tokens = b.logits.extent(0);
  if (r.mode == routing::TopAnyMode::logit) {
    for (std::int64_t t = 0; t < tokens; ++t) {
      for (int j = 1; j < r.k; ++j) {
        float const l = r.keep_logits[t * r.keep_logits_row_stride() + j];
        if (std::isnan(l)) {
          return error(Status::invalid_argument, "TopAnyThreshold: keep_logits NaN at token %lld, slot %d",
                       static_cast<long long>(t), j);
        }
      }
    }
  }
  int const experts = r.experts;
  for (std::int64_t t = 0; t < tokens; ++t) {
    std::vector<float> const z = research_detail::row_of(b.logits, t, experts);
    std::vector<int> const order = research_detail::ranked(z, research_detail::first_n(experts));
    std::vector<double> const p = research_detail::softmax(z, experts);
    routing::SoftmaxNormaliser const norm = routing::softmax_normaliser(z.data(), experts);
    std::vector<float> p32(static_cast<std::size_t>(r.k));
    float candidates = 0.f;
    for (int j = 0; j < r.k; ++j) {
      p32[j] = routing::softmax_entry(z[order[j]], norm);
      candidates += p32[j];
    }
    std::vector<bool> keep(static_cast<std::size_t>(r.k));
    double kept_sum = 0;
    int active = 0;
    for (int j = 0; j < r.k; ++j) {
      bool kept = true;
      if (j > 0 && r.mode == routing::TopAnyMode::ratio) {
        kept = p32[j] >= r.beta * p32[0];
      } else if (j > 0 && r.mode == routing::TopAnyMode::logit) {
        kept = r.keep_logits[t * r.keep_logits_row_stride() + j] > 0.f;
      } else if (j > 0) {
        kept = p32[j] / candidates >= r.theta;
      }
      keep[j] = kept;
      if (kept) {
        kept_sum += p[order[j]];
        ++active;
      }
    }
    for (int j = 0; j < r.k; ++j) {
      research_detail::write_slot(b, t, j, keep[j] ? order[j] : experts, keep[j] ? p[order[j]] / kept_sum : 0.0);
    }
    if (r.num_active != nullptr) {
      r.num_active[t] = active;
    }
  }
  return Status::ok;
}

// ProMoE (§4.1): unconditional tokens to the N_U unconditional experts with weight 1; the others
// top-K of the fp32 activation S over the N_E routed experts, weight S (double).
template <int MaxK>
[[nodiscard]] Status reference_route(routing::PrototypeRouter<MaxK> const& r, research_detail::Buffers const& b) {
  if (Status s = research_detail::check(r, b, "routing scores"); !s) {
    return s;
  }
  int const n = r.routed_experts;
  int const slots = r.slots();
  int const empty = r.num_experts();
  for (std::int64_t t = 0; t < b.logits.extent(0); ++t) {
    bool const uncond = r.uncond_mask != nullptr && r.uncond_mask[t / r.tokens_per_sample] != 0;
    if (uncond) {
      for (int j = 0; j < slots; ++j) {
        research_detail::write_slot(b, t, j, j < r.uncond_experts ? n + j : empty, j < r.uncond_experts ? 1.0 : 0.0);
      }
      continue;
    }
    std::vector<float> const z = research_detail::row_of(b.logits, t, n);
    std::vector<float> key = z;
    std::vector<double> weight(static_cast<std::size_t>(n));
    std::vector<double> const p = research_detail::softmax(z, n);
    routing::SoftmaxNormaliser const norm = routing::softmax_normaliser(z.data(), n);
    for (int e = 0; e < n; ++e) {
      switch (r.activation) {
        case routing::PrototypeActivation::identity: weight[e] = z[e]; break;
        case routing::PrototypeActivation::sigmoid:
          key[e] = fp32::sigmoid(z[e]);
          weight[e] = research_detail::sigmoid(z[e]);
          break;
        case routing::PrototypeActivation::softmax:
          key[e] = routing::softmax_entry(z[e], norm);
          weight[e] = p[e];
          break;
      }
    }
    std::vector<int> const order = research_detail::ranked(key, research_detail::first_n(n));
    for (int j = 0; j < slots; ++j) {
      research_detail::write_slot(b, t, j, j < r.k ? order[j] : empty, j < r.k ? weight[order[j]] : 0.0);
    }
  }
  return Status::ok;
}

// Similarity router (§4.2): masked and -inf keys excluded, k_eff = min(k, #valid) or an error
// without clamp_k, weights in double, then the requested order.
template <int MaxK>
[[nodiscard]] Status reference_route(routing::SimilarityRouter<MaxK> const& r, research_detail::Buffers const& b) {
  if (Status s = research_detail::check(r, b, "routing scores"); !s) {
    return s;
  }
  std::int64_t const queries = b.logits.extent(0);
  int const keys = r.keys;
  auto valid_keys = [&](std::int64_t q, std::vector<float> const& s) {
    std::vector<int> v;
    for (int i = 0; i < keys; ++i) {
      bool const allowed =
          r.key_valid == nullptr || (r.key_mask_per_query ? r.key_valid[q * keys + i] : r.key_valid[i]) != 0;
      if (allowed && s[i] != -INFINITY) {
        v.push_back(i);
      }
    }
    return v;
  };
  if (!r.clamp_k) {
    for (std::int64_t q = 0; q < queries; ++q) {
      std::size_t const valid = valid_keys(q, research_detail::row_of(b.logits, q, keys)).size();
      if (static_cast<std::size_t>(r.k) > valid) {
        return error(Status::invalid_argument,
                     "similarity router: k exceeds number of valid keys (query %lld: k=%d, %zu valid)",
                     static_cast<long long>(q), r.k, valid);
      }
    }
  }
  for (std::int64_t q = 0; q < queries; ++q) {
    std::vector<float> const s = research_detail::row_of(b.logits, q, keys);
    std::vector<int> const order = research_detail::ranked(s, valid_keys(q, s));
    std::size_t const n = std::min(order.size(), static_cast<std::size_t>(r.k));
    std::vector<std::pair<int, double>> chosen;
    double const top = n > 0 ? double(s[order[0]]) : 0.0;
    double sum = 0;
    for (std::size_t j = 0; j < n; ++j) {
      sum += std::exp(double(s[order[j]]) - top);
    }
    for (std::size_t j = 0; j < n; ++j) {
      double const v = s[order[j]];
      double w = 1;
      switch (r.weight) {
        case routing::SimilarityWeight::one: w = 1; break;
        case routing::SimilarityWeight::raw: w = v; break;
        case routing::SimilarityWeight::sigmoid: w = research_detail::sigmoid(v); break;
        case routing::SimilarityWeight::softmax: w = std::exp(v - top) / sum; break;
      }
      chosen.emplace_back(order[j], w);
    }
    if (r.order == routing::SimilarityOrder::index_asc) {
      std::stable_sort(chosen.begin(), chosen.end(), [](auto const& a, auto const& c) { return a.first < c.first; });
    }
    for (int j = 0; j < r.k; ++j) {
      bool const used = static_cast<std::size_t>(j) < chosen.size();
      research_detail::write_slot(b, q, j, used ? chosen[j].first : keys, used ? chosen[j].second : 0.0);
    }
  }
  return Status::ok;
}

// Scores Z [T, columns] = scale * n(x_t) . n(p_e) (or scale * x_t . p_e) in double; columns past
// the N prototypes get -inf. Same parameter checks as routing::cosine_scores; non-finite inputs
// refused.
template <routing::ScoreInput In>
[[nodiscard]] Status reference_cosine_scores(routing::Similarity similarity, float scale, HostTensor<In const, 2> x,
                                             HostTensor<In const, 2> prototypes, HostTensor<float, 2> scores) {
  routing::ScoreProblem<In> problem;
  if (Status s = routing::detail::make_score_problem(similarity, scale, x, prototypes, scores, problem); !s) {
    return s;
  }
  std::int64_t const tokens = x.extent(0), hidden = x.extent(1), count = prototypes.extent(0);
  auto finite_rows = [&](HostTensor<In const, 2> const& v, char const* what) {
    for (std::int64_t r = 0; r < v.extent(0); ++r) {
      for (std::int64_t h = 0; h < hidden; ++h) {
        if (!std::isfinite(static_cast<float>(v(r, h)))) {
          return error(Status::invalid_argument,
                       "reference scores: non-finite routing score input at %s %lld, "
                       "feature %lld",
                       what, static_cast<long long>(r), static_cast<long long>(h));
        }
      }
    }
    return Status::ok;
  };
  if (Status s = finite_rows(x, "token"); !s) {
    return s;
  }
  if (Status s = finite_rows(prototypes, "prototype"); !s) {
    return s;
  }
  auto norm = [&](HostTensor<In const, 2> const& v, std::int64_t r) {
    double s = 0;
    for (std::int64_t h = 0; h < hidden; ++h) {
      double const a = static_cast<double>(static_cast<float>(v(r, h)));
      s += a * a;
    }
    return std::max(std::sqrt(s), double(routing::norm_floor));
  };
  for (std::int64_t t = 0; t < tokens; ++t) {
    double const nx = norm(x, t);
    for (std::int64_t c = 0; c < scores.extent(1); ++c) {
      if (c >= count) {
        scores(t, c) = -INFINITY;
        continue;
      }
      double dot = 0;
      for (std::int64_t h = 0; h < hidden; ++h) {
        dot += static_cast<double>(static_cast<float>(x(t, h))) *
               static_cast<double>(static_cast<float>(prototypes(c, h)));
      }
      double const z = similarity == routing::Similarity::dot ? scale * dot : scale * dot / (nx * norm(prototypes, c));
      scores(t, c) = static_cast<float>(z);
    }
  }
  return Status::ok;
}

}  // namespace host
MOEKIT_NAMESPACE_END
