#pragma once
// Activation functions in fp32 for the expert kernels and the CPU executor (ALGORITHMS.md §1.9.1).
// Each is a small stateless value type usable on the host and in device code. They are accurate
// to a few ulp (not bit-identical across backends: the GEMMs around them sum in different orders
// anyway, so tests compare with the double-precision host reference, host/expert_reference.hpp).
//   SiLU      a·σ(a)                       hidden_act "silu"
//   Gelu      a·Φ(a) = ½a·erfc(−a/√2)      "gelu" (exact erf form)
//   GeluTanh  a·σ(2τ), τ = √(2/π)(a + 0.044715a³): equal to ½a(1 + tanh τ) without its
//             cancellation in the negative tail       "gelu_pytorch_tanh", "gelu_new"
//   ReLU      max(a, 0); NaN propagates as in torch     "relu"
//   Identity  a (linear experts: LoRA-only experts)

#include <cmath>

#include "moekit/config.hpp"
#include "moekit/core/fp32_math.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace experts::act {

struct SiLU {
  static constexpr char const* name = "silu";
  [[nodiscard]] MOEKIT_HOST_DEVICE float operator()(float a) const noexcept { return a * fp32::sigmoid(a); }
};

struct Gelu {
  static constexpr char const* name = "gelu";
  [[nodiscard]] MOEKIT_HOST_DEVICE float operator()(float a) const noexcept {
    // erfc keeps the negative tail accurate where 1 + erf(·) would cancel.
    return 0.5f * a * ::erfcf(-a * 0.70710678118654752f);
  }
};

struct GeluTanh {
  static constexpr char const* name = "gelu_pytorch_tanh";
  [[nodiscard]] MOEKIT_HOST_DEVICE float operator()(float a) const noexcept {
    float const tau = 0.79788456080286535588f * (a + 0.044715f * a * a * a);
    return a * fp32::sigmoid(2.0f * tau);  // 1 + tanh τ = 2σ(2τ)
  }
};

struct ReLU {
  static constexpr char const* name = "relu";
  [[nodiscard]] MOEKIT_HOST_DEVICE float operator()(float a) const noexcept { return a < 0.0f ? 0.0f : a; }
};

struct Identity {
  static constexpr char const* name = "identity";
  [[nodiscard]] MOEKIT_HOST_DEVICE float operator()(float a) const noexcept { return a; }
};

}  // namespace experts::act
MOEKIT_NAMESPACE_END
