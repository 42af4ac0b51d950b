#pragma once
// TokenSkipRouter: FTP's fine-grained token-wise pruner (ALGORITHMS.md §4.4). Per block l and
// token i, one global 2-layer MLP reads four factors and says keep (compute the block) or skip
// (pass through the residual). The paper's exact forms were not available: the features, the
// MLP, the soft skip rate and its loss below are moekit's own definitions ([moekit] in §4.4).
//   features  f1 = i/(L−1) (0 if L = 1); f2 = a_i, the attention the token received in the
//             previous block (block 0: a_i = mean_{q>=i} 1/(q+1), "uniform attention");
//             f3 = rank_i/(L−1), rank 0 = largest a (ties to the lower i, NaN last); f4 = s_l
//   MLP       h = ReLU(W1 f + b1) (W1 [64, 4]), z = W2 h + b2 (W2 [2, 64], row 0 skip, row 1
//             keep); keep score u = z_keep − z_skip
//   prefill   n_skip = min(floor(s_l·L + 1e-9), L − 1); keep the L − n_skip tokens of largest u
//             (ties to the lower i), token 0 always (its key is +inf for the selection only)
//   decode    the new token (the last of the L) is processed iff σ(u) >= 0.5
//   loss      ŝ_b = (1/L) Σ_i σ(−u_i) per sequence; L_s = (1/B) Σ_b max(s_l − ŝ_b, 0) (the batch
//             mean of §4.4's per-sequence L_s term); ∂L_s/∂u_i = σ(u_i)σ(−u_i)/(B·L) when s_l > ŝ_b
// fp32 arithmetic fixed as in depth.hpp (dot products as fmaf chains in index order, bias added
// after), so the host path, the emulated kernel and the GPU agree bit for bit on u and on the
// selection. Device prefill sorts a sequence in one block (L <= 4096); decode has no bound.

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
#include "moekit/routing/concept.hpp"
#include "moekit/routing/depth.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

struct TokenSkipRouter {
  static constexpr RouterScope scope = RouterScope::per_batch;
  static constexpr int features = 4;
  static constexpr int width = 64;  // hidden units of the global router MLP

  double sparsity = 0.0;          // s_l of this block, in [0, 1) (from the sparsity scheduler)
  float const* w1 = nullptr;      // [64, 4]
  float const* b1 = nullptr;      // [64]
  float const* w2 = nullptr;      // [2, 64]: row 0 = skip, row 1 = keep
  float const* b2 = nullptr;      // [2]
  float decode_threshold = 0.5f;  // decode: process the new token iff σ(u) >= this

  [[nodiscard]] Status validate() const {
    if (!(sparsity >= 0.0 && sparsity < 1.0)) {
      return error(Status::invalid_argument, "TokenSkipRouter: block sparsity must be in [0,1) (got %g)", sparsity);
    }
    if (w1 == nullptr || b1 == nullptr || w2 == nullptr || b2 == nullptr) {
      return error(Status::invalid_argument, "TokenSkipRouter: the MLP weights w1, b1, w2 and b2 must all be given");
    }
    if (!(decode_threshold >= 0.f && decode_threshold <= 1.f)) {
      return error(Status::invalid_argument, "TokenSkipRouter: decode threshold must be in [0,1] (got %g)",
                   double(decode_threshold));
    }
    return Status::ok;
  }

  // n_skip for a sequence of `length` tokens: floor(s·L + 1e-9) in double, capped at L − 1.
  [[nodiscard]] std::int64_t skipped(std::int64_t length) const {
    if (length <= 0 || !(sparsity >= 0.0 && sparsity < 1.0)) {
      return 0;  // validate() reports a bad sparsity
    }
    auto const n = static_cast<std::int64_t>(std::floor(sparsity * double(length) + 1e-9));
    return n < length - 1 ? n : length - 1;
  }

