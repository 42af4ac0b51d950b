// The TopK and GroupedTopK route kernels compiled by nvcc for every architecture: the
// resource report (registers, spills, stack) comes from here.
#include "moekit/routing/grouped_top_k.hpp"
#include "moekit/routing/route.hpp"
#include "moekit/routing/route_backward.hpp"
#include "moekit/routing/top_k.hpp"

namespace moekit::routing {
template __global__ void route_tokens_kernel<TopK<8>>(TopK<8>, float const*, std::int64_t, std::int64_t, int*, float*,
                                                      std::int64_t, Diagnostics*);
template __global__ void route_tokens_kernel<TopK<1>>(TopK<1>, float const*, std::int64_t, std::int64_t, int*, float*,
                                                      std::int64_t, Diagnostics*);
template __global__ void route_tokens_kernel<GroupedTopK<8>>(GroupedTopK<8>, float const*, std::int64_t, std::int64_t,
                                                             int*, float*, std::int64_t, Diagnostics*);
template __global__ void route_backward_kernel<TopK<8>>(TopK<8>, BackwardBuffers<MemorySpace::device>);
template __global__ void route_backward_kernel<GroupedTopK<8>>(GroupedTopK<8>, BackwardBuffers<MemorySpace::device>);
}  // namespace moekit::routing
