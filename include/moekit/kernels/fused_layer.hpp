#pragma once
// The whole MoE layer in one launch: a persistent cooperative kernel whose blocks run the
// phases of the multi-launch path one after another, separated by grid-wide syncs:
//
//   gate projection → route → plan count → plan scan (block 0) → plan scatter
//   → up GEMMs (routed, shared) → down GEMMs (routed, shared) → combine
//
// Each phase is the body of its multi-launch kernel (routing/gate_projection.hpp,
// routing/route.hpp, plan/build_plan.hpp, kernels/expert_gemm.hpp, kernels/combine.hpp), so the
// two paths compute the same bits: grid-stride loops whose results do not depend on the grid.
// The grid is the number of blocks that can be co-resident (a cooperative launch), capped by
// the useful work. One launch removes the 8–10 launch gaps of the multi-launch path, which is
// what dominates small-batch decode (peers pay 20+ µs of fixed cost there). No host
// synchronisation, no allocation: capturable in a CUDA graph.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "moekit/arch/arch.hpp"
#include "moekit/config.hpp"
#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/workspace.hpp"
#include "moekit/experts/expert_args.hpp"
#include "moekit/kernels/combine.hpp"
#include "moekit/kernels/expert_gemm.hpp"
#include "moekit/kernels/expert_stage.hpp"
#include "moekit/plan/build_plan.hpp"
#include "moekit/routing/concept.hpp"
#include "moekit/routing/gate_projection.hpp"
#include "moekit/routing/route.hpp"
#include "moekit/routing/route_buffers.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace kernels {
MOEKIT_ARCH_NAMESPACE_BEGIN

template <class Router, class Expert, class X, class Y>
struct FusedLayerParams {
  // gate projection: logits = x·W_gᵀ (+ b)
  X const* x = nullptr;
  std::int64_t x_stride = 0;
  X const* gate_weight = nullptr;
  std::int64_t gate_stride = 0;
  float const* gate_bias = nullptr;
  std::int64_t tokens = 0, hidden = 0;
  int experts = 0;
  float* logits = nullptr;
  std::int64_t logits_stride = 0;
  // route
  Router router;
  int* ids = nullptr;
  float* weights = nullptr;
  std::int64_t route_stride = 0;
  Diagnostics* diagnostics = nullptr;
  // plan
  plan::PlanIds plan_ids;
  int* chunk_counts = nullptr;
  std::int64_t* assignment_row = nullptr;
  plan::PlanScanArgs scan;
  // experts
  StageParams<Expert, X, Y> stage;
};

template <class Cfg, class Router, class Expert, class X, class Y>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(Cfg::threads, 1) fused_layer_kernel(FusedLayerParams<Router, Expert, X, Y> p) {
  static_assert(Cfg::threads == routing::gate_block_threads && Cfg::threads == routing::route_block_threads &&
                    Cfg::threads == plan::plan_chunk_block_threads && Cfg::threads == combine_block_threads,
                "the fused layer kernel runs every phase with the same block size");
  if (p.stage.atomic) {
    zero_phase(p.stage.down.out, p.tokens * p.hidden);  // first added to after 6 grid syncs
  }
  routing::gate_projection_phase(p.x, p.x_stride, p.gate_weight, p.gate_stride, p.gate_bias, p.tokens, p.hidden,
                                 p.experts, p.logits, p.logits_stride);
  arch::grid_sync();
  routing::route_tokens_phase(p.router, p.logits, p.logits_stride, p.tokens, p.ids, p.weights, p.route_stride,
                              p.diagnostics);
  arch::grid_sync();
  plan::plan_count_phase<plan::plan_chunk>(p.plan_ids, p.scan.chunks, p.chunk_counts, p.diagnostics);
  arch::grid_sync();
  if (arch::block_rank() == 0) {
    plan::plan_scan_phase<plan::plan_chunk, Cfg::threads>(p.scan);
  }
  arch::grid_sync();
  plan::plan_scatter_phase<plan::plan_chunk>(p.plan_ids, p.scan.chunks, p.scan.chunk_cursor, p.scan.expert_offsets,
                                             p.scan.capacity, p.scan.row_assignment, p.assignment_row);
  arch::grid_sync();
  if (p.stage.routed) {
    expert_up_phase<Cfg>(p.stage.up);
  }
  if (p.stage.shared) {
    expert_up_phase<Cfg>(p.stage.shared_up);  // (the dense form of the policy)
  }
  arch::grid_sync();
  if (p.stage.routed) {
    expert_down_phase<Cfg>(p.stage.down);
  }
  if (p.stage.shared) {
    expert_down_phase<Cfg>(p.stage.shared_down);
  }
  arch::grid_sync();
  combine_phase(p.stage.combine);
}

// Dynamic shared memory of the fused kernel: the largest of its phases' storages.
template <class Cfg, class Expert, class X>
[[nodiscard]] constexpr std::size_t fused_layer_shared_bytes() noexcept {
  constexpr int num_b = Expert::shape == experts::ExpertShape::gated ? 2 : 1;
  return std::max({sizeof(routing::GateProjectionStorage), sizeof(plan::PlanScanStorageOf<Cfg::threads>),
                   sizeof(GemmStorage<Cfg, num_b, X>), sizeof(GemmStorage<Cfg, 1, X>), sizeof(CombineStorage)});
}

