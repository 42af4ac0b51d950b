#pragma once
// Sample kernel: 256-thread blocks, each computes the exclusive prefix sum of its 256 inputs
// (cub::BlockScan under nvcc) and the block's total (cub::BlockReduce). Compiled by nvcc for
// the resource report and run under the emulator against a host computation.

#include <cstdint>

#include "moekit/arch/arch.hpp"

namespace moekit_samples {

inline constexpr int scan_block_threads = 256;

struct BlockScanStorage {
  moekit::arch::BlockScan<int, scan_block_threads>::TempStorage scan;
  moekit::arch::BlockReduce<int, scan_block_threads>::TempStorage reduce;
};

// prefix[i] = sum of in[j] for j in [block start, i); totals[b] = sum over block b. 64-bit
// offsets: n may exceed 2^31.
MOEKIT_KERNEL void block_scan_kernel(int const* in, int* prefix, int* totals, std::int64_t n) {
  namespace arch = moekit::arch;
  auto& smem = arch::shared_storage<BlockScanStorage>();
  std::int64_t const i = std::int64_t{arch::block_rank()} * scan_block_threads + arch::thread_rank();
  int const x = i < n ? in[i] : 0;
  int scanned = 0;
  arch::BlockScan<int, scan_block_threads>(smem.scan).exclusive_sum(x, scanned);
  int const total = arch::BlockReduce<int, scan_block_threads>(smem.reduce).sum(x);
  if (i < n) {
    prefix[i] = scanned;
  }
  if (arch::thread_rank() == 0) {
    totals[arch::block_rank()] = total;
  }
}

}  // namespace moekit_samples
