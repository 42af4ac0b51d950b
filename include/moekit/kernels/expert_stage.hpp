#pragma once
// The expert stage of a layer on the device, multi-launch: dispatch plan (3 launches) → up GEMM
// (gather-on-load, fused activation) → down GEMM (routing weight in the epilogue) → shared
// expert (two more GEMM launches over all tokens) → deterministic combine. No host
// synchronisation, no allocation, launch sizes independent of the routing: capturable in a
// CUDA graph. The caller owns the workspace: expert_stage_workspace_size() bytes.
//
// Precision: x, weights and the intermediate h are the 16-bit type (bf16 or fp16), products
// accumulate in fp32 on the tensor cores, h is rounded once to the 16-bit type between the
// GEMMs (as vLLM's and transformers' grouped paths do), the expert outputs and the combine stay
// fp32, and y is rounded once at the end.

#include <cstdint>
#include <type_traits>

#include "moekit/arch/arch.hpp"
#include "moekit/config.hpp"
#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/core/workspace.hpp"
#include "moekit/experts/concept.hpp"
#include "moekit/experts/expert_args.hpp"
#include "moekit/experts/quantized.hpp"
#include "moekit/kernels/combine.hpp"
#include "moekit/kernels/expert_gemm.hpp"
#include "moekit/kernels/kernel_config.hpp"
#include "moekit/plan/build_plan.hpp"
#include "moekit/plan/dispatch_plan.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace kernels {
MOEKIT_ARCH_NAMESPACE_BEGIN

// Launch options that never change results: grid caps (tests use small grids to exercise the
// grid-stride loops; 0 = one block per work item, up to 65535).
struct LaunchOptions {
  unsigned max_blocks = 0;
};

namespace detail {

// Rows of h padded to 8 elements: every row 16-byte aligned for the down GEMM's cp.async.
[[nodiscard]] constexpr std::int64_t padded_row(std::int64_t n) noexcept { return (n + 7) / 8 * 8; }

template <class Cfg>
[[nodiscard]] plan::PlanProblem plan_problem(experts::ExpertProblem const& p) noexcept {
  return plan::PlanProblem{p.tokens, p.slots, p.table.num_experts(), p.capacity, Cfg::block_m};
}

template <class X>
struct StageBuffers {
  plan::DispatchPlan<MemorySpace::device> plan;
  plan::PlanWorkspace plan_workspace;
  X* h = nullptr;           // [max_rows, padded I]
  float* routed = nullptr;  // [max_rows, H]; atomic combine: [T, H]
  X* shared_h = nullptr;    // [T, padded I_s]
  float* shared = nullptr;  // [T, H]
};

// The one carving routine behind both the size query and the run.
template <class Cfg, class X>
StageBuffers<X> carve(experts::ExpertProblem const& p, Workspace& w) {
  plan::PlanProblem const pp = plan_problem<Cfg>(p);
  std::int64_t const rows = plan::max_rows(pp);
  std::int64_t const tiles = plan::max_tiles(pp);
  StageBuffers<X> b;
  b.plan.expert_counts = w.take<std::int64_t>(pp.experts, "expert_counts");
  b.plan.expert_offsets = w.take<std::int64_t>(pp.experts + 1, "expert_offsets");
  b.plan.row_assignment = w.take<std::int64_t>(rows, "row_assignment");
  b.plan.assignment_row = w.take<std::int64_t>(plan::assignments(pp), "assignment_row");
  b.plan.tile_expert = w.take<int>(tiles, "tile_expert");
  b.plan.tile_row = w.take<std::int64_t>(tiles, "tile_row");
  b.plan.num_rows = w.take<std::int64_t>(1, "num_rows");
  b.plan.num_tiles = w.take<std::int64_t>(1, "num_tiles");
  b.plan_workspace = plan::carve_plan_workspace(pp, w);
  b.h = w.take<X>(rows * padded_row(p.intermediate), "expert hidden h");
  // Deterministic: one row per (token, slot), summed by the combine in slot order. Atomic: one
  // row per token, the slots added as they are produced (K times less memory).
  bool const atomic = p.combine == experts::CombineMode::atomic;
  b.routed = w.take<float>((atomic ? p.tokens : rows) * p.hidden, "expert outputs");
  if (p.shared_intermediate > 0) {
    b.shared_h = w.take<X>(p.tokens * padded_row(p.shared_intermediate), "shared expert hidden h");
    b.shared = w.take<float>(p.tokens * p.hidden, "shared expert output");
  }
  return b;
}

template <class T, MemorySpace S>
[[nodiscard]] bool rows_16_byte_aligned(TensorView<T const, 3, S> const& v) noexcept {
  return reinterpret_cast<std::uintptr_t>(v.data) % 16 == 0 && v.stride(0) * sizeof(T) % 16 == 0 &&
         v.stride(1) * sizeof(T) % 16 == 0;
}

template <class T>
[[nodiscard]] ExpertMatrices<T> matrices(DeviceTensor<T const, 3> const& v) noexcept {
  return {v.data, v.stride(0), v.stride(1)};
}
template <class T>
[[nodiscard]] ExpertBias<T> bias(DeviceTensor<T const, 2> const& v) noexcept {
  return {v.data, v.stride(0)};
}
[[nodiscard]] inline QuantizedMatrices matrices(experts::QuantizedWeights<MemorySpace::device> const& w) noexcept {
  return {w};
}
[[nodiscard]] inline bool rows_16_byte_aligned(experts::QuantizedWeights<MemorySpace::device> const&) noexcept {
  return false;  // (dequantised through registers)
}

[[nodiscard]] inline unsigned grid_for(std::int64_t items, LaunchOptions const& o) noexcept {
  std::int64_t g = items < 1 ? 1 : (items > 65535 ? 65535 : items);
  if (o.max_blocks != 0 && g > o.max_blocks) {
    g = o.max_blocks;
  }
  return static_cast<unsigned>(g);
}

}  // namespace detail

