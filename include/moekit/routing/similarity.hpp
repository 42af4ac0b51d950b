#pragma once
// SimilarityRouter: the generic retrieval router of ALGORITHMS.md §4.2, and its SALOVA preset.
// Each query (a "token" row) routes to k of S keys (the "experts") by the scores
//   s[q, i] = c n(Q_q) . n(Kv_i)   (cosine)   or   c Q_q . Kv_i   (dot)
// that cosine_scores.hpp computes (similarity_scores below wraps it with the scale c, fixed or
// exp(theta) learned). Per query:
//   1. masked keys (key_valid == 0, shared [S] or per query [N_q, S]) and -inf scores are never
//      selected; NaN scores neither (the host refuses them, the device counts the row)
//   2. k_eff = min(k, #selectable keys) when clamp_k; else k > S is an error (validate), and a
//      query with fewer selectable keys is an error on the host (checked mode) while the device
//      clamps
//   3. top-k_eff of s (ties to the lower key index)
//   4. weights on the selected set: one (1), raw (s), sigmoid (sigma(s)), softmax (over the
//      k_eff selected scores only, max-subtracted, summed in score order)
//   5. order: score_desc (selection order) or index_asc (SALOVA: ascending key index, temporal
//      order; weights move with their ids)
// Slots k_eff..k-1 are empty (id S, weight 0).
//
// Training (host functions, fp64 inside): the mean BCE over all [N_q, S] entries and the
// deterministic all_pairs margin loss, with gradients; the weights' backward; dL/dtheta.

#include <cmath>
#include <cstdint>
#include <vector>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/routing/concept.hpp"
#include "moekit/routing/cosine_scores.hpp"
#include "moekit/routing/ranking.hpp"
#include "moekit/routing/route_buffers.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

enum class SimilarityOrder { score_desc, index_asc };
enum class SimilarityWeight { one, raw, softmax, sigmoid };

// The score's similarity and scale: a fixed c > 0, or c = exp(theta) with theta learned
// (SALOVA's logit_scale, initialised to 1.0).
struct SimilarityScale {
  Similarity similarity = Similarity::cosine;
  float scale = 1.f;  // fixed c
  bool learned = false;
  float logit_scale = 0.f;  // theta, when learned

  [[nodiscard]] MOEKIT_HOST_DEVICE float value() const noexcept { return learned ? fp32::exp(logit_scale) : scale; }

  [[nodiscard]] Status validate() const {
    if (similarity != Similarity::cosine && similarity != Similarity::dot) {
      return error(Status::invalid_argument, "similarity router: unknown similarity %d", static_cast<int>(similarity));
    }
    if (!learned && !(scale > 0.f && std::isfinite(scale))) {
      return error(Status::invalid_argument, "similarity router: scale must be > 0 (got %g)", double(scale));
    }
    if (learned && !(std::isfinite(logit_scale) && value() > 0.f && std::isfinite(value()))) {
      return error(Status::invalid_argument, "similarity router: exp(logit_scale) must be finite and > 0 (theta = %g)",
                   double(logit_scale));
    }
    return Status::ok;
  }
};

template <int MaxK = 8>
struct SimilarityRouter {
  static constexpr RouterScope scope = RouterScope::per_token;
  static constexpr int max_slots = MaxK;

  int keys = 0;  // S
  int k = 0;     // label_top_k for SALOVA
  bool clamp_k = true;
  SimilarityOrder order = SimilarityOrder::score_desc;
  SimilarityWeight weight = SimilarityWeight::one;
  // Optional key mask, nonzero = valid: [S], or [token_count, S] when key_mask_per_query.
  std::uint8_t const* key_valid = nullptr;
  bool key_mask_per_query = false;
  std::int64_t token_count = 0;  // N_q of a per-query mask (validate_inputs); later queries select nothing

  [[nodiscard]] MOEKIT_HOST_DEVICE int num_experts() const noexcept { return keys; }
  [[nodiscard]] MOEKIT_HOST_DEVICE int slots() const noexcept { return k; }

