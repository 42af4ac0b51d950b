#pragma once
// The oracle for the dispatch plan: the definition in plan/dispatch_plan.hpp written as the
// plainest loops (one pass over all assignments per expert), independent of the CPU and device
// builders. Fills Diagnostics (dropped, invalid ids, empty slots, empty experts, max load).

#include <algorithm>
#include <cstdint>
#include <vector>

#include "moekit/config.hpp"
#include "moekit/core/diagnostics.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/plan/dispatch_plan.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace host {

[[nodiscard]] inline Status reference_plan(plan::PlanProblem const& p, HostTensor<int const, 2> const& ids,
                                           plan::DispatchPlan<MemorySpace::host> const& out, Diagnostics& diagnostics) {
  if (Status s = plan::check_plan_buffers(p, ids, out); !s) {
    return s;
  }
  std::int64_t const cap = p.capacity == plan::unlimited_capacity ? assignments(p) : p.capacity;
  for (std::int64_t t = 0; t < p.tokens; ++t) {
    for (int s = 0; s < p.slots; ++s) {
      int const id = ids(t, s);
      diagnostics.empty_slots += id == p.experts ? 1 : 0;
      diagnostics.invalid_ids += (id < 0 || id > p.experts) ? 1 : 0;
      out.assignment_row[t * p.slots + s] = -1;
    }
  }
  std::int64_t row = 0, tiles = 0;
  for (int e = 0; e < p.experts; ++e) {
    out.expert_offsets[e] = row;
    std::int64_t count = 0;
    for (std::int64_t t = 0; t < p.tokens; ++t) {
      for (int s = 0; s < p.slots; ++s) {
        if (ids(t, s) != e) {
          continue;
        }
        if (count < cap) {
          out.row_assignment[row + count] = t * p.slots + s;
          out.assignment_row[t * p.slots + s] = row + count;
        } else {
          ++diagnostics.dropped_assignments;
        }
        ++count;
      }
    }
    out.expert_counts[e] = count;
    diagnostics.empty_experts += count == 0 ? 1 : 0;
    diagnostics.max_load = std::max<unsigned long long>(diagnostics.max_load, static_cast<unsigned long long>(count));
    std::int64_t const kept = std::min<std::int64_t>(count, cap);
    std::int64_t const padded = (kept + p.tile_rows - 1) / p.tile_rows * p.tile_rows;
    for (std::int64_t r = kept; r < padded; ++r) {
      out.row_assignment[row + r] = -1;
    }
    for (std::int64_t r = 0; r < padded; r += p.tile_rows) {
      out.tile_expert[tiles] = e;
      out.tile_row[tiles] = row + r;
      ++tiles;
    }
    row += padded;
  }
  out.expert_offsets[p.experts] = row;
  *out.num_rows = row;
  *out.num_tiles = tiles;
  return Status::ok;
}

}  // namespace host
MOEKIT_NAMESPACE_END
