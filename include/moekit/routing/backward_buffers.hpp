#pragma once
// What the router backward reads and writes, and the checks every entry point applies first:
// the forward's logits [T, E] and ids [T, K], the upstream dL/dweights [T, K], and the output
// dL/dlogits [T, E]. On failure nothing is written and the message names the buffer.

#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/routing/route_buffers.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

template <MemorySpace Space>
struct BackwardBuffers {
  TensorView<float const, 2, Space> logits;       // [T, E], as in the forward
  TensorView<int const, 2, Space> ids;            // [T, K] from the forward
  TensorView<float const, 2, Space> weight_grad;  // [T, K] dL/dweights
  TensorView<float, 2, Space> logit_grad;         // [T, E] out
};

template <class R, MemorySpace Space>
[[nodiscard]] Status check_backward_buffers(R const& router, BackwardBuffers<Space> const& b) {
  if (Status s = router.validate(); !s) {
    return s;
  }
  std::int64_t const t = b.logits.extent(0);
  if (Status s = detail::check_matrix(b.logits, "logits", t, router.num_experts()); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(b.ids, "expert ids", t, router.slots()); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(b.weight_grad, "weight gradient", t, router.slots()); !s) {
    return s;
  }
  return detail::check_matrix(b.logit_grad, "logit gradient", t, router.num_experts());
}

}  // namespace routing
MOEKIT_NAMESPACE_END
