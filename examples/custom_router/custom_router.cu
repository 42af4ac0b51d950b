// The user's router in a real CUDA build: moekit's route kernel instantiated for it.
#include "temperature_router.hpp"

#include "moekit/routing/route.hpp"

template __global__ void
moekit::routing::route_tokens_kernel<my_project::TemperatureTopK<2>>(my_project::TemperatureTopK<2>, float const*,
                                                                     std::int64_t, std::int64_t, int*, float*,
                                                                     std::int64_t, moekit::Diagnostics*);