  // u = z_keep − z_skip for the features f (host and device; the weights live where the caller runs it).
  [[nodiscard]] MOEKIT_HOST_DEVICE float keep_score(float const (&f)[features]) const noexcept {
    float z_skip = 0.f;
    float z_keep = 0.f;
    for (int j = 0; j < width; ++j) {
      float acc = 0.f;
      for (int k = 0; k < features; ++k) {
        acc = ::fmaf(w1[j * features + k], f[k], acc);
      }
      acc = acc + b1[j];
      float const h = acc < 0.f ? 0.f : acc;  // ReLU that keeps NaN
      z_skip = ::fmaf(w2[j], h, z_skip);
      z_keep = ::fmaf(w2[width + j], h, z_keep);
    }
    z_skip = z_skip + b2[0];
    z_keep = z_keep + b2[1];
    return z_keep - z_skip;
  }
};
static_assert(diagnose_router<TokenSkipRouter>() && Router<TokenSkipRouter>);

namespace token_skip_detail {
// f1 and f3: index / (L − 1), 0 for L = 1.
[[nodiscard]] MOEKIT_HOST_DEVICE inline float position_feature(std::int64_t i, std::int64_t length) noexcept {
  return length > 1 ? static_cast<float>(i) / static_cast<float>(length - 1) : 0.f;
}
// Block 0's attention: mean over causal query rows q >= i of 1/(q+1), summed in double over
// ascending q, rounded once (host and device give the same bits). O(L − i).
[[nodiscard]] MOEKIT_HOST_DEVICE inline float uniform_attention(std::int64_t i, std::int64_t length) noexcept {
  double acc = 0.0;
  for (std::int64_t q = i; q < length; ++q) {
    acc += 1.0 / static_cast<double>(q + 1);
  }
  return static_cast<float>(acc / static_cast<double>(length - i));
}
}  // namespace token_skip_detail

// Prefill buffers. scores (u) is required and gives B and L; attention absent means block 0.
template <MemorySpace Space>
struct TokenSkipBuffers {
  TensorView<float const, 2, Space> attention;  // a [B, L], or absent: uniform attention (block 0)
  TensorView<float, 2, Space> scores;           // u [B, L]
  TensorView<float, 3, Space> features;         // f [B, L, 4]
  TensorView<int, 2, Space> selected;           // [B, L − n_skip]: kept positions, ascending
  TensorView<std::uint8_t, 2, Space> keep;      // [B, L]: 1 = compute the block
  TensorView<float, 1, Space> skip_rate;        // ŝ [B]
  TensorView<float, 2, Space> grad_scores;      // ∂L_s/∂u [B, L]
  TensorView<float, 1, Space> loss;             // L_s [1]
};

// Decode buffers: the router decides for the newest token, the last of the L in attention.
template <MemorySpace Space>
struct TokenSkipDecodeBuffers {
  TensorView<float const, 2, Space> attention;  // a [B, L] of the sequence so far, or absent (block 0)
  std::int64_t length = 0;                      // L when attention is absent
  TensorView<float, 1, Space> scores;           // u of the new token [B]
  TensorView<std::uint8_t, 1, Space> keep;      // [B]: 1 = process the new token
};

