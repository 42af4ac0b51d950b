// Every kernel of the fP balance losses and the router z-loss compiled by nvcc for every
// architecture (the resource report: registers, spills, stack), and each policy's host launch
// code instantiated under nvcc.
#include "moekit/balancing/fp_loss_kernels.hpp"
#include "moekit/balancing/z_loss_kernels.hpp"

namespace moekit::balancing {

using In = LossInputs<MemorySpace::device>;
using Out = LossOutputs<MemorySpace::device>;

template __global__ void fp_loss_stats_kernel<LossScore::softmax>(FpForm, float const*, std::int64_t,
                                                                  std::uint8_t const*, float*, int*, int*);
template __global__ void fp_loss_stats_kernel<LossScore::nsigmoid>(FpForm, float const*, std::int64_t,
                                                                   std::uint8_t const*, float*, int*, int*);
template __global__ void fp_loss_combine_kernel<CountRule::plain>(FpForm, FpWorkspace, float*, long long*, float*,
                                                                  float*);
template __global__ void fp_loss_combine_kernel<CountRule::running_mean>(FpForm, FpWorkspace, float*, long long*,
                                                                         float*, float*);
template __global__ void fp_loss_combine_kernel<CountRule::null_group>(FpForm, FpWorkspace, float*, long long*, float*,
                                                                       float*);
template __global__ void fp_loss_grad_kernel<LossScore::softmax>(FpForm, float const*, std::int64_t,
                                                                 std::uint8_t const*, float const*, float const*,
                                                                 float*, std::int64_t);
template __global__ void fp_loss_grad_kernel<LossScore::nsigmoid>(FpForm, float const*, std::int64_t,
                                                                  std::uint8_t const*, float const*, float const*,
                                                                  float*, std::int64_t);
template __global__ void fill_kernel<long long>(long long*, std::int64_t, long long);
template __global__ void z_loss_stats_kernel<fp_chunk_tokens>(float const*, std::int64_t, std::int64_t, int,
                                                              std::uint8_t const*, float*, int*);
template __global__ void z_loss_combine_kernel<fp_chunk_tokens>(ZLoss, std::int64_t, ZLossWorkspace, float*);
template __global__ void z_loss_grad_kernel<fp_chunk_tokens>(float const*, std::int64_t, std::int64_t, int,
                                                             std::uint8_t const*, float const*, float*, std::int64_t);

// The launch code of every policy.
template Status loss<SwitchLoss>(SwitchLoss const&, In const&, Out const&, Workspace&, arch::Stream, unsigned);
template Status loss<GShardLoss>(GShardLoss const&, In const&, Out const&, Workspace&, arch::Stream, unsigned);
template Status loss<HfLoadBalancingLoss>(HfLoadBalancingLoss const&, In const&, Out const&, Workspace&, arch::Stream,
                                          unsigned);
template Status loss<MegatronAuxLoss>(MegatronAuxLoss const&, In const&, Out const&, Workspace&, arch::Stream,
                                      unsigned);
template Status loss<MegatronSeqAuxLoss>(MegatronSeqAuxLoss const&, In const&, Out const&, Workspace&, arch::Stream,
                                         unsigned);
template Status loss<MegatronGlobalAuxLoss>(MegatronGlobalAuxLoss const&, In const&, Out const&, Workspace&,
                                            arch::Stream, unsigned);
template Status loss<DeepSeekV3SeqLoss>(DeepSeekV3SeqLoss const&, In const&, Out const&, Workspace&, arch::Stream,
                                        unsigned);
template Status loss<DitMoeLoss>(DitMoeLoss const&, In const&, Out const&, Workspace&, arch::Stream, unsigned);
template Status loss<AdaMoeLoss>(AdaMoeLoss const&, In const&, Out const&, Workspace&, arch::Stream, unsigned);

}  // namespace moekit::balancing
