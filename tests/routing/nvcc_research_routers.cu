// The research routers' route kernels (AdaMoE null experts, DynMoLE, top-any, ProMoE,
// similarity) and the cosine score kernel compiled by nvcc for every architecture: the resource
// report (registers, spills, stack) comes from here.
#include "moekit/core/float16.hpp"
#include "moekit/routing/cosine_scores.hpp"
#include "moekit/routing/dynmole.hpp"
#include "moekit/routing/null_experts.hpp"
#include "moekit/routing/prototype.hpp"
#include "moekit/routing/route.hpp"
#include "moekit/routing/similarity.hpp"
#include "moekit/routing/top_any.hpp"

namespace moekit::routing {
template __global__ void route_tokens_kernel<NullExperts<8>>(NullExperts<8>, float const*, std::int64_t, std::int64_t,
                                                             int*, float*, std::int64_t, Diagnostics*);
template __global__ void route_tokens_kernel<DynMoLE<256>>(DynMoLE<256>, float const*, std::int64_t, std::int64_t, int*,
                                                           float*, std::int64_t, Diagnostics*);
template __global__ void route_tokens_kernel<TopAnyThreshold<8>>(TopAnyThreshold<8>, float const*, std::int64_t,
                                                                 std::int64_t, int*, float*, std::int64_t,
                                                                 Diagnostics*);
template __global__ void route_tokens_kernel<PrototypeRouter<8>>(PrototypeRouter<8>, float const*, std::int64_t,
                                                                 std::int64_t, int*, float*, std::int64_t,
                                                                 Diagnostics*);
template __global__ void route_tokens_kernel<SimilarityRouter<8>>(SimilarityRouter<8>, float const*, std::int64_t,
                                                                  std::int64_t, int*, float*, std::int64_t,
                                                                  Diagnostics*);
template __global__ void cosine_scores_kernel<float>(ScoreProblem<float>);
template __global__ void cosine_scores_kernel<bf16_t>(ScoreProblem<bf16_t>);
template __global__ void cosine_scores_kernel<fp16_t>(ScoreProblem<fp16_t>);
}  // namespace moekit::routing
