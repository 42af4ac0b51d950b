#pragma once
// LayerRouter: Dr.LLM's per-layer skip / execute / repeat router (ALGORITHMS.md §4.3). For one
// layer ℓ and each sequence of the batch, the hidden states h [n, d] entering the layer are
// mean-pooled over W = min(num_windows, n) windows of ws = floor(n / W) positions (the last
// n − W·ws positions are ignored), each window goes through the router MLP
//   z_w = W2 · GELU_tanh(W1 m_w + b1) + b2      (W1 [128, d], W2 [3, 128])
// and the LOGITS are averaged, z = (1/W) Σ_w z_w. Decision = argmax z (ties to the lower class:
// skip 0 < execute 1 < repeat 2), or the router_penalty blend of the reference code, or always
// execute (is_static_routing). Training: focal loss with effective-number class weights,
// L = (1/N) Σ −α_y (1 − p_y)^γ log p_y, and its gradient w.r.t. z (and z_w: the same / W).
//
// fp32 arithmetic fixed so that the host path, the emulated kernel and the GPU agree bit for bit
// on z and the decisions: m_w[k] = (Σ_q h[w·ws + q, k], ascending q) / ws; W1 m_w in lane order
// (depth.hpp), + b1; GELU_tanh(x) = x·σ(2·sqrt(2/π)·fmaf(0.044715, x·x·x, x)) (= 0.5x(1 + tanh)),
// z_w,c = (fmaf chain over j ascending) + b2_c, z = (Σ_w z_w ascending) / W. The loss and its
// gradient are fp32 (the GPU may contract their products; compare them with a tolerance).
// Device: one block of 256 threads per sequence, 8 warps x 16 rows of W1, d streamed in chunks.

#include <array>
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
#include "moekit/routing/ranking.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

enum class LayerDecision : std::int8_t { skip = 0, execute = 1, repeat = 2 };

struct LayerRouter {
  static constexpr RouterScope scope = RouterScope::per_batch;
  static constexpr int width = 128;  // router bottleneck
  static constexpr int classes = 3;

  std::int64_t hidden_size = 0;  // d
  int num_windows = 8;           // --num_windows; must match training
  float const* w1 = nullptr;     // [128, d]
  float const* b1 = nullptr;     // [128]
  float const* w2 = nullptr;     // [3, 128]
  float const* b2 = nullptr;     // [3]
  bool static_routing = false;   // is_static_routing: every layer executes once
  bool use_router_penalty = false;
  float router_penalty = 0.f;  // p in [-1, 1] (the reference code's decision bias); -0.5 = plain argmax
  // Focal loss: γ, β and the global class counts n_c of the effective-number weights.
  double focal_gamma = 2.0;
  double focal_beta = 0.999;
  std::array<double, 3> class_counts{4399.0, 120956.0, 1457.0};
  double loss_normaliser = 0.0;  // N of the mean (e.g. B·L over all layers); 0: the batch size B

  [[nodiscard]] Status validate() const {
    if (hidden_size < 1) {
      return error(Status::invalid_argument, "LayerRouter: hidden size must be >= 1 (got %lld)",
                   static_cast<long long>(hidden_size));
    }
    if (num_windows < 1) {
      return error(Status::invalid_argument, "LayerRouter: num_windows must be >= 1 (got %d)", num_windows);
    }
    if (w1 == nullptr || b1 == nullptr || w2 == nullptr || b2 == nullptr) {
      return error(Status::invalid_argument, "LayerRouter: the router weights w1, b1, w2 and b2 must all be given");
    }
    if (use_router_penalty && !(router_penalty >= -1.f && router_penalty <= 1.f)) {
      return error(Status::invalid_argument, "LayerRouter: router_penalty must be in [-1, 1] (got %g)",
                   double(router_penalty));
    }
    if (!(focal_gamma >= 0.0 && std::isfinite(focal_gamma))) {
      return error(Status::invalid_argument, "LayerRouter: focal gamma must be finite and >= 0 (got %g)", focal_gamma);
    }
    if (!(focal_beta > 0.0 && focal_beta < 1.0)) {
      return error(Status::invalid_argument, "LayerRouter: focal beta must be in (0,1) (got %g)", focal_beta);
    }
    for (int c = 0; c < classes; ++c) {
      if (!(class_counts[static_cast<std::size_t>(c)] > 0.0 &&
            std::isfinite(class_counts[static_cast<std::size_t>(c)]))) {
        return error(Status::invalid_argument, "LayerRouter: class count n_%d must be finite and > 0 (got %g)", c,
                     class_counts[static_cast<std::size_t>(c)]);
      }
    }
    if (!(loss_normaliser >= 0.0 && std::isfinite(loss_normaliser))) {
      return error(Status::invalid_argument, "LayerRouter: loss normaliser must be finite and >= 0 (got %g)",
                   loss_normaliser);
    }
    return Status::ok;
  }

