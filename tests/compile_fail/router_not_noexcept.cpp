// Must NOT compile: route_token is not noexcept. The diagnostic must say so in words.
#include <cstdint>

#include "moekit/routing/concept.hpp"

struct NotNoexcept {
  static constexpr moekit::routing::RouterScope scope = moekit::routing::RouterScope::per_token;
  static constexpr int max_slots = 1;
  int num_experts() const noexcept { return 4; }
  int slots() const noexcept { return 1; }
  moekit::Status validate() const { return moekit::Status::ok; }
  void route_token(std::int64_t, float const*, int* ids, float* weights) const { ids[0] = 0, weights[0] = 1.f; }
};
static_assert(moekit::routing::diagnose_router<NotNoexcept>());