namespace token_skip_detail {
template <MemorySpace Space>
[[nodiscard]] Status check_buffers(TokenSkipRouter const& r, TokenSkipBuffers<Space> const& b, std::int64_t& batch,
                                   std::int64_t& length) {
  if (Status s = r.validate(); !s) {
    return s;
  }
  bool const scores = depth_detail::present(b.scores);
  batch = scores ? b.scores.extent(0) : b.attention.extent(0);
  length = scores ? b.scores.extent(1) : b.attention.extent(1);
  using depth_detail::check_optional;
  if (Status s = check_optional(b.scores, "TokenSkipRouter: scores", {batch, length}, true); !s) {
    return s;
  }
  if (Status s = check_optional(b.attention, "TokenSkipRouter: attention", {batch, length}); !s) {
    return s;
  }
  if (Status s = check_optional(b.features, "TokenSkipRouter: features", {batch, length, 4}); !s) {
    return s;
  }
  if (Status s = check_optional(b.selected, "TokenSkipRouter: selected", {batch, length - r.skipped(length)}); !s) {
    return s;
  }
  if (Status s = check_optional(b.keep, "TokenSkipRouter: keep", {batch, length}); !s) {
    return s;
  }
  if (Status s = check_optional(b.skip_rate, "TokenSkipRouter: skip_rate", {batch}); !s) {
    return s;
  }
  if (Status s = check_optional(b.grad_scores, "TokenSkipRouter: grad_scores", {batch, length}); !s) {
    return s;
  }
  return check_optional(b.loss, "TokenSkipRouter: loss", {1});
}

template <MemorySpace Space>
[[nodiscard]] Status check_decode_buffers(TokenSkipRouter const& r, TokenSkipDecodeBuffers<Space> const& b,
                                          std::int64_t& batch, std::int64_t& length) {
  if (Status s = r.validate(); !s) {
    return s;
  }
  batch = b.scores.extent(0);
  bool const given = depth_detail::present(b.attention);
  length = given ? b.attention.extent(1) : b.length;
  if (given && b.length != 0 && b.length != length) {
    return error(Status::invalid_argument, "TokenSkipRouter decode: length %lld disagrees with attention [B, %lld]",
                 static_cast<long long>(b.length), static_cast<long long>(length));
  }
  if (length < 1) {
    return error(Status::invalid_argument,
                 "TokenSkipRouter decode: empty sequence (L = %lld); the new token is the last of L >= 1",
                 static_cast<long long>(length));
  }
  using depth_detail::check_optional;
  if (Status s = check_optional(b.scores, "TokenSkipRouter decode: scores", {batch}, true); !s) {
    return s;
  }
  if (Status s = check_optional(b.attention, "TokenSkipRouter decode: attention", {batch, length}); !s) {
    return s;
  }
  return check_optional(b.keep, "TokenSkipRouter decode: keep", {batch}, true);
}

[[nodiscard]] inline Status check_weights(TokenSkipRouter const& r) {
  char const* who = "TokenSkipRouter";
  if (Status s = depth_detail::check_finite_weights(r.w1, 4 * TokenSkipRouter::width, who, "MLP weight w1"); !s) {
    return s;
  }
  if (Status s = depth_detail::check_finite_weights(r.b1, TokenSkipRouter::width, who, "MLP bias b1"); !s) {
    return s;
  }
  if (Status s = depth_detail::check_finite_weights(r.w2, 2 * TokenSkipRouter::width, who, "MLP weight w2"); !s) {
    return s;
  }
  return depth_detail::check_finite_weights(r.b2, 2, who, "MLP bias b2");
}

// Attention of sequence b, checked (NaN or ±inf refused).
[[nodiscard]] inline Status attention_row(HostTensor<float const, 2> const& a, std::int64_t b, std::int64_t length,
                                          std::vector<float>& out) {
  out.resize(static_cast<std::size_t>(length));
  for (std::int64_t i = 0; i < length; ++i) {
    float const v = depth_detail::present(a) ? a(b, i) : uniform_attention(i, length);
    if (!std::isfinite(v)) {
      return error(Status::invalid_argument,
                   "TokenSkipRouter: non-finite attention score %g at sequence %lld, position %lld", double(v),
                   static_cast<long long>(b), static_cast<long long>(i));
    }
    out[static_cast<std::size_t>(i)] = v;
  }
  return Status::ok;
}
}  // namespace token_skip_detail

[[nodiscard]] inline std::size_t workspace_size(TokenSkipRouter const&, std::int64_t batch) {
  return depth_detail::partials_bytes(batch);
}

