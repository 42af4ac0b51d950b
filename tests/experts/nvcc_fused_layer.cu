// The fused single-launch layer compiled by nvcc for every architecture (its own file so that
// the build compiles it beside nvcc_expert_stage.cu): Mixtral/Qwen-style (TopK) and
// DeepSeek-style (GroupedTopK) routers, prefill and decode tiles.
#include "moekit/experts/gated_mlp.hpp"
#include "moekit/kernels/fused_layer.hpp"
#include "moekit/routing/grouped_top_k.hpp"
#include "moekit/routing/top_k.hpp"

namespace moekit::kernels {

#define MOEKIT_FUSED_LAYER(Cfg, Router, Policy, X, Y) \
  template Status run_fused_layer<Cfg, Router, Policy, X, Y>( \
      Router const&, Policy const&, experts::ExpertProblem const&, \
      routing::GateProjectionBuffers<X, X, MemorySpace::device> const&, \
      routing::RouteBuffers<MemorySpace::device> const&, experts::ExpertArgs<X, X, Y, MemorySpace::device> const&, \
      Workspace&, Diagnostics*, arch::Stream, LaunchOptions const&);

MOEKIT_FUSED_LAYER(PrefillConfig, routing::TopK<8>, experts::SwiGlu<bf16_t>, bf16_t, bf16_t)
MOEKIT_FUSED_LAYER(DecodeConfig, routing::GroupedTopK<8>, experts::SwiGlu<bf16_t>, bf16_t, bf16_t)

#undef MOEKIT_FUSED_LAYER

}  // namespace moekit::kernels
