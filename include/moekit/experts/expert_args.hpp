#pragma once
// What the expert stage of a layer (dispatch → GEMMs → combine) takes, on every backend: the
// problem sizes, the routed (ids, weights) of each token, the experts' weights, an optional
// shared expert and the output. The device kernels (kernels/) and the CPU executor (cpu/)
// check the same things with check_expert_args, and the host reference is the oracle for both.
//
// Combine (ALGORITHMS.md §1.9.2): y_t = Σ_j w_tj E_ij(x_t) (after_expert, the default:
// Mixtral, Qwen, DeepSeek, OLMoE, gpt-oss after its down bias) or Σ_j E_ij(w_tj x_t) (on_input:
// Llama-4), slots summed in ascending slot order, then the shared expert. An empty slot (id = E)
// adds nothing, a zero expert adds nothing, an identity expert adds w·x (on_input: w·x too).

#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/experts/concept.hpp"
#include "moekit/experts/expert_table.hpp"
#include "moekit/experts/mlp_weights.hpp"
#include "moekit/experts/quantized.hpp"
#include "moekit/experts/quantized_weights.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace experts {

enum class WeightPosition { after_expert, on_input };

// deterministic: each token's slots are summed by one thread in slot order (bit-identical for
// any grid size and schedule). atomic: each expert output row is added into its token's fp32
// row as it is produced (no [T·K, H] buffer: K times less memory; the order of the adds, hence
// the last bits, varies run to run). The CPU executor runs both deterministically.
enum class CombineMode { deterministic, atomic };

struct ExpertProblem {
  std::int64_t tokens = 0;               // T
  std::int64_t hidden = 0;               // H
  std::int64_t intermediate = 0;         // I, per routed expert
  int slots = 0;                         // K
  ExpertTable table{};                   // E = table.num_experts()
  std::int64_t shared_intermediate = 0;  // I of the shared expert; 0: none
  std::int64_t capacity = -1;            // per expert, -1 unlimited (plan/dispatch_plan.hpp)
  WeightPosition position = WeightPosition::after_expert;
  CombineMode combine = CombineMode::deterministic;
};

// The weights of E experts whose Element is W: dense MlpWeights, or QuantizedMlpWeights for a
// Quantized<Base> policy (whose shared expert stays dense, in the 16-bit Compute type).
template <class W, MemorySpace Space>
struct WeightsOf {
  using type = MlpWeights<W, Space>;
  using dense = W;
  static constexpr bool quantized = false;
};
template <class Compute, MemorySpace Space>
struct WeightsOf<QuantizedElement<Compute>, Space> {
  using type = QuantizedMlpWeights<Space>;
  using dense = Compute;
  static constexpr bool quantized = true;
};

template <class X, class W, class Y, MemorySpace Space>
struct ExpertArgs {
  TensorView<X const, 2, Space> x;             // [T, H] activations
  TensorView<int const, 2, Space> ids;         // [T, K] expert ids in [0, E]; E = empty slot
  TensorView<float const, 2, Space> weights;   // [T, K] routing weights
  typename WeightsOf<W, Space>::type experts;  // table.computed experts
  // present() iff problem.shared_intermediate > 0; dense (the Compute type for a quantised layer)
  SharedExpertWeights<typename WeightsOf<W, Space>::dense, Space> shared;
  TensorView<Y, 2, Space> y;  // [T, H] output (overwritten)
  // Quantized weights in device memory: host copies of their bit widths and offsets, which the
  // checks read (the host cannot read device memory). Unused otherwise.
  QuantizedMlpLayout quantized_layout{};
};

