#pragma once
// What a loss balancer reads and writes (ALGORITHMS.md §2.0): logits [T, E] (fp32, experts
// contiguous) and an optional valid-token mask [T] (1 = real token; null = all valid); out come
// the value (lambda included), dL/dlogits [T, E] (lambda included, zero rows for padding), and
// for logging the integer counts c [E], the fractions f [E] and mean scores P [E]. Any output
// pointer except `value` may be null when the caller does not want it.
// `valid_entries` says how many entries `valid` points to, so that a mask of the wrong length is
// an error instead of a silent out-of-bounds read (a raw pointer cannot say it; ALGORITHMS.md
// §2.3 has such an error). -1 (the default) means "as many as the loss expects" and is unchecked.

#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/tensor_view.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

template <MemorySpace Space>
struct LossInputs {
  TensorView<float const, 2, Space> logits;  // [T, E]
  std::uint8_t const* valid = nullptr;       // [T], 1 = real token; null = every token valid
  std::int64_t valid_entries = -1;           // entries behind `valid`; -1: unchecked
};

template <MemorySpace Space>
struct LossOutputs {
  float* value = nullptr;            // [1]
  TensorView<float, 2, Space> grad;  // [T, E]; data may be null (no gradient wanted)
  long long* counts = nullptr;       // [E]
  float* f = nullptr;                // [E]
  float* P = nullptr;                // [E]
};

}  // namespace balancing
MOEKIT_NAMESPACE_END
