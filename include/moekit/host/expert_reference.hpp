#pragma once
// The oracle for the expert functions (ALGORITHMS.md §1.2, §1.5, §1.9, §1.10.1, §3.3): gated MLPs
// (SwiGLU, GeGLU erf/tanh, ReGLU), the plain MLP, gpt-oss's clamped SwiGLU with biases, LoRA
// deltas, the Qwen2-MoE shared-expert gate, the weighted combine over K slots and the backward of
// one expert. Written independently of kernels/ and cpu/: every input (float, bf16 or fp16) is
// widened to double, every sum runs in double in index order, and each output is rounded once to
// fp32. Views of the fused checkpoint layouts (§1.10.1) are strided TensorViews, so the same
// functions read a per-expert matrix or a slice of a fused [E, 2I, H] / [E, H, 2I] tensor.

#include <algorithm>
#include <array>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace host {

template <class T>
concept ExpertElement = std::same_as<T, float> || std::same_as<T, bf16_t> || std::same_as<T, fp16_t>;

// ---------------------------------------------------------------------------------------------
// Activations (§1.9.1), in double.

enum class Activation : int { silu, gelu_erf, gelu_tanh, relu };

[[nodiscard]] constexpr bool is_valid(Activation a) noexcept {
  return a == Activation::silu || a == Activation::gelu_erf || a == Activation::gelu_tanh || a == Activation::relu;
}

[[nodiscard]] constexpr char const* to_string(Activation a) noexcept {
  switch (a) {
    case Activation::silu: return "silu";
    case Activation::gelu_erf: return "gelu";
    case Activation::gelu_tanh: return "gelu_pytorch_tanh";
    case Activation::relu: return "relu";
  }
  return "unknown activation";
}

namespace expert_detail {
// Both branches avoid exp overflow: σ(a) for a ≥ 0 via exp(-a), for a < 0 via exp(a).
[[nodiscard]] inline double sigmoid(double a) noexcept {
  if (a >= 0) {
    return 1.0 / (1.0 + std::exp(-a));
  }
  double const e = std::exp(a);
  return e / (1.0 + e);
}
inline constexpr double sqrt_2_over_pi = 0.79788456080286535588;  // √(2/π)
inline constexpr double inv_sqrt_2 = 0.70710678118654752440;      // 1/√2
inline constexpr double inv_sqrt_2pi = 0.39894228040143267794;    // 1/√(2π)
}  // namespace expert_detail

// act(a); NaN for an invalid enumerator (callers validate first).
[[nodiscard]] inline double activation_value(Activation act, double a) noexcept {
  switch (act) {
    case Activation::silu: return a * expert_detail::sigmoid(a);
    case Activation::gelu_erf: return 0.5 * a * (1.0 + std::erf(a * expert_detail::inv_sqrt_2));
    case Activation::gelu_tanh: {
      double const tau = expert_detail::sqrt_2_over_pi * (a + 0.044715 * a * a * a);
      return 0.5 * a * (1.0 + std::tanh(tau));
    }
    case Activation::relu: return a > 0 ? a : 0.0;
  }
  return std::numeric_limits<double>::quiet_NaN();
}

// act'(a); relu'(0) = 0 as in torch.
[[nodiscard]] inline double activation_derivative(Activation act, double a) noexcept {
  switch (act) {
    case Activation::silu: {
      double const s = expert_detail::sigmoid(a);
      return s * (1.0 + a * (1.0 - s));
    }
    case Activation::gelu_erf: {
      double const cdf = 0.5 * (1.0 + std::erf(a * expert_detail::inv_sqrt_2));
      return cdf + a * expert_detail::inv_sqrt_2pi * std::exp(-0.5 * a * a);
    }
    case Activation::gelu_tanh: {
      double const t = std::tanh(expert_detail::sqrt_2_over_pi * (a + 0.044715 * a * a * a));
      return 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * expert_detail::sqrt_2_over_pi * (1.0 + 0.134145 * a * a);
    }
    case Activation::relu: return a > 0 ? 1.0 : 0.0;
  }
  return std::numeric_limits<double>::quiet_NaN();
}

// ---------------------------------------------------------------------------------------------
// gpt-oss clamped SwiGLU (§1.5), one (gate a, linear u) pair.

struct ClampedSwigluParams {
  double alpha = 1.702;  // HF swiglu_alpha default (not stored in checkpoints)
  double limit = 7.0;    // swiglu_limit; +inf disables both clamps
};

struct ClampedSwigluPoint {
  double a_hat = 0;  // min(a, limit)
  double u_hat = 0;  // clamp(u, -limit, limit)
  double f = 0;      // â·σ(α â)
  double h = 0;      // (û + 1)·f
  double dh_da = 0;  // (û + 1)·f'(â) if a < limit, else 0
  double dh_du = 0;  // f if -limit < u < limit, else 0 (0 exactly at a bound, as torch.clamp)
};

[[nodiscard]] inline ClampedSwigluPoint clamped_swiglu_point(double a, double u, ClampedSwigluParams p) noexcept {
  ClampedSwigluPoint r;
  r.a_hat = a < p.limit ? a : p.limit;  // (a NaN gate becomes the limit; callers refuse non-finite input)
  r.u_hat = u > p.limit ? p.limit : (u < -p.limit ? -p.limit : u);
  double const s = expert_detail::sigmoid(p.alpha * r.a_hat);
  r.f = r.a_hat * s;
  double const f_prime = s + p.alpha * r.a_hat * s * (1.0 - s);
  r.h = (r.u_hat + 1.0) * r.f;
  r.dh_da = a < p.limit ? (r.u_hat + 1.0) * f_prime : 0.0;
  r.dh_du = (-p.limit < u && u < p.limit) ? r.f : 0.0;
  return r;
}

[[nodiscard]] inline Status check_clamped_swiglu_params(ClampedSwigluParams p) noexcept {
  if (!(p.limit > 0)) {  // NaN fails too
    return error(Status::invalid_argument, "swiglu_limit must be > 0 (got %g)", p.limit);
  }
  if (!std::isfinite(p.alpha)) {
    return error(Status::invalid_argument, "swiglu_alpha must be finite (got %g)", p.alpha);
  }
  return Status::ok;
}

// ---------------------------------------------------------------------------------------------
// One expert: its function and its weights.

enum class ExpertKind : int {
  gated,           // o = W_d (act(W_g x + b_g) ⊙ (W_u x + b_u)) + b_d: SwiGLU, GeGLU, ReGLU
  plain,           // o = W_d act(W_u x + b_u) + b_d (Switch; W_in = up, W_out = down; gate unused)
  clamped_swiglu,  // gpt-oss (§1.5): h = (û + 1)·â σ(α â); activation unused
};

struct ExpertFunction {
  ExpertKind kind = ExpertKind::gated;
  Activation activation = Activation::silu;
  ClampedSwigluParams clamp{};
};

[[nodiscard]] inline Status check_expert_function(ExpertFunction const& fn) noexcept {
  switch (fn.kind) {
    case ExpertKind::gated:
    case ExpertKind::plain:
      if (!is_valid(fn.activation)) {
        return error(Status::invalid_argument, "expert reference: bad activation %d (silu, gelu_erf, gelu_tanh, relu)",
                     static_cast<int>(fn.activation));
      }
      return Status::ok;
    case ExpertKind::clamped_swiglu: return check_clamped_swiglu_params(fn.clamp);
  }
  return error(Status::invalid_argument, "expert reference: bad expert kind %d", static_cast<int>(fn.kind));
}

