#pragma once
// Running a per-token router on the CPU, in checked mode: NaN/+inf logits and fully masked
// rows are refused with a message naming the token and expert, before any output is written.
// The router's own route_token does the work, the same code the device runs per thread.

#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/status.hpp"
#include "moekit/routing/checked_logits.hpp"
#include "moekit/routing/concept.hpp"
#include "moekit/routing/route_buffers.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace cpu {

template <routing::TokenRouter R>
[[nodiscard]] Status route(R const& router, routing::RouteBuffers<MemorySpace::host> const& b) {
  if (Status s = routing::check_route_buffers(router, b); !s) {
    return s;
  }
  if (Status s = routing::check_logits_finite(b.logits); !s) {
    return s;
  }
  int const experts = router.num_experts();
  int const slots = router.slots();
  for (std::int64_t t = 0; t < b.logits.extent(0); ++t) {
    int* id = &b.ids(t, 0);
    float* w = &b.weights(t, 0);
    for (int j = 0; j < slots; ++j) {
      id[j] = experts;
      w[j] = 0.f;
    }
    router.route_token(t, &b.logits(t, 0), id, w);
  }
  return Status::ok;
}

}  // namespace cpu
MOEKIT_NAMESPACE_END
