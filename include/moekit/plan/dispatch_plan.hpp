#pragma once
// The dispatch plan: where each (token, slot) assignment of a router goes in the grouped GEMM.
//
// Rows of the permuted layout are grouped by expert (ascending); inside an expert they keep
// token order (then slot order): a stable permutation, so results never depend on scheduling.
// Each expert keeps at most `capacity` assignments — the earliest in (token, slot) order; the
// rest are dropped, marked -1 in assignment_row and counted in Diagnostics (the drop rule of
// Switch/HF, Megatron's "position" policy). Each expert's block of rows is padded to a multiple
// of tile_rows, and one tile per tile_rows rows is listed for the grouped GEMM. Padding rows
// carry row_assignment = -1. Empty slots (id = E) are skipped; ids outside [0, E] are counted
// as invalid and skipped. Offsets are 64-bit.
//
// Output sizes depend only on the problem (T, K, E, tile_rows), never on the routing, so the
// buffers can be allocated once for the largest batch and the plan captured in a CUDA graph:
// rows <= max_rows(p), tiles <= max_tiles(p); num_rows / num_tiles say how many are used.

#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace plan {

inline constexpr std::int64_t unlimited_capacity = -1;

struct PlanProblem {
  std::int64_t tokens = 0;                     // T
  int slots = 0;                               // K: assignments per token
  int experts = 0;                             // E: ids in [0, E); E marks an empty slot
  std::int64_t capacity = unlimited_capacity;  // per expert; >= 1, or unlimited
  int tile_rows = 1;                           // rows per grouped-GEMM tile
};

inline constexpr int max_tile_rows = 4096;

[[nodiscard]] constexpr std::int64_t assignments(PlanProblem const& p) noexcept { return p.tokens * p.slots; }
// (0 for an invalid problem, so that sizing a buffer never divides by zero.)
[[nodiscard]] constexpr std::int64_t max_rows(PlanProblem const& p) noexcept {
  return p.tile_rows < 1 || p.experts < 0 ? 0 : assignments(p) + std::int64_t{p.experts} * (p.tile_rows - 1);
}
[[nodiscard]] constexpr std::int64_t max_tiles(PlanProblem const& p) noexcept {
  return p.tile_rows < 1 || p.experts < 0 ? 0 : (assignments(p) + p.tile_rows - 1) / p.tile_rows + p.experts;
}

// Capacity from a capacity factor (GShard/Switch): ceil(factor * T * K / E), computed in
// double with a 1e-9 guard so that e.g. 1.25 * 8 / 10 gives exactly 1, at least 1.
[[nodiscard]] inline Status capacity_from_factor(double factor, std::int64_t tokens, int slots, int experts,
                                                 std::int64_t& capacity) {
  if (!(factor > 0.0) || factor > 1e6) {
    return error(Status::invalid_argument, "plan: capacity_factor must be in (0, 1e6] (got %g)", factor);
  }
  if (tokens < 0 || slots < 1 || experts < 1) {
    return error(Status::invalid_argument, "plan: capacity_from_factor needs T >= 0, K >= 1, E >= 1");
  }
  double const c = factor * double(tokens) * double(slots) / double(experts);
  auto n = static_cast<std::int64_t>(c - 1e-9);
  n += double(n) < c - 1e-9 ? 1 : 0;
  capacity = n < 1 ? 1 : n;
  return Status::ok;
}

[[nodiscard]] inline Status validate(PlanProblem const& p) {
  if (p.tokens < 0) {
    return error(Status::invalid_argument, "plan: negative token count %lld", static_cast<long long>(p.tokens));
  }
  if (p.slots < 1) {
    return error(Status::invalid_argument, "plan: slots per token must be >= 1 (got %d)", p.slots);
  }
  if (p.experts < 1) {
    return error(Status::invalid_argument, "plan: experts must be >= 1 (got %d)", p.experts);
  }
  if (p.capacity == 0 || p.capacity < unlimited_capacity) {
    return error(Status::invalid_argument,
                 "plan: capacity must be >= 1 or unlimited (got %lld; capacity 0 would drop every assignment)",
                 static_cast<long long>(p.capacity));
  }
  if (p.tile_rows < 1 || p.tile_rows > max_tile_rows) {
    return error(Status::invalid_argument, "plan: tile_rows must be in [1, %d] (got %d)", max_tile_rows, p.tile_rows);
  }
  return Status::ok;
}

// The plan's outputs, caller-owned (device memory for the device path, host memory otherwise).
template <MemorySpace Space>
struct DispatchPlan {
  std::int64_t* expert_counts = nullptr;   // [E] assignments routed to each expert (demand, before capacity)
  std::int64_t* expert_offsets = nullptr;  // [E + 1] first row of each expert's block; [E] = num_rows
  std::int64_t* row_assignment = nullptr;  // [max_rows] t * K + slot of each row; -1 for padding
  std::int64_t* assignment_row = nullptr;  // [T * K] row of each (token, slot); -1 if dropped or empty
  int* tile_expert = nullptr;              // [max_tiles] expert of each tile
  std::int64_t* tile_row = nullptr;        // [max_tiles] first row of each tile
  std::int64_t* num_rows = nullptr;        // [1] rows used (padded)
  std::int64_t* num_tiles = nullptr;       // [1] tiles used
};

// The router's ids [T, K] (rows may be strided) and the plan's buffers: shapes and pointers.
template <MemorySpace Space>
[[nodiscard]] Status check_plan_buffers(PlanProblem const& p, TensorView<int const, 2, Space> const& ids,
                                        DispatchPlan<Space> const& out) {
  if (Status s = validate(p); !s) {
    return s;
  }
  if (!ids.validate() || ids.extent(0) != p.tokens || ids.extent(1) != p.slots ||
      (p.tokens > 0 && p.slots > 1 && ids.stride(1) != 1)) {
    return error(Status::invalid_argument, "plan: expert ids must be a [T=%lld, K=%d] view with contiguous slots",
                 static_cast<long long>(p.tokens), p.slots);
  }
  struct Named {
    void const* pointer;
    char const* name;
    std::size_t alignment;
    std::int64_t elements;  // a buffer of 0 elements may be null
  };
  Named const buffers[] = {{out.expert_counts, "expert_counts", alignof(std::int64_t), p.experts},
                           {out.expert_offsets, "expert_offsets", alignof(std::int64_t), p.experts + 1},
                           {out.row_assignment, "row_assignment", alignof(std::int64_t), max_rows(p)},
                           {out.assignment_row, "assignment_row", alignof(std::int64_t), assignments(p)},
                           {out.tile_expert, "tile_expert", alignof(int), max_tiles(p)},
                           {out.tile_row, "tile_row", alignof(std::int64_t), max_tiles(p)},
                           {out.num_rows, "num_rows", alignof(std::int64_t), 1},
                           {out.num_tiles, "num_tiles", alignof(std::int64_t), 1}};
  for (Named const& b : buffers) {
    if (b.pointer == nullptr && b.elements > 0) {
      return error(Status::invalid_argument, "plan: output buffer %s is null", b.name);
    }
    if (reinterpret_cast<std::uintptr_t>(b.pointer) % b.alignment != 0) {
      return error(Status::misaligned, "plan: output buffer %s is not aligned to %zu bytes", b.name, b.alignment);
    }
  }
  if (!ids.is_aligned(alignof(int))) {
    return error(Status::misaligned, "plan: expert ids are not aligned to %zu bytes", alignof(int));
  }
  return Status::ok;
}

}  // namespace plan
MOEKIT_NAMESPACE_END