// Weights of one expert, [out, in] per matrix; any strides (so fused-layout slices fit). A bias
// whose data is null is absent (zero). `gate` is unused by the plain MLP.
template <ExpertElement W>
struct ExpertWeights {
  HostTensor<W const, 2> gate;       // [I, H]
  HostTensor<W const, 2> up;         // [I, H]
  HostTensor<W const, 2> down;       // [H, I]
  HostTensor<W const, 1> gate_bias;  // [I] or absent
  HostTensor<W const, 1> up_bias;    // [I] or absent
  HostTensor<W const, 1> down_bias;  // [H] or absent

  [[nodiscard]] std::int64_t hidden() const noexcept { return up.extent(1); }
  [[nodiscard]] std::int64_t intermediate() const noexcept { return up.extent(0); }
};

namespace expert_detail {

template <class T>
[[nodiscard]] inline double widen(T v) noexcept {
  return static_cast<double>(to_float(v));
}

template <class T, int Rank>
[[nodiscard]] Status check_view(HostTensor<T, Rank> const& v, char const* what, long long expert,
                                std::type_identity_t<std::array<std::int64_t, Rank>> const& want) noexcept {
  if (!is_ok(v.validate())) {
    return error(Status::invalid_argument, "expert reference: expert %lld %s has a negative extent/stride or is null",
                 expert, what);
  }
  for (int d = 0; d < Rank; ++d) {
    if (v.extent(d) != want[static_cast<std::size_t>(d)]) {
      return error(Status::invalid_argument,
                   "expert reference: expert %lld %s has extent %lld in dimension %d, expected %lld", expert, what,
                   static_cast<long long>(v.extent(d)), d, static_cast<long long>(want[static_cast<std::size_t>(d)]));
    }
  }
  return Status::ok;
}

template <class T>
[[nodiscard]] Status check_bias(HostTensor<T, 1> const& b, char const* what, long long expert,
                                std::int64_t n) noexcept {
  if (b.data == nullptr) {
    return Status::ok;  // absent
  }
  return check_view(b, what, expert, {n});
}

// The dense double copy of one expert; absent biases are zeros.
struct DenseExpert {
  std::int64_t hidden = 0;
  std::int64_t inter = 0;
  std::vector<double> gate, up, down;  // row-major [I,H], [I,H], [H,I]
  std::vector<double> gate_bias, up_bias, down_bias;
};

template <class W>
[[nodiscard]] DenseExpert load_expert(ExpertWeights<W> const& w, ExpertKind kind) {
  DenseExpert d;
  d.hidden = w.hidden();
  d.inter = w.intermediate();
  auto const H = static_cast<std::size_t>(d.hidden);
  auto const I = static_cast<std::size_t>(d.inter);
  d.gate.assign(I * H, 0.0);
  d.up.assign(I * H, 0.0);
  d.down.assign(H * I, 0.0);
  d.gate_bias.assign(I, 0.0);
  d.up_bias.assign(I, 0.0);
  d.down_bias.assign(H, 0.0);
  for (std::size_t m = 0; m < I; ++m) {
    for (std::size_t h = 0; h < H; ++h) {
      if (kind != ExpertKind::plain) {
        d.gate[m * H + h] = widen(*w.gate.pointer(m, h));
      }
      d.up[m * H + h] = widen(*w.up.pointer(m, h));
    }
    if (w.gate_bias.data != nullptr && kind != ExpertKind::plain) {
      d.gate_bias[m] = widen(*w.gate_bias.pointer(m));
    }
    if (w.up_bias.data != nullptr) {
      d.up_bias[m] = widen(*w.up_bias.pointer(m));
    }
  }
  for (std::size_t h = 0; h < H; ++h) {
    for (std::size_t m = 0; m < I; ++m) {
      d.down[h * I + m] = widen(*w.down.pointer(h, m));
    }
    if (w.down_bias.data != nullptr) {
      d.down_bias[h] = widen(*w.down_bias.pointer(h));
    }
  }
  return d;
}

// Pre-activations (g, u) and the intermediate h of one token, kept for the backward.
struct ExpertTrace {
  std::vector<double> g, u, h;
};

inline void expert_forward(DenseExpert const& d, ExpertFunction const& fn, double const* x, double* o, ExpertTrace& t) {
  auto const H = static_cast<std::size_t>(d.hidden);
  auto const I = static_cast<std::size_t>(d.inter);
  t.g.assign(I, 0.0);
  t.u.assign(I, 0.0);
  t.h.assign(I, 0.0);
  for (std::size_t m = 0; m < I; ++m) {
    double g = 0;
    double u = 0;
    for (std::size_t h = 0; h < H; ++h) {
      g += d.gate[m * H + h] * x[h];
      u += d.up[m * H + h] * x[h];
    }
    t.g[m] = g + d.gate_bias[m];
    t.u[m] = u + d.up_bias[m];
    switch (fn.kind) {
      case ExpertKind::gated: t.h[m] = activation_value(fn.activation, t.g[m]) * t.u[m]; break;
      case ExpertKind::plain: t.h[m] = activation_value(fn.activation, t.u[m]); break;
      case ExpertKind::clamped_swiglu: t.h[m] = clamped_swiglu_point(t.g[m], t.u[m], fn.clamp).h; break;
    }
  }
  for (std::size_t h = 0; h < H; ++h) {
    double s = 0;
    for (std::size_t m = 0; m < I; ++m) {
      s += d.down[h * I + m] * t.h[m];
    }
    o[h] = s + d.down_bias[h];
  }
}

// Gradients of one token, accumulated (+=) into the double buffers of the same shapes as the
// dense expert; grad_x is written (=).
struct DenseGradients {
  std::vector<double> gate, up, down, gate_bias, up_bias, down_bias;
};

inline void expert_backward(DenseExpert const& d, ExpertFunction const& fn, double const* x, double const* grad_o,
                            ExpertTrace const& t, double* grad_x, DenseGradients& g) {
  auto const H = static_cast<std::size_t>(d.hidden);
  auto const I = static_cast<std::size_t>(d.inter);
  for (std::size_t h = 0; h < H; ++h) {
    grad_x[h] = 0;
  }
  for (std::size_t m = 0; m < I; ++m) {
    double hbar = 0;  // (W_d^T ō)_m
    for (std::size_t h = 0; h < H; ++h) {
      hbar += d.down[h * I + m] * grad_o[h];
    }
    double gbar = 0;
    double ubar = 0;
    switch (fn.kind) {
      case ExpertKind::gated:
        ubar = hbar * activation_value(fn.activation, t.g[m]);
        gbar = hbar * t.u[m] * activation_derivative(fn.activation, t.g[m]);
        break;
      case ExpertKind::plain: ubar = hbar * activation_derivative(fn.activation, t.u[m]); break;
      case ExpertKind::clamped_swiglu: {
        ClampedSwigluPoint const p = clamped_swiglu_point(t.g[m], t.u[m], fn.clamp);
        gbar = hbar * p.dh_da;
        ubar = hbar * p.dh_du;
        break;
      }
    }
    for (std::size_t h = 0; h < H; ++h) {
      g.gate[m * H + h] += gbar * x[h];
      g.up[m * H + h] += ubar * x[h];
      grad_x[h] += d.gate[m * H + h] * gbar + d.up[m * H + h] * ubar;
    }
    g.gate_bias[m] += gbar;
    g.up_bias[m] += ubar;
  }
  for (std::size_t h = 0; h < H; ++h) {
    for (std::size_t m = 0; m < I; ++m) {
      g.down[h * I + m] += grad_o[h] * t.h[m];
    }
    g.down_bias[h] += grad_o[h];
  }
}

}  // namespace expert_detail