// A policy's dense form: itself, or a Quantized<Base>'s Base (what its dense shared expert runs).
template <class E>
struct DensePolicyOf {
  using type = E;
  static E const& of(E const& e) noexcept { return e; }
};
template <class Base>
struct DensePolicyOf<experts::Quantized<Base>> {
  using type = Base;
  static Base const& of(experts::Quantized<Base> const& e) noexcept { return e.base; }
};
template <class E>
using DensePolicy = typename DensePolicyOf<E>::type;
template <class E>
[[nodiscard]] DensePolicy<E> const& dense_policy(E const& e) noexcept {
  return DensePolicyOf<E>::of(e);
}

// The parameters of every GEMM and of the combine, shared by the multi-launch path and the
// fused kernel (kernels/fused_layer.hpp).
template <class E, class X, class Y>
struct StageParams {
  bool routed = false;  // any computed experts
  bool atomic = false;  // CombineMode::atomic: sp.combine.routed ([T, H]) is zeroed, then added into
  bool shared = false;  // a shared expert
  UpParams<E, X> up;
  DownParams<E, X> down;
  UpParams<DensePolicy<E>, X> shared_up;  // the shared expert is dense (in a quantised layer too)
  DownParams<DensePolicy<E>, X> shared_down;
  CombineParams<X, Y> combine;
};

