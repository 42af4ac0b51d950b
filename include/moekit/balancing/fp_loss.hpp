#pragma once
// The "fP" family of balance losses (ALGORITHMS.md §2.0): every one of Switch, GShard, HF
// load_balancing_loss_func, Megatron aux / seq_aux / global_aux, DeepSeek-V3's sequence-wise
// loss, DiT-MoE's expert-level loss and AdaMoE's null-grouped loss is
//
//   L = scale * sum_g sum_i F_{g,i} P_{g,i},   P_{g,i} = (1/N_g) sum_{t in g} v_t q_{t,i},
//
// over token groups g (the whole batch, or one sequence each), where F is a stop-gradient
// coefficient built from integer counts c_{g,i} = #valid tokens of g whose top-K_f logits
// contain i (F = c / (K_f N_g), or a running mean of it, or AdaMoE's null-grouped mean), q is the
// softmax or the normalised sigmoid, and scale carries lambda, E and each source's constants.
// By the gradient lemma of §2.0 the gradient is, for a valid token t of group g,
//
//   dL/dz_{t,j} = (scale / N_g) * d_{t,j} * (F_{g,j} - sum_i F_{g,i} q_{t,i}),
//
// d = p (softmax) or sigma (1 - sigma) / (S + 1e-20) (nsigmoid). Each policy describes itself as
// an FpForm; the device path (fp_loss_kernels.hpp) runs any FpForm, the host reference
// (host/balance_loss_reference.hpp) is written from the formulas of each section instead.
//
// This header holds what the policies and the kernels share: the score functions in fp32 (the
// same bits on host and device, core/fp32_math.hpp), the counting-set rule, FpForm and the
// FpLossPolicy concept.

#include <cmath>
#include <concepts>
#include <cstdint>

#include "moekit/balancing/concept.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/ranking.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

// The score q the loss averages (independent of how the router weights its outputs).
enum class LossScore {
  softmax,  // p = softmax(z)
  nsigmoid  // s' = sigmoid(z) / (sum_j sigmoid(z_j) + 1e-20) (Megatron "sigmoid", DeepSeek-V3)
};

// Where token (sequence b, position s) sits among the T = B * S logit rows.
enum class SequenceLayout {
  batch_major,  // row b * S + s: [B, S] rows, as HF and DeepSeek flatten a batch (moekit's default)
  seq_major     // row s * B + b: Megatron's [S, B] layout
};

// How the coefficient F of a group is made from its integer counts c.
enum class CountRule {
  plain,         // F_i = c_i / (K_f N)
  running_mean,  // Megatron global_aux_loss: F_i = (C_i / m) / (K N), C and m caller-owned (§2.4c)
  null_group     // AdaMoE: true experts as plain, each null expert gets the mean null F (§3.1)
};

// Tokens per chunk of the device path's partial sums. Fixed: the chunking, not the grid,
// decides the summation order, so results do not depend on the grid size.
inline constexpr int fp_chunk_tokens = 256;

// A compensated (Kahan) fp32 sum: its error stays a few ulp however many terms it adds, so the
// device's sums over E experts and over a chunk's tokens keep the §2.0 tolerance for any E and T.
// Plain IEEE adds in a fixed order (no products, so no contraction): the same bits everywhere.
struct CompensatedSum {
  float sum = 0.f;
  float carry = 0.f;
  MOEKIT_HOST_DEVICE void add(float x) noexcept {
    float const y = x - carry;
    float const t = sum + y;
    carry = (t - sum) - y;
    sum = t;
  }
};

// Per-token normaliser of q: softmax keeps the row max and sum_j exp(z_j - max); nsigmoid keeps
// sum_j sigmoid(z_j) + 1e-20. Sums run in ascending expert order.
struct ScoreNormaliser {
  float max;
  float denominator;
};