  [[nodiscard]] Status validate() const {
    if (keys < 0) {
      return error(Status::invalid_argument, "similarity router: the number of keys S must be >= 0 (got %d)", keys);
    }
    if (k < 0) {
      return error(Status::invalid_argument, "similarity router: k must be >= 0 (got %d)", k);
    }
    if (k > MaxK) {
      return error(Status::unsupported_config,
                   "similarity router: k=%d exceeds this instantiation's MaxK=%d; use SimilarityRouter<%d>", k, MaxK,
                   k);
    }
    if (!clamp_k && k > keys) {
      return error(Status::invalid_argument, "similarity router: k exceeds number of valid keys (k=%d, S=%d)", k, keys);
    }
    if (order != SimilarityOrder::score_desc && order != SimilarityOrder::index_asc) {
      return error(Status::invalid_argument, "similarity router: unknown order %d", static_cast<int>(order));
    }
    if (weight != SimilarityWeight::one && weight != SimilarityWeight::raw && weight != SimilarityWeight::softmax &&
        weight != SimilarityWeight::sigmoid) {
      return error(Status::invalid_argument, "similarity router: unknown weight mode %d", static_cast<int>(weight));
    }
    if (key_valid != nullptr && key_mask_per_query && token_count < 0) {
      return error(Status::invalid_argument, "similarity router: token_count must be >= 0 (got %lld)",
                   static_cast<long long>(token_count));
    }
    return Status::ok;
  }

  // A per-query mask against the batch's N_q (see NullExperts::validate_inputs).
  [[nodiscard]] Status validate_inputs(std::int64_t queries) const {
    if (key_valid != nullptr && key_mask_per_query && token_count != queries) {
      return error(Status::invalid_argument, "similarity router: the key mask holds %lld queries, the batch has %lld",
                   static_cast<long long>(token_count), static_cast<long long>(queries));
    }
    return Status::ok;
  }

  // Is key i of query q selectable by the mask (the score is checked separately)?
  [[nodiscard]] MOEKIT_HOST_DEVICE bool key_allowed(std::int64_t query, int i) const noexcept {
    if (key_valid == nullptr) {
      return true;
    }
    if (!key_mask_per_query) {
      return key_valid[i] != 0;
    }
    return query < token_count && key_valid[query * keys + i] != 0;
  }

  MOEKIT_HOST_DEVICE void route_token(std::int64_t query, float const* scores, int* ids,
                                      float* weights) const noexcept {
    auto key = [&](int i) { return key_allowed(query, i) ? scores[i] : -INFINITY; };
    int selectable = 0;
    for (int i = 0; i < keys; ++i) {
      selectable += key(i) > -INFINITY ? 1 : 0;  // false for NaN
    }
    int const n = k < selectable ? k : selectable;
    int chosen[MaxK];
    top_k<MaxK>(
        keys, n, key, [](int i) { return i; }, chosen);
    float w[MaxK];
    float sum = 0.f;
    for (int j = 0; j < n; ++j) {
      float const s = scores[chosen[j]];
      switch (weight) {
        case SimilarityWeight::one: w[j] = 1.f; break;
        case SimilarityWeight::raw: w[j] = s; break;
        case SimilarityWeight::sigmoid: w[j] = fp32::sigmoid(s); break;
        case SimilarityWeight::softmax:
          w[j] = fp32::exp(s - scores[chosen[0]]);
          sum += w[j];
          break;
      }
    }
    if (weight == SimilarityWeight::softmax) {
      for (int j = 0; j < n; ++j) {
        w[j] = w[j] / sum;
      }
    }
    if (order == SimilarityOrder::index_asc) {  // insertion sort of at most MaxK (id, weight) pairs
      for (int j = 1; j < n; ++j) {
        int const id = chosen[j];
        float const v = w[j];
        int i = j;
        for (; i > 0 && chosen[i - 1] > id; --i) {
          chosen[i] = chosen[i - 1];
          w[i] = w[i - 1];
        }
        chosen[i] = id;
        w[i] = v;
      }
    }
    for (int j = 0; j < k; ++j) {
      ids[j] = j < n ? chosen[j] : keys;
      weights[j] = j < n ? w[j] : 0.f;
    }
  }
};

