// moekit/emu/cuda_names.hpp: a kernel in plain CUDA spelling (threadIdx.x, blockIdx.x,
// blockDim.x, __syncthreads(), __shfl_down_sync, atomicAdd, ...) runs under the emulator.
// Its macros would clash with moekit's own names elsewhere, hence this executable of its own.

#include "moekit/emu/cuda_names.hpp"

#include <cstdint>
#include <numeric>
#include <vector>

#include <catch2/catch.hpp>

#include "moekit/emu/emu.hpp"

namespace {

struct SumSmem {
  moekit::arch::SharedArray<int, 32> warp_sums;
};

__device__ int warp_sum(int v) {
  for (int offset = warpSize / 2; offset > 0; offset /= 2) {
    v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  return v;
}

// The textbook two-level block sum, finished with one atomicAdd per block.
__global__ void block_sum(int const* in, int* total, int n) {
  auto& s = moekit::arch::shared_storage<SumSmem>();
  int const i = blockIdx.x * blockDim.x + threadIdx.x;
  int v = warp_sum(i < n ? in[i] : 0);
  int const lane = threadIdx.x % warpSize;
  int const warp = threadIdx.x / warpSize;
  if (lane == 0) {
    s.warp_sums[warp] = v;
  }
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x / warpSize) ? s.warp_sums[lane] : 0;
    v = warp_sum(v);
    if (lane == 0) {
      atomicAdd(total, v);
    }
  }
}

// The rest of the spellings, one result each.
__global__ void spellings(unsigned* out, unsigned long long* slot) {
  unsigned const t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  unsigned const g = (blockIdx.x + gridDim.x * blockIdx.y) * (blockDim.x * blockDim.y * blockDim.z) + t;
  unsigned* o = out + g * 12;
  int const lane = static_cast<int>(t % warpSize);
  o[0] = static_cast<unsigned>(__syncthreads_count(lane % 2 == 0));
  o[1] = static_cast<unsigned>(__syncthreads_and(1));
  o[2] = static_cast<unsigned>(__syncthreads_or(t == 0));
  __syncwarp();
  o[3] = __ballot_sync(0xffffffffu, lane < 4);
  o[4] = static_cast<unsigned>(__any_sync(0xffffffffu, lane == 31));
  o[5] = static_cast<unsigned>(__all_sync(0xffffffffu, lane < 31));
  o[6] = __match_any_sync(0xffffffffu, lane / 8);
  o[7] = __reduce_add_sync(0xffffffffu, 2u);
  o[8] = __activemask();
  o[9] = static_cast<unsigned>(__shfl_sync(0xffffffffu, lane, 3, 8) + __shfl_up_sync(0xffffffffu, lane, 1) * 100 +
                               __shfl_xor_sync(0xffffffffu, lane, 16) * 10000);
  __threadfence();
  __threadfence_block();
  atomicMax(slot + 1, static_cast<unsigned long long>(g));
  atomicMin(slot + 2, static_cast<unsigned long long>(g));
  unsigned long long const old = atomicExch(slot + 3, static_cast<unsigned long long>(g));
  o[10] = static_cast<unsigned>(atomicCAS(slot, 0ull, 1ull) == 0 ? 1 : 0);
  o[11] = static_cast<unsigned>(old != static_cast<unsigned long long>(g));
}

}  // namespace

TEST_CASE("cuda names: a block sum in plain CUDA spelling", "[emu][cuda_names]") {
  auto const seed = GENERATE(0u, 1u, 2u);
  CAPTURE(seed);
  constexpr int n = 1000, threads = 256;
  std::vector<int> in(n);
  for (int i = 0; i < n; ++i) {
    in[static_cast<std::size_t>(i)] = (i * 37) % 101 - 50;
  }
  int total = 0;
  moekit::emu::LaunchOptions o;
  o.schedule_seed = seed;
  o.racecheck = true;
  o.initcheck = true;
  o.max_resident_blocks = 2;
  auto const r = moekit::emu::launch(
      {.grid = (n + threads - 1) / threads, .block = threads, .dynamic_shared_bytes = sizeof(SumSmem)}, o, block_sum,
      in.data(), &total, n);
  INFO(r.summary());
  REQUIRE(r.ok());
  CHECK(total == std::accumulate(in.begin(), in.end(), 0));
}

TEST_CASE("cuda names: votes, shuffles, fences and atomics in plain CUDA spelling", "[emu][cuda_names]") {
  constexpr unsigned blocks = 2, threads = 64;
  std::vector<unsigned> out(blocks * threads * 12, 0xdeadbeefu);
  unsigned long long slot[4] = {0, 0, ~0ull, 12345};
  auto const r = moekit::emu::launch({.grid = {1, blocks}, .block = {8, 4, 2}}, moekit::emu::LaunchOptions{}, spellings,
                                     out.data(), slot);
  INFO(r.summary());
  REQUIRE(r.ok());
  STATIC_REQUIRE(warpSize == 32);
  unsigned winners = 0, changed = 0;
  for (unsigned g = 0; g < blocks * threads; ++g) {
    unsigned const* o = &out[g * 12];
    unsigned const lane = g % 32;
    CAPTURE(g);
    CHECK(o[0] == threads / 2);
    CHECK(o[1] == 1u);
    CHECK(o[2] == 1u);
    CHECK(o[3] == 0xfu);
    CHECK(o[4] == 1u);
    CHECK(o[5] == 0u);
    CHECK(o[6] == 0xffu << (lane / 8 * 8));
    CHECK(o[7] == 64u);
    CHECK(o[8] == 0xffffffffu);
    unsigned const up = lane == 0 ? 0 : lane - 1;
    CHECK(o[9] == (lane / 8 * 8 + 3) + up * 100 + (lane ^ 16u) * 10000);
    winners += o[10];
    changed += o[11];
  }
  CHECK(winners == 1);
  CHECK(changed == blocks * threads);
  CHECK(slot[0] == 1);
  CHECK(slot[1] == blocks * threads - 1);
  CHECK(slot[2] == 0);
  CHECK(slot[3] < blocks * threads);
}
