#pragma once
// Running a per-token router on the CPU, in checked mode: NaN/+inf logits and fully masked
// rows are refused with a message naming the token and expert, before any output is written.
// Any router runs through its own route_token, the code the device runs per thread. The
// production routers have faster paths with the same bits: TopK's softmax denominators eight
// tokens side by side, GroupedTopK's sigmoid scores eight experts at a time (cpu/detail/simd_math.hpp).

#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/status.hpp"
#include "moekit/cpu/detail/simd_math.hpp"
#include "moekit/routing/backward_buffers.hpp"
#include "moekit/routing/checked_logits.hpp"
#include "moekit/routing/concept.hpp"
#include "moekit/routing/grouped_top_k.hpp"
#include "moekit/routing/route_buffers.hpp"
#include "moekit/routing/top_k.hpp"
#include "moekit/routing/top_k_backward.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace cpu {

namespace detail {
template <routing::TokenRouter R>
Status check_route(R const& router, routing::RouteBuffers<MemorySpace::host> const& b) {
  if (Status s = routing::check_route_buffers(router, b); !s) {
    return s;
  }
  return routing::check_logits_finite(b.logits);
}

// Empty slots first (a router may leave some), then the router's own slots.
template <routing::TokenRouter R, class Route>
void for_each_token(R const& router, routing::RouteBuffers<MemorySpace::host> const& b, std::int64_t begin,
                    std::int64_t end, Route const& route) {
  int const experts = router.num_experts();
  for (std::int64_t t = begin; t < end; ++t) {
    int* id = b.ids.pointer(t, 0);
    float* w = b.weights.pointer(t, 0);
    for (int j = 0; j < router.slots(); ++j) {
      id[j] = experts;
      w[j] = 0.f;
    }
    route(t, b.logits.pointer(t, 0), id, w);
  }
}
}  // namespace detail

template <routing::TokenRouter R>
[[nodiscard]] Status route(R const& router, routing::RouteBuffers<MemorySpace::host> const& b) {
  if (Status s = detail::check_route(router, b); !s) {
    return s;
  }
  detail::for_each_token(router, b, 0, b.logits.extent(0),
                         [&](std::int64_t t, float const* z, int* id, float* w) { router.route_token(t, z, id, w); });
  return Status::ok;
}

template <int MaxK>
[[nodiscard]] Status route(routing::TopK<MaxK> const& router, routing::RouteBuffers<MemorySpace::host> const& b) {
  if (Status s = detail::check_route(router, b); !s) {
    return s;
  }
  std::int64_t const tokens = b.logits.extent(0);
  std::int64_t t = 0;
  if (router.scoring == routing::ScoreFunction::softmax && !router.round_logits_to_bf16) {
    constexpr int lanes = detail::simd_lanes;
    for (; t + lanes <= tokens; t += lanes) {
      float max[lanes], denominator[lanes];
      detail::softmax_normalisers8(b.logits.pointer(t, 0), b.logits.stride(0), router.experts, max, denominator);
      detail::for_each_token(router, b, t, t + lanes, [&](std::int64_t u, float const* z, int* id, float* w) {
        routing::SoftmaxNormaliser const n{max[u - t], denominator[u - t]};
        int chosen[MaxK] = {};
        detail::top_k_row<MaxK>(z, router.experts, router.k, chosen);
        router.route_row(z, &n, chosen, id, w);
      });
    }
  }
  bool const plain = !router.round_logits_to_bf16;
  detail::for_each_token(router, b, t, tokens, [&](std::int64_t u, float const* z, int* id, float* w) {
    if (!plain) {
      router.route_token(u, z, id, w);
      return;
    }
    int chosen[MaxK] = {};
    detail::top_k_row<MaxK>(z, router.experts, router.k, chosen);
    router.route_row(z, nullptr, chosen, id, w);
  });
  return Status::ok;
}

template <int MaxK>
[[nodiscard]] Status route(routing::GroupedTopK<MaxK> const& router,
                           routing::RouteBuffers<MemorySpace::host> const& b) {
  if (Status s = detail::check_route(router, b); !s) {
    return s;
  }
  constexpr int max_cached = 1024;  // experts whose scores fit the stack buffer
  if (router.scoring != routing::ScoreFunction::sigmoid || router.experts > max_cached) {
    detail::for_each_token(router, b, 0, b.logits.extent(0),
                           [&](std::int64_t t, float const* z, int* id, float* w) { router.route_token(t, z, id, w); });
    return Status::ok;
  }
  float scores[max_cached];
  detail::for_each_token(router, b, 0, b.logits.extent(0), [&](std::int64_t, float const* z, int* id, float* w) {
    detail::sigmoid_n(z, router.experts, scores);
    router.route_scored(
        z, [&scores](int e) { return scores[e]; }, id, w);
  });
  return Status::ok;
}

// dL/dlogits [T, E] from the forward's ids and dL/dweights (routing/route_backward.hpp).
template <class R>
[[nodiscard]] Status route_backward(R const& router, routing::BackwardBuffers<MemorySpace::host> const& b) {
  if (Status s = routing::check_backward_buffers(router, b); !s) {
    return s;
  }
  for (std::int64_t t = 0; t < b.logits.extent(0); ++t) {
    backward_token(router, b.logits.pointer(t, 0), b.ids.pointer(t, 0), b.weight_grad.pointer(t, 0),
                   b.logit_grad.pointer(t, 0));
  }
  return Status::ok;
}

}  // namespace cpu
MOEKIT_NAMESPACE_END