  // α_c = 3 w_c / Σ w, w_c = (1 − β)/(1 − β^{n_c}), in double.
  [[nodiscard]] std::array<double, 3> focal_alpha() const {
    std::array<double, 3> w{};
    double sum = 0.0;
    for (std::size_t c = 0; c < 3; ++c) {
      w[c] = (1.0 - focal_beta) / (1.0 - std::pow(focal_beta, class_counts[c]));
      sum += w[c];
    }
    for (double& v : w) {
      v = 3.0 * v / sum;
    }
    return w;
  }
};
static_assert(diagnose_router<LayerRouter>() && Router<LayerRouter>);

namespace layer_router_detail {

// Windows W and window size ws for a prompt of n >= 1 positions.
[[nodiscard]] MOEKIT_HOST_DEVICE inline std::int64_t windows(int num_windows, std::int64_t n) noexcept {
  return num_windows < n ? num_windows : n;
}

// GELU with the tanh approximation, as x·σ(2y): 0.5x(1 + tanh y) = x·σ(2y).
[[nodiscard]] MOEKIT_HOST_DEVICE inline float gelu_tanh(float x) noexcept {
  float const x3 = x * x * x;
  float const inner = ::fmaf(0.044715f, x3, x);
  return x * fp32::sigmoid(1.5957691216057308f * inner);  // 2·sqrt(2/π)
}

// What the router concludes from the averaged logits of one sequence.
struct Outcome {
  float q[3];      // softmax(z)
  int decision;    // 0 skip, 1 execute, 2 repeat
  float loss;      // this item's focal term (not yet divided by N); 0 without a label
  float grad[3];   // ∂L/∂z (divided by N); 0 without a label
  bool bad_label;  // a label outside {0, 1, 2}
  bool nonfinite;  // a NaN or +inf logit, or all three -inf
};

struct LossParams {
  float alpha[3];
  float gamma;
  float divisor;  // N
};

// x^e in fp32 for x >= 0 (0^e = 0 for e > 0; x^0 = 1).
[[nodiscard]] MOEKIT_HOST_DEVICE inline float power(float x, float e) noexcept {
  if (e == 0.f) {
    return 1.f;
  }
  if (x == 0.f) {
    return e > 0.f ? 0.f : INFINITY;
  }
  return fp32::exp(e * fp32::log(x));
}

// label < 0: no label (inference).
[[nodiscard]] MOEKIT_HOST_DEVICE inline Outcome evaluate(LayerRouter const& r, LossParams const& lp,
                                                         float const (&z)[3], int label) noexcept {
  Outcome o{};
  o.nonfinite = false;
  bool any_finite = false;
  for (int c = 0; c < 3; ++c) {
    o.nonfinite = o.nonfinite || z[c] != z[c] || z[c] == INFINITY;
    any_finite = any_finite || z[c] != -INFINITY;
  }
  o.nonfinite = o.nonfinite || !any_finite;
  float m = z[0];
  m = z[1] > m ? z[1] : m;
  m = z[2] > m ? z[2] : m;
  float e[3];
  for (int c = 0; c < 3; ++c) {
    e[c] = fp32::exp(z[c] - m);
  }
  float const sum = (e[0] + e[1]) + e[2];
  for (int c = 0; c < 3; ++c) {
    o.q[c] = e[c] / sum;
  }
  if (r.static_routing) {
    o.decision = 1;
  } else {
    float f[3] = {z[0], z[1], z[2]};
    if (r.use_router_penalty) {
      // f = (1 − t)·from + t·to: (e_skip, q) for p <= −0.5, (q, e_execute) up to 0.5, then
      // (e_execute, e_repeat).
      float const p = r.router_penalty;
      int const regime = p <= -0.5f ? 0 : p <= 0.5f ? 1 : 2;
      float const t = regime == 0 ? (p + 1.f) / 0.5f : regime == 1 ? p + 0.5f : (p - 0.5f) / 0.5f;
      MOEKIT_DEPTH_UNROLL
      for (int c = 0; c < 3; ++c) {
        float const from = regime == 0 ? (c == 0 ? 1.f : 0.f) : regime == 1 ? o.q[c] : (c == 1 ? 1.f : 0.f);
        float const to = regime == 0 ? o.q[c] : regime == 1 ? (c == 1 ? 1.f : 0.f) : (c == 2 ? 1.f : 0.f);
        f[c] = ::fmaf(t, to, (1.f - t) * from);
      }
    }
    int best = 0;
    float best_value = f[0];
    for (int c = 1; c < 3; ++c) {
      bool const better = ranks_before(f[c], c, best_value, best);
      best = better ? c : best;
      best_value = better ? f[c] : best_value;
    }
    o.decision = best;
  }
  o.loss = 0.f;
  o.bad_label = label > 2;
  if (label < 0 || label > 2) {
    return o;
  }
  // Selected by value, not by a runtime index, so nothing goes to local memory on the device.
  auto const pick = [label](float const(&v)[3]) { return label == 0 ? v[0] : label == 1 ? v[1] : v[2]; };
  float const alpha = pick(lp.alpha);
  float const log_p = (pick(z) - m) - fp32::log(sum);  // log p_y without forming p_y
  float rest_sum = 0.f;
  for (int c = 0; c < 3; ++c) {
    rest_sum += c == label ? 0.f : e[c];
  }
  float const rest = rest_sum / sum;  // 1 − p_y without cancellation
  float const focal = power(rest, lp.gamma);
  o.loss = -alpha * focal * log_p;
  // ∂L/∂z_c = coef · (δ_yc − p_c), coef = α[γ (1−p)^{γ−1} p log p − (1−p)^γ]; its limit 0 at p = 1.
  float coef;
  if (lp.gamma == 0.f) {
    coef = -alpha;
  } else if (rest == 0.f) {
    coef = 0.f;
  } else {
    coef = alpha * (lp.gamma * power(rest, lp.gamma - 1.f) * pick(o.q) * log_p - focal);
  }
  for (int c = 0; c < 3; ++c) {
    o.grad[c] = coef * ((c == label ? 1.f : 0.f) - o.q[c]) / lp.divisor;
  }
  return o;
}

[[nodiscard]] inline LossParams loss_params(LayerRouter const& r, std::int64_t batch) {
  std::array<double, 3> const a = r.focal_alpha();
  double const n = r.loss_normaliser > 0.0 ? r.loss_normaliser : double(batch);
  return {{static_cast<float>(a[0]), static_cast<float>(a[1]), static_cast<float>(a[2])},
          static_cast<float>(r.focal_gamma),
          static_cast<float>(n)};
}

}  // namespace layer_router_detail

