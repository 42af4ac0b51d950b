#pragma once
// MoeLayer<Router, Balancer, Expert, Config>: one Mixture-of-Experts layer composed from three
// policies at compile time (DESIGN.md §1, §3). It owns nothing: the caller gives the weights,
// the activations, the output and a workspace sized by workspace_size(), and runs it on a CUDA
// stream or on the CPU executor:
//
//   route    logits = x·W_gᵀ (+ b), the Router's per-token selection → ids, weights [T, K]
//   balance  a loss Balancer's value and gradient w.r.t. the logits (when asked for)
//   experts  plan → grouped GEMMs → combine (kernels/expert_stage.hpp, cpu/experts.hpp)
//
// On the device nothing synchronises with the host and nothing is allocated: the layer can be
// captured in a CUDA graph. Config picks the GEMM tiles: kernels::PrefillConfig,
// kernels::DecodeConfig, or AdaptiveConfig (the default): the decode tiles (16 rows) when
// T ≤ 64, where a 64-row tile would be mostly padding, the prefill tiles otherwise.
//
// Per-token routers only (routing::TokenRouter); batch routers (expert choice, Sinkhorn,
// depth routers) have their own entry points, whose ids and weights feed the expert stage
// directly (kernels::run_expert_stage, cpu::run_experts).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "moekit/arch/arch.hpp"
#include "moekit/balancing/concept.hpp"
#include "moekit/balancing/loss_buffers.hpp"
#include "moekit/config.hpp"
#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/core/workspace.hpp"
#include "moekit/cpu/experts.hpp"
#include "moekit/cpu/gate_projection.hpp"
#include "moekit/cpu/route.hpp"
#include "moekit/cpu/thread_pool.hpp"
#include "moekit/experts/concept.hpp"
#include "moekit/experts/expert_args.hpp"
#include "moekit/kernels/expert_stage.hpp"
#include "moekit/kernels/fused_layer.hpp"
#include "moekit/kernels/kernel_config.hpp"
#include "moekit/routing/concept.hpp"
#include "moekit/routing/gate_projection.hpp"
#include "moekit/routing/route.hpp"

MOEKIT_NAMESPACE_BEGIN

// How the device path launches: one persistent cooperative kernel for the whole layer (the
// default), or one kernel per stage (gate projection, route, 3 plan kernels, 2 GEMMs per MLP,
// combine). Both give the same bits. The fused launch falls back to the multi-launch path when
// the device cannot hold even one of its blocks.
enum class LayerLaunch { fused, multi };

// The default Config: decode tiles for T ≤ decode_tokens, prefill tiles above.
struct AdaptiveConfig {
  static constexpr std::int64_t decode_tokens = 64;
};

template <routing::TokenRouter Router, balancing::Balancer Balancer, experts::Expert Expert,
          class Config = AdaptiveConfig>
class MoeLayer {
 public:
  using Element = typename Expert::Element;

  struct Problem {
    std::int64_t tokens = 0;               // T
    std::int64_t hidden = 0;               // H
    std::int64_t intermediate = 0;         // I per routed expert
    experts::ExpertTable table{};          // E = table.num_experts() = the router's num_experts()
    std::int64_t shared_intermediate = 0;  // 0: no shared expert
    std::int64_t capacity = -1;            // per expert; -1 unlimited
    experts::WeightPosition position = experts::WeightPosition::after_expert;
    experts::CombineMode combine = experts::CombineMode::deterministic;
  };

  // X: activations (and the router weight) — float or bf16; Y: output — float or X.
  template <class X, class Y, MemorySpace Space>
  struct Arguments {
    TensorView<X const, 2, Space> x;                            // [T, H]
    TensorView<X const, 2, Space> gate_weight;                  // [E, H] router weight (HF [out, in])
    TensorView<float const, 1, Space> gate_bias;                // [E] or extent 0 (gpt-oss has one)
    typename experts::WeightsOf<Element, Space>::type experts;  // table.computed experts (dense or quantised)
    experts::SharedExpertWeights<typename experts::WeightsOf<Element, Space>::dense, Space> shared;
    experts::QuantizedMlpLayout quantized_layout{};  // quantised device weights: host copies of bits/offsets
    TensorView<Y, 2, Space> y;                       // [T, H]
    // Optional outputs (null data: not written): the router's logits [T, E], ids and weights [T, K].
    TensorView<float, 2, Space> logits;
    TensorView<int, 2, Space> ids;
    TensorView<float, 2, Space> weights;
    balancing::LossOutputs<Space> loss;  // loss Balancers: value (and grad, counts...) when value != null
    Diagnostics* diagnostics = nullptr;  // required; in the memory space of the run
  };