// Host prefill, checked mode: non-finite attention, MLP weights or keep scores are refused
// (sequence and position named) before any output is written. Same fp32 arithmetic as the device.
[[nodiscard]] inline Status route(TokenSkipRouter const& router, TokenSkipBuffers<MemorySpace::host> const& b) {
  std::int64_t batch = 0, length = 0;
  if (Status s = token_skip_detail::check_buffers(router, b, batch, length); !s) {
    return s;
  }
  if (Status s = token_skip_detail::check_weights(router); !s) {
    return s;
  }
  auto const n = static_cast<std::size_t>(batch * length);
  std::vector<float> u(n), f(4 * n);
  std::vector<float> a;
  std::vector<std::uint32_t> keys(static_cast<std::size_t>(length));
  for (std::int64_t s = 0; s < batch; ++s) {
    if (Status st = token_skip_detail::attention_row(b.attention, s, length, a); !st) {
      return st;
    }
    for (std::int64_t i = 0; i < length; ++i) {
      keys[static_cast<std::size_t>(i)] = depth_detail::selection_key(a[static_cast<std::size_t>(i)]);
    }
    std::vector<std::int64_t> const order = depth_detail::selection_order(keys);
    std::vector<std::int64_t> rank(static_cast<std::size_t>(length));
    for (std::int64_t r = 0; r < length; ++r) {
      rank[static_cast<std::size_t>(order[static_cast<std::size_t>(r)])] = r;
    }
    for (std::int64_t i = 0; i < length; ++i) {
      auto const at = static_cast<std::size_t>(s * length + i);
      float const fi[4] = {token_skip_detail::position_feature(i, length), a[static_cast<std::size_t>(i)],
                           token_skip_detail::position_feature(rank[static_cast<std::size_t>(i)], length),
                           static_cast<float>(router.sparsity)};
      for (int k = 0; k < 4; ++k) {
        f[4 * at + static_cast<std::size_t>(k)] = fi[k];
      }
      u[at] = router.keep_score(fi);
      if (depth_detail::is_bad_score(u[at])) {
        return error(Status::invalid_argument,
                     "TokenSkipRouter: non-finite keep score %g at sequence %lld, position %lld", double(u[at]),
                     static_cast<long long>(s), static_cast<long long>(i));
      }
    }
  }
  std::int64_t const kept = length - router.skipped(length);
  float const grad_divisor = static_cast<float>(double(batch) * double(length));
  std::vector<float> partials(static_cast<std::size_t>(batch));
  std::vector<float> terms(static_cast<std::size_t>(length));
  std::vector<std::uint8_t> keep(static_cast<std::size_t>(length));
  for (std::int64_t s = 0; s < batch; ++s) {
    float const* us = u.data() + s * length;
    for (std::int64_t i = 0; i < length; ++i) {
      keys[static_cast<std::size_t>(i)] = i == 0 ? depth_detail::forced_key : depth_detail::selection_key(us[i]);
      keep[static_cast<std::size_t>(i)] = 0;
      terms[static_cast<std::size_t>(i)] = fp32::sigmoid(-us[i]);
    }
    std::vector<std::int64_t> const order = depth_detail::selection_order(keys);
    for (std::int64_t j = 0; j < kept; ++j) {
      keep[static_cast<std::size_t>(order[static_cast<std::size_t>(j)])] = 1;
    }
    float const shat = length > 0 ? depth_detail::chunked_sum(terms.data(), length) / static_cast<float>(length) : 0.f;
    double const gap = router.sparsity - double(shat);
    partials[static_cast<std::size_t>(s)] = length > 0 && gap > 0.0 ? static_cast<float>(gap) : 0.f;
    bool const active = router.sparsity > double(shat);
    std::int64_t next = 0;
    for (std::int64_t i = 0; i < length; ++i) {
      bool const y = keep[static_cast<std::size_t>(i)] != 0;
      b.scores(s, i) = us[i];
      if (depth_detail::present(b.features)) {
        for (int k = 0; k < 4; ++k) {
          b.features(s, i, k) = f[4 * static_cast<std::size_t>(s * length + i) + static_cast<std::size_t>(k)];
        }
      }
      if (y && depth_detail::present(b.selected)) {
        b.selected(s, next) = static_cast<int>(i);
      }
      next += y ? 1 : 0;
      if (depth_detail::present(b.keep)) {
        b.keep(s, i) = keep[static_cast<std::size_t>(i)];
      }
      if (depth_detail::present(b.grad_scores)) {
        b.grad_scores(s, i) = active ? fp32::sigmoid(us[i]) * fp32::sigmoid(-us[i]) / grad_divisor : 0.f;
      }
    }
    if (depth_detail::present(b.skip_rate)) {
      b.skip_rate(s) = shat;
    }
  }
  if (depth_detail::present(b.loss)) {
    b.loss(0) = depth_detail::ordered_mean(partials, static_cast<float>(batch));
  }
  return Status::ok;
}

