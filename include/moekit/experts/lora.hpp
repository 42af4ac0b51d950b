#pragma once
// LoRA experts (ALGORITHMS.md §3.3; MoLE / MoLA, DynMoLE §3.2, LoRA-Mixer §3.4).
//
// LoraExpert: a LoRA-only expert e, o = s·B_e (A_e x), A_e [r, H], B_e [H, r], s = α/r (LoRA)
// or α/√r (rsLoRA). It is a plain two-projection expert with up = A [E, r, H], down = B [E, H, r]
// (ordinary MlpWeights, intermediate size I = r) and h = s·u, so the device kernels and the CPU
// executor run it unchanged for any r ≥ 1 (h rows are padded internally, r need not be a tile
// multiple). The scale sits in hidden_unit, not after the down projection: it costs one multiply
// per element of the r-wide hidden vector instead of one per output element (H ≫ r), it needs no
// epilogue hook in the expert stage, and it is the same product (B(s·u) = s·(Bu)) up to rounding.
// On the device h is stored in the 16-bit type (kernels/expert_stage.hpp), so s·u is rounded
// once to bf16/fp16 there; the CPU executor keeps h in fp32.
//
// merge_lora: W'_e = W_e + s·B_e A_e for per-expert base weights (any of gate/up/down), computed
// in double and rounded once to W. This is the "per-expert low-rank on a per-expert base" case:
// each expert's delta is a fixed linear map that does not depend on the token, so folding it
// into that expert's own weight is exact in real arithmetic (§3.3 forbids merging only into a
// SHARED W_0, where the mixture weights w_{t,e} vary per token).
//
// Shared base W_0 (MoLE: y = W_0 x + b + Σ_e w_e·s·B_e A_e x): MoeLayer / the expert stages
// compute the mixture term (y is overwritten); the caller adds W_0 x + b with any dense GEMM
// (cuBLAS, the CPU's own GEMM, a loop). docs/lora_experts.md shows both.
//
// The routed experts map H → H: a LoRA bank on a projection with d_out ≠ d_in (gate_proj,
// up_proj) does not fit the expert stage's y [T, H]; merge_lora covers those projections.

#include <cmath>
#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/experts/concept.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace experts {

// s = α/r (standard LoRA, PEFT's default) or α/√r (rsLoRA, PEFT `use_rslora`).
enum class LoraScaling : int { standard, rank_stabilized };

template <DenseElement W = bf16_t>
struct LoraExpert {
  using Element = W;
  static constexpr ExpertShape shape = ExpertShape::plain;
  static constexpr char const* name = "lora";

  float scale = 1.0f;  // s; build it with lora_expert(α, r, scaling)

  [[nodiscard]] MOEKIT_HOST_DEVICE float hidden_unit(float /*gate*/, float up) const noexcept { return scale * up; }
  [[nodiscard]] Status validate() const {
    if (!(scale > 0.0f) || !std::isfinite(scale)) {
      return error(Status::invalid_argument,
                   "LoRA expert: scale must be finite and > 0 (got %g; lora_expert() gives NaN for rank < 1, alpha "
                   "not finite and > 0, or a bad scaling)",
                   double(scale));
    }
    return Status::ok;
  }
};

// The scale in double; NaN for parameters check_lora_params refuses (rank < 1, α not finite > 0,
// bad scaling), so a LoraExpert built from them fails validate() with a message.
[[nodiscard]] inline double lora_scale(double alpha, std::int64_t rank, LoraScaling scaling) noexcept {
  if (rank < 1 || !(alpha > 0.0) || !std::isfinite(alpha) ||
      (scaling != LoraScaling::standard && scaling != LoraScaling::rank_stabilized)) {
    return std::nan("");
  }
  double const r = static_cast<double>(rank);
  return scaling == LoraScaling::rank_stabilized ? alpha / std::sqrt(r) : alpha / r;
}

template <DenseElement W = bf16_t>
[[nodiscard]] LoraExpert<W> lora_expert(double alpha, std::int64_t rank,
                                        LoraScaling scaling = LoraScaling::standard) noexcept {
  return LoraExpert<W>{static_cast<float>(lora_scale(alpha, rank, scaling))};
}