// Shapes of one expert's weights against the hidden size (`expert` only names it in messages).
template <ExpertElement W>
[[nodiscard]] Status check_expert_weights(ExpertWeights<W> const& w, ExpertFunction const& fn, std::int64_t hidden,
                                          long long expert = 0) noexcept {
  if (Status s = expert_detail::check_view(w.up, "up (W_in) weight", expert, {w.up.extent(0), hidden}); !s) {
    return s;
  }
  std::int64_t const inter = w.intermediate();
  if (fn.kind != ExpertKind::plain) {
    if (Status s = expert_detail::check_view(w.gate, "gate weight", expert, {inter, hidden}); !s) {
      return s;
    }
    if (Status s = expert_detail::check_bias(w.gate_bias, "gate bias", expert, inter); !s) {
      return s;
    }
  }
  if (Status s = expert_detail::check_bias(w.up_bias, "up bias", expert, inter); !s) {
    return s;
  }
  if (Status s = expert_detail::check_view(w.down, "down weight", expert, {hidden, inter}); !s) {
    return s;
  }
  return expert_detail::check_bias(w.down_bias, "down bias", expert, hidden);
}

// ---------------------------------------------------------------------------------------------
// Forward of one expert on one token: o[H] (fp32) = E(x).

template <ExpertElement X, ExpertElement W>
[[nodiscard]] Status reference_expert(HostTensor<X const, 1> x, ExpertWeights<W> const& w, ExpertFunction const& fn,
                                      HostTensor<float, 1> o) {
  if (Status s = check_expert_function(fn); !s) {
    return s;
  }
  std::int64_t const H = x.extent(0);
  if (!is_ok(x.validate()) || !is_ok(o.validate()) || o.extent(0) != H) {
    return error(Status::invalid_argument, "expert reference: x has %lld elements, output %lld (both must be H)",
                 static_cast<long long>(x.extent(0)), static_cast<long long>(o.extent(0)));
  }
  if (Status s = check_expert_weights(w, fn, H); !s) {
    return s;
  }
  expert_detail::DenseExpert const d = expert_detail::load_expert(w, fn.kind);
  std::vector<double> xd(static_cast<std::size_t>(H));
  for (std::int64_t h = 0; h < H; ++h) {
    xd[static_cast<std::size_t>(h)] = expert_detail::widen(*x.pointer(h));
  }
  std::vector<double> od(static_cast<std::size_t>(H));
  expert_detail::ExpertTrace trace;
  expert_detail::expert_forward(d, fn, xd.data(), od.data(), trace);
  for (std::int64_t h = 0; h < H; ++h) {
    *o.pointer(h) = static_cast<float>(od[static_cast<std::size_t>(h)]);
  }
  return Status::ok;
}

// SwiGLU / GeGLU / ReGLU: o = W_down (act(W_gate x) ⊙ W_up x).
template <ExpertElement X, ExpertElement W>
[[nodiscard]] Status reference_gated_mlp(HostTensor<X const, 1> x, HostTensor<W const, 2> w_gate,
                                         HostTensor<W const, 2> w_up, HostTensor<W const, 2> w_down, Activation act,
                                         HostTensor<float, 1> o) {
  ExpertWeights<W> w;
  w.gate = w_gate;
  w.up = w_up;
  w.down = w_down;
  return reference_expert(x, w, ExpertFunction{ExpertKind::gated, act, {}}, o);
}

// Plain MLP (Switch): o = W_out act(W_in x).
template <ExpertElement X, ExpertElement W>
[[nodiscard]] Status reference_plain_mlp(HostTensor<X const, 1> x, HostTensor<W const, 2> w_in,
                                         HostTensor<W const, 2> w_out, Activation act, HostTensor<float, 1> o) {
  ExpertWeights<W> w;
  w.up = w_in;
  w.down = w_out;
  return reference_expert(x, w, ExpertFunction{ExpertKind::plain, act, {}}, o);
}

// gpt-oss (§1.5): o = W_d h + b_d, h_m = (û_m + 1)·â_m σ(α â_m), a = W_g x + b_g, u = W_u x + b_u.
// Biases may be absent (null data). For a fused interleaved tensor, take the views from
// FusedGateUp / FusedGateUpBias below.
template <ExpertElement X, ExpertElement W>
[[nodiscard]] Status
reference_clamped_swiglu(HostTensor<X const, 1> x, HostTensor<W const, 2> w_gate, HostTensor<W const, 2> w_up,
                         HostTensor<W const, 1> b_gate, HostTensor<W const, 1> b_up, HostTensor<W const, 2> w_down,
                         HostTensor<W const, 1> b_down, ClampedSwigluParams params, HostTensor<float, 1> o) {
  ExpertWeights<W> w{w_gate, w_up, w_down, b_gate, b_up, b_down};
  return reference_expert(x, w, ExpertFunction{ExpertKind::clamped_swiglu, Activation::silu, params}, o);
}

// ---------------------------------------------------------------------------------------------
// Backward of one expert over T tokens: grad_x [T,H] written; weight (and present bias) gradients
// summed over tokens in token order (double), written once. A gradient view with null data is
// not computed out (skipped); grad gate is ignored by the plain MLP.

struct ExpertGradients {
  HostTensor<float, 2> x;          // [T, H]
  HostTensor<float, 2> gate;       // [I, H]
  HostTensor<float, 2> up;         // [I, H]
  HostTensor<float, 2> down;       // [H, I]
  HostTensor<float, 1> gate_bias;  // [I]
  HostTensor<float, 1> up_bias;    // [I]
  HostTensor<float, 1> down_bias;  // [H]
};