// hidden [B, n, d] of the batch entering the layer; decisions [B] required; labels y*_ℓ [B]
// (MCTS path counts) for the loss and gradients; the rest optional.
template <MemorySpace Space, class T = float>
struct LayerRouterBuffers {
  TensorView<T const, 3, Space> hidden;            // h [B, n, d]
  TensorView<std::int8_t const, 1, Space> labels;  // [B] in {0, 1, 2}
  TensorView<std::int8_t, 1, Space> decisions;     // [B]: LayerDecision values
  TensorView<float, 2, Space> logits;              // z [B, 3]
  TensorView<float, 2, Space> probs;               // softmax(z) [B, 3]
  TensorView<float, 2, Space> grad_logits;         // ∂L/∂z [B, 3]
  TensorView<float, 2, Space> grad_window_logits;  // ∂L/∂z_w = ∂L/∂z / W (every window) [B, 3]
  TensorView<float, 1, Space> loss;                // focal loss [1]
};

namespace layer_router_detail {
template <MemorySpace Space, class T>
[[nodiscard]] Status check_buffers(LayerRouter const& r, LayerRouterBuffers<Space, T> const& b) {
  if (Status s = r.validate(); !s) {
    return s;
  }
  std::int64_t const batch = b.hidden.extent(0), n = b.hidden.extent(1);
  using depth_detail::check_optional;
  if (Status s = check_optional(b.hidden, "LayerRouter: hidden", {batch, n, r.hidden_size}, true); !s) {
    return s;
  }
  if (n == 0) {
    return error(Status::invalid_argument, "LayerRouter: empty sequence (hidden is [%lld, 0, %lld])",
                 static_cast<long long>(batch), static_cast<long long>(r.hidden_size));
  }
  if (Status s = check_optional(b.labels, "LayerRouter: labels", {batch}); !s) {
    return s;
  }
  if (Status s = check_optional(b.decisions, "LayerRouter: decisions", {batch}, true); !s) {
    return s;
  }
  if (Status s = check_optional(b.logits, "LayerRouter: logits", {batch, 3}); !s) {
    return s;
  }
  if (Status s = check_optional(b.probs, "LayerRouter: probs", {batch, 3}); !s) {
    return s;
  }
  if (Status s = check_optional(b.grad_logits, "LayerRouter: grad_logits", {batch, 3}); !s) {
    return s;
  }
  if (Status s = check_optional(b.grad_window_logits, "LayerRouter: grad_window_logits", {batch, 3}); !s) {
    return s;
  }
  if (Status s = check_optional(b.loss, "LayerRouter: loss", {1}); !s) {
    return s;
  }
  bool const wants_loss = depth_detail::present(b.loss) || depth_detail::present(b.grad_logits) ||
                          depth_detail::present(b.grad_window_logits);
  if (wants_loss && !depth_detail::present(b.labels)) {
    return error(Status::invalid_argument, "LayerRouter: the loss and its gradients need labels [B]");
  }
  return Status::ok;
}
}  // namespace layer_router_detail