  [[nodiscard]] static experts::ExpertProblem expert_problem(Router const& router, Problem const& p) noexcept {
    experts::ExpertProblem e;
    e.tokens = p.tokens;
    e.hidden = p.hidden;
    e.intermediate = p.intermediate;
    e.slots = router.slots();
    e.table = p.table;
    e.shared_intermediate = p.shared_intermediate;
    e.capacity = p.capacity;
    e.position = p.position;
    e.combine = p.combine;
    return e;
  }

  // Whether this layer can run `p` (on the device when `device`), with the reason when not.
  template <class X, class Y>
  [[nodiscard]] static Status can_implement(Router const& router, Balancer const& balancer, Expert const& expert,
                                            Problem const& p, bool device) {
    if constexpr (!std::is_same_v<X, float> && !std::is_same_v<X, bf16_t>) {
      return error(Status::unsupported_config,
                   "MoeLayer: activations must be float or bf16 (the gate projection reads fp32 or bf16)");
    } else {
      if (Status s = router.validate(); !s) {
        return s;
      }
      if (router.num_experts() != p.table.num_experts()) {
        return error(Status::invalid_argument,
                     "MoeLayer: the router has %d experts but the expert table has %d (computed %d + zero %d + "
                     "identity %d)",
                     router.num_experts(), p.table.num_experts(), p.table.computed, p.table.zero, p.table.identity);
      }
      if (Status s = balancer.validate(p.table.num_experts()); !s) {
        return s;
      }
      if (Status s = experts::validate(expert_problem(router, p)); !s) {
        return s;
      }
      if (Status s = expert.validate(); !s) {
        return s;
      }
      if (device) {
        if (Status s = kernels::can_implement<kernels::PrefillConfig, Expert, X, Y>(expert, expert_problem(router, p));
            !s) {
          return s;
        }
      }
      return Status::ok;
    }
  }

  // Bytes of workspace for `p` on the device (device = true) or on the CPU executor.
  template <class X, class Y>
  [[nodiscard]] static std::size_t workspace_size(Router const& router, Problem const& p, bool device) {
    Workspace counting;
    (void)carve_routing(router, p, counting);
    experts::ExpertProblem const ep = expert_problem(router, p);
    std::size_t stage = 0;
    if (device) {
      stage = std::max(kernels::expert_stage_workspace_size<kernels::PrefillConfig, X>(ep),
                       kernels::expert_stage_workspace_size<kernels::DecodeConfig, X>(ep));
    } else {
      stage = cpu::experts_workspace_size<Expert, X, Y>(Expert{}, ep);
    }
    return counting.bytes_used() + Workspace::default_alignment + stage + loss_workspace_bytes(p);
  }

  // On a CUDA stream (device memory everywhere, diagnostics included).
  template <class X, class Y>
  [[nodiscard]] static Status run(Router const& router, Balancer const& balancer, Expert const& expert,
                                  Problem const& p, Arguments<X, Y, MemorySpace::device> const& a, Workspace& workspace,
                                  arch::Stream stream, LayerLaunch launch = LayerLaunch::fused,
                                  kernels::LaunchOptions const& options = {}) {
    if (Status s = can_implement<X, Y>(router, balancer, expert, p, true); !s) {
      return s;
    }
    Routed<MemorySpace::device> r;
    if (Status s = prepare(router, expert, p, a, workspace, r); !s) {
      return s;
    }
    experts::ExpertProblem const ep = expert_problem(router, p);
    auto const stage_args = expert_args(a, r);
    if (launch == LayerLaunch::fused) {
      Workspace stage_workspace = workspace;  // the fallback below carves the same buffers again
      Status const s =
          use_decode_tiles(p)
              ? kernels::run_fused_layer<kernels::DecodeConfig>(router, expert, ep, gate_buffers(a, r),
                                                                route_buffers(r), stage_args, stage_workspace,
                                                                a.diagnostics, stream, options)
              : kernels::run_fused_layer<kernels::PrefillConfig>(router, expert, ep, gate_buffers(a, r),
                                                                 route_buffers(r), stage_args, stage_workspace,
                                                                 a.diagnostics, stream, options);
      if (s != Status::unsupported_config) {
        if (!s) {
          return s;
        }
        return run_balancer(balancer, a, r, stage_workspace, stream);
      }
    }
    if (Status s = routing::gate_projection(gate_buffers(a, r), stream, options.max_blocks); !s) {
      return s;
    }
    if (Status s = routing::route(router, route_buffers(r), a.diagnostics, stream, options.max_blocks); !s) {
      return s;
    }
    if (use_decode_tiles(p)) {
      if (Status s = kernels::run_expert_stage<kernels::DecodeConfig>(expert, ep, stage_args, workspace, a.diagnostics,
                                                                      stream, options);
          !s) {
        return s;
      }
    } else if (Status s = kernels::run_expert_stage<kernels::PrefillConfig>(expert, ep, stage_args, workspace,
                                                                            a.diagnostics, stream, options);
               !s) {
      return s;
    }
    return run_balancer(balancer, a, r, workspace, stream);
  }