// SALOVA (SR-Router at inference): cosine scores scaled by exp(logit_scale), the top
// label_top_k = 5 segments (clamped to S), passed on in temporal order, unweighted.
[[nodiscard]] constexpr SimilarityRouter<8> salova_router(int num_segments, int label_top_k = 5) {
  return {.keys = num_segments,
          .k = label_top_k,
          .clamp_k = true,
          .order = SimilarityOrder::index_asc,
          .weight = SimilarityWeight::one};
}
[[nodiscard]] constexpr SimilarityScale salova_scale(float logit_scale = 1.f) {
  return {.similarity = Similarity::cosine, .learned = true, .logit_scale = logit_scale};
}

// The scores s = c sim(Q, Kv) [N_q, S] on the host (checked) or on the device.
template <ScoreInput In>
[[nodiscard]] Status similarity_scores(SimilarityScale const& scale, HostTensor<In const, 2> queries,
                                       HostTensor<In const, 2> keys, HostTensor<float, 2> scores) {
  if (Status s = scale.validate(); !s) {
    return s;
  }
  return cosine_scores(scale.similarity, scale.value(), queries, keys, scores);
}
template <ScoreInput In>
[[nodiscard]] Status similarity_scores(SimilarityScale const& scale, DeviceTensor<In const, 2> queries,
                                       DeviceTensor<In const, 2> keys, DeviceTensor<float, 2> scores,
                                       arch::Stream stream, unsigned max_blocks = 0) {
  if (Status s = scale.validate(); !s) {
    return s;
  }
  return cosine_scores(scale.similarity, scale.value(), queries, keys, scores, stream, max_blocks);
}

namespace detail {
// scores and targets [N_q, S]; targets in [0, 1] (binary when `binary`); every score finite.
inline Status check_loss_inputs(HostTensor<float const, 2> scores, HostTensor<float const, 2> targets,
                                HostTensor<float, 2> grad, float const* loss, bool binary, char const* what) {
  std::int64_t const queries = scores.extent(0);
  std::int64_t const keys = scores.extent(1);
  if (loss == nullptr) {
    return error(Status::invalid_argument, "%s: loss must point to a float", what);
  }
  if (Status s = check_matrix(scores, "similarity loss: scores", queries, keys); !s) {
    return s;
  }
  if (Status s = check_matrix(targets, "similarity loss: targets", queries, keys); !s) {
    return s;
  }
  if (grad.data != nullptr) {
    if (Status s = check_matrix(grad, "similarity loss: grad_scores", queries, keys); !s) {
      return s;
    }
  }
  for (std::int64_t q = 0; q < queries; ++q) {
    for (std::int64_t i = 0; i < keys; ++i) {
      float const s = scores(q, i);
      float const y = targets(q, i);
      if (!std::isfinite(s)) {
        return error(Status::invalid_argument, "%s: non-finite routing score %g at query %lld, key %lld", what,
                     double(s), static_cast<long long>(q), static_cast<long long>(i));
      }
      if (binary ? !(y == 0.f || y == 1.f) : !(y >= 0.f && y <= 1.f)) {
        return error(Status::invalid_argument, "%s: target %g at query %lld, key %lld must be %s", what, double(y),
                     static_cast<long long>(q), static_cast<long long>(i), binary ? "0 or 1" : "in [0, 1]");
      }
    }
  }
  return Status::ok;
}
}  // namespace detail