template <class Cfg, experts::Expert E, class X, class Y>
[[nodiscard]] StageParams<E, X, Y>
stage_params(E const& expert, experts::ExpertProblem const& p,
             experts::ExpertArgs<X, typename E::Element, Y, MemorySpace::device> const& a,
             detail::StageBuffers<X> const& b) {
  constexpr bool gated = E::shape == experts::ExpertShape::gated;
  bool const x_vector = reinterpret_cast<std::uintptr_t>(a.x.data) % 16 == 0 && a.x.stride(0) * sizeof(X) % 16 == 0;
  // (w: the routed experts' weights, dense or quantised, or the shared expert's, dense.)
  auto const mlp = [&](auto const& policy, RowSource const& rows, auto const& w, int computed, std::int64_t inter, X* h,
                       float* out, bool scale_input, bool weight_output, auto& up, auto& down) {
    using Up = std::remove_cvref_t<decltype(up)>;
    using Down = std::remove_cvref_t<decltype(down)>;
    bool const w_vector = (!gated || detail::rows_16_byte_aligned(w.gate)) && detail::rows_16_byte_aligned(w.up) &&
                          detail::rows_16_byte_aligned(w.down);
    up = Up{policy,
            a.x.data,
            a.x.stride(0),
            x_vector,
            scale_input,
            rows,
            computed,
            gated ? detail::matrices(w.gate) : decltype(detail::matrices(w.gate)){},
            detail::matrices(w.up),
            gated ? detail::bias(w.gate_bias) : decltype(detail::bias(w.gate_bias)){},
            detail::bias(w.up_bias),
            w_vector,
            p.hidden,
            inter,
            h,
            detail::padded_row(inter)};
    down = Down{rows,
                weight_output,
                computed,
                h,
                detail::padded_row(inter),
                detail::matrices(w.down),
                detail::bias(w.down_bias),
                w_vector,
                p.hidden,
                inter,
                out};
  };
  StageParams<E, X, Y> sp;
  bool const on_input = p.position == experts::WeightPosition::on_input;
  sp.routed = p.table.computed > 0;
  if (sp.routed) {
    RowSource const routed_rows{b.plan.row_assignment, b.plan.tile_expert, b.plan.tile_row,
                                b.plan.num_tiles,      p.tokens,           p.slots,
                                a.weights.data,        a.weights.stride(0)};
    mlp(expert, routed_rows, a.experts, p.table.computed, p.intermediate, b.h, b.routed, on_input, !on_input, sp.up,
        sp.down);
  }
  sp.atomic = sp.routed && p.combine == experts::CombineMode::atomic;
  sp.down.accumulate = sp.atomic;
  sp.shared = p.shared_intermediate > 0;
  if (sp.shared) {
    RowSource const all_tokens{nullptr, nullptr, nullptr, nullptr, p.tokens, p.slots, nullptr, 0};
    mlp(dense_policy(expert), all_tokens, a.shared.weights, 1, p.shared_intermediate, b.shared_h, b.shared, false,
        false, sp.shared_up, sp.shared_down);
  }
  sp.combine = CombineParams<X, Y>{p.table,
                                   p.tokens,
                                   p.hidden,
                                   p.slots,
                                   a.ids.data,
                                   a.ids.stride(0),
                                   a.weights.data,
                                   a.weights.stride(0),
                                   b.plan.assignment_row,
                                   b.routed,
                                   a.x.data,
                                   a.x.stride(0),
                                   sp.shared ? b.shared : nullptr,
                                   sp.shared ? a.shared.gate.data : nullptr,
                                   a.y.data,
                                   a.y.stride(0)};
  sp.combine.accumulated = sp.atomic;
  if (!sp.routed) {
    sp.combine.routed = nullptr;
  }
  return sp;
}

// What this kernel configuration can run, with the reason when it cannot.
template <class Cfg, experts::Expert E, class X, class Y>
[[nodiscard]] Status can_implement(E const& expert, experts::ExpertProblem const& p) {
  using W = typename experts::WeightsOf<typename E::Element, MemorySpace::device>::dense;
  if constexpr (!std::is_same_v<W, bf16_t> && !std::is_same_v<W, fp16_t>) {
    return error(Status::unsupported_config,
                 "device experts: weights of type %s need the CPU executor (the tensor-core GEMMs take bf16 or fp16; "
                 "convert fp32 weights to bf16)",
                 E::name);
  } else if constexpr (!std::is_same_v<X, W>) {
    return error(Status::unsupported_config,
                 "device experts: activations and weights must have the same 16-bit type (mma.sync takes one type "
                 "for both operands)");
  } else if constexpr (!std::is_same_v<Y, float> && !std::is_same_v<Y, X>) {
    return error(Status::unsupported_config, "device experts: the output type must be float or the activation type");
  } else {
    if (Status s = expert.validate(); !s) {
      return s;
    }
    if (Status s = experts::validate(p); !s) {
      return s;
    }
    return Status::ok;
  }
}

template <class Cfg, class X>
[[nodiscard]] std::size_t expert_stage_workspace_size(experts::ExpertProblem const& p) {
  Workspace counting;
  (void)detail::carve<Cfg, X>(p, counting);
  return counting.bytes_used();
}