[[nodiscard]] inline Status validate(ExpertProblem const& p) {
  if (p.tokens < 0 || p.hidden < 1 || p.intermediate < 1 || p.slots < 1) {
    return error(Status::invalid_argument, "experts: need T >= 0, H >= 1, I >= 1, K >= 1 (got %lld, %lld, %lld, %d)",
                 static_cast<long long>(p.tokens), static_cast<long long>(p.hidden),
                 static_cast<long long>(p.intermediate), p.slots);
  }
  if (Status s = p.table.validate(); !s) {
    return s;
  }
  if (p.shared_intermediate < 0) {
    return error(Status::invalid_argument, "experts: shared_intermediate must be >= 0 (got %lld)",
                 static_cast<long long>(p.shared_intermediate));
  }
  if (p.capacity == 0 || p.capacity < -1) {
    return error(Status::invalid_argument, "experts: capacity must be >= 1 or -1 (unlimited), got %lld",
                 static_cast<long long>(p.capacity));
  }
  if (p.position != WeightPosition::after_expert && p.position != WeightPosition::on_input) {
    return error(Status::invalid_argument, "experts: bad weight position %d", static_cast<int>(p.position));
  }
  if (p.combine != CombineMode::deterministic && p.combine != CombineMode::atomic) {
    return error(Status::invalid_argument, "experts: bad combine mode %d", static_cast<int>(p.combine));
  }
  return Status::ok;
}

// Shapes, nullness and alignment (not values: ids outside [0, E] are counted by the plan, and
// the CPU executor's checked mode looks at values).
template <Expert E, class X, class W, class Y, MemorySpace Space>
[[nodiscard]] Status check_expert_args(E const& expert, ExpertProblem const& p, ExpertArgs<X, W, Y, Space> const& a) {
  if (Status s = expert.validate(); !s) {
    return s;
  }
  if (Status s = validate(p); !s) {
    return s;
  }
  auto const matrix = [&](auto const& v, char const* what, std::int64_t rows, std::int64_t cols) -> Status {
    if (!v.validate() || v.extent(0) != rows || v.extent(1) != cols || (rows * cols > 0 && v.data == nullptr)) {
      return error(Status::invalid_argument, "experts: %s must be a [%lld, %lld] view (got [%lld, %lld]%s)", what,
                   static_cast<long long>(rows), static_cast<long long>(cols), static_cast<long long>(v.extent(0)),
                   static_cast<long long>(v.extent(1)), v.data == nullptr ? ", null" : "");
    }
    if (cols > 1 && rows > 0 && v.stride(1) != 1) {
      return error(Status::invalid_argument, "experts: %s must be contiguous along its last dimension", what);
    }
    if (!v.is_aligned(alignof(typename std::remove_cvref_t<decltype(v)>::element_type))) {
      return error(Status::misaligned, "experts: %s is not aligned to its element size", what);
    }
    return Status::ok;
  };
  if (Status s = matrix(a.x, "x", p.tokens, p.hidden); !s) {
    return s;
  }
  if (Status s = matrix(a.ids, "ids", p.tokens, p.slots); !s) {
    return s;
  }
  if (Status s = matrix(a.weights, "weights", p.tokens, p.slots); !s) {
    return s;
  }
  if (Status s = matrix(a.y, "y", p.tokens, p.hidden); !s) {
    return s;
  }
  if constexpr (!WeightsOf<W, Space>::quantized) {
    if (Status s = check_mlp_weights(a.experts, E::shape, p.table.computed, p.hidden, p.intermediate); !s) {
      return s;
    }
  } else if constexpr (Space == MemorySpace::host) {
    if (Status s = check_quantized_mlp_weights(a.experts, E::shape, p.table.computed, p.hidden, p.intermediate); !s) {
      return s;
    }
  } else {
    if (Status s = check_quantized_mlp_weights(a.experts, E::shape, p.table.computed, p.hidden, p.intermediate,
                                               a.quantized_layout);
        !s) {
      return s;
    }
  }
  if ((p.shared_intermediate > 0) != a.shared.present()) {
    return error(Status::invalid_argument,
                 "experts: shared_intermediate is %lld but the shared expert's weights are %s",
                 static_cast<long long>(p.shared_intermediate), a.shared.present() ? "given" : "missing");
  }
  if (p.shared_intermediate > 0) {
    if (Status s = check_mlp_weights(a.shared.weights, E::shape, 1, p.hidden, p.shared_intermediate); !s) {
      return s;
    }
    if (a.shared.gate.data != nullptr && (!a.shared.gate.validate() || a.shared.gate.extent(0) != p.hidden)) {
      return error(Status::invalid_argument, "experts: the shared expert gate must have H = %lld elements",
                   static_cast<long long>(p.hidden));
    }
  }
  return Status::ok;
}

}  // namespace experts
MOEKIT_NAMESPACE_END