  // On the CPU executor (host memory everywhere).
  template <class X, class Y>
  [[nodiscard]] static Status run(Router const& router, Balancer const& balancer, Expert const& expert,
                                  Problem const& p, Arguments<X, Y, MemorySpace::host> const& a, Workspace& workspace,
                                  cpu::ThreadPool& pool) {
    if (Status s = can_implement<X, Y>(router, balancer, expert, p, false); !s) {
      return s;
    }
    if constexpr (Balancer::kind == balancing::BalancerKind::loss) {
      if (a.loss.value != nullptr) {
        return error(Status::unsupported_config,
                     "MoeLayer on the CPU: loss balancers run through their host entry points "
                     "(host/balance_loss_reference.hpp) on the layer's logits output");
      }
    }
    Routed<MemorySpace::host> r;
    if (Status s = prepare(router, expert, p, a, workspace, r); !s) {
      return s;
    }
    if (Status s = cpu::gate_projection(gate_buffers(a, r)); !s) {
      return s;
    }
    if (Status s = cpu::route(router, route_buffers(r)); !s) {
      return s;
    }
    return cpu::run_experts(expert, expert_problem(router, p), expert_args(a, r), workspace, a.diagnostics, &pool);
  }

 private:
  template <MemorySpace Space>
  struct Routed {
    TensorView<float, 2, Space> logits;
    TensorView<int, 2, Space> ids;
    TensorView<float, 2, Space> weights;
  };

  template <class T, int Rank, MemorySpace Space>
  [[nodiscard]] static TensorView<T const, Rank, Space> read_only(TensorView<T, Rank, Space> const& v) noexcept {
    return {v.data, v.extents, v.strides};
  }
  template <MemorySpace Space>
  [[nodiscard]] static routing::RouteBuffers<Space> route_buffers(Routed<Space> const& r) noexcept {
    return {read_only(r.logits), r.ids, r.weights};
  }

  [[nodiscard]] static bool use_decode_tiles(Problem const& p) noexcept {
    if constexpr (std::is_same_v<Config, AdaptiveConfig>) {
      return p.tokens <= AdaptiveConfig::decode_tokens;
    } else {
      return std::is_same_v<Config, kernels::DecodeConfig>;
    }
  }

  // Routing scratch: logits [T, E], ids and weights [T, K] (used when the caller does not ask for them).
  template <MemorySpace Space = MemorySpace::host>
  static Routed<Space> carve_routing(Router const& router, Problem const& p, Workspace& w) {
    Routed<Space> r;
    std::int64_t const E = p.table.num_experts(), K = router.slots();
    r.logits = TensorView<float, 2, Space>::row_major(w.take<float>(p.tokens * E, "router logits"), {p.tokens, E});
    r.ids = TensorView<int, 2, Space>::row_major(w.take<int>(p.tokens * K, "router ids"), {p.tokens, K});
    r.weights = TensorView<float, 2, Space>::row_major(w.take<float>(p.tokens * K, "router weights"), {p.tokens, K});
    return r;
  }