// Runs the expert stage of `p` on `stream`: y = combine(experts(x)) as experts/expert_args.hpp
// defines it. `diagnostics` (device memory) receives the plan's counts (drops, invalid ids).
template <class Cfg, experts::Expert E, class X, class Y>
[[nodiscard]] Status run_expert_stage(E const& expert, experts::ExpertProblem const& p,
                                      experts::ExpertArgs<X, typename E::Element, Y, MemorySpace::device> const& a,
                                      Workspace& workspace, Diagnostics* diagnostics, arch::Stream stream,
                                      LaunchOptions const& options = {}) {
  if (Status s = can_implement<Cfg, E, X, Y>(expert, p); !s) {
    return s;
  }
  if (Status s = experts::check_expert_args(expert, p, a); !s) {
    return s;
  }
  if (diagnostics == nullptr) {
    return error(Status::invalid_argument, "device experts: diagnostics must point to device memory");
  }
  detail::StageBuffers<X> const b = detail::carve<Cfg, X>(p, workspace);
  if (Status s = workspace.status(); !s) {
    return error(s, "device experts: workspace: buffer '%s' needs %zu bytes, %zu left (workspace_size = %zu)",
                 workspace.failed_buffer(), workspace.failed_bytes(), workspace.bytes_left_at_failure(),
                 expert_stage_workspace_size<Cfg, X>(p));
  }
  if (p.tokens == 0) {
    return Status::ok;
  }
  plan::PlanProblem const pp = detail::plan_problem<Cfg>(p);
  Workspace plan_ws;  // the plan's scratch was carved above; hand it over as its own workspace
  {
    std::size_t const bytes = plan::plan_workspace_size(pp);
    plan_ws = bytes == 0 ? Workspace{} : Workspace(b.plan_workspace.chunk_counts, bytes);
  }
  if (Status s = plan::build_plan(pp, a.ids, b.plan, diagnostics, plan_ws, stream, options.max_blocks); !s) {
    return s;
  }

  StageParams<E, X, Y> const sp = stage_params<Cfg>(expert, p, a, b);
  constexpr std::size_t smem_up = sizeof(GemmStorage < Cfg, E::shape == experts::ExpertShape::gated ? 2 : 1, X >);
  constexpr std::size_t smem_down = sizeof(GemmStorage<Cfg, 1, X>);
  auto const run_mlp = [&](auto const& up, auto const& down, std::int64_t tiles) -> Status {
    using P = decltype(up.expert);
    std::int64_t const up_items = tiles * ((up.inter + Cfg::block_n - 1) / Cfg::block_n);
    arch::KernelLaunch const up_launch{
        .grid = detail::grid_for(up_items, options), .block = Cfg::threads, .dynamic_shared_bytes = smem_up};
    if (Status s = arch::launch(expert_up_kernel<Cfg, P, X>, up_launch, stream, up); !s) {
      return s;
    }
    std::int64_t const down_items = tiles * ((down.hidden + Cfg::block_n - 1) / Cfg::block_n);
    arch::KernelLaunch const down_launch{
        .grid = detail::grid_for(down_items, options), .block = Cfg::threads, .dynamic_shared_bytes = smem_down};
    return arch::launch(expert_down_kernel<Cfg, P, X>, down_launch, stream, down);
  };
  if (sp.atomic) {
    std::int64_t const n = p.tokens * p.hidden;
    arch::KernelLaunch const zero_launch{.grid = detail::grid_for((n + 255) / 256, options), .block = 256};
    if (Status s = arch::launch(zero_kernel<256>, zero_launch, stream, b.routed, n); !s) {
      return s;
    }
  }
  if (sp.routed) {
    if (Status s = run_mlp(sp.up, sp.down, plan::max_tiles(pp)); !s) {
      return s;
    }
  }
  if (sp.shared) {
    if (Status s = run_mlp(sp.shared_up, sp.shared_down, (p.tokens + Cfg::block_m - 1) / Cfg::block_m); !s) {
      return s;
    }
  }
  arch::KernelLaunch const combine_launch{.grid = detail::grid_for(p.tokens, options),
                                          .block = combine_block_threads,
                                          .dynamic_shared_bytes = sizeof(CombineStorage)};
  return arch::launch(combine_kernel<X, Y>, combine_launch, stream, sp.combine);
}

MOEKIT_ARCH_NAMESPACE_END
}  // namespace kernels
MOEKIT_NAMESPACE_END
