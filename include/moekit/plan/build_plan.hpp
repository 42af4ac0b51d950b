#pragma once
// Building the dispatch plan on the device, deterministically: the assignments are cut into
// chunks of a FIXED size (256, one warp each), never into per-block ranges, so nothing depends
// on the grid size or the schedule.
//   1. count:   each warp counts its chunk's assignments per expert (integer atomics on the
//               chunk's own row of a [chunks, E] table);
//   2. scan:    one block turns the table into each chunk's starting rank inside each expert
//               (a column scan in chunk order), the experts' totals, capacity, padded offsets
//               (BlockScan over experts) and the tile list;
//   3. scatter: each warp walks its chunk in order, 32 assignments at a time; lanes that hold
//               the same expert find each other with match_any_sync and take consecutive ranks
//               in lane order, so every expert's rows come out in (token, slot) order.
// The same chunked counting sort CUB's radix sort uses, written with arch/ primitives so that
// it runs under the emulator too. Three launches, no host synchronisation, no allocation.

#include <cstdint>

#include "moekit/arch/arch.hpp"
#include "moekit/config.hpp"
#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/core/workspace.hpp"
#include "moekit/plan/dispatch_plan.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace plan {

inline constexpr int plan_chunk = 256;  // assignments per chunk: one warp, 8 per lane
inline constexpr int plan_warps_per_block = 4;
inline constexpr int plan_chunk_block_threads = plan_warps_per_block * 32;
inline constexpr int plan_scan_threads = 256;

[[nodiscard]] constexpr std::int64_t plan_chunks(PlanProblem const& p) noexcept {
  return (assignments(p) + plan_chunk - 1) / plan_chunk;
}

struct PlanWorkspace {
  int* chunk_counts = nullptr;        // [chunks, E]
  long long* chunk_cursor = nullptr;  // [chunks, E]: next rank of each expert inside each chunk
};

// The one carving routine behind both the size query and the run.
inline PlanWorkspace carve_plan_workspace(PlanProblem const& p, Workspace& w) noexcept {
  std::int64_t const cells = plan_chunks(p) * p.experts;
  PlanWorkspace pw;
  pw.chunk_counts = w.take<int>(cells, "plan chunk counts");
  pw.chunk_cursor = w.take<long long>(cells, "plan chunk cursors");
  return pw;
}

[[nodiscard]] inline std::size_t plan_workspace_size(PlanProblem const& p) noexcept {
  Workspace counting;
  carve_plan_workspace(p, counting);
  return counting.bytes_used();
}

MOEKIT_ARCH_NAMESPACE_BEGIN

struct PlanIds {
  int const* ids;
  std::int64_t stride;  // elements between tokens
  std::int64_t tokens;
  int slots;
  int experts;
  MOEKIT_HOST_DEVICE int operator()(std::int64_t a) const noexcept { return ids[a / slots * stride + a % slots]; }
  [[nodiscard]] MOEKIT_HOST_DEVICE std::int64_t assignments() const noexcept { return tokens * slots; }
};

// The kernels are templates (on the chunk size, always plan_chunk) so that a header defining them
// can be included by several translation units: nvcc ignores `inline` on __global__ functions.
// Each kernel's body is a phase too (the fused layer kernel runs them in one launch, between
// grid syncs): the chunk phases take any grid of plan_chunk_block_threads-thread blocks, the scan
// phase one block of Threads threads.
template <int Chunk>
MOEKIT_DEVICE void plan_count_phase(PlanIds const& ids, std::int64_t chunks, int* chunk_counts,
                                    Diagnostics* diagnostics) {
  unsigned const lane = arch::lane_id();
  std::int64_t const warps = std::int64_t{arch::grid_dim().x} * plan_warps_per_block;
  unsigned long long empty = 0, invalid = 0;
  for (std::int64_t c = std::int64_t{arch::block_rank()} * plan_warps_per_block + arch::warp_id(); c < chunks;
       c += warps) {
    int* counts = chunk_counts + c * ids.experts;
    for (int e = static_cast<int>(lane); e < ids.experts; e += 32) {
      counts[e] = 0;
    }
    arch::sync_warp();
    for (std::int64_t a = c * Chunk + lane; a < (c + 1) * Chunk && a < ids.assignments(); a += 32) {
      int const id = ids(a);
      if (id >= 0 && id < ids.experts) {
        arch::atomic_add(&counts[id], 1);
      } else {
        empty += id == ids.experts ? 1 : 0;
        invalid += id == ids.experts ? 0 : 1;
      }
    }
  }
  if (empty != 0) {
    arch::atomic_add(&diagnostics->empty_slots, empty);
  }
  if (invalid != 0) {
    arch::atomic_add(&diagnostics->invalid_ids, invalid);
  }
}