// §3.3's parameter checks, with its messages: 1 ≤ r ≤ min(d_in, d_out), α finite and > 0.
// (An expert-stage run of a LoraExpert has d_in = d_out = H and r = problem.intermediate.)
[[nodiscard]] inline Status check_lora_params(std::int64_t d_in, std::int64_t rank, std::int64_t d_out, double alpha,
                                              LoraScaling scaling) {
  if (rank < 1 || rank > (d_in < d_out ? d_in : d_out)) {
    return error(Status::invalid_argument,
                 "LoRA: rank must be in [1, min(d_in,d_out)] (rank %lld, d_in %lld, d_out %lld)",
                 static_cast<long long>(rank), static_cast<long long>(d_in), static_cast<long long>(d_out));
  }
  if (!(alpha > 0.0) || !std::isfinite(alpha)) {
    return error(Status::invalid_argument, "LoRA: alpha must be finite and > 0 (got %g)", alpha);
  }
  if (scaling != LoraScaling::standard && scaling != LoraScaling::rank_stabilized) {
    return error(Status::invalid_argument, "LoRA: bad scaling %d", static_cast<int>(scaling));
  }
  return Status::ok;
}

// merged[e] = base[e] + s·b[e]·a[e] for E experts: base and merged [E, d_out, d_in], a [E, r, d_in],
// b [E, d_out, r] (LoRA parameters in any dense type, fp32 as MoE-PEFT keeps them). Each element
// is one r-term dot product in double plus the base, rounded once to W. merged may be base itself
// (in place: each element reads only its own base element); it must not overlap a or b. Bad
// shapes or parameters return a Status with a message and leave merged untouched.
template <DenseElement W, DenseElement L>
[[nodiscard]] Status merge_lora(HostTensor<W const, 3> base, HostTensor<L const, 3> a, HostTensor<L const, 3> b,
                                double alpha, LoraScaling scaling, HostTensor<W, 3> merged) {
  if (!base.validate() || !a.validate() || !b.validate() || !merged.validate()) {
    return error(Status::invalid_argument, "merge_lora: a view has a negative extent or stride");
  }
  std::int64_t const E = base.extent(0), d_out = base.extent(1), d_in = base.extent(2), r = a.extent(1);
  if (a.extent(0) != E || a.extent(2) != d_in || b.extent(0) != E || b.extent(1) != d_out || b.extent(2) != r ||
      merged.extent(0) != E || merged.extent(1) != d_out || merged.extent(2) != d_in) {
    return error(Status::invalid_argument,
                 "merge_lora: base [%lld, %lld, %lld], A [%lld, %lld, %lld], B [%lld, %lld, %lld], merged [%lld, %lld, "
                 "%lld] do not fit (base/merged [E, d_out, d_in], A [E, r, d_in], B [E, d_out, r])",
                 static_cast<long long>(E), static_cast<long long>(d_out), static_cast<long long>(d_in),
                 static_cast<long long>(a.extent(0)), static_cast<long long>(r), static_cast<long long>(a.extent(2)),
                 static_cast<long long>(b.extent(0)), static_cast<long long>(b.extent(1)),
                 static_cast<long long>(b.extent(2)), static_cast<long long>(merged.extent(0)),
                 static_cast<long long>(merged.extent(1)), static_cast<long long>(merged.extent(2)));
  }
  if (Status s = check_lora_params(d_in, r, d_out, alpha, scaling); !s) {
    return s;
  }
  if (E > 0 && (base.data == nullptr || a.data == nullptr || b.data == nullptr || merged.data == nullptr)) {
    return error(Status::invalid_argument, "merge_lora: null data");
  }
  double const s = lora_scale(alpha, r, scaling);
  for (std::int64_t e = 0; e < E; ++e) {
    for (std::int64_t o = 0; o < d_out; ++o) {
      for (std::int64_t i = 0; i < d_in; ++i) {
        double delta = 0;
        for (std::int64_t k = 0; k < r; ++k) {
          delta += double(to_float(*b.pointer(e, o, k))) * double(to_float(*a.pointer(e, k, i)));
        }
        // W(double): one rounding straight from double (bf16_t/fp16_t have a double constructor).
        *merged.pointer(e, o, i) = W(double(to_float(*base.pointer(e, o, i))) + s * delta);
      }
    }
  }
  return Status::ok;
}

}  // namespace experts
MOEKIT_NAMESPACE_END