template <ExpertElement X, ExpertElement W>
[[nodiscard]] Status reference_expert_backward(HostTensor<X const, 2> x, ExpertWeights<W> const& w,
                                               ExpertFunction const& fn, HostTensor<float const, 2> grad_o,
                                               ExpertGradients const& grads) {
  if (Status s = check_expert_function(fn); !s) {
    return s;
  }
  if (!is_ok(x.validate()) || !is_ok(grad_o.validate()) || grad_o.extent(0) != x.extent(0) ||
      grad_o.extent(1) != x.extent(1)) {
    return error(Status::invalid_argument, "expert backward reference: x is [%lld, %lld], grad_o [%lld, %lld]",
                 static_cast<long long>(x.extent(0)), static_cast<long long>(x.extent(1)),
                 static_cast<long long>(grad_o.extent(0)), static_cast<long long>(grad_o.extent(1)));
  }
  std::int64_t const T = x.extent(0);
  std::int64_t const H = x.extent(1);
  if (Status s = check_expert_weights(w, fn, H); !s) {
    return s;
  }
  std::int64_t const I = w.intermediate();
  auto check_grad = [](auto const& v, char const* what, auto want) -> Status {
    if (v.data == nullptr) {
      return Status::ok;
    }
    return expert_detail::check_view(v, what, 0, want);
  };
  using E2 = std::array<std::int64_t, 2>;
  using E1 = std::array<std::int64_t, 1>;
  if (Status s = check_grad(grads.x, "grad x", E2{T, H}); !s) {
    return s;
  }
  if (Status s = check_grad(grads.gate, "grad gate", E2{I, H}); !s) {
    return s;
  }
  if (Status s = check_grad(grads.up, "grad up", E2{I, H}); !s) {
    return s;
  }
  if (Status s = check_grad(grads.down, "grad down", E2{H, I}); !s) {
    return s;
  }
  if (Status s = check_grad(grads.gate_bias, "grad gate bias", E1{I}); !s) {
    return s;
  }
  if (Status s = check_grad(grads.up_bias, "grad up bias", E1{I}); !s) {
    return s;
  }
  if (Status s = check_grad(grads.down_bias, "grad down bias", E1{H}); !s) {
    return s;
  }
  expert_detail::DenseExpert const d = expert_detail::load_expert(w, fn.kind);
  auto const Hs = static_cast<std::size_t>(H);
  auto const Is = static_cast<std::size_t>(I);
  expert_detail::DenseGradients g{std::vector<double>(Is * Hs), std::vector<double>(Is * Hs),
                                  std::vector<double>(Hs * Is), std::vector<double>(Is),
                                  std::vector<double>(Is),      std::vector<double>(Hs)};
  std::vector<double> gx(static_cast<std::size_t>(T) * Hs);
  std::vector<double> xd(Hs), od(Hs), go(Hs);
  expert_detail::ExpertTrace trace;
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t h = 0; h < H; ++h) {
      xd[static_cast<std::size_t>(h)] = expert_detail::widen(*x.pointer(t, h));
      go[static_cast<std::size_t>(h)] = static_cast<double>(*grad_o.pointer(t, h));
    }
    expert_detail::expert_forward(d, fn, xd.data(), od.data(), trace);
    expert_detail::expert_backward(d, fn, xd.data(), go.data(), trace, gx.data() + static_cast<std::size_t>(t) * Hs, g);
  }
  auto store2 = [](HostTensor<float, 2> const& v, std::vector<double> const& src) {
    if (v.data == nullptr) {
      return;
    }
    auto const cols = static_cast<std::size_t>(v.extent(1));
    for (std::int64_t r = 0; r < v.extent(0); ++r) {
      for (std::int64_t c = 0; c < v.extent(1); ++c) {
        *v.pointer(r, c) = static_cast<float>(src[static_cast<std::size_t>(r) * cols + static_cast<std::size_t>(c)]);
      }
    }
  };
  auto store1 = [](HostTensor<float, 1> const& v, std::vector<double> const& src) {
    if (v.data == nullptr) {
      return;
    }
    for (std::int64_t r = 0; r < v.extent(0); ++r) {
      *v.pointer(r) = static_cast<float>(src[static_cast<std::size_t>(r)]);
    }
  };
  store2(grads.x, gx);
  if (fn.kind != ExpertKind::plain) {
    store2(grads.gate, g.gate);
    store1(grads.gate_bias, g.gate_bias);
  }
  store2(grads.up, g.up);
  store2(grads.down, g.down);
  store1(grads.up_bias, g.up_bias);
  store1(grads.down_bias, g.down_bias);
  return Status::ok;
}

// ---------------------------------------------------------------------------------------------
// Fused checkpoint layouts (§1.10.1) as strided views of one expert.

enum class GateUpLayout : int {
  concatenated_out_in,  // [E, 2I, H]: rows 0..I-1 gate, I..2I-1 up (HF v5 Mixtral, Qwen, OLMoE, DeepSeek)
  interleaved_in_out,   // [E, H, 2I]: column 2m gate, 2m+1 up (HF v5 gpt-oss)
  concatenated_in_out,  // [E, H, 2I]: columns 0..I-1 gate, I..2I-1 up (Llama-4)
  interleaved_out_in,   // [E, 2I, H]: row 2m gate, 2m+1 up (gpt-oss on disk after MXFP4 decode)
};

[[nodiscard]] constexpr bool is_out_in(GateUpLayout l) noexcept {
  return l == GateUpLayout::concatenated_out_in || l == GateUpLayout::interleaved_out_in;
}
[[nodiscard]] constexpr bool is_interleaved(GateUpLayout l) noexcept {
  return l == GateUpLayout::interleaved_in_out || l == GateUpLayout::interleaved_out_in;
}

template <ExpertElement W>
struct FusedGateUp {
  HostTensor<W const, 3> tensor;
  GateUpLayout layout = GateUpLayout::concatenated_out_in;

  [[nodiscard]] std::int64_t experts() const noexcept { return tensor.extent(0); }
  [[nodiscard]] std::int64_t fused() const noexcept { return tensor.extent(is_out_in(layout) ? 1 : 2); }
  [[nodiscard]] std::int64_t hidden() const noexcept { return tensor.extent(is_out_in(layout) ? 2 : 1); }
  [[nodiscard]] std::int64_t intermediate() const noexcept { return fused() / 2; }
  // Position of gate row m / up row m along the fused 2I dimension.
  [[nodiscard]] std::int64_t gate_index(std::int64_t m) const noexcept { return is_interleaved(layout) ? 2 * m : m; }
  [[nodiscard]] std::int64_t up_index(std::int64_t m) const noexcept {
    return is_interleaved(layout) ? 2 * m + 1 : intermediate() + m;
  }
  // gate_e[m, h] and up_e[m, h] in [out, in] terms.
  [[nodiscard]] W const& gate(std::int64_t e, std::int64_t m, std::int64_t h) const noexcept {
    return is_out_in(layout) ? tensor(e, gate_index(m), h) : tensor(e, h, gate_index(m));
  }
  [[nodiscard]] W const& up(std::int64_t e, std::int64_t m, std::int64_t h) const noexcept {
    return is_out_in(layout) ? tensor(e, up_index(m), h) : tensor(e, h, up_index(m));
  }
  // [I, H] strided views of expert e (e < experts()).
  [[nodiscard]] HostTensor<W const, 2> gate_view(std::int64_t e) const noexcept { return view(e, gate_index(0)); }
  [[nodiscard]] HostTensor<W const, 2> up_view(std::int64_t e) const noexcept { return view(e, up_index(0)); }

  [[nodiscard]] Status validate() const noexcept {
    if (!is_ok(tensor.validate())) {
      return error(Status::invalid_argument, "fused gate_up: negative extent/stride or null data");
    }
    if (fused() % 2 != 0) {
      return error(Status::invalid_argument, "fused gate_up: the fused dimension is %lld, not 2I",
                   static_cast<long long>(fused()));
    }
    return Status::ok;
  }