// Runs gate projection, `router`, plan and the expert stage of `p` in one cooperative launch.
// `gate` holds x, the router weight and bias and the logits output; `route` the ids and weights
// outputs, which `a` reads (a.ids / a.weights view the same memory). The workspace is the expert
// stage's (expert_stage_workspace_size). Status::unsupported_config when not even one block
// fits on the device (the caller then runs the multi-launch path).
template <class Cfg, routing::TokenRouter R, experts::Expert E, class X, class Y>
[[nodiscard]] Status run_fused_layer(R const& router, E const& expert, experts::ExpertProblem const& p,
                                     routing::GateProjectionBuffers<X, X, MemorySpace::device> const& gate,
                                     routing::RouteBuffers<MemorySpace::device> const& route,
                                     experts::ExpertArgs<X, typename E::Element, Y, MemorySpace::device> const& a,
                                     Workspace& workspace, Diagnostics* diagnostics, arch::Stream stream,
                                     LaunchOptions const& options = {}) {
  if (Status s = can_implement<Cfg, E, X, Y>(expert, p); !s) {
    return s;
  }
  if (Status s = routing::check_gate_projection_buffers(gate); !s) {
    return s;
  }
  if (Status s = routing::check_route_buffers(router, route); !s) {
    return s;
  }
  if (Status s = experts::check_expert_args(expert, p, a); !s) {
    return s;
  }
  if (route.ids.data != a.ids.data || route.weights.data != a.weights.data ||
      route.ids.stride(0) != route.weights.stride(0) || a.ids.stride(0) != route.ids.stride(0) ||
      a.weights.stride(0) != route.weights.stride(0)) {
    return error(Status::invalid_argument,
                 "fused layer: the expert stage must read the ids and weights the router writes (same memory and "
                 "row stride)");
  }
  if (diagnostics == nullptr) {
    return error(Status::invalid_argument, "fused layer: diagnostics must point to device memory");
  }
  detail::StageBuffers<X> const b = detail::carve<Cfg, X>(p, workspace);
  if (Status s = workspace.status(); !s) {
    return error(s, "fused layer: workspace: buffer '%s' needs %zu bytes, %zu left (workspace_size = %zu)",
                 workspace.failed_buffer(), workspace.failed_bytes(), workspace.bytes_left_at_failure(),
                 expert_stage_workspace_size<Cfg, X>(p));
  }
  if (p.tokens == 0) {
    return Status::ok;
  }
  constexpr std::size_t smem = fused_layer_shared_bytes<Cfg, E, X>();
  auto const kernel = fused_layer_kernel<Cfg, R, E, X, Y>;
  int const fit = arch::max_cooperative_blocks(kernel, Cfg::threads, smem);
  if (fit < 1) {
    return error(Status::unsupported_config, "fused layer: no block of %d threads and %zu bytes of shared memory fits",
                 Cfg::threads, smem);
  }
  plan::PlanProblem const pp = detail::plan_problem<Cfg>(p);
  FusedLayerParams<R, E, X, Y> f;
  f.x = gate.hidden.data;
  f.x_stride = gate.hidden.stride(0);
  f.gate_weight = gate.weight.data;
  f.gate_stride = gate.weight.stride(0);
  f.gate_bias = gate.has_bias() ? gate.bias.data : nullptr;
  f.tokens = p.tokens;
  f.hidden = p.hidden;
  f.experts = p.table.num_experts();
  f.logits = gate.logits.data;
  f.logits_stride = gate.logits.stride(0);
  f.router = router;
  f.ids = route.ids.data;
  f.weights = route.weights.data;
  f.route_stride = route.ids.stride(0);
  f.diagnostics = diagnostics;
  f.plan_ids = plan::PlanIds{a.ids.data, a.ids.stride(0), p.tokens, p.slots, pp.experts};
  f.chunk_counts = b.plan_workspace.chunk_counts;
  f.assignment_row = b.plan.assignment_row;
  f.scan = plan::scan_args(pp, b.plan_workspace, b.plan, diagnostics);
  f.stage = stage_params<Cfg>(expert, p, a, b);
  // Enough blocks for the widest phase, at most what can be co-resident.
  std::int64_t const n_blocks = (std::max(p.intermediate, p.hidden) + Cfg::block_n - 1) / Cfg::block_n;
  std::int64_t const useful = std::max(plan::max_tiles(pp) * n_blocks, p.tokens);
  std::int64_t grid = std::min<std::int64_t>(useful, fit);
  if (options.max_blocks != 0) {
    grid = std::min<std::int64_t>(grid, options.max_blocks);
  }
  arch::KernelLaunch const l{
      .grid = static_cast<unsigned>(grid), .block = Cfg::threads, .dynamic_shared_bytes = smem, .cooperative = true};
  return arch::launch(kernel, l, stream, f);
}

MOEKIT_ARCH_NAMESPACE_END
}  // namespace kernels
MOEKIT_NAMESPACE_END
