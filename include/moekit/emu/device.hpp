#pragma once
// The virtual device the emulator models: SM count and per-SM/per-block limits, so persistent
// kernels size their grids from it exactly as they would from the CUDA occupancy API, and
// tests can ask for a small device (e.g. 4 SMs) to keep emulated grids cheap.

#include <algorithm>
#include <cstddef>

#include "moekit/config.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace emu {

struct VirtualDevice {
  char const* name = "emulated sm_90 (4 SMs)";
  int sm_count = 4;
  int warp_size = 32;
  int max_threads_per_block = 1024;
  int max_threads_per_sm = 2048;
  int max_blocks_per_sm = 32;
  int registers_per_sm = 65536;
  int register_allocation_unit = 256;  // registers are allocated per warp in units of this many
  std::size_t shared_memory_per_sm = 228 * 1024;
  std::size_t shared_memory_per_block = 227 * 1024;  // the opt-in maximum of one block
  std::size_t shared_memory_reserved_per_block = 1024;

  // H100 SXM (sm_90): 132 SMs, 228 KiB shared memory per SM.
  static constexpr VirtualDevice h100() noexcept {
    VirtualDevice d;
    d.name = "emulated H100 (sm_90, 132 SMs)";
    d.sm_count = 132;
    return d;
  }
  // A100 (sm_80): 108 SMs, 164 KiB shared memory per SM, 163 KiB per block.
  static constexpr VirtualDevice a100() noexcept {
    VirtualDevice d;
    d.name = "emulated A100 (sm_80, 108 SMs)";
    d.sm_count = 108;
    d.shared_memory_per_sm = 164 * 1024;
    d.shared_memory_per_block = 163 * 1024;
    return d;
  }
  // A small device for tests: same per-SM limits as sm_90, `sms` SMs.
  static constexpr VirtualDevice small(int sms = 4) noexcept {
    VirtualDevice d;
    d.sm_count = sms;
    return d;
  }
};

// The number of blocks of this shape that fit on one SM: the same rule as
// cudaOccupancyMaxActiveBlocksPerMultiprocessor (threads, blocks, registers, shared memory).
[[nodiscard]] constexpr int max_active_blocks_per_sm(VirtualDevice const& d, int block_threads,
                                                     std::size_t dynamic_shared_bytes,
                                                     int registers_per_thread = 32) noexcept {
  if (block_threads <= 0 || block_threads > d.max_threads_per_block ||
      dynamic_shared_bytes > d.shared_memory_per_block) {
    return 0;
  }
  int const warps = (block_threads + d.warp_size - 1) / d.warp_size;
  int by_threads = d.max_threads_per_sm / (warps * d.warp_size);
  int by_blocks = d.max_blocks_per_sm;
  int const regs_per_warp = ((std::max(registers_per_thread, 1) * d.warp_size + d.register_allocation_unit - 1) /
                             d.register_allocation_unit) *
                            d.register_allocation_unit;
  int by_registers = d.registers_per_sm / (regs_per_warp * warps);
  std::size_t const smem = dynamic_shared_bytes + d.shared_memory_reserved_per_block;
  int by_shared = static_cast<int>(d.shared_memory_per_sm / smem);
  return std::max(0, std::min({by_threads, by_blocks, by_registers, by_shared}));
}

}  // namespace emu
MOEKIT_NAMESPACE_END