[[nodiscard]] inline std::size_t workspace_size(LayerRouter const&, std::int64_t batch) {
  return depth_detail::partials_bytes(batch);
}

// Host entry point, checked mode: non-finite hidden states or router weights, labels outside
// {0, 1, 2} and non-finite logits are refused (sequence named) before any output is written.
template <class T>
[[nodiscard]] Status route(LayerRouter const& router, LayerRouterBuffers<MemorySpace::host, T> const& b) {
  if (Status s = layer_router_detail::check_buffers(router, b); !s) {
    return s;
  }
  std::int64_t const batch = b.hidden.extent(0), n = b.hidden.extent(1), d = router.hidden_size;
  if (Status s = depth_detail::check_finite_inputs(b.hidden, "LayerRouter"); !s) {
    return s;
  }
  char const* who = "LayerRouter";
  if (Status s = depth_detail::check_finite_weights(router.w1, LayerRouter::width * d, who, "router weight w1"); !s) {
    return s;
  }
  if (Status s = depth_detail::check_finite_weights(router.b1, LayerRouter::width, who, "router bias b1"); !s) {
    return s;
  }
  if (Status s = depth_detail::check_finite_weights(router.w2, 3 * LayerRouter::width, who, "router weight w2"); !s) {
    return s;
  }
  if (Status s = depth_detail::check_finite_weights(router.b2, 3, who, "router bias b2"); !s) {
    return s;
  }
  bool const labelled = depth_detail::present(b.labels);
  if (labelled) {
    for (std::int64_t s = 0; s < batch; ++s) {
      int const y = b.labels(s);
      if (y < 0 || y > 2) {
        return error(Status::invalid_argument, "LayerRouter: layer label must be 0, 1 or 2 (got %d at sequence %lld)",
                     y, static_cast<long long>(s));
      }
    }
  }
  std::int64_t const windows = layer_router_detail::windows(router.num_windows, n);
  std::int64_t const ws = n / windows;
  layer_router_detail::LossParams const lp = layer_router_detail::loss_params(router, batch);
  std::vector<layer_router_detail::Outcome> out(static_cast<std::size_t>(batch));
  std::vector<std::array<float, 3>> logits(static_cast<std::size_t>(batch));
  std::vector<float> m(static_cast<std::size_t>(d));
  std::vector<float> act(LayerRouter::width);
  for (std::int64_t s = 0; s < batch; ++s) {
    float zsum[3] = {0.f, 0.f, 0.f};
    for (std::int64_t w = 0; w < windows; ++w) {
      for (std::int64_t k = 0; k < d; ++k) {
        float sum = 0.f;
        for (std::int64_t q = 0; q < ws; ++q) {
          sum += static_cast<float>(b.hidden(s, w * ws + q, k));
        }
        m[static_cast<std::size_t>(k)] = sum / static_cast<float>(ws);
      }
      for (int j = 0; j < LayerRouter::width; ++j) {
        float const pre = depth_detail::lane_order_dot(router.w1 + j * d, m.data(), d) + router.b1[j];
        act[static_cast<std::size_t>(j)] = layer_router_detail::gelu_tanh(pre);
      }
      for (int c = 0; c < 3; ++c) {
        float zc = 0.f;
        for (int j = 0; j < LayerRouter::width; ++j) {
          zc = ::fmaf(router.w2[c * LayerRouter::width + j], act[static_cast<std::size_t>(j)], zc);
        }
        zsum[c] = zsum[c] + (zc + router.b2[c]);
      }
    }
    float const z[3] = {zsum[0] / static_cast<float>(windows), zsum[1] / static_cast<float>(windows),
                        zsum[2] / static_cast<float>(windows)};
    auto const at = static_cast<std::size_t>(s);
    out[at] = layer_router_detail::evaluate(router, lp, z, labelled ? int{b.labels(s)} : -1);
    if (out[at].nonfinite) {
      return error(Status::invalid_argument, "LayerRouter: non-finite layer logits (%g, %g, %g) at sequence %lld",
                   double(z[0]), double(z[1]), double(z[2]), static_cast<long long>(s));
    }
    logits[at] = {z[0], z[1], z[2]};
  }
  std::vector<float> partials(static_cast<std::size_t>(batch));
  for (std::int64_t s = 0; s < batch; ++s) {
    auto const at = static_cast<std::size_t>(s);
    b.decisions(s) = static_cast<std::int8_t>(out[at].decision);
    for (int c = 0; c < 3; ++c) {
      if (depth_detail::present(b.logits)) {
        b.logits(s, c) = logits[at][static_cast<std::size_t>(c)];
      }
      if (depth_detail::present(b.probs)) {
        b.probs(s, c) = out[at].q[c];
      }
      if (depth_detail::present(b.grad_logits)) {
        b.grad_logits(s, c) = out[at].grad[c];
      }
      if (depth_detail::present(b.grad_window_logits)) {
        b.grad_window_logits(s, c) = out[at].grad[c] / static_cast<float>(windows);
      }
    }
    partials[at] = out[at].loss;
  }
  if (depth_detail::present(b.loss)) {
    b.loss(0) = depth_detail::ordered_mean(partials, lp.divisor);
  }
  return Status::ok;
}

