#pragma once
// The Router concept: what a routing policy provides so that moekit can run it on the host,
// on the CPU executor and inside a kernel. A router written outside the library satisfies it
// and plugs in unchanged (examples/custom_router).
//
// A per-token router (RouterScope::per_token) decides each token from that token's logits alone:
//
//   struct MyRouter {
//     static constexpr moekit::routing::RouterScope scope = moekit::routing::RouterScope::per_token;
//     static constexpr int max_slots = 4;             // compile-time bound on slots()
//     int num_experts() const noexcept;               // E: logits per token, and the empty-slot id
//     int slots() const noexcept;                     // K: (id, weight) slots written per token
//     moekit::Status validate() const;                // host: parameters, with moekit::error(...)
//     MOEKIT_HOST_DEVICE void route_token(std::int64_t token, float const* logits,  // [E]
//                                         int* ids, float* weights) const noexcept; // [K] each
//   };
//
// route_token runs on the host and in device code (one thread per token), so the router is a
// small trivially copyable value: parameters, and device pointers to side inputs it needs
// (a selection bias, per-token masks). Slots it leaves empty get id = E and weight 0.
// A batch-scope router (RouterScope::per_batch: expert choice, Sinkhorn, depth routers) needs
// the whole [T, E] matrix and brings its own host and device entry points; it satisfies
// BatchRouter.

#include <concepts>
#include <cstdint>
#include <type_traits>

#include "moekit/config.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

enum class RouterScope { per_token, per_batch };

template <class R>
concept TokenRouter = std::is_trivially_copyable_v<R> &&
    requires(R const& r, std::int64_t token, float const* logits, int* ids, float* weights) {
  { R::scope } -> std::convertible_to<RouterScope>;
  requires R::scope == RouterScope::per_token;
  { R::max_slots } -> std::convertible_to<int>;
  { r.num_experts() }
  noexcept->std::same_as<int>;
  { r.slots() }
  noexcept->std::same_as<int>;
  { r.validate() } -> std::same_as<Status>;
  { r.route_token(token, logits, ids, weights) }
  noexcept;
};

template <class R>
concept BatchRouter = requires(R const& r) {
  { R::scope } -> std::convertible_to<RouterScope>;
  requires R::scope == RouterScope::per_batch;
  { r.validate() } -> std::same_as<Status>;
};

template <class R>
concept Router = TokenRouter<R> || BatchRouter<R>;

namespace detail {
template <class R>
concept has_scope = requires {
  R::scope;
};
template <class R>
concept has_max_slots = requires {
  R::max_slots;
};
template <class R>
concept has_num_experts = requires(R const& r) {
  { r.num_experts() }
  noexcept->std::same_as<int>;
};
template <class R>
concept has_slots = requires(R const& r) {
  { r.slots() }
  noexcept->std::same_as<int>;
};
template <class R>
concept has_validate = requires(R const& r) {
  { r.validate() } -> std::same_as<Status>;
};
template <class R>
concept has_route_token = requires(R const& r, std::int64_t t, float const* l, int* i, float* w) {
  { r.route_token(t, l, i, w) }
  noexcept;
};
}  // namespace detail

// One static_assert per requirement, so a router that misses one is told which, in words.
template <class R>
constexpr bool diagnose_router() {
  static_assert(detail::has_scope<R>, "a Router needs `static constexpr moekit::routing::RouterScope scope`");
  static_assert(detail::has_validate<R>, "a Router needs `moekit::Status validate() const`");
  if constexpr (detail::has_scope<R>) {
    if constexpr (R::scope == RouterScope::per_token) {
      static_assert(detail::has_max_slots<R>, "a per-token Router needs `static constexpr int max_slots`");
      static_assert(detail::has_num_experts<R>, "a per-token Router needs `int num_experts() const noexcept`");
      static_assert(detail::has_slots<R>, "a per-token Router needs `int slots() const noexcept`");
      static_assert(detail::has_route_token<R>,
                    "a per-token Router needs `MOEKIT_HOST_DEVICE void route_token(std::int64_t token, float const* "
                    "logits, int* ids, float* weights) const noexcept`");
      static_assert(std::is_trivially_copyable_v<R>,
                    "a per-token Router is passed to kernels by value: make it trivially copyable (hold device "
                    "pointers, not containers)");
    }
  }
  return true;
}

}  // namespace routing
MOEKIT_NAMESPACE_END