// BCE_mean = mean over all N_q * S entries of softplus(s) - y s, softplus(s) = max(s, 0) +
// log1p(exp(-|s|)); dBCE/ds = (sigmoid(s) - y) / (N_q S). An empty matrix gives 0. fp64 inside,
// summed in row-major order. grad_scores may have a null pointer (no gradient).
[[nodiscard]] inline Status similarity_bce_loss(HostTensor<float const, 2> scores, HostTensor<float const, 2> targets,
                                                float* loss, HostTensor<float, 2> grad_scores = {}) {
  if (Status s = detail::check_loss_inputs(scores, targets, grad_scores, loss, false, "similarity BCE loss"); !s) {
    return s;
  }
  std::int64_t const queries = scores.extent(0);
  std::int64_t const keys = scores.extent(1);
  double const count = double(queries) * double(keys);
  double sum = 0;
  for (std::int64_t q = 0; q < queries; ++q) {
    for (std::int64_t i = 0; i < keys; ++i) {
      double const s = scores(q, i);
      double const y = targets(q, i);
      sum += std::fmax(s, 0.0) + std::log1p(std::exp(-std::fabs(s))) - y * s;
      if (grad_scores.data != nullptr) {
        grad_scores(q, i) = static_cast<float>((1.0 / (1.0 + std::exp(-s)) - y) / count);
      }
    }
  }
  *loss = count > 0 ? static_cast<float>(sum / count) : 0.f;
  return Status::ok;
}

// all_pairs margin loss: every positive (y = 1) x every negative (y = 0) entry of the flattened
// [N_q * S] matrix, L = (1 / #pairs) sum max(0, margin + s_n - s_p) (positives, then negatives,
// in ascending flattened order); an active pair adds +1/#pairs to dL/ds_n and -1/#pairs to
// dL/ds_p. No positive or no negative: L = 0, gradient 0. SALOVA's margin is 0.2. fp64 inside;
// O(#pos * #neg). (SALOVA's `sampled` mode, a random subset of r pairs drawn with torch's RNG,
// is not provided.)
[[nodiscard]] inline Status similarity_margin_loss(HostTensor<float const, 2> scores,
                                                   HostTensor<float const, 2> targets, float margin, float* loss,
                                                   HostTensor<float, 2> grad_scores = {}) {
  if (Status s = detail::check_loss_inputs(scores, targets, grad_scores, loss, true, "similarity margin loss"); !s) {
    return s;
  }
  if (!std::isfinite(margin)) {
    return error(Status::invalid_argument, "similarity margin loss: margin must be finite (got %g)", double(margin));
  }
  std::int64_t const queries = scores.extent(0);
  std::int64_t const keys = scores.extent(1);
  std::vector<double> value, grad;
  std::vector<std::size_t> positives, negatives;
  for (std::int64_t q = 0; q < queries; ++q) {
    for (std::int64_t i = 0; i < keys; ++i) {
      (targets(q, i) == 1.f ? positives : negatives).push_back(value.size());
      value.push_back(scores(q, i));
    }
  }
  grad.assign(value.size(), 0.0);
  double const pairs = double(positives.size()) * double(negatives.size());
  double sum = 0;
  for (std::size_t p : positives) {
    for (std::size_t n : negatives) {
      double const hinge = double(margin) + value[n] - value[p];
      if (hinge > 0) {
        sum += hinge;
        grad[n] += 1.0 / pairs;
        grad[p] -= 1.0 / pairs;
      }
    }
  }
  *loss = pairs > 0 ? static_cast<float>(sum / pairs) : 0.f;
  if (grad_scores.data != nullptr) {
    std::size_t flat = 0;
    for (std::int64_t q = 0; q < queries; ++q) {
      for (std::int64_t i = 0; i < keys; ++i) {
        grad_scores(q, i) = static_cast<float>(grad[flat++]);
      }
    }
  }
  return Status::ok;
}