MOEKIT_ARCH_NAMESPACE_BEGIN

inline constexpr int layer_router_chunk = 1024;  // features of the pooled window held in shared memory

namespace depth_device {
struct LayerRouterStorage {
  arch::SharedArray<float, layer_router_chunk> pooled;
  arch::SharedArray<float, LayerRouter::width> act;
  arch::SharedArray<float, 3> z;
};
}  // namespace depth_device

template <class T>
struct LayerRouterKernelParams {
  LayerRouter router;
  layer_router_detail::LossParams loss;
  std::int64_t batch, length, windows, window_size;
  T const* hidden;
  std::int64_t hidden_stride0, hidden_stride1;
  std::int8_t const* labels;
  std::int8_t* decisions;
  float* logits;
  std::int64_t logits_stride;
  float* probs;
  std::int64_t probs_stride;
  float* grad;
  std::int64_t grad_stride;
  float* grad_window;
  std::int64_t grad_window_stride;
  float* partial;
  Diagnostics* diagnostics;
};

template <class T>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(depth_block_threads, 1) layer_router_kernel(LayerRouterKernelParams<T> p) {
  static_assert(depth_block_threads / 32 * 16 == LayerRouter::width, "8 warps x 16 rows cover W1");
  constexpr int rows = 16;
  auto& s = arch::shared_storage<depth_device::LayerRouterStorage>();
  unsigned const t = arch::thread_rank();
  unsigned const lane = arch::lane_id();
  int const row0 = static_cast<int>(arch::warp_id()) * rows;
  std::int64_t const d = p.router.hidden_size;
  for (std::int64_t b = arch::block_rank(); b < p.batch; b += arch::grid_dim().x) {
    arch::sync_threads();
    T const* h = p.hidden + b * p.hidden_stride0;
    float zsum = 0.f;  // class t, in threads 0..2
    for (std::int64_t w = 0; w < p.windows; ++w) {
      float acc[rows];
      MOEKIT_DEPTH_UNROLL
      for (int r = 0; r < rows; ++r) {
        acc[r] = 0.f;
      }
      for (std::int64_t c0 = 0; c0 < d; c0 += layer_router_chunk) {
        std::int64_t const c1 = c0 + layer_router_chunk < d ? c0 + layer_router_chunk : d;
        arch::sync_threads();  // the previous chunk's products are done with `pooled`
        for (std::int64_t k = c0 + t; k < c1; k += depth_block_threads) {
          float sum = 0.f;
          for (std::int64_t q = 0; q < p.window_size; ++q) {
            sum += static_cast<float>(h[(w * p.window_size + q) * p.hidden_stride1 + k]);
          }
          s.pooled[static_cast<std::size_t>(k - c0)] = sum / static_cast<float>(p.window_size);
        }
        arch::sync_threads();
        // Lane l: k = l, l + 32, ... ascending for each of its warp's 16 rows (the lane order).
        float const* w1 = p.router.w1 + static_cast<std::int64_t>(row0) * d;
        for (std::int64_t k = c0 + lane; k < c1; k += arch::warp_size) {
          float const m = s.pooled[static_cast<std::size_t>(k - c0)];
          MOEKIT_DEPTH_UNROLL
          for (int r = 0; r < rows; ++r) {
            acc[r] = ::fmaf(w1[r * d + k], m, acc[r]);
          }
        }
      }
      MOEKIT_DEPTH_UNROLL
      for (int r = 0; r < rows; ++r) {
        float v = acc[r];
        for (int o = 16; o > 0; o >>= 1) {
          v = v + arch::shfl_xor_sync(arch::full_warp_mask, v, o);
        }
        if (lane == 0) {
          s.act[static_cast<std::size_t>(row0 + r)] = layer_router_detail::gelu_tanh(v + p.router.b1[row0 + r]);
        }
      }
      arch::sync_threads();
      if (t < 3) {
        float zc = 0.f;
        for (int j = 0; j < LayerRouter::width; ++j) {
          zc =
              ::fmaf(p.router.w2[static_cast<int>(t) * LayerRouter::width + j], s.act[static_cast<std::size_t>(j)], zc);
        }
        zsum = zsum + (zc + p.router.b2[t]);
      }
      arch::sync_threads();  // act is rewritten by the next window
    }
    if (t < 3) {
      s.z[t] = zsum / static_cast<float>(p.windows);
    }
    arch::sync_threads();
    if (t == 0) {
      float const z[3] = {s.z[0], s.z[1], s.z[2]};
      int const label = p.labels != nullptr ? int{p.labels[b]} : -1;
      layer_router_detail::Outcome const o = layer_router_detail::evaluate(p.router, p.loss, z, label);
      if (o.nonfinite) {
        arch::atomic_add(&p.diagnostics->nonfinite_rows, 1ull);
      }
      if (p.labels != nullptr && (label < 0 || label > 2)) {
        arch::atomic_add(&p.diagnostics->invalid_ids, 1ull);
      }
      p.decisions[b] = static_cast<std::int8_t>(o.decision);
      for (int c = 0; c < 3; ++c) {
        if (p.logits != nullptr) {
          p.logits[b * p.logits_stride + c] = z[c];
        }
        if (p.probs != nullptr) {
          p.probs[b * p.probs_stride + c] = o.q[c];
        }
        if (p.grad != nullptr) {
          p.grad[b * p.grad_stride + c] = o.grad[c];
        }
        if (p.grad_window != nullptr) {
          p.grad_window[b * p.grad_window_stride + c] = o.grad[c] / static_cast<float>(p.windows);
        }
      }
      if (p.partial != nullptr) {
        p.partial[b] = o.loss;
      }
    }
  }
}

