// Every arch/ wrapper's real branch, instantiated in device code so that nvcc and ptxas compile
// each inline-PTX sequence, intrinsic and CUB primitive for sm_80 and sm_90a (a header that is
// only parsed would hide a bad asm constraint). The nvcc report checks the mma kernels for
// HMMA/IMMA. Their emulated twins are tested in tests/emu.

#include <cstdint>

#include "moekit/arch/arch.hpp"

namespace arch_wrappers {
namespace arch = moekit::arch;

struct Smem {
  alignas(128) arch::SharedArray<std::uint16_t, 4 * 64> tiles;  // four 8x8 b16 matrices
  alignas(16) arch::SharedArray<float, 256> staged;
  arch::SharedArray<int, 32> counters;
};

MOEKIT_KERNEL void mma_kernel(std::uint32_t const* a, std::uint32_t const* b, float* d_bf16, float* d_f16,
                              std::int32_t* d_s8) {
  unsigned const lane = arch::lane_id();
  std::uint32_t fa[4], fb[2];
  for (int i = 0; i < 4; ++i) {
    fa[i] = a[lane * 4 + i];
  }
  fb[0] = b[lane * 2];
  fb[1] = b[lane * 2 + 1];
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  arch::mma_m16n8k16_bf16(acc, fa, fb, acc);
  for (int i = 0; i < 4; ++i) {
    d_bf16[lane * 4 + i] = acc[i];
  }
  float acc16[4] = {0.f, 0.f, 0.f, 0.f};
  arch::mma_m16n8k16_f16(acc16, fa, fb, acc16);
  for (int i = 0; i < 4; ++i) {
    d_f16[lane * 4 + i] = acc16[i];
  }
  std::int32_t acc8[4] = {0, 0, 0, 0};
  arch::mma_m16n8k32_s8(acc8, fa, fb, acc8);
  for (int i = 0; i < 4; ++i) {
    d_s8[lane * 4 + i] = acc8[i];
  }
}

MOEKIT_KERNEL void memory_kernel(std::uint16_t const* in, float const* staged_in, std::uint32_t* out) {
  auto& s = arch::shared_storage<Smem>();
  unsigned const t = arch::thread_rank();
  for (unsigned i = t; i < 4 * 64; i += arch::block_dim().x) {
    s.tiles[i] = in[i];
  }
  if (t < 64) {
    arch::cp_async<16>(s.staged.data() + 4 * t, staged_in + 4 * t);
  } else if (t < 128) {
    arch::cp_async<8>(s.staged.data() + 2 * (t - 64) + 128, staged_in + 2 * (t - 64) + 128, 4);
  } else {
    arch::cp_async<4>(s.staged.data() + 255, staged_in + 255, 0);
  }
  arch::cp_async_commit();
  arch::cp_async_wait_group<0>();
  arch::cp_async_wait_all();
  arch::sync_threads();
  if (t < 32) {  // one full warp
    void const* row = s.tiles.data() + 8 * (t % 32);
    std::uint32_t r1[1], r2[2], r4[4];
    arch::ldmatrix_x1(r1, row);
    arch::ldmatrix_x2(r2, row);
    arch::ldmatrix_x4(r4, row);
    std::uint32_t x = r1[0] ^ r2[0] ^ r2[1] ^ r4[0] ^ r4[3];
    arch::ldmatrix_x1_trans(r1, row);
    arch::ldmatrix_x2_trans(r2, row);
    arch::ldmatrix_x4_trans(r4, row);
    x ^= r1[0] ^ r2[1] ^ r4[2];
    out[t] = x + static_cast<std::uint32_t>(s.staged[t]);
  }
}

MOEKIT_KERNEL void warp_and_atomic_kernel(int* ints, unsigned* uints, long long* i64, unsigned long long* u64,
                                          float* floats, double* doubles, unsigned* out) {
  auto& s = arch::shared_storage<Smem>();
  unsigned const t = arch::thread_rank();
  unsigned const lane = arch::lane_id();
  if (t < 32) {
    s.counters[t] = 0;
  }
  arch::sync_threads();
  float v = static_cast<float>(lane);
  v += arch::shfl_sync(arch::full_warp_mask, v, 3);
  v += arch::shfl_up_sync(arch::full_warp_mask, v, 1, 16);
  v += arch::shfl_down_sync(arch::full_warp_mask, v, 2);
  v += arch::shfl_xor_sync(arch::full_warp_mask, v, 4);
  double dv = arch::shfl_xor_sync(arch::full_warp_mask, static_cast<double>(v), 1);
  struct Pair {
    std::uint16_t a, b, c;
  };
  Pair p = arch::shfl_sync(arch::full_warp_mask, Pair{1, 2, static_cast<std::uint16_t>(lane)}, 0);
  unsigned const ballot = arch::ballot_sync(arch::full_warp_mask, v > 10.f);
  bool const any = arch::any_sync(arch::full_warp_mask, lane == 3);
  bool const all = arch::all_sync(arch::full_warp_mask, lane < 32);
  unsigned const same = arch::match_any_sync(arch::full_warp_mask, lane / 4);
  unsigned const same64 = arch::match_any_sync(arch::full_warp_mask, static_cast<unsigned long long>(lane / 8));
  unsigned const sum = arch::reduce_add_sync(arch::full_warp_mask, lane);
  unsigned const active = arch::active_mask();
  arch::sync_warp();
  int const count = arch::sync_threads_count(lane % 2 == 0);
  bool const and_ = arch::sync_threads_and(t < 1024);
  bool const or_ = arch::sync_threads_or(t == 0);
  arch::atomic_add(&s.counters[lane], 1);
  arch::atomic_add(ints, 1);
  arch::atomic_min(ints + 1, static_cast<int>(t));
  arch::atomic_max(uints, t);
  arch::atomic_cas(uints + 1, 0u, t);
  arch::atomic_exch(uints + 2, t);
  arch::atomic_add(i64, 1LL);
  arch::atomic_cas(i64 + 1, 0LL, static_cast<long long>(t));
  arch::atomic_exch(i64 + 2, static_cast<long long>(t));
  arch::atomic_max(u64, static_cast<unsigned long long>(t));
  arch::atomic_add(floats, 1.f);
  arch::atomic_exch(floats + 1, v);
  arch::atomic_add(doubles, dv);
  arch::atomic_exch(doubles + 1, dv);
  arch::thread_fence();
  arch::thread_fence_block();
  arch::sync_threads();
  out[t] = ballot ^ (any ? 1u : 0u) ^ (all ? 2u : 0u) ^ same ^ same64 ^ sum ^ active ^ static_cast<unsigned>(count) ^
           (and_ ? 4u : 0u) ^ (or_ ? 8u : 0u) ^ p.a ^ p.c ^ static_cast<unsigned>(s.counters[lane]);
}

// Cooperative launch only: one grid-wide barrier between two phases.
MOEKIT_KERNEL void grid_sync_kernel(int* flags, int* out) {
  unsigned const b = arch::block_rank();
  if (arch::thread_rank() == 0) {
    flags[b] = static_cast<int>(b) + 1;
  }
  arch::grid_sync();
  if (arch::thread_rank() == 0) {
    out[b] = flags[(b + 1) % arch::grid_dim().x];
  }
}

template <int Threads>
struct BlockStorage {
  typename arch::BlockScan<int, Threads>::TempStorage scan;
  typename arch::BlockReduce<float, Threads>::TempStorage reduce;
  typename arch::BlockRadixSort<std::uint32_t, Threads, 4>::TempStorage sort_keys;
  typename arch::BlockRadixSort<float, Threads, 4, int>::TempStorage sort_pairs;
};

template <int Threads>
MOEKIT_KERNEL void block_primitives_kernel(int const* in, int* out) {
  auto& s = arch::shared_storage<BlockStorage<Threads>>();
  unsigned const t = arch::thread_rank();
  int x = in[t], scanned = 0, aggregate = 0, inclusive = 0;
  arch::BlockScan<int, Threads>(s.scan).exclusive_sum(x, scanned, aggregate);
  arch::sync_threads();
  arch::BlockScan<int, Threads>(s.scan).inclusive_sum(x, inclusive);
  float const m = arch::BlockReduce<float, Threads>(s.reduce).reduce(static_cast<float>(x),
                                                                     [](float a, float b) { return a > b ? a : b; });
  arch::sync_threads();
  float const total = arch::BlockReduce<float, Threads>(s.reduce).sum(static_cast<float>(x));
  std::uint32_t keys[4];
  float fkeys[4];
  int values[4];
  for (int i = 0; i < 4; ++i) {
    keys[i] = static_cast<std::uint32_t>(in[(t * 4 + i) % Threads]);
    fkeys[i] = static_cast<float>(keys[i]);
    values[i] = static_cast<int>(t) * 4 + i;
  }
  arch::BlockRadixSort<std::uint32_t, Threads, 4>(s.sort_keys).sort(keys);
  arch::BlockRadixSort<float, Threads, 4, int>(s.sort_pairs).sort(fkeys, values);
  out[t] = scanned + aggregate + inclusive + static_cast<int>(m + total) + static_cast<int>(keys[0]) + values[3];
}

template __global__ void block_primitives_kernel<256>(int const*, int*);

}  // namespace arch_wrappers