 private:
  [[nodiscard]] HostTensor<W const, 2> view(std::int64_t e, std::int64_t first) const noexcept {
    std::int64_t const step = is_interleaved(layout) ? 2 : 1;
    int const fused_dim = is_out_in(layout) ? 1 : 2;
    int const hidden_dim = is_out_in(layout) ? 2 : 1;
    HostTensor<W const, 2> v;
    v.data = tensor.data + e * tensor.stride(0) + first * tensor.stride(fused_dim);
    v.extents = {intermediate(), hidden()};
    v.strides = {step * tensor.stride(fused_dim), tensor.stride(hidden_dim)};
    return v;
  }
};

// gate_up bias [E, 2I]: interleaved (gpt-oss: b[e, 2m] gate, b[e, 2m+1] up) or concatenated.
template <ExpertElement W>
struct FusedGateUpBias {
  HostTensor<W const, 2> tensor;
  bool interleaved = true;

  [[nodiscard]] HostTensor<W const, 1> gate_view(std::int64_t e) const noexcept { return view(e, 0); }
  [[nodiscard]] HostTensor<W const, 1> up_view(std::int64_t e) const noexcept {
    return view(e, interleaved ? 1 : tensor.extent(1) / 2);
  }

 private:
  [[nodiscard]] HostTensor<W const, 1> view(std::int64_t e, std::int64_t first) const noexcept {
    HostTensor<W const, 1> v;
    v.data = tensor.data + e * tensor.stride(0) + first * tensor.stride(1);
    v.extents = {tensor.extent(1) / 2};
    v.strides = {(interleaved ? 2 : 1) * tensor.stride(1)};
    return v;
  }
};

// down_proj: [E, H, I] ([out, in], HF v5 concatenated families) or [E, I, H] ([in, out], gpt-oss, Llama-4).
enum class DownLayout : int { out_in, in_out };