// Device entry point: one block per sequence. Non-finite logits are counted in
// diagnostics->nonfinite_rows (the decision then follows the NaN-last argmax), labels outside
// {0, 1, 2} in diagnostics->invalid_ids (that item adds nothing to the loss or gradients).
// `workspace` (workspace_size bytes) is needed only when the loss is wanted.
template <class T>
[[nodiscard]] Status route(LayerRouter const& router, LayerRouterBuffers<MemorySpace::device, T> const& b,
                           void* workspace, std::size_t workspace_bytes, Diagnostics* diagnostics, arch::Stream stream,
                           unsigned max_blocks = 0) {
  if (Status s = layer_router_detail::check_buffers(router, b); !s) {
    return s;
  }
  if (diagnostics == nullptr) {
    return error(Status::invalid_argument, "LayerRouter: diagnostics must point to device memory");
  }
  std::int64_t const batch = b.hidden.extent(0), n = b.hidden.extent(1);
  bool const loss = depth_detail::present(b.loss);
  float* partial = nullptr;
  if (loss) {
    Status s = Status::ok;
    partial = depth_detail::carve_partials(workspace, workspace_bytes, batch, "LayerRouter", s);
    if (!s) {
      return s;
    }
  }
  layer_router_detail::LossParams const lp = layer_router_detail::loss_params(router, batch);
  if (batch > 0) {
    std::int64_t const windows = layer_router_detail::windows(router.num_windows, n);
    LayerRouterKernelParams<T> const p{router,
                                       lp,
                                       batch,
                                       n,
                                       windows,
                                       n / windows,
                                       b.hidden.data,
                                       b.hidden.stride(0),
                                       b.hidden.stride(1),
                                       b.labels.data,
                                       b.decisions.data,
                                       b.logits.data,
                                       b.logits.stride(0),
                                       b.probs.data,
                                       b.probs.stride(0),
                                       b.grad_logits.data,
                                       b.grad_logits.stride(0),
                                       b.grad_window_logits.data,
                                       b.grad_window_logits.stride(0),
                                       partial,
                                       diagnostics};
    arch::KernelLaunch const l{.grid = depth_device::grid_for(batch, max_blocks),
                               .block = depth_block_threads,
                               .dynamic_shared_bytes = sizeof(depth_device::LayerRouterStorage)};
    if (Status s = arch::launch(layer_router_kernel<T>, l, stream, p); !s) {
      return s;
    }
  }
  return loss ? depth_device::launch_mean(partial, batch, lp.divisor, b.loss.data, stream) : Status::ok;
}

MOEKIT_ARCH_NAMESPACE_END

}  // namespace routing
MOEKIT_NAMESPACE_END
