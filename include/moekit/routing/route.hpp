#pragma once
// Running a per-token router on the device: one thread per token, a grid-stride loop, so the
// result does not depend on the grid size or the schedule (each token's slots are computed by
// one thread from that token's logits alone). Non-finite rows are counted in Diagnostics and
// route by the formulas (NaN ranks last, NaN weights propagate, as in PyTorch); no index ever
// leaves [0, E]. No host synchronisation, no allocation: capturable in a CUDA graph.

#include <cmath>
#include <cstdint>

#include "moekit/arch/arch.hpp"
#include "moekit/config.hpp"
#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/routing/concept.hpp"
#include "moekit/routing/route_buffers.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {
MOEKIT_ARCH_NAMESPACE_BEGIN

inline constexpr int route_block_threads = 128;

// True for a row the host would refuse: a NaN or +inf logit, or every logit -inf.
[[nodiscard]] MOEKIT_HOST_DEVICE inline bool is_nonfinite_row(float const* z, int n) noexcept {
  bool bad = false;
  bool any_unmasked = false;
  for (int e = 0; e < n; ++e) {
    float const v = z[e];
    bad = bad || v != v || v == INFINITY;
    any_unmasked = any_unmasked || v != -INFINITY;
  }
  return bad || !any_unmasked;
}

// The kernel's body, also a phase of the fused layer kernel: any grid of route_block_threads-thread blocks.
template <TokenRouter R>
MOEKIT_DEVICE void route_tokens_phase(R const& router, float const* logits, std::int64_t logits_stride,
                                      std::int64_t tokens, int* ids, float* weights, std::int64_t out_stride,
                                      Diagnostics* diagnostics) {
  std::int64_t const stride = std::int64_t{arch::grid_dim().x} * route_block_threads;
  int const experts = router.num_experts();
  int const slots = router.slots();
  for (std::int64_t t = std::int64_t{arch::block_rank()} * route_block_threads + arch::thread_rank(); t < tokens;
       t += stride) {
    float const* row = logits + t * logits_stride;
    if (is_nonfinite_row(row, experts)) {
      arch::atomic_add(&diagnostics->nonfinite_rows, 1ull);
    }
    int* id = ids + t * out_stride;
    float* w = weights + t * out_stride;
    for (int j = 0; j < slots; ++j) {
      id[j] = experts;
      w[j] = 0.f;
    }
    router.route_token(t, row, id, w);
  }
}

template <TokenRouter R>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(route_block_threads, 1)
    route_tokens_kernel(R router, float const* logits, std::int64_t logits_stride, std::int64_t tokens, int* ids,
                        float* weights, std::int64_t out_stride, Diagnostics* diagnostics) {
  route_tokens_phase(router, logits, logits_stride, tokens, ids, weights, out_stride, diagnostics);
}

// Routes every token of `b` on `stream`. `max_blocks` (0: enough for one token per thread)
// caps the grid; results are identical for any value. Diagnostics are added to, not reset.
template <TokenRouter R>
[[nodiscard]] Status route(R const& router, RouteBuffers<MemorySpace::device> const& b, Diagnostics* diagnostics,
                           arch::Stream stream, unsigned max_blocks = 0) {
  if (Status s = check_route_buffers(router, b); !s) {
    return s;
  }
  if (diagnostics == nullptr) {
    return error(Status::invalid_argument, "route: diagnostics must point to device memory");
  }
  std::int64_t const tokens = b.logits.extent(0);
  if (tokens == 0) {
    return Status::ok;
  }
  if (b.ids.stride(0) != b.weights.stride(0)) {
    return error(Status::invalid_argument, "route: ids and weights must have the same row stride (%lld vs %lld)",
                 static_cast<long long>(b.ids.stride(0)), static_cast<long long>(b.weights.stride(0)));
  }
  std::int64_t blocks = (tokens + route_block_threads - 1) / route_block_threads;
  blocks = blocks > 65535 ? 65535 : blocks;
  if (max_blocks != 0 && blocks > max_blocks) {
    blocks = max_blocks;
  }
  arch::KernelLaunch const l{.grid = static_cast<unsigned>(blocks), .block = route_block_threads};
  return arch::launch(route_tokens_kernel<R>, l, stream, router, b.logits.data, b.logits.stride(0), tokens, b.ids.data,
                      b.weights.data, b.ids.stride(0), diagnostics);
}

MOEKIT_ARCH_NAMESPACE_END
}  // namespace routing
MOEKIT_NAMESPACE_END
