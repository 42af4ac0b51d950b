#pragma once
// Building the dispatch plan on the CPU: one counting pass, one prefix sum over experts, one
// stable scatter pass — O(T·K + E) and no allocation (the scatter's per-expert cursor is
// expert_counts itself, counted up again from zero). Same result as the device plan.

#include <algorithm>
#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/diagnostics.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/plan/dispatch_plan.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace cpu {

[[nodiscard]] inline Status build_plan(plan::PlanProblem const& p, HostTensor<int const, 2> const& ids,
                                       plan::DispatchPlan<MemorySpace::host> const& out, Diagnostics& diagnostics) {
  if (Status s = plan::check_plan_buffers(p, ids, out); !s) {
    return s;
  }
  std::int64_t const cap = p.capacity == plan::unlimited_capacity ? assignments(p) : p.capacity;
  std::fill(out.expert_counts, out.expert_counts + p.experts, std::int64_t{0});
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    for (int s = 0; s < p.slots; ++s) {
      int const id = ids(t, s);
      if (id >= 0 && id < p.experts) {
        ++out.expert_counts[id];
      } else {
        diagnostics.empty_slots += id == p.experts ? 1 : 0;
        diagnostics.invalid_ids += id == p.experts ? 0 : 1;
      }
    }
  }
  std::int64_t row = 0, tiles = 0;
  for (int e = 0; e < p.experts; ++e) {
    std::int64_t const count = out.expert_counts[e];
    std::int64_t const kept = std::min<std::int64_t>(count, cap);
    std::int64_t const padded = (kept + p.tile_rows - 1) / p.tile_rows * p.tile_rows;
    diagnostics.dropped_assignments += static_cast<unsigned long long>(count - kept);
    diagnostics.empty_experts += count == 0 ? 1 : 0;
    diagnostics.max_load = std::max<unsigned long long>(diagnostics.max_load, static_cast<unsigned long long>(count));
    out.expert_offsets[e] = row;
    std::fill(out.row_assignment + row + kept, out.row_assignment + row + padded, std::int64_t{-1});
    for (std::int64_t r = 0; r < padded; r += p.tile_rows) {
      out.tile_expert[tiles] = e;
      out.tile_row[tiles++] = row + r;
    }
    row += padded;
  }
  out.expert_offsets[p.experts] = row;
  *out.num_rows = row;
  *out.num_tiles = tiles;
  // Stable scatter: tokens in order; expert_counts[e] counts e's assignments seen so far and
  // ends at its total again.
  std::fill(out.expert_counts, out.expert_counts + p.experts, std::int64_t{0});
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    for (int s = 0; s < p.slots; ++s) {
      std::int64_t const a = t * p.slots + s;
      int const id = ids(t, s);
      out.assignment_row[a] = -1;
      if (id < 0 || id >= p.experts) {
        continue;
      }
      std::int64_t const r = out.expert_counts[id]++;
      if (r < cap) {
        out.row_assignment[out.expert_offsets[id] + r] = a;
        out.assignment_row[a] = out.expert_offsets[id] + r;
      }
    }
  }
  return Status::ok;
}

}  // namespace cpu
MOEKIT_NAMESPACE_END