// The [H, I] view of expert e.
template <ExpertElement W>
[[nodiscard]] HostTensor<W const, 2> down_view(HostTensor<W const, 3> down, DownLayout layout,
                                               std::int64_t e) noexcept {
  HostTensor<W const, 2> v;
  v.data = down.data + e * down.stride(0);
  if (layout == DownLayout::out_in) {
    v.extents = {down.extent(1), down.extent(2)};
    v.strides = {down.stride(1), down.stride(2)};
  } else {
    v.extents = {down.extent(2), down.extent(1)};
    v.strides = {down.stride(2), down.stride(1)};
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// Qwen2-MoE shared-expert gate (§1.2): σ(w_sg · x), logit and sigmoid in double, one rounding.

template <ExpertElement X, ExpertElement W>
[[nodiscard]] Status reference_shared_expert_gate(HostTensor<X const, 1> x, HostTensor<W const, 1> w_sg, float& gate) {
  if (!is_ok(x.validate()) || !is_ok(w_sg.validate()) || w_sg.extent(0) != x.extent(0)) {
    return error(Status::invalid_argument, "shared expert gate: x has %lld elements, gate vector %lld",
                 static_cast<long long>(x.extent(0)), static_cast<long long>(w_sg.extent(0)));
  }
  double a = 0;
  for (std::int64_t h = 0; h < x.extent(0); ++h) {
    a += expert_detail::widen(*x.pointer(h)) * expert_detail::widen(*w_sg.pointer(h));
  }
  gate = static_cast<float>(expert_detail::sigmoid(a));
  return Status::ok;
}

// ---------------------------------------------------------------------------------------------
// LoRA (§3.3): delta = s·B (A x), s = α/r (standard) or α/√r (rsLoRA). A [r, d_in], B [d_out, r] fp32.

enum class LoraScaling : int { standard, rank_stabilized };

[[nodiscard]] inline double lora_scale(double alpha, std::int64_t rank, LoraScaling scaling) noexcept {
  double const r = static_cast<double>(rank);
  return scaling == LoraScaling::rank_stabilized ? alpha / std::sqrt(r) : alpha / r;
}

// Rank, α and scaling (§3.3 edge cases).
[[nodiscard]] inline Status check_lora_params(std::int64_t d_in, std::int64_t r, std::int64_t d_out, double alpha,
                                              LoraScaling scaling) noexcept {
  if (r < 1 || r > std::min(d_in, d_out)) {
    return error(Status::invalid_argument,
                 "LoRA: rank must be in [1, min(d_in,d_out)] (rank %lld, d_in %lld, d_out %lld)",
                 static_cast<long long>(r), static_cast<long long>(d_in), static_cast<long long>(d_out));
  }
  if (!(alpha > 0) || !std::isfinite(alpha)) {
    return error(Status::invalid_argument, "LoRA: alpha must be finite and > 0 (got %g)", alpha);
  }
  if (scaling != LoraScaling::standard && scaling != LoraScaling::rank_stabilized) {
    return error(Status::invalid_argument, "LoRA: bad scaling %d", static_cast<int>(scaling));
  }
  return Status::ok;
}

template <ExpertElement X>
[[nodiscard]] Status reference_lora_delta(HostTensor<X const, 1> x, HostTensor<float const, 2> a,
                                          HostTensor<float const, 2> b, double alpha, LoraScaling scaling,
                                          HostTensor<float, 1> delta) {
  if (!is_ok(x.validate()) || !is_ok(a.validate()) || !is_ok(b.validate()) || !is_ok(delta.validate())) {
    return error(Status::invalid_argument, "LoRA: negative extent/stride or null data");
  }
  std::int64_t const d_in = x.extent(0);
  std::int64_t const r = a.extent(0);
  std::int64_t const d_out = b.extent(0);
  if (a.extent(1) != d_in || b.extent(1) != r || delta.extent(0) != d_out) {
    return error(Status::invalid_argument,
                 "LoRA: x [%lld], A [%lld, %lld], B [%lld, %lld], delta [%lld] do not fit (A [r, d_in], B [d_out, r])",
                 static_cast<long long>(d_in), static_cast<long long>(r), static_cast<long long>(a.extent(1)),
                 static_cast<long long>(d_out), static_cast<long long>(b.extent(1)),
                 static_cast<long long>(delta.extent(0)));
  }
  if (Status st = check_lora_params(d_in, r, d_out, alpha, scaling); !st) {
    return st;
  }
  double const s = lora_scale(alpha, r, scaling);
  std::vector<double> u(static_cast<std::size_t>(r));
  for (std::int64_t k = 0; k < r; ++k) {
    double acc = 0;
    for (std::int64_t i = 0; i < d_in; ++i) {
      acc += static_cast<double>(*a.pointer(k, i)) * expert_detail::widen(*x.pointer(i));
    }
    u[static_cast<std::size_t>(k)] = acc;
  }
  for (std::int64_t o = 0; o < d_out; ++o) {
    double acc = 0;
    for (std::int64_t k = 0; k < r; ++k) {
      acc += static_cast<double>(*b.pointer(o, k)) * u[static_cast<std::size_t>(k)];
    }
    *delta.pointer(o) = static_cast<float>(s * acc);
  }
  return Status::ok;
}

// Backward of one LoRA expert's contribution y_t += w_t·s·B(A x_t) over T tokens (§3.3), with
// u_t = A x_t: ∂B = s Σ_t w_t g_t u_tᵀ, ∂A = s Σ_t w_t (Bᵀ g_t) x_tᵀ, ∂w_t = s g_tᵀ B u_t,
// ∂x_t = s w_t Aᵀ Bᵀ g_t (the LoRA path only; add W_0ᵀ g_t for the base). Sums over tokens in
// token order, in double, one fp32 rounding; a gradient view with null data is not written.
struct LoraGradients {
  HostTensor<float, 2> x;       // [T, d_in]
  HostTensor<float, 2> a;       // [r, d_in]
  HostTensor<float, 2> b;       // [d_out, r]
  HostTensor<float, 1> weight;  // [T]
};

template <ExpertElement X>
[[nodiscard]] Status reference_lora_backward(HostTensor<X const, 2> x, HostTensor<float const, 1> weight,
                                             HostTensor<float const, 2> a, HostTensor<float const, 2> b, double alpha,
                                             LoraScaling scaling, HostTensor<float const, 2> grad_y,
                                             LoraGradients const& grads) {
  if (!is_ok(x.validate()) || !is_ok(weight.validate()) || !is_ok(a.validate()) || !is_ok(b.validate()) ||
      !is_ok(grad_y.validate())) {
    return error(Status::invalid_argument, "LoRA backward: negative extent/stride or null data");
  }
  std::int64_t const T = x.extent(0);
  std::int64_t const d_in = x.extent(1);
  std::int64_t const r = a.extent(0);
  std::int64_t const d_out = b.extent(0);
  if (a.extent(1) != d_in || b.extent(1) != r || weight.extent(0) != T || grad_y.extent(0) != T ||
      grad_y.extent(1) != d_out) {
    return error(Status::invalid_argument,
                 "LoRA backward: x [%lld, %lld], weight [%lld], A [%lld, %lld], B [%lld, %lld], grad_y [%lld, %lld] "
                 "do not fit",
                 static_cast<long long>(T), static_cast<long long>(d_in), static_cast<long long>(weight.extent(0)),
                 static_cast<long long>(r), static_cast<long long>(a.extent(1)), static_cast<long long>(d_out),
                 static_cast<long long>(b.extent(1)), static_cast<long long>(grad_y.extent(0)),
                 static_cast<long long>(grad_y.extent(1)));
  }
  if (Status st = check_lora_params(d_in, r, d_out, alpha, scaling); !st) {
    return st;
  }
  auto check_grad = [](auto const& v, char const* what, auto want) -> Status {
    if (v.data == nullptr) {
      return Status::ok;
    }
    return expert_detail::check_view(v, what, 0, want);
  };
  using E2 = std::array<std::int64_t, 2>;
  if (Status st = check_grad(grads.x, "LoRA grad x", E2{T, d_in}); !st) {
    return st;
  }
  if (Status st = check_grad(grads.a, "LoRA grad A", E2{r, d_in}); !st) {
    return st;
  }
  if (Status st = check_grad(grads.b, "LoRA grad B", E2{d_out, r}); !st) {
    return st;
  }
  if (Status st = check_grad(grads.weight, "LoRA grad weight", std::array<std::int64_t, 1>{T}); !st) {
    return st;
  }
  double const s = lora_scale(alpha, r, scaling);
  auto const R = static_cast<std::size_t>(r);
  auto const Din = static_cast<std::size_t>(d_in);
  auto const Dout = static_cast<std::size_t>(d_out);
  std::vector<double> ga(R * Din, 0.0), gb(Dout * R, 0.0), gx(static_cast<std::size_t>(T) * Din, 0.0),
      gw(static_cast<std::size_t>(T), 0.0);
  std::vector<double> xt(Din), u(R), bt_g(R);
  for (std::int64_t t = 0; t < T; ++t) {
    double const w = static_cast<double>(*weight.pointer(t));
    for (std::size_t i = 0; i < Din; ++i) {
      xt[i] = expert_detail::widen(*x.pointer(t, static_cast<std::int64_t>(i)));
    }
    for (std::size_t k = 0; k < R; ++k) {
      double acc = 0;
      for (std::size_t i = 0; i < Din; ++i) {
        acc += static_cast<double>(*a.pointer(k, i)) * xt[i];
      }
      u[k] = acc;
      double bg = 0;  // (Bᵀ g_t)_k
      for (std::size_t o = 0; o < Dout; ++o) {
        bg += static_cast<double>(*b.pointer(o, k)) *
              static_cast<double>(*grad_y.pointer(t, static_cast<std::int64_t>(o)));
      }
      bt_g[k] = bg;
    }
    double dw = 0;  // g_tᵀ B u_t = Σ_k (Bᵀ g_t)_k u_k
    for (std::size_t k = 0; k < R; ++k) {
      dw += bt_g[k] * u[k];
      for (std::size_t i = 0; i < Din; ++i) {
        ga[k * Din + i] += s * w * bt_g[k] * xt[i];
      }
      for (std::size_t o = 0; o < Dout; ++o) {
        gb[o * R + k] += s * w * static_cast<double>(*grad_y.pointer(t, static_cast<std::int64_t>(o))) * u[k];
      }
    }
    gw[static_cast<std::size_t>(t)] = s * dw;
    for (std::size_t i = 0; i < Din; ++i) {
      double acc = 0;
      for (std::size_t k = 0; k < R; ++k) {
        acc += static_cast<double>(*a.pointer(k, i)) * bt_g[k];
      }
      gx[static_cast<std::size_t>(t) * Din + i] = s * w * acc;
    }
  }
  auto store2 = [](HostTensor<float, 2> const& v, std::vector<double> const& src) {
    if (v.data == nullptr) {
      return;
    }
    auto const cols = static_cast<std::size_t>(v.extent(1));
    for (std::int64_t i = 0; i < v.extent(0); ++i) {
      for (std::int64_t j = 0; j < v.extent(1); ++j) {
        *v.pointer(i, j) = static_cast<float>(src[static_cast<std::size_t>(i) * cols + static_cast<std::size_t>(j)]);
      }
    }
  };
  store2(grads.x, gx);
  store2(grads.a, ga);
  store2(grads.b, gb);
  if (grads.weight.data != nullptr) {
    for (std::int64_t t = 0; t < T; ++t) {
      *grads.weight.pointer(t) = static_cast<float>(gw[static_cast<std::size_t>(t)]);
    }
  }
  return Status::ok;
}

// ---------------------------------------------------------------------------------------------
// The combine (§1.9.2, §1.2, §1.6): y_t = Σ_j w_{t,j} E_{i_{t,j}}(x_t) (after_expert) or
// Σ_j E_{i_{t,j}}(w_{t,j} x_t) (on_input), slots in ascending order, empty slots (id = E)
// skipped, then the shared expert (σ(w_sg·x_t)·S(x_t) with a gate vector, S(x_t) without).
// All in double, rounded once to fp32.

enum class WeightPosition : int { after_expert, on_input };

template <ExpertElement W>
struct SharedExpert {
  ExpertWeights<W> weights;
  ExpertFunction function{};
  HostTensor<W const, 1> gate;  // w_sg [H] (Qwen2-MoE); null data → weight 1 (Llama-4, DeepSeek)
};

template <ExpertElement X, ExpertElement W>
[[nodiscard]] Status
reference_moe_combine(HostTensor<X const, 2> x, HostTensor<int const, 2> ids, HostTensor<float const, 2> weights,
                      std::span<ExpertWeights<W> const> experts, ExpertFunction const& fn, WeightPosition position,
                      std::type_identity_t<SharedExpert<W>> const* shared, HostTensor<float, 2> y) {
  if (Status s = check_expert_function(fn); !s) {
    return s;
  }
  if (position != WeightPosition::after_expert && position != WeightPosition::on_input) {
    return error(Status::invalid_argument, "combine reference: bad weight position %d", static_cast<int>(position));
  }
  if (!is_ok(x.validate()) || !is_ok(ids.validate()) || !is_ok(weights.validate()) || !is_ok(y.validate())) {
    return error(Status::invalid_argument, "combine reference: negative extent/stride or null data");
  }
  std::int64_t const T = x.extent(0);
  std::int64_t const H = x.extent(1);
  std::int64_t const K = ids.extent(1);
  auto const E = static_cast<std::int64_t>(experts.size());
  if (ids.extent(0) != T || weights.extent(0) != T || weights.extent(1) != K || y.extent(0) != T || y.extent(1) != H) {
    return error(Status::invalid_argument,
                 "combine reference: x [%lld, %lld], ids [%lld, %lld], weights [%lld, %lld], y [%lld, %lld] do not fit",
                 static_cast<long long>(T), static_cast<long long>(H), static_cast<long long>(ids.extent(0)),
                 static_cast<long long>(K), static_cast<long long>(weights.extent(0)),
                 static_cast<long long>(weights.extent(1)), static_cast<long long>(y.extent(0)),
                 static_cast<long long>(y.extent(1)));
  }
  if (E < 1) {
    return error(Status::invalid_argument, "combine reference: no experts (E = 0)");
  }
  for (std::int64_t e = 0; e < E; ++e) {
    if (Status s = check_expert_weights(experts[static_cast<std::size_t>(e)], fn, H, static_cast<long long>(e)); !s) {
      return s;
    }
  }
  if (shared != nullptr) {
    if (Status s = check_expert_function(shared->function); !s) {
      return s;
    }
    if (Status s = check_expert_weights(shared->weights, shared->function, H, -1); !s) {
      return s;
    }
    if (shared->gate.data != nullptr && (!is_ok(shared->gate.validate()) || shared->gate.extent(0) != H)) {
      return error(Status::invalid_argument, "combine reference: shared expert gate has %lld elements, expected %lld",
                   static_cast<long long>(shared->gate.extent(0)), static_cast<long long>(H));
    }
  }
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t h = 0; h < H; ++h) {
      double const v = expert_detail::widen(*x.pointer(t, h));
      if (!std::isfinite(v)) {
        return error(Status::invalid_argument, "combine reference: x at token %lld, h %lld is %g",
                     static_cast<long long>(t), static_cast<long long>(h), v);
      }
    }
    for (std::int64_t j = 0; j < K; ++j) {
      int const id = *ids.pointer(t, j);
      if (id < 0 || id > E) {
        return error(Status::invalid_argument,
                     "combine reference: expert id %d at token %lld, slot %lld not in [0, %lld]", id,
                     static_cast<long long>(t), static_cast<long long>(j), static_cast<long long>(E));
      }
      float const w = *weights.pointer(t, j);
      if (id != E && !std::isfinite(w)) {
        return error(Status::invalid_argument, "combine reference: weight %g at token %lld, slot %lld (expert %d)",
                     static_cast<double>(w), static_cast<long long>(t), static_cast<long long>(j), id);
      }
    }
  }
  std::vector<expert_detail::DenseExpert> dense;
  dense.reserve(static_cast<std::size_t>(E));
  for (auto const& w : experts) {
    dense.push_back(expert_detail::load_expert(w, fn.kind));
  }
  expert_detail::DenseExpert shared_dense;
  std::vector<double> shared_gate;
  if (shared != nullptr) {
    shared_dense = expert_detail::load_expert(shared->weights, shared->function.kind);
    if (shared->gate.data != nullptr) {
      shared_gate.resize(static_cast<std::size_t>(H));
      for (std::int64_t h = 0; h < H; ++h) {
        shared_gate[static_cast<std::size_t>(h)] = expert_detail::widen(*shared->gate.pointer(h));
      }
    }
  }
  auto const Hs = static_cast<std::size_t>(H);
  std::vector<double> out(static_cast<std::size_t>(T) * Hs, 0.0);
  std::vector<double> xt(Hs), xin(Hs), o(Hs);
  expert_detail::ExpertTrace trace;
  for (std::int64_t t = 0; t < T; ++t) {
    double* acc = out.data() + static_cast<std::size_t>(t) * Hs;
    for (std::size_t h = 0; h < Hs; ++h) {
      xt[h] = expert_detail::widen(*x.pointer(t, static_cast<std::int64_t>(h)));
    }
    for (std::int64_t j = 0; j < K; ++j) {
      int const id = *ids.pointer(t, j);
      if (id == E) {
        continue;  // empty slot: contributes nothing
      }
      double const w = static_cast<double>(*weights.pointer(t, j));
      auto const& d = dense[static_cast<std::size_t>(id)];
      if (position == WeightPosition::on_input) {
        for (std::size_t h = 0; h < Hs; ++h) {
          xin[h] = w * xt[h];
        }
        expert_detail::expert_forward(d, fn, xin.data(), o.data(), trace);
        for (std::size_t h = 0; h < Hs; ++h) {
          acc[h] += o[h];
        }
      } else {
        expert_detail::expert_forward(d, fn, xt.data(), o.data(), trace);
        for (std::size_t h = 0; h < Hs; ++h) {
          acc[h] += w * o[h];
        }
      }
    }
    if (shared != nullptr) {
      double g = 1.0;
      if (!shared_gate.empty()) {
        double a = 0;
        for (std::size_t h = 0; h < Hs; ++h) {
          a += shared_gate[h] * xt[h];
        }
        g = expert_detail::sigmoid(a);
      }
      expert_detail::expert_forward(shared_dense, shared->function, xt.data(), o.data(), trace);
      for (std::size_t h = 0; h < Hs; ++h) {
        acc[h] += g * o[h];
      }
    }
  }
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t h = 0; h < H; ++h) {
      *y.pointer(t, h) = static_cast<float>(out[static_cast<std::size_t>(t) * Hs + static_cast<std::size_t>(h)]);
    }
  }
  return Status::ok;
}

