// The batch-scope routers' kernels (expert choice, Sinkhorn, SSR) compiled by nvcc for every
// architecture: the resource report (registers, spills, stack) comes from here. The route()
// entry points are instantiated too, so their launch code compiles under nvcc.
#include "moekit/routing/expert_choice.hpp"
#include "moekit/routing/sinkhorn.hpp"

namespace moekit::routing {

template __global__ void expert_choice_select_kernel<1>(float const*, std::int64_t, int, std::int64_t, int*,
                                                        std::int64_t, float*, std::int64_t, int*, std::int64_t);
template __global__ void expert_choice_select_kernel<4>(float const*, std::int64_t, int, std::int64_t, int*,
                                                        std::int64_t, float*, std::int64_t, int*, std::int64_t);
template __global__ void expert_choice_select_kernel<16>(float const*, std::int64_t, int, std::int64_t, int*,
                                                         std::int64_t, float*, std::int64_t, int*, std::int64_t);

template __global__ void sinkhorn_kernel<8>(SinkhornRouter<8>, detail::TransportKernelArgs, detail::SinkhornWorkspace,
                                            SinkhornResult*, Diagnostics*);
template __global__ void sinkhorn_kernel<1>(SinkhornRouter<1>, detail::TransportKernelArgs, detail::SinkhornWorkspace,
                                            SinkhornResult*, Diagnostics*);
template __global__ void ssr_kernel<8>(SelectiveSinkhornRouter<8>, detail::TransportKernelArgs, detail::SsrWorkspace,
                                       SsrResult*, Diagnostics*);
template __global__ void ssr_softmax_top_k_kernel<8>(SelectiveSinkhornRouter<8>, detail::TransportKernelArgs,
                                                     SsrResult*, Diagnostics*);

template Status route<8>(SinkhornRouter<8> const&, TransportBuffers<MemorySpace::device> const&, SinkhornResult*, void*,
                         std::size_t, Diagnostics*, arch::Stream);
template Status route<8>(SelectiveSinkhornRouter<8> const&, TransportBuffers<MemorySpace::device> const&, SsrResult*,
                         void*, std::size_t, Diagnostics*, arch::Stream, unsigned);

template __global__ void expert_choice_scores_kernel<expert_choice_block_threads>(float const*, std::int64_t,
                                                                                  std::uint8_t const*, std::int64_t,
                                                                                  int, float*, Diagnostics*);
template __global__ void expert_choice_token_slots_kernel<expert_choice_block_threads>(float const*, std::int64_t,
                                                                                       std::int64_t, int, int*,
                                                                                       std::int64_t, float*,
                                                                                       std::int64_t, int*);

// Taking expert choice's inline entry point makes nvcc compile its launch code; never called.
Status (*const expert_choice_entry)(ExpertChoice const&, ExpertChoiceBuffers<MemorySpace::device> const&, void*,
                                    std::size_t, Diagnostics*, arch::Stream, unsigned) = &route;

}  // namespace moekit::routing
