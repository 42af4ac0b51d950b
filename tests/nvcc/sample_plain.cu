// Fixture for the nvcc resource report (tests/nvcc): kernels without tensor-core instructions.
// Self-contained on purpose (no moekit headers): it tests the report tool, not the library.
//
//  - fixture::block_sum<256>: a plain block reduction (warp shuffles + shared memory), no MMA;
//    naming it with --tensor-core must make the check fail.
//  - fixture::forced_spill: capped at 32 registers by __launch_bounds__(256, 8)
//    (65536 / (256 * 8) = 32) while it keeps 64 independent accumulators live across a loop,
//    so ptxas must spill; the check must fail on it unless it is named with --allow-spills.
#include <cstdint>

namespace fixture {

template <int Threads>
__global__ void __launch_bounds__(Threads) block_sum(const float* __restrict__ x, float* __restrict__ out, int n) {
  __shared__ float warp_sums[Threads / 32];
  float s = 0.f;
  for (int i = static_cast<int>(blockIdx.x * Threads + threadIdx.x); i < n; i += static_cast<int>(gridDim.x * Threads))
    s += x[i];
  for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x < 32) {
    s = threadIdx.x < Threads / 32 ? warp_sums[threadIdx.x] : 0.f;
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (threadIdx.x == 0) atomicAdd(out, s);
  }
}
template __global__ void block_sum<256>(const float*, float*, int);

__global__ void __launch_bounds__(256, 8)
    forced_spill(const float* __restrict__ x, float* __restrict__ out, int iters) {
  constexpr int kLive = 64;
  float acc[kLive];
#pragma unroll
  for (int j = 0; j < kLive; ++j) acc[j] = x[j * blockDim.x + threadIdx.x];
  for (int it = 0; it < iters; ++it) {
    const float v = x[(it + kLive) * blockDim.x + threadIdx.x];
#pragma unroll
    for (int j = 0; j < kLive; ++j) acc[j] = fmaf(acc[j], v, acc[(j + 1) % kLive]);
  }
  float s = 0.f;
#pragma unroll
  for (int j = 0; j < kLive; ++j) s += acc[j] * static_cast<float>(j + 1);
  out[blockIdx.x * blockDim.x + threadIdx.x] = s;
}

}  // namespace fixture