// Backward of the combine with respect to its inputs (§1.2, §1.6, §1.9.2): grad_x [T,H] (through
// every used slot and the shared expert), grad_weights [T,K] (after_expert: <g_t, E(x_t)>;
// on_input: <J_E(w x_t)ᵀ g_t, x_t>; 0 for an empty slot) and, with a gated shared expert,
// grad_shared_gate [H] = Σ_t σ'(a_t) <g_t, S(x_t)> x_t. Expert weight gradients are per expert:
// reference_expert_backward on the rows routed to it with grad_o = w·g (after_expert) or on the
// scaled rows w·x (on_input). Double throughout, one fp32 rounding; null views are not written.
template <ExpertElement X, ExpertElement W>
[[nodiscard]] Status reference_moe_combine_backward(
    HostTensor<X const, 2> x, HostTensor<int const, 2> ids, HostTensor<float const, 2> weights,
    std::span<ExpertWeights<W> const> experts, ExpertFunction const& fn, WeightPosition position,
    std::type_identity_t<SharedExpert<W>> const* shared, HostTensor<float const, 2> grad_y, HostTensor<float, 2> grad_x,
    HostTensor<float, 2> grad_weights, HostTensor<float, 1> grad_shared_gate) {
  std::int64_t const T = x.extent(0);
  std::int64_t const H = x.extent(1);
  std::int64_t const K = ids.extent(1);
  auto const E = static_cast<std::int64_t>(experts.size());
  {
    // The forward's checks (shapes, ids, weights, x, shared expert) on a scratch output.
    std::vector<float> scratch(static_cast<std::size_t>(T * H));
    if (Status st = reference_moe_combine(x, ids, weights, experts, fn, position, shared,
                                          HostTensor<float, 2>::row_major(scratch.data(), {T, H}));
        !st) {
      return st;
    }
  }
  auto check_grad = [](auto const& v, char const* what, auto want) -> Status {
    if (v.data == nullptr) {
      return Status::ok;
    }
    return expert_detail::check_view(v, what, 0, want);
  };
  using E2 = std::array<std::int64_t, 2>;
  if (!is_ok(grad_y.validate()) || grad_y.extent(0) != T || grad_y.extent(1) != H) {
    return error(Status::invalid_argument, "combine backward: grad_y is [%lld, %lld], expected [%lld, %lld]",
                 static_cast<long long>(grad_y.extent(0)), static_cast<long long>(grad_y.extent(1)),
                 static_cast<long long>(T), static_cast<long long>(H));
  }
  if (Status st = check_grad(grad_x, "combine grad_x", E2{T, H}); !st) {
    return st;
  }
  if (Status st = check_grad(grad_weights, "combine grad_weights", E2{T, K}); !st) {
    return st;
  }
  bool const gated_shared = shared != nullptr && shared->gate.data != nullptr;
  if (grad_shared_gate.data != nullptr && !gated_shared) {
    return error(Status::invalid_argument, "combine backward: grad_shared_gate given but no shared expert gate");
  }
  if (Status st = check_grad(grad_shared_gate, "combine grad_shared_gate", std::array<std::int64_t, 1>{H}); !st) {
    return st;
  }
  std::vector<expert_detail::DenseExpert> dense;
  dense.reserve(static_cast<std::size_t>(E));
  for (auto const& w : experts) {
    dense.push_back(expert_detail::load_expert(w, fn.kind));
  }
  auto const Hs = static_cast<std::size_t>(H);
  auto scratch_gradients = [](expert_detail::DenseExpert const& d) {
    auto const h = static_cast<std::size_t>(d.hidden);
    auto const i = static_cast<std::size_t>(d.inter);
    return expert_detail::DenseGradients{std::vector<double>(i * h), std::vector<double>(i * h),
                                         std::vector<double>(h * i), std::vector<double>(i),
                                         std::vector<double>(i),     std::vector<double>(h)};
  };
  expert_detail::DenseExpert shared_dense;
  std::vector<double> w_sg;
  if (shared != nullptr) {
    shared_dense = expert_detail::load_expert(shared->weights, shared->function.kind);
    if (gated_shared) {
      w_sg.resize(Hs);
      for (std::size_t h = 0; h < Hs; ++h) {
        w_sg[h] = expert_detail::widen(*shared->gate.pointer(static_cast<std::int64_t>(h)));
      }
    }
  }
  std::vector<double> gx(static_cast<std::size_t>(T) * Hs, 0.0), gw(static_cast<std::size_t>(T * K), 0.0), gsg(Hs, 0.0);
  std::vector<double> xt(Hs), xin(Hs), o(Hs), g(Hs), go(Hs), gin(Hs);
  expert_detail::ExpertTrace trace;
  for (std::int64_t t = 0; t < T; ++t) {
    double* acc = gx.data() + static_cast<std::size_t>(t) * Hs;
    for (std::size_t h = 0; h < Hs; ++h) {
      xt[h] = expert_detail::widen(*x.pointer(t, static_cast<std::int64_t>(h)));
      g[h] = static_cast<double>(*grad_y.pointer(t, static_cast<std::int64_t>(h)));
    }
    for (std::int64_t j = 0; j < K; ++j) {
      int const id = *ids.pointer(t, j);
      if (id == E) {
        continue;
      }
      double const w = static_cast<double>(*weights.pointer(t, j));
      auto const& d = dense[static_cast<std::size_t>(id)];
      auto dg = scratch_gradients(d);
      double dw = 0;
      if (position == WeightPosition::on_input) {
        for (std::size_t h = 0; h < Hs; ++h) {
          xin[h] = w * xt[h];
        }
        expert_detail::expert_forward(d, fn, xin.data(), o.data(), trace);
        expert_detail::expert_backward(d, fn, xin.data(), g.data(), trace, gin.data(), dg);
        for (std::size_t h = 0; h < Hs; ++h) {
          dw += gin[h] * xt[h];
          acc[h] += w * gin[h];
        }
      } else {
        expert_detail::expert_forward(d, fn, xt.data(), o.data(), trace);
        for (std::size_t h = 0; h < Hs; ++h) {
          dw += g[h] * o[h];
          go[h] = w * g[h];
        }
        expert_detail::expert_backward(d, fn, xt.data(), go.data(), trace, gin.data(), dg);
        for (std::size_t h = 0; h < Hs; ++h) {
          acc[h] += gin[h];
        }
      }
      gw[static_cast<std::size_t>(t * K + j)] = dw;
    }
    if (shared != nullptr) {
      auto dg = scratch_gradients(shared_dense);
      expert_detail::expert_forward(shared_dense, shared->function, xt.data(), o.data(), trace);
      double sigma = 1.0;
      if (gated_shared) {
        double a = 0;
        double so = 0;
        for (std::size_t h = 0; h < Hs; ++h) {
          a += w_sg[h] * xt[h];
          so += g[h] * o[h];
        }
        sigma = expert_detail::sigmoid(a);
        double const da = sigma * (1.0 - sigma) * so;
        for (std::size_t h = 0; h < Hs; ++h) {
          gsg[h] += da * xt[h];
          acc[h] += da * w_sg[h];
        }
      }
      for (std::size_t h = 0; h < Hs; ++h) {
        go[h] = sigma * g[h];
      }
      expert_detail::expert_backward(shared_dense, shared->function, xt.data(), go.data(), trace, gin.data(), dg);
      for (std::size_t h = 0; h < Hs; ++h) {
        acc[h] += gin[h];
      }
    }
  }
  if (grad_x.data != nullptr) {
    for (std::int64_t t = 0; t < T; ++t) {
      for (std::int64_t h = 0; h < H; ++h) {
        *grad_x.pointer(t, h) = static_cast<float>(gx[static_cast<std::size_t>(t) * Hs + static_cast<std::size_t>(h)]);
      }
    }
  }
  if (grad_weights.data != nullptr) {
    for (std::int64_t t = 0; t < T; ++t) {
      for (std::int64_t j = 0; j < K; ++j) {
        *grad_weights.pointer(t, j) = static_cast<float>(gw[static_cast<std::size_t>(t * K + j)]);
      }
    }
  }
  if (grad_shared_gate.data != nullptr) {
    for (std::int64_t h = 0; h < H; ++h) {
      *grad_shared_gate.pointer(h) = static_cast<float>(gsg[static_cast<std::size_t>(h)]);
    }
  }
  return Status::ok;
}

}  // namespace host
MOEKIT_NAMESPACE_END
