// The adaptive balancers' kernels compiled by nvcc for every architecture (the resource report:
// registers, spills, stack): the chunked per-token loss kernels for DynMoLE and LoRA-Mixer, the
// routing contrastive loss kernels, and the expert-bias load / update kernels.
#include "moekit/balancing/adaptive_loss_launch.hpp"
#include "moekit/balancing/contrastive_loss_launch.hpp"
#include "moekit/balancing/expert_bias_launch.hpp"

namespace moekit::balancing {

#define MOEKIT_INSTANTIATE_TOKEN_LOSS(L) \
  template __global__ void token_loss_kernels::token_loss_partials_kernel<L>( \
      L, float const*, std::int64_t, std::int64_t, int, std::uint8_t const*, \
      token_loss_kernels::Carved<L::GradConstants>, Diagnostics*); \
  template __global__ void token_loss_kernels::token_loss_finalize_kernel<L>( \
      L, std::int64_t, int, token_loss_kernels::Carved<L::GradConstants>, float*, long long*, float*, float*); \
  template __global__ void token_loss_kernels::token_loss_grad_kernel<L>( \
      L, float const*, std::int64_t, std::int64_t, int, std::uint8_t const*, \
      token_loss_kernels::Carved<L::GradConstants>, float*, std::int64_t);

MOEKIT_INSTANTIATE_TOKEN_LOSS(DynMoLELoss)
MOEKIT_INSTANTIATE_TOKEN_LOSS(LoraMixerLoss)

template __global__ void contrastive_kernels::rcl_centroid_kernel<rcl_threads>(contrastive_kernels::Params,
                                                                               contrastive_kernels::Carved);
template __global__ void contrastive_kernels::rcl_loss_kernel<rcl_threads>(contrastive_kernels::Params,
                                                                           contrastive_kernels::Carved, float*, float*,
                                                                           std::int64_t);
template __global__ void contrastive_kernels::rcl_token_grad_kernel<rcl_threads>(contrastive_kernels::Params,
                                                                                 contrastive_kernels::Carved, float*,
                                                                                 std::int64_t);

template __global__ void accumulate_loads_kernel<bias_block_threads>(int const*, std::int64_t, std::int64_t, int,
                                                                     std::uint8_t const*, long long*, int,
                                                                     Diagnostics*);
template __global__ void update_bias_kernel<bias_block_threads>(BiasRule, double, double, float*, long long*,
                                                                long long*, int);

}  // namespace moekit::balancing