  [[nodiscard]] static std::size_t loss_workspace_bytes(Problem const& p) {
    if constexpr (Balancer::kind == balancing::BalancerKind::loss &&
                  requires { loss_workspace_size(Balancer{}, p.tokens, 1); }) {
      return loss_workspace_size(Balancer{}, p.tokens, p.table.num_experts()) + Workspace::default_alignment;
    } else {
      return 0;
    }
  }

  template <class X, class Y, MemorySpace Space>
  [[nodiscard]] static Status prepare(Router const& router, Expert const& expert, Problem const& p,
                                      Arguments<X, Y, Space> const& a, Workspace& w, Routed<Space>& r) {
    if (a.diagnostics == nullptr) {
      return error(Status::invalid_argument, "MoeLayer: diagnostics must not be null");
    }
    if (a.x.extent(0) != p.tokens || a.x.extent(1) != p.hidden) {
      return error(Status::invalid_argument, "MoeLayer: x is [%lld, %lld], the problem says [%lld, %lld]",
                   static_cast<long long>(a.x.extent(0)), static_cast<long long>(a.x.extent(1)),
                   static_cast<long long>(p.tokens), static_cast<long long>(p.hidden));
    }
    std::int64_t const K = router.slots();
    std::int64_t const E = p.table.num_experts();
    auto const optional = [&](auto const& v, char const* what, std::int64_t cols) -> Status {
      if (v.data != nullptr && (v.extent(0) != p.tokens || v.extent(1) != cols || (cols > 1 && v.stride(1) != 1))) {
        return error(Status::invalid_argument, "MoeLayer: the %s output must be a contiguous [%lld, %lld] view", what,
                     static_cast<long long>(p.tokens), static_cast<long long>(cols));
      }
      return Status::ok;
    };
    if (Status s = optional(a.logits, "logits", E); !s) {
      return s;
    }
    if (Status s = optional(a.ids, "ids", K); !s) {
      return s;
    }
    if (Status s = optional(a.weights, "weights", K); !s) {
      return s;
    }
    r = carve_routing<Space>(router, p, w);
    if (Status s = w.status(); !s) {
      return error(s, "MoeLayer: workspace: buffer '%s' needs %zu bytes, %zu left", w.failed_buffer(), w.failed_bytes(),
                   w.bytes_left_at_failure());
    }
    if (a.logits.data != nullptr) {
      r.logits = a.logits;
    }
    if (a.ids.data != nullptr) {
      r.ids = a.ids;
    }
    if (a.weights.data != nullptr) {
      r.weights = a.weights;
    }
    // Every argument of the later stages is checked before the first write.
    return experts::check_expert_args(expert, expert_problem(router, p), expert_args(a, r));
  }

  template <class X, class Y, MemorySpace Space>
  [[nodiscard]] static routing::GateProjectionBuffers<X, X, Space> gate_buffers(Arguments<X, Y, Space> const& a,
                                                                                Routed<Space> const& r) {
    return {a.x, a.gate_weight, a.gate_bias, r.logits};  // NOLINT
  }

  template <class X, class Y, MemorySpace Space>
  [[nodiscard]] static experts::ExpertArgs<X, Element, Y, Space> expert_args(Arguments<X, Y, Space> const& a,
                                                                             Routed<Space> const& r) {
    experts::ExpertArgs<X, Element, Y, Space> e;
    e.x = a.x;
    e.ids = read_only(r.ids);
    e.weights = read_only(r.weights);
    e.experts = a.experts;
    e.shared = a.shared;
    e.y = a.y;
    e.quantized_layout = a.quantized_layout;
    return e;
  }

  template <class X, class Y>
  [[nodiscard]] static Status run_balancer(Balancer const& balancer, Arguments<X, Y, MemorySpace::device> const& a,
                                           Routed<MemorySpace::device> const& r, Workspace& w, arch::Stream stream) {
    if constexpr (Balancer::kind == balancing::BalancerKind::loss) {
      if (a.loss.value == nullptr) {
        return Status::ok;
      }
      balancing::LossInputs<MemorySpace::device> in;
      in.logits = read_only(r.logits);
      return loss(balancer, in, a.loss, w, stream);  // ADL: the policy header brings its entry point
    } else {
      (void)balancer, (void)a, (void)r, (void)w, (void)stream;
      return Status::ok;
    }
  }
};

MOEKIT_NAMESPACE_END
