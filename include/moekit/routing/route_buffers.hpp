#pragma once
// The buffers a per-token router reads and writes, and the checks every entry point applies
// before touching them: logits [T, E] (experts contiguous), ids and weights [T, K]. On any
// failure nothing is written and the message names the buffer and the sizes involved.

#include <concepts>
#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/routing/concept.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

template <MemorySpace Space>
struct RouteBuffers {
  TensorView<float const, 2, Space> logits;  // [T, E]
  TensorView<int, 2, Space> ids;             // [T, K]; empty slots get E
  TensorView<float, 2, Space> weights;       // [T, K]; empty slots get 0
};

namespace detail {
template <class View>
Status check_matrix(View const& v, char const* name, std::int64_t rows, std::int64_t cols) {
  if (!v.validate()) {
    return error(Status::invalid_argument, "%s: null pointer or negative extent/stride", name);
  }
  if (v.extent(0) != rows || v.extent(1) != cols) {
    return error(Status::invalid_argument, "%s: expected [%lld, %lld], got [%lld, %lld]", name,
                 static_cast<long long>(rows), static_cast<long long>(cols), static_cast<long long>(v.extent(0)),
                 static_cast<long long>(v.extent(1)));
  }
  if (rows > 0 && cols > 1 && v.stride(1) != 1) {
    return error(Status::invalid_argument, "%s: the last dimension must be contiguous (stride %lld)", name,
                 static_cast<long long>(v.stride(1)));
  }
  if (rows > 1 && v.stride(0) < cols) {
    return error(Status::invalid_argument, "%s: rows overlap (row stride %lld < %lld columns)", name,
                 static_cast<long long>(v.stride(0)), static_cast<long long>(cols));
  }
  if (!v.is_aligned(alignof(typename View::element_type))) {
    return error(Status::misaligned, "%s: pointer not aligned to %zu bytes", name,
                 alignof(typename View::element_type));
  }
  return Status::ok;
}
}  // namespace detail

// Router parameters, then every buffer: the checks shared by the host, CPU and device paths.
template <TokenRouter R, MemorySpace Space>
[[nodiscard]] Status check_route_buffers(R const& router, RouteBuffers<Space> const& b) {
  if (Status s = router.validate(); !s) {
    return s;
  }
  std::int64_t const tokens = b.logits.extent(0);
  if (tokens < 0) {
    return error(Status::invalid_argument, "logits: negative token count %lld", static_cast<long long>(tokens));
  }
  if (Status s = detail::check_matrix(b.logits, "logits", tokens, router.num_experts()); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(b.ids, "expert ids", tokens, router.slots()); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(b.weights, "weights", tokens, router.slots()); !s) {
    return s;
  }
  // A router with per-token side inputs (masks, keep-logits) checks they cover the T tokens.
  if constexpr (requires {
                  { router.validate_inputs(tokens) } -> std::same_as<Status>;
                }) {
    return router.validate_inputs(tokens);
  }
  return Status::ok;
}

}  // namespace routing
MOEKIT_NAMESPACE_END
