#pragma once
// Diagnostics: what went wrong on the device path, counted where the caller can read it.
// Kernels cannot return a Status without a host synchronisation (ALGORITHMS.md §0), so the
// routing and plan kernels count non-finite logit rows, dropped assignments, out-of-range ids,
// empty experts and the largest expert load here. The caller zeroes it (or lets the plan do
// so) and reads it whenever it likes; nothing is dropped without a count.

#include <cstdint>

#include "moekit/config.hpp"

MOEKIT_NAMESPACE_BEGIN

struct Diagnostics {
  // Routing: token rows with a NaN or +inf logit, or with every logit -inf. Such a token
  // routes to the sentinel id E (weights 0) on the device; the host reports an error instead.
  unsigned long long nonfinite_rows = 0;
  // Plan: (token, slot) assignments beyond their expert's capacity, left out of the plan.
  unsigned long long dropped_assignments = 0;
  // Plan: ids outside [0, E] (E is the empty-slot sentinel and is not counted here).
  unsigned long long invalid_ids = 0;
  // Plan: empty slots (id = E) seen, e.g. from null-expert or top-any routers.
  unsigned long long empty_slots = 0;
  // Plan: experts that received no assignment, and the largest number any expert received
  // (router demand, before capacity).
  unsigned long long empty_experts = 0;
  unsigned long long max_load = 0;
};

MOEKIT_NAMESPACE_END
