// The depth and token routers' kernels (Mixture-of-Depths, γ-MoD, the block-output combine, FTP
// token skip prefill and decode, the Dr.LLM layer router, the ordered loss mean) compiled by nvcc
// for every architecture: the resource report (registers, spills, stack) comes from here. The
// device entry points are instantiated too, so their launch code compiles under nvcc.
#include "moekit/core/dtypes.hpp"
#include "moekit/routing/depth.hpp"
#include "moekit/routing/layer_router.hpp"
#include "moekit/routing/token_skip.hpp"

namespace moekit::routing {

template __global__ void depth_ordered_mean_kernel<depth_block_threads>(float const*, std::int64_t, float, float*);
template __global__ void mod_route_kernel<float>(ModKernelParams<float>);
template __global__ void mod_route_kernel<bf16_t>(ModKernelParams<bf16_t>);
template __global__ void depth_combine_kernel<depth_block_threads>(CombineKernelParams);
template __global__ void gamma_mod_route_kernel<float>(GammaModKernelParams<float>);
template __global__ void gamma_mod_route_kernel<bf16_t>(GammaModKernelParams<bf16_t>);
template __global__ void token_skip_kernel<depth_block_threads>(TokenSkipKernelParams);
template __global__ void token_skip_decode_kernel<depth_block_threads>(TokenSkipDecodeParams);
template __global__ void layer_router_kernel<float>(LayerRouterKernelParams<float>);
template __global__ void layer_router_kernel<bf16_t>(LayerRouterKernelParams<bf16_t>);

template Status route<float>(MixtureOfDepths const&, MixtureOfDepthsBuffers<MemorySpace::device, float> const&, void*,
                             std::size_t, Diagnostics*, arch::Stream, unsigned);
template Status route<bf16_t>(GammaMod const&, GammaModBuffers<MemorySpace::device, bf16_t> const&, void*, std::size_t,
                              Diagnostics*, arch::Stream, unsigned);
template Status route<float>(LayerRouter const&, LayerRouterBuffers<MemorySpace::device, float> const&, void*,
                             std::size_t, Diagnostics*, arch::Stream, unsigned);

}  // namespace moekit::routing
