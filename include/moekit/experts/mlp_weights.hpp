#pragma once
// The weights of a layer's experts: three [E, out, in] views (one per projection) and optional
// biases, in host or device memory. Views take strides, so the fused checkpoint layouts slice
// straight into them (ALGORITHMS.md §1.10.1): a concatenated gate_up [E, 2I, H] gives
// gate = rows 0..I-1 and up = rows I..2I-1 with stride(0) = 2IH. The `in` dimension must be
// contiguous (stride 1): the GEMMs stream whole rows. Transposed ([in, out]) layouts (gpt-oss,
// Llama-4 on disk) are transposed once when loaded (io/).

#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/experts/concept.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace experts {

template <class W, MemorySpace Space>
struct MlpWeights {
  TensorView<W const, 3, Space> gate;       // [E, I, H]; not read by plain experts (may be null)
  TensorView<W const, 3, Space> up;         // [E, I, H]
  TensorView<W const, 3, Space> down;       // [E, H, I]
  TensorView<W const, 2, Space> gate_bias;  // [E, I] or null (absent)
  TensorView<W const, 2, Space> up_bias;    // [E, I] or null
  TensorView<W const, 2, Space> down_bias;  // [E, H] or null

  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::int64_t experts() const noexcept { return up.extent(0); }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::int64_t intermediate() const noexcept { return up.extent(1); }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::int64_t hidden() const noexcept { return up.extent(2); }
};

namespace detail {
template <class T, int Rank, MemorySpace Space>
[[nodiscard]] Status check_weight_view(TensorView<T, Rank, Space> const& v, char const* what,
                                       std::int64_t const (&want)[Rank], bool contiguous_rows) {
  if (!v.validate() || v.data == nullptr) {
    return error(Status::invalid_argument, "expert weights: %s is null or has a negative extent/stride", what);
  }
  for (int d = 0; d < Rank; ++d) {
    if (v.extent(d) != want[d]) {
      return error(Status::invalid_argument, "expert weights: %s has extent %lld in dimension %d, expected %lld", what,
                   static_cast<long long>(v.extent(d)), d, static_cast<long long>(want[d]));
    }
  }
  if (contiguous_rows && v.extent(Rank - 1) > 1 && v.stride(Rank - 1) != 1) {
    return error(Status::invalid_argument, "expert weights: %s must be contiguous along its input dimension", what);
  }
  if (!v.is_aligned(alignof(T))) {
    return error(Status::misaligned, "expert weights: %s is not aligned to its element size", what);
  }
  return Status::ok;
}
}  // namespace detail

// Shapes, nullness and contiguity of E experts' weights for the hidden size H and the
// intermediate size I (per expert). Biases are optional; the gate is required for gated experts.
template <class W, MemorySpace Space>
[[nodiscard]] Status check_mlp_weights(MlpWeights<W, Space> const& w, ExpertShape shape, std::int64_t experts,
                                       std::int64_t hidden, std::int64_t intermediate) {
  if (experts < 0 || hidden < 1 || intermediate < 1) {
    return error(Status::invalid_argument, "expert weights: need E >= 0, H >= 1, I >= 1 (got %lld, %lld, %lld)",
                 static_cast<long long>(experts), static_cast<long long>(hidden), static_cast<long long>(intermediate));
  }
  if (experts == 0) {
    return Status::ok;  // zero/identity experts only: no weights are read
  }
  if (shape == ExpertShape::gated) {
    if (Status s = detail::check_weight_view(w.gate, "gate [E, I, H]", {experts, intermediate, hidden}, true); !s) {
      return s;
    }
  }
  if (Status s = detail::check_weight_view(w.up, "up [E, I, H]", {experts, intermediate, hidden}, true); !s) {
    return s;
  }
  if (Status s = detail::check_weight_view(w.down, "down [E, H, I]", {experts, hidden, intermediate}, true); !s) {
    return s;
  }
  if (shape == ExpertShape::gated && w.gate_bias.data != nullptr) {
    if (Status s = detail::check_weight_view(w.gate_bias, "gate_bias [E, I]", {experts, intermediate}, false); !s) {
      return s;
    }
  }
  if (w.up_bias.data != nullptr) {
    if (Status s = detail::check_weight_view(w.up_bias, "up_bias [E, I]", {experts, intermediate}, false); !s) {
      return s;
    }
  }
  if (w.down_bias.data != nullptr) {
    if (Status s = detail::check_weight_view(w.down_bias, "down_bias [E, H]", {experts, hidden}, false); !s) {
      return s;
    }
  }
  return Status::ok;
}

// Shared experts beside the routed ones (ALGORITHMS.md §1.2, §1.4.4, §1.6): every token goes
// through them with weight 1, or σ(w_sg · x) with Qwen2-MoE's gate vector. DeepSeek's
// n_shared_experts are one MLP of n_s·I columns, so one shared expert covers them.
template <class W, MemorySpace Space>
struct SharedExpertWeights {
  MlpWeights<W, Space> weights;        // E = 1, its own intermediate size; up.data == nullptr: none
  TensorView<W const, 1, Space> gate;  // w_sg [H] or null (weight 1)

  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool present() const noexcept { return weights.up.data != nullptr; }
};

}  // namespace experts
MOEKIT_NAMESPACE_END
