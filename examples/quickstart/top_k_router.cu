// nvcc instantiations of the quickstart's router kernel, for the resource report.
#include "top_k_router_kernel.hpp"

template __global__ void quickstart::top_k_router_kernel<2>(float const*, std::int64_t, int, int*, float*);
template __global__ void quickstart::top_k_router_kernel<8>(float const*, std::int64_t, int, int*, float*);