// dL/dscores from dL/dweights [N_q, k] (ALGORITHMS.md §4.2 gradients): one: nothing; raw: dL/dw;
// sigmoid: dL/dw sigma(1 - sigma); softmax over the selected: w_j (dL/dw_j - sum_l w_l dL/dw_l).
// Unselected scores and empty slots get no gradient. ids are what the router wrote. fp64 inside.
template <int MaxK>
[[nodiscard]] Status similarity_weights_backward(SimilarityRouter<MaxK> const& r, HostTensor<float const, 2> scores,
                                                 HostTensor<int const, 2> ids, HostTensor<float const, 2> grad_weights,
                                                 HostTensor<float, 2> grad_scores) {
  if (Status s = r.validate(); !s) {
    return s;
  }
  std::int64_t const queries = scores.extent(0);
  if (Status s = detail::check_matrix(scores, "similarity backward: scores", queries, r.keys); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(ids, "similarity backward: ids", queries, r.k); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(grad_weights, "similarity backward: grad_weights", queries, r.k); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(grad_scores, "similarity backward: grad_scores", queries, r.keys); !s) {
    return s;
  }
  for (std::int64_t q = 0; q < queries; ++q) {
    for (int j = 0; j < r.k; ++j) {
      if (ids(q, j) < 0 || ids(q, j) > r.keys) {
        return error(Status::invalid_argument, "similarity backward: id %d out of range at query %lld, slot %d",
                     ids(q, j), static_cast<long long>(q), j);
      }
    }
  }
  for (std::int64_t q = 0; q < queries; ++q) {
    for (int i = 0; i < r.keys; ++i) {
      grad_scores(q, i) = 0.f;
    }
    // The softmax weights again, in fp64, over the selected set.
    double max = -INFINITY;
    for (int j = 0; j < r.k; ++j) {
      if (ids(q, j) < r.keys) {
        max = std::fmax(max, double(scores(q, ids(q, j))));
      }
    }
    double sum = 0;
    for (int j = 0; j < r.k; ++j) {
      if (ids(q, j) < r.keys) {
        sum += std::exp(double(scores(q, ids(q, j))) - max);
      }
    }
    double dot = 0;
    for (int j = 0; j < r.k; ++j) {
      if (ids(q, j) < r.keys) {
        dot += std::exp(double(scores(q, ids(q, j))) - max) / sum * grad_weights(q, j);
      }
    }
    for (int j = 0; j < r.k; ++j) {
      int const i = ids(q, j);
      if (i >= r.keys) {
        continue;
      }
      double const s = scores(q, i);
      double const g = grad_weights(q, j);
      double d = 0;
      switch (r.weight) {
        case SimilarityWeight::one: d = 0; break;
        case SimilarityWeight::raw: d = g; break;
        case SimilarityWeight::sigmoid: {
          double const sg = 1.0 / (1.0 + std::exp(-s));
          d = g * sg * (1 - sg);
          break;
        }
        case SimilarityWeight::softmax: d = std::exp(s - max) / sum * (g - dot); break;
      }
      grad_scores(q, i) = static_cast<float>(d);
    }
  }
  return Status::ok;
}

// dL/dtheta for a learned scale c = exp(theta): ds/dtheta = s, so dL/dtheta = sum dL/ds * s
// (fp64, row-major order).
[[nodiscard]] inline Status logit_scale_gradient(HostTensor<float const, 2> scores,
                                                 HostTensor<float const, 2> grad_scores, double* grad_logit_scale) {
  if (grad_logit_scale == nullptr) {
    return error(Status::invalid_argument, "logit_scale_gradient: the output must point to a double");
  }
  if (Status s = detail::check_matrix(scores, "logit_scale_gradient: scores", scores.extent(0), scores.extent(1)); !s) {
    return s;
  }
  if (Status s =
          detail::check_matrix(grad_scores, "logit_scale_gradient: grad_scores", scores.extent(0), scores.extent(1));
      !s) {
    return s;
  }
  double sum = 0;
  for (std::int64_t q = 0; q < scores.extent(0); ++q) {
    for (std::int64_t i = 0; i < scores.extent(1); ++i) {
      sum += double(grad_scores(q, i)) * scores(q, i);
    }
  }
  *grad_logit_scale = sum;
  return Status::ok;
}

static_assert(diagnose_router<SimilarityRouter<8>>() && Router<SimilarityRouter<8>>);

}  // namespace routing
MOEKIT_NAMESPACE_END
