// Must NOT compile: a balancer without its kind.
#include "moekit/balancing/concept.hpp"

struct NoKind {
  moekit::Status validate(int) const { return moekit::Status::ok; }
};
static_assert(moekit::balancing::diagnose_balancer<NoKind>());