template <LossScore Score>
[[nodiscard]] MOEKIT_HOST_DEVICE inline ScoreNormaliser score_normaliser(float const* z, int n) noexcept {
  CompensatedSum sum;
  if constexpr (Score == LossScore::softmax) {
    float m = z[0];
    for (int e = 1; e < n; ++e) {
      m = z[e] > m ? z[e] : m;
    }
    for (int e = 0; e < n; ++e) {
      sum.add(fp32::exp(z[e] - m));
    }
    return {m, sum.sum};
  } else {
    for (int e = 0; e < n; ++e) {
      sum.add(fp32::sigmoid(z[e]));
    }
    return {0.f, sum.sum + 1e-20f};  // Megatron's epsilon, kept for parity
  }
}

// q_{t,i} for one logit of a row with normaliser `s`.
template <LossScore Score>
[[nodiscard]] MOEKIT_HOST_DEVICE inline float loss_score(float z, ScoreNormaliser s) noexcept {
  if constexpr (Score == LossScore::softmax) {
    return fp32::exp(z - s.max) / s.denominator;
  } else {
    return fp32::sigmoid(z) / s.denominator;
  }
}

// d_{t,j} of the gradient lemma: p_j (softmax) or sigma_j (1 - sigma_j) / (S + 1e-20) (nsigmoid).
template <LossScore Score>
[[nodiscard]] MOEKIT_HOST_DEVICE inline float loss_score_slope(float z, ScoreNormaliser s) noexcept {
  if constexpr (Score == LossScore::softmax) {
    return fp32::exp(z - s.max) / s.denominator;
  } else {
    float const sigma = fp32::sigmoid(z);
    return sigma * (1.f - sigma) / s.denominator;
  }
}

// The counting set U_t (§2.0): the K_f largest logits, ranked by the §0 rule (core/ranking.hpp):
// ties to the lower index, NaN below every number and below -inf.
struct RankedLogit {
  float key;
  int index;
};

// The k-th (1-based) ranked of z[0..n); requires 1 <= k <= n. k scans of the row, O(n k): no
// arrays, so any k works on the device (k is at most 8 in every production model).
[[nodiscard]] MOEKIT_HOST_DEVICE inline RankedLogit kth_ranked_logit(float const* z, int n, int k) noexcept {
  RankedLogit previous{0.f, -1};
  for (int r = 0; r < k; ++r) {
    RankedLogit best{0.f, -1};
    for (int e = 0; e < n; ++e) {
      float const v = z[e];
      bool const after_previous = previous.index < 0 || ranks_before(previous.key, previous.index, v, e);
      if (after_previous && (best.index < 0 || ranks_before(v, e, best.key, best.index))) {
        best = {v, e};
      }
    }
    previous = best;
  }
  return previous;
}

// Is expert e (logit v) in the top-k set whose k-th member is `kth`?
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool in_counting_set(float v, int e, RankedLogit kth) noexcept {
  return e == kth.index || ranks_before(v, e, kth.key, kth.index);
}

// What a policy reduces to for a problem of T tokens and E experts (see the top of this file).
// Built by the policy's fp_form() after validate() and check_shape() accepted the problem.
struct FpForm {
  LossScore score = LossScore::softmax;
  int experts = 0;               // E
  int count_k = 1;               // K_f
  std::int64_t tokens = 0;       // T
  int groups = 1;                // G: 1, or B sequences
  std::int64_t group_len = 0;    // tokens per group; groups * group_len == tokens
  bool seq_major = false;        // token of (g, s) is s * G + g, else g * group_len + s
  std::int64_t mask_period = 0;  // token t reads valid[t % mask_period] (HF: B*S, else T)
  double scale = 0.0;            // value = scale * sum_g sum_i F_{g,i} P_{g,i}
  CountRule rule = CountRule::plain;
  int null_experts = 0;                 // null_group: the ids [E - null_experts, E)
  long long* running_counts = nullptr;  // running_mean: C [E], in the memory the loss runs in
  int running_m = 0;                    // running_mean: micro-batches counted, this one included

  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::int64_t chunks_per_group() const noexcept {
    return (group_len + fp_chunk_tokens - 1) / fp_chunk_tokens;
  }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::int64_t num_chunks() const noexcept {
    return chunks_per_group() * groups;
  }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::int64_t token(int g, std::int64_t s) const noexcept {
    return seq_major ? s * groups + g : std::int64_t{g} * group_len + s;
  }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr int group_of(std::int64_t t) const noexcept {
    return static_cast<int>(seq_major ? t % groups : t / group_len);
  }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_valid(std::uint8_t const* valid, std::int64_t t) const noexcept {
    return valid == nullptr || valid[t % mask_period] != 0;
  }
};

