#pragma once
// Which expert ids run a GEMM. A layer's ids are numbered (ALGORITHMS.md §0):
//   [0, computed)                               experts with weights (the GEMM runs)
//   [computed, computed + zero)                 zero experts: output 0, never dispatched
//                                               (AdaMoE's null experts, vLLM's zero experts)
//   [computed + zero, computed + zero + identity) identity experts: output x (vLLM's "copy"
//                                               zero-computation experts)
//   computed + zero + identity = E              the empty-slot sentinel
// The plan is built over all E ids, so loads of zero and identity experts are counted like any
// other; the GEMMs skip their tiles and the combine adds w·x for an identity expert.

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace experts {

enum class ExpertKind { computed, zero, identity, empty };

struct ExpertTable {
  int computed = 0;  // experts with weights
  int zero = 0;      // zero / null experts after them
  int identity = 0;  // identity experts after those

  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr int num_experts() const noexcept { return computed + zero + identity; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr ExpertKind kind(int id) const noexcept {
    if (id >= 0 && id < computed) {
      return ExpertKind::computed;
    }
    if (id >= computed && id < computed + zero) {
      return ExpertKind::zero;
    }
    if (id >= computed + zero && id < num_experts()) {
      return ExpertKind::identity;
    }
    return ExpertKind::empty;  // the sentinel E (ids outside [0, E] are rejected or counted before)
  }
  [[nodiscard]] Status validate() const {
    if (computed < 0 || zero < 0 || identity < 0 || computed > (1 << 24) - zero - identity) {
      return error(Status::invalid_argument, "expert table: counts must be >= 0 (computed %d, zero %d, identity %d)",
                   computed, zero, identity);
    }
    if (num_experts() < 1) {
      return error(Status::invalid_argument, "expert table: no experts (computed, zero and identity are all 0)");
    }
    return Status::ok;
  }
};

// Only experts with weights.
[[nodiscard]] constexpr ExpertTable all_computed(int experts) noexcept { return ExpertTable{experts, 0, 0}; }

}  // namespace experts
MOEKIT_NAMESPACE_END