template <int Chunk>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(plan_chunk_block_threads, 1)
    plan_count_kernel(PlanIds ids, std::int64_t chunks, int* chunk_counts, Diagnostics* diagnostics) {
  plan_count_phase<Chunk>(ids, chunks, chunk_counts, diagnostics);
}

template <int Threads>
struct PlanScanStorageOf {
  typename arch::BlockScan<long long, Threads>::TempStorage rows;
  typename arch::BlockScan<long long, Threads>::TempStorage tiles;
};
using PlanScanStorage = PlanScanStorageOf<plan_scan_threads>;

struct PlanScanArgs {
  std::int64_t chunks;
  int experts;
  long long capacity;  // >= 1 (unlimited resolved to T * K)
  int tile_rows;
  int const* chunk_counts;
  long long* chunk_cursor;
  std::int64_t* expert_counts;
  std::int64_t* expert_offsets;
  std::int64_t* row_assignment;
  int* tile_expert;
  std::int64_t* tile_row;
  std::int64_t* num_rows;
  std::int64_t* num_tiles;
  Diagnostics* diagnostics;
};

template <int Chunk, int Threads>
MOEKIT_DEVICE void plan_scan_phase(PlanScanArgs const& a) {
  auto& smem = arch::shared_storage<PlanScanStorageOf<Threads>>();
  long long row_carry = 0, tile_carry = 0;
  for (int base = 0; base < a.experts; base += Threads) {
    int const e = base + static_cast<int>(arch::thread_rank());
    long long total = 0;
    if (e < a.experts) {
      for (std::int64_t c = 0; c < a.chunks; ++c) {
        a.chunk_cursor[c * a.experts + e] = total;
        total += a.chunk_counts[c * a.experts + e];
      }
    }
    long long const kept = total < a.capacity ? total : a.capacity;
    long long const padded = (kept + a.tile_rows - 1) / a.tile_rows * a.tile_rows;
    long long row_offset = 0, rows_here = 0, tile_offset = 0, tiles_here = 0;
    arch::BlockScan<long long, Threads>(smem.rows).exclusive_sum(padded, row_offset, rows_here);
    arch::BlockScan<long long, Threads>(smem.tiles).exclusive_sum(padded / a.tile_rows, tile_offset, tiles_here);
    if (e < a.experts) {
      long long const first_row = row_carry + row_offset;
      a.expert_counts[e] = total;
      a.expert_offsets[e] = first_row;
      for (long long r = kept; r < padded; ++r) {
        a.row_assignment[first_row + r] = -1;
      }
      for (long long i = 0; i < padded / a.tile_rows; ++i) {
        a.tile_expert[tile_carry + tile_offset + i] = e;
        a.tile_row[tile_carry + tile_offset + i] = first_row + i * a.tile_rows;
      }
      if (total > kept) {
        arch::atomic_add(&a.diagnostics->dropped_assignments, static_cast<unsigned long long>(total - kept));
      }
      if (total == 0) {
        arch::atomic_add(&a.diagnostics->empty_experts, 1ull);
      }
      arch::atomic_max(&a.diagnostics->max_load, static_cast<unsigned long long>(total));
    }
    row_carry += rows_here;
    tile_carry += tiles_here;
    arch::sync_threads();  // the scans' storage is reused by the next round
  }
  if (arch::thread_rank() == 0) {
    a.expert_offsets[a.experts] = row_carry;
    *a.num_rows = row_carry;
    *a.num_tiles = tile_carry;
  }
}

template <int Chunk>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(plan_scan_threads, 1) plan_scan_kernel(PlanScanArgs a) {
  plan_scan_phase<Chunk, plan_scan_threads>(a);
}

template <int Chunk>
MOEKIT_DEVICE void plan_scatter_phase(PlanIds const& ids, std::int64_t chunks, long long* chunk_cursor,
                                      std::int64_t const* expert_offsets, long long capacity,
                                      std::int64_t* row_assignment, std::int64_t* assignment_row) {
  unsigned const lane = arch::lane_id();
  unsigned const lanes_below = (1u << lane) - 1u;
  std::int64_t const warps = std::int64_t{arch::grid_dim().x} * plan_warps_per_block;
  for (std::int64_t c = std::int64_t{arch::block_rank()} * plan_warps_per_block + arch::warp_id(); c < chunks;
       c += warps) {
    long long* cursor = chunk_cursor + c * ids.experts;
    for (std::int64_t group = c * Chunk; group < (c + 1) * Chunk && group < ids.assignments(); group += 32) {
      std::int64_t const a = group + lane;
      int const id = a < ids.assignments() ? ids(a) : -1;
      bool const routed = id >= 0 && id < ids.experts;
      // Lanes without an expert get a key no other lane has, so they match only themselves.
      int const key = routed ? id : -1 - static_cast<int>(lane);
      unsigned const peers = arch::match_any_sync(arch::full_warp_mask, key);
      int const rank_in_group = arch::popc(peers & lanes_below);
      long long const rank = routed ? cursor[id] + rank_in_group : 0;
      arch::sync_warp();
      if (routed && rank_in_group == 0) {
        cursor[id] += arch::popc(peers);
      }
      arch::sync_warp();
      if (a < ids.assignments()) {
        std::int64_t row = -1;
        if (routed && rank < capacity) {
          row = expert_offsets[id] + rank;
          row_assignment[row] = a;
        }
        assignment_row[a] = row;
      }
    }
  }
}

