// The dispatch plan's kernels compiled by nvcc for every architecture (resource report).
#include "moekit/plan/build_plan.hpp"

namespace moekit::plan {
// Referencing the kernels makes nvcc emit them; the host stub is never called.
void* const dispatch_plan_kernels[] = {reinterpret_cast<void*>(&plan_count_kernel<plan_chunk>),
                                       reinterpret_cast<void*>(&plan_scan_kernel<plan_chunk>),
                                       reinterpret_cast<void*>(&plan_scatter_kernel<plan_chunk>)};
}  // namespace moekit::plan
