#pragma once
// Quantized<Base>: a dense expert policy (SwiGlu<bf16_t>, ClampedSwiglu<fp16_t>, ...) whose
// weights are group-wise quantised with a bit width per expert (experts/quantized_weights.hpp,
// QuantizedMlpWeights). The expert function is Base's; only how the weights are stored changes.
// The GEMMs dequantise the codes in registers (experts/dequantize.hpp) to Compute, Base's 16-bit
// element type, and feed the tensor cores with it.

#include <type_traits>

#include "moekit/config.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/status.hpp"
#include "moekit/experts/concept.hpp"
#include "moekit/experts/quantized_weights.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace experts {

// The Element of a quantised policy: a marker, not a storage type (the storage is
// QuantizedWeights: codes, scales, zero points), naming the 16-bit type codes become.
template <class Compute>
struct QuantizedElement {
  using compute_type = Compute;
};

template <class Base>
struct Quantized {
  static_assert(Expert<Base>, "Quantized<Base>: Base must be an Expert policy (experts/concept.hpp)");
  static_assert(std::is_same_v<typename Base::Element, bf16_t> || std::is_same_v<typename Base::Element, fp16_t>,
                "Quantized<Base>: Base::Element is what the codes are dequantised to for the tensor cores: use a "
                "bf16_t or fp16_t policy");

  using Element = QuantizedElement<typename Base::Element>;
  using Compute = typename Base::Element;
  using BasePolicy = Base;
  static constexpr ExpertShape shape = Base::shape;
  static constexpr char const* name = "quantized";

  Base base{};  // its parameters (clamped SwiGLU's alpha/limit)

  // The bit widths the GEMM kernels are instantiated for; the quantiser and dequantize_run cover 1..8.
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr bool kernel_bits(int bits) noexcept {
    return bits == 2 || bits == 3 || bits == 4 || bits == 8;
  }

  [[nodiscard]] MOEKIT_HOST_DEVICE float hidden_unit(float gate, float up) const noexcept {
    return base.hidden_unit(gate, up);
  }
  [[nodiscard]] Status validate() const { return base.validate(); }
};

}  // namespace experts
MOEKIT_NAMESPACE_END
