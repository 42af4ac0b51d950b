// The device expert stage compiled by nvcc for every architecture: each instantiation below
// pulls in its up/down GEMM and combine kernels, and the resource report (registers, spills,
// shared memory, tensor-core instructions) comes from here.
#include "moekit/experts/clamped_swiglu.hpp"
#include "moekit/experts/gated_mlp.hpp"
#include "moekit/experts/plain_mlp.hpp"
#include "moekit/experts/quantized.hpp"
#include "moekit/kernels/expert_stage.hpp"

namespace moekit::kernels {

#define MOEKIT_EXPERT_STAGE(Cfg, Policy, X, Y) \
  template Status run_expert_stage<Cfg, Policy, X, Y>(Policy const&, experts::ExpertProblem const&, \
                                                      experts::ExpertArgs<X, X, Y, MemorySpace::device> const&, \
                                                      Workspace&, Diagnostics*, arch::Stream, LaunchOptions const&);

MOEKIT_EXPERT_STAGE(PrefillConfig, experts::SwiGlu<bf16_t>, bf16_t, bf16_t)
MOEKIT_EXPERT_STAGE(PrefillConfig, experts::SwiGlu<bf16_t>, bf16_t, float)
MOEKIT_EXPERT_STAGE(PrefillConfig, experts::ReluMlp<bf16_t>, bf16_t, bf16_t)
MOEKIT_EXPERT_STAGE(PrefillConfig, experts::ClampedSwiglu<bf16_t>, bf16_t, bf16_t)
MOEKIT_EXPERT_STAGE(PrefillConfig, experts::SwiGlu<fp16_t>, fp16_t, fp16_t)
MOEKIT_EXPERT_STAGE(DecodeConfig, experts::SwiGlu<bf16_t>, bf16_t, bf16_t)
MOEKIT_EXPERT_STAGE(DecodeConfig, experts::ClampedSwiglu<bf16_t>, bf16_t, bf16_t)
MOEKIT_EXPERT_STAGE(DecodeConfig, experts::SwiGlu<fp16_t>, fp16_t, fp16_t)

// Quantized<SwiGLU>: codes dequantised to bf16 on their way into shared memory.
template Status run_expert_stage<PrefillConfig, experts::Quantized<experts::SwiGlu<bf16_t>>, bf16_t, bf16_t>(
    experts::Quantized<experts::SwiGlu<bf16_t>> const&, experts::ExpertProblem const&,
    experts::ExpertArgs<bf16_t, experts::QuantizedElement<bf16_t>, bf16_t, MemorySpace::device> const&, Workspace&,
    Diagnostics*, arch::Stream, LaunchOptions const&);

#undef MOEKIT_EXPERT_STAGE

}  // namespace moekit::kernels
