// Must NOT compile: a per-token router is passed to kernels by value, so it cannot own a vector.
#include <cstdint>
#include <vector>

#include "moekit/routing/concept.hpp"

struct HoldsVector {
  static constexpr moekit::routing::RouterScope scope = moekit::routing::RouterScope::per_token;
  static constexpr int max_slots = 1;
  std::vector<float> bias;
  int num_experts() const noexcept { return 4; }
  int slots() const noexcept { return 1; }
  moekit::Status validate() const { return moekit::Status::ok; }
  void route_token(std::int64_t, float const*, int* ids, float* weights) const noexcept {
    ids[0] = 0, weights[0] = 1.f;
  }
};
static_assert(moekit::routing::diagnose_router<HoldsVector>());