// Host decode, checked mode.
[[nodiscard]] inline Status route_decode(TokenSkipRouter const& router,
                                         TokenSkipDecodeBuffers<MemorySpace::host> const& b) {
  std::int64_t batch = 0, length = 0;
  if (Status s = token_skip_detail::check_decode_buffers(router, b, batch, length); !s) {
    return s;
  }
  if (Status s = token_skip_detail::check_weights(router); !s) {
    return s;
  }
  std::vector<float> u(static_cast<std::size_t>(batch));
  std::vector<float> a;
  std::int64_t const last = length - 1;
  for (std::int64_t s = 0; s < batch; ++s) {
    if (Status st = token_skip_detail::attention_row(b.attention, s, length, a); !st) {
      return st;
    }
    std::uint32_t const key = depth_detail::selection_key(a[static_cast<std::size_t>(last)]);
    std::int64_t rank = 0;
    for (std::int64_t j = 0; j < last; ++j) {
      rank += depth_detail::selection_key(a[static_cast<std::size_t>(j)]) <= key ? 1 : 0;
    }
    float const f[4] = {token_skip_detail::position_feature(last, length), a[static_cast<std::size_t>(last)],
                        token_skip_detail::position_feature(rank, length), static_cast<float>(router.sparsity)};
    u[static_cast<std::size_t>(s)] = router.keep_score(f);
    if (depth_detail::is_bad_score(u[static_cast<std::size_t>(s)])) {
      return error(Status::invalid_argument, "TokenSkipRouter decode: non-finite keep score %g at sequence %lld",
                   double(u[static_cast<std::size_t>(s)]), static_cast<long long>(s));
    }
  }
  for (std::int64_t s = 0; s < batch; ++s) {
    float const v = u[static_cast<std::size_t>(s)];
    b.scores(s) = v;
    b.keep(s) = length == 1 || fp32::sigmoid(v) >= router.decode_threshold ? 1 : 0;
  }
  return Status::ok;
}

MOEKIT_ARCH_NAMESPACE_BEGIN

namespace depth_device {
struct TokenSkipStorage {
  SelectStorage select;
  arch::SharedArray<float, max_depth_sequence> value;         // a, then u
  arch::SharedArray<std::uint16_t, max_depth_sequence> rank;  // of a, descending
};
struct TokenSkipDecodeStorage {
  typename SelectScan::TempStorage scan;
};
}  // namespace depth_device

struct TokenSkipKernelParams {
  TokenSkipRouter router;
  std::int64_t batch, length, kept;
  float const* attention;
  std::int64_t attention_stride;
  float* scores;
  std::int64_t scores_stride;
  float* features;
  std::int64_t features_stride0, features_stride1;
  int* selected;
  std::int64_t selected_stride;
  std::uint8_t* keep;
  std::int64_t keep_stride;
  float* skip_rate;
  float* grad;
  std::int64_t grad_stride;
  float grad_divisor;  // B·L
  float* partial;
  Diagnostics* diagnostics;
};