// A loss policy of this family: a LossBalancer that checks a problem's shape and describes it.
//   check_shape(T, valid_entries): the sizes only this policy knows (sequences, layers, the mask
//     length; valid_entries < 0: unchecked), with a message, before anything is written;
//   fp_form(T, E): the FpForm of an accepted problem.
template <class P>
concept FpLossPolicy = LossBalancer<P> &&
    requires(P const& p, std::int64_t tokens, std::int64_t valid_entries, int experts) {
  { p.check_shape(tokens, valid_entries) } -> std::same_as<Status>;
  { p.fp_form(tokens, experts) } -> std::same_as<FpForm>;
};

namespace detail {

// §2.0: "balance loss: k must satisfy 1 <= k <= E".
[[nodiscard]] inline Status check_loss_k(int k, int experts) {
  if (experts < 1) {
    return error(Status::invalid_argument, "balance loss: need at least one expert (got E=%d)", experts);
  }
  if (k < 1 || k > experts) {
    return error(Status::invalid_argument, "balance loss: k must satisfy 1 <= k <= E (got k=%d, E=%d)", k, experts);
  }
  return Status::ok;
}

[[nodiscard]] inline Status check_loss_coefficient(char const* name, float value) {
  if (!std::isfinite(value) || value < 0.f) {
    return error(Status::invalid_argument, "balance loss: %s must be finite and >= 0 (got %g)", name, double(value));
  }
  return Status::ok;
}

// The mask of a per-token loss has T entries.
[[nodiscard]] inline Status check_mask_entries(std::int64_t tokens, std::int64_t valid_entries) {
  if (valid_entries >= 0 && valid_entries != tokens) {
    return error(Status::invalid_argument, "balance loss: valid mask has %lld entries, expected T=%lld",
                 static_cast<long long>(valid_entries), static_cast<long long>(tokens));
  }
  return Status::ok;
}

// B sequences of S tokens (seq_len 0: S = T / B) must cover the T rows exactly (§2.11).
[[nodiscard]] inline std::int64_t sequence_length(int batch, std::int64_t seq_len, std::int64_t tokens) {
  return seq_len != 0 || batch <= 0 ? seq_len : tokens / batch;
}
[[nodiscard]] inline Status check_sequences(int batch, std::int64_t seq_len, std::int64_t tokens) {
  if (batch < 1 || seq_len < 0) {
    return error(Status::invalid_argument, "seq aux: batch must be >= 1 and seq_len >= 0 (got batch %d, seq %lld)",
                 batch, static_cast<long long>(seq_len));
  }
  std::int64_t const s = sequence_length(batch, seq_len, tokens);
  if (std::int64_t{batch} * s != tokens) {
    return error(Status::invalid_argument, "seq aux: batch %d x seq %lld != tokens %lld", batch,
                 static_cast<long long>(s), static_cast<long long>(tokens));
  }
  return Status::ok;
}

// The form every single-group policy starts from.
[[nodiscard]] inline FpForm whole_batch_form(LossScore score, int experts, int count_k, std::int64_t tokens,
                                             double scale) {
  FpForm f;
  f.score = score;
  f.experts = experts;
  f.count_k = count_k;
  f.tokens = tokens;
  f.groups = 1;
  f.group_len = tokens;
  f.mask_period = tokens;
  f.scale = scale;
  return f;
}

}  // namespace detail

}  // namespace balancing
MOEKIT_NAMESPACE_END
