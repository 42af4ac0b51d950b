// The gate projection kernels compiled by nvcc for every architecture, one per input dtype pair:
// the resource report (registers, spills, stack) comes from here.
#include "moekit/core/float16.hpp"
#include "moekit/routing/gate_projection.hpp"

namespace moekit::routing {
template __global__ void gate_projection_kernel<float, float>(float const*, std::int64_t, float const*, std::int64_t,
                                                              float const*, std::int64_t, std::int64_t, int, float*,
                                                              std::int64_t);
template __global__ void gate_projection_kernel<bf16_t, bf16_t>(bf16_t const*, std::int64_t, bf16_t const*,
                                                                std::int64_t, float const*, std::int64_t, std::int64_t,
                                                                int, float*, std::int64_t);
template __global__ void gate_projection_kernel<bf16_t, float>(bf16_t const*, std::int64_t, float const*, std::int64_t,
                                                               float const*, std::int64_t, std::int64_t, int, float*,
                                                               std::int64_t);
template __global__ void gate_projection_kernel<float, bf16_t>(float const*, std::int64_t, bf16_t const*, std::int64_t,
                                                               float const*, std::int64_t, std::int64_t, int, float*,
                                                               std::int64_t);
}  // namespace moekit::routing