template <int BlockThreads>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(BlockThreads, 1) token_skip_kernel(TokenSkipKernelParams p) {
  static_assert(BlockThreads == depth_block_threads, "one block of depth_block_threads sorts a sequence");
  using namespace depth_device;
  constexpr int items = depth_items_per_thread;
  auto& s = arch::shared_storage<TokenSkipStorage>();
  unsigned const t = arch::thread_rank();
  int const base = static_cast<int>(t) * items;
  std::int64_t const n = p.length;
  float const f4 = static_cast<float>(p.router.sparsity);
  for (std::int64_t b = arch::block_rank(); b < p.batch; b += arch::grid_dim().x) {
    arch::sync_threads();
    // The attention scores into shared memory (each thread its own positions: no barrier needed
    // before it reads them back), then the rank feature: a stable descending sort of them.
    for (int j = 0; j < items; ++j) {
      int const pos = base + j;
      if (pos < n) {
        s.value[static_cast<std::size_t>(pos)] = p.attention != nullptr ? p.attention[b * p.attention_stride + pos]
                                                                        : token_skip_detail::uniform_attention(pos, n);
      }
    }
    std::uint32_t keys[items];
    int values[items];
    MOEKIT_DEPTH_UNROLL
    for (int j = 0; j < items; ++j) {
      int const pos = base + j;
      keys[j] =
          pos < n ? depth_detail::selection_key(s.value[static_cast<std::size_t>(pos)]) : depth_detail::padding_key;
      values[j] = pos;
    }
    SelectSort(s.select.temp.sort).sort(keys, values);
    MOEKIT_DEPTH_UNROLL
    for (int j = 0; j < items; ++j) {
      if (values[j] < n) {
        s.rank[static_cast<std::size_t>(values[j])] = static_cast<std::uint16_t>(base + j);
      }
    }
    arch::sync_threads();
    // Features and keep scores; u replaces a in s.value (the same thread's slots).
    float skip_sum = 0.f;
    unsigned long long bad = 0;
    for (int j = 0; j < items; ++j) {
      int const pos = base + j;
      if (pos >= n) {
        break;
      }
      auto const at = static_cast<std::size_t>(pos);
      float const f[4] = {token_skip_detail::position_feature(pos, n), s.value[at],
                          token_skip_detail::position_feature(s.rank[at], n), f4};
      float const u = p.router.keep_score(f);
      s.value[at] = u;
      bad += depth_detail::is_bad_score(u) ? 1u : 0u;
      skip_sum += fp32::sigmoid(-u);
      p.scores[b * p.scores_stride + pos] = u;
      if (p.features != nullptr) {
        float* out = p.features + b * p.features_stride0 + pos * p.features_stride1;
        for (int k = 0; k < 4; ++k) {
          out[k] = f[k];
        }
      }
    }
    // The selection keys: token 0 first, then by u.
    MOEKIT_DEPTH_UNROLL
    for (int j = 0; j < items; ++j) {
      int const pos = base + j;
      keys[j] = pos >= n   ? depth_detail::padding_key
                : pos == 0 ? depth_detail::forced_key
                           : depth_detail::selection_key(s.value[static_cast<std::size_t>(pos)]);
    }
    if (bad != 0) {
      arch::atomic_add(&p.diagnostics->nonfinite_rows, bad);
    }
    mark_top(s.select, keys, p.kept);
    (void)compact(s.select, n, p.selected != nullptr ? p.selected + b * p.selected_stride : nullptr, 0, 0,
                  p.keep != nullptr ? p.keep + b * p.keep_stride : nullptr);
    float const total = ordered_sum(s.select, skip_sum);
    if (t == 0) {
      float const shat = n > 0 ? total / static_cast<float>(n) : 0.f;
      s.select.scalar[0] = shat;
      if (p.skip_rate != nullptr) {
        p.skip_rate[b] = shat;
      }
      double const gap = p.router.sparsity - double(shat);
      if (p.partial != nullptr) {
        p.partial[b] = n > 0 && gap > 0.0 ? static_cast<float>(gap) : 0.f;
      }
    }
    arch::sync_threads();
    if (p.grad != nullptr) {
      bool const active = p.router.sparsity > double(static_cast<float>(s.select.scalar[0]));
      for (int j = 0; j < items && base + j < n; ++j) {
        float const u = s.value[static_cast<std::size_t>(base + j)];
        p.grad[b * p.grad_stride + base + j] = active ? fp32::sigmoid(u) * fp32::sigmoid(-u) / p.grad_divisor : 0.f;
      }
    }
  }
}

struct TokenSkipDecodeParams {
  TokenSkipRouter router;
  std::int64_t batch, length;
  float const* attention;
  std::int64_t attention_stride;
  float* scores;
  std::uint8_t* keep;
  Diagnostics* diagnostics;
};

// One block per sequence: the rank of the new token's attention among the L (a count, so no
// sort and no length bound), then one MLP evaluation.
template <int BlockThreads>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(BlockThreads, 1) token_skip_decode_kernel(TokenSkipDecodeParams p) {
  static_assert(BlockThreads == depth_block_threads, "the scan is instantiated for depth_block_threads");
  auto& s = arch::shared_storage<depth_device::TokenSkipDecodeStorage>();
  unsigned const t = arch::thread_rank();
  std::int64_t const n = p.length, last = n - 1;
  for (std::int64_t b = arch::block_rank(); b < p.batch; b += arch::grid_dim().x) {
    arch::sync_threads();
    float const* row = p.attention != nullptr ? p.attention + b * p.attention_stride : nullptr;
    float const a_last = row != nullptr ? row[last] : token_skip_detail::uniform_attention(last, n);
    std::uint32_t const key = depth_detail::selection_key(a_last);
    int count = 0;
    for (std::int64_t j = t; j < last; j += BlockThreads) {
      float const a = row != nullptr ? row[j] : token_skip_detail::uniform_attention(j, n);
      count += depth_detail::selection_key(a) <= key ? 1 : 0;
    }
    int ignored = 0, rank = 0;
    depth_device::SelectScan(s.scan).exclusive_sum(count, ignored, rank);
    if (t == 0) {
      float const f[4] = {token_skip_detail::position_feature(last, n), a_last,
                          token_skip_detail::position_feature(rank, n), static_cast<float>(p.router.sparsity)};
      float const u = p.router.keep_score(f);
      if (depth_detail::is_bad_score(u)) {
        arch::atomic_add(&p.diagnostics->nonfinite_rows, 1ull);
      }
      p.scores[b] = u;
      p.keep[b] = n == 1 || fp32::sigmoid(u) >= p.router.decode_threshold ? std::uint8_t{1} : std::uint8_t{0};
    }
  }
}