template <int Chunk>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(plan_chunk_block_threads, 1)
    plan_scatter_kernel(PlanIds ids, std::int64_t chunks, long long* chunk_cursor, std::int64_t const* expert_offsets,
                        long long capacity, std::int64_t* row_assignment, std::int64_t* assignment_row) {
  plan_scatter_phase<Chunk>(ids, chunks, chunk_cursor, expert_offsets, capacity, row_assignment, assignment_row);
}

// The scan phase's arguments for problem `p` over the carved scratch `w` and the outputs `out`.
[[nodiscard]] inline PlanScanArgs scan_args(PlanProblem const& p, PlanWorkspace const& w,
                                            DispatchPlan<MemorySpace::device> const& out,
                                            Diagnostics* diagnostics) noexcept {
  return PlanScanArgs{plan_chunks(p),
                      p.experts,
                      p.capacity == unlimited_capacity ? (assignments(p) > 0 ? assignments(p) : 1) : p.capacity,
                      p.tile_rows,
                      w.chunk_counts,
                      w.chunk_cursor,
                      out.expert_counts,
                      out.expert_offsets,
                      out.row_assignment,
                      out.tile_expert,
                      out.tile_row,
                      out.num_rows,
                      out.num_tiles,
                      diagnostics};
}

// Builds the plan of `ids` [T, K] (device memory) into `out`, adding to `diagnostics`.
// `workspace` holds plan_workspace_size(p) bytes of device memory. `max_blocks` (0: one warp
// per chunk) caps the grid of the chunk kernels; the plan is identical for any value.
[[nodiscard]] inline Status build_plan(PlanProblem const& p, DeviceTensor<int const, 2> const& ids,
                                       DispatchPlan<MemorySpace::device> const& out, Diagnostics* diagnostics,
                                       Workspace& workspace, arch::Stream stream, unsigned max_blocks = 0) {
  if (Status s = check_plan_buffers(p, ids, out); !s) {
    return s;
  }
  if (diagnostics == nullptr) {
    return error(Status::invalid_argument, "plan: diagnostics must point to device memory");
  }
  PlanWorkspace const w = carve_plan_workspace(p, workspace);
  if (Status s = workspace.status(); !s) {
    return error(s, "plan: workspace: buffer '%s' needs %zu bytes, %zu left (plan_workspace_size = %zu)",
                 workspace.failed_buffer(), workspace.failed_bytes(), workspace.bytes_left_at_failure(),
                 plan_workspace_size(p));
  }
  std::int64_t const chunks = plan_chunks(p);
  PlanIds const view{ids.data, ids.stride(0), p.tokens, p.slots, p.experts};
  std::int64_t blocks = (chunks + plan_warps_per_block - 1) / plan_warps_per_block;
  blocks = blocks > 65535 ? 65535 : (blocks < 1 ? 1 : blocks);
  if (max_blocks != 0 && blocks > max_blocks) {
    blocks = max_blocks;
  }
  arch::KernelLaunch const chunk_launch{.grid = static_cast<unsigned>(blocks), .block = plan_chunk_block_threads};
  if (chunks > 0) {
    if (Status s = arch::launch(plan_count_kernel<plan_chunk>, chunk_launch, stream, view, chunks, w.chunk_counts,
                                diagnostics);
        !s) {
      return s;
    }
  }
  PlanScanArgs const scan = scan_args(p, w, out, diagnostics);
  arch::KernelLaunch const scan_launch{
      .grid = 1, .block = plan_scan_threads, .dynamic_shared_bytes = sizeof(PlanScanStorage)};
  if (Status s = arch::launch(plan_scan_kernel<plan_chunk>, scan_launch, stream, scan); !s) {
    return s;
  }
  if (chunks == 0) {
    return Status::ok;
  }
  return arch::launch(plan_scatter_kernel<plan_chunk>, chunk_launch, stream, view, chunks, w.chunk_cursor,
                      out.expert_offsets, scan.capacity, out.row_assignment, out.assignment_row);
}

MOEKIT_ARCH_NAMESPACE_END
}  // namespace plan
MOEKIT_NAMESPACE_END