// Device prefill (one block per sequence, L <= max_depth_sequence). Non-finite keep scores are
// counted in diagnostics->nonfinite_rows; NaN ranks last. `workspace` (workspace_size bytes) is
// needed only when the loss is wanted; `max_blocks` caps the grid without changing any result.
[[nodiscard]] inline Status route(TokenSkipRouter const& router, TokenSkipBuffers<MemorySpace::device> const& b,
                                  void* workspace, std::size_t workspace_bytes, Diagnostics* diagnostics,
                                  arch::Stream stream, unsigned max_blocks = 0) {
  std::int64_t batch = 0, length = 0;
  if (Status s = token_skip_detail::check_buffers(router, b, batch, length); !s) {
    return s;
  }
  if (diagnostics == nullptr) {
    return error(Status::invalid_argument, "TokenSkipRouter: diagnostics must point to device memory");
  }
  if (length > max_depth_sequence) {
    return error(Status::unsupported_config,
                 "TokenSkipRouter: sequence length %lld exceeds the device kernel's bound %lld (one block sorts a "
                 "sequence)",
                 static_cast<long long>(length), static_cast<long long>(max_depth_sequence));
  }
  bool const loss = depth_detail::present(b.loss);
  float* partial = nullptr;
  if (loss) {
    Status s = Status::ok;
    partial = depth_detail::carve_partials(workspace, workspace_bytes, batch, "TokenSkipRouter", s);
    if (!s) {
      return s;
    }
  }
  if (batch > 0) {
    TokenSkipKernelParams const p{router,
                                  batch,
                                  length,
                                  length - router.skipped(length),
                                  b.attention.data,
                                  b.attention.stride(0),
                                  b.scores.data,
                                  b.scores.stride(0),
                                  b.features.data,
                                  b.features.stride(0),
                                  b.features.stride(1),
                                  b.selected.data,
                                  b.selected.stride(0),
                                  b.keep.data,
                                  b.keep.stride(0),
                                  b.skip_rate.data,
                                  b.grad_scores.data,
                                  b.grad_scores.stride(0),
                                  static_cast<float>(double(batch) * double(length)),
                                  partial,
                                  diagnostics};
    arch::KernelLaunch const l{.grid = depth_device::grid_for(batch, max_blocks),
                               .block = depth_block_threads,
                               .dynamic_shared_bytes = sizeof(depth_device::TokenSkipStorage)};
    if (Status s = arch::launch(token_skip_kernel<depth_block_threads>, l, stream, p); !s) {
      return s;
    }
  }
  return loss ? depth_device::launch_mean(partial, batch, static_cast<float>(batch), b.loss.data, stream) : Status::ok;
}

[[nodiscard]] inline Status route_decode(TokenSkipRouter const& router,
                                         TokenSkipDecodeBuffers<MemorySpace::device> const& b, Diagnostics* diagnostics,
                                         arch::Stream stream, unsigned max_blocks = 0) {
  std::int64_t batch = 0, length = 0;
  if (Status s = token_skip_detail::check_decode_buffers(router, b, batch, length); !s) {
    return s;
  }
  if (diagnostics == nullptr) {
    return error(Status::invalid_argument, "TokenSkipRouter decode: diagnostics must point to device memory");
  }
  if (batch == 0) {
    return Status::ok;
  }
  TokenSkipDecodeParams const p{router,        batch,       length,     b.attention.data, b.attention.stride(0),
                                b.scores.data, b.keep.data, diagnostics};
  arch::KernelLaunch const l{.grid = depth_device::grid_for(batch, max_blocks),
                             .block = depth_block_threads,
                             .dynamic_shared_bytes = sizeof(depth_device::TokenSkipDecodeStorage)};
  return arch::launch(token_skip_decode_kernel<depth_block_threads>, l, stream, p);
}

MOEKIT_ARCH_NAMESPACE_END

}  // namespace routing
MOEKIT_NAMESPACE_END
