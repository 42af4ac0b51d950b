#pragma once
// The router backward over a batch: dL/dlogits [T, E] from the forward's ids [T, K] and the
// upstream dL/dweights [T, K], for every router with a `backward_token(router, logits, ids, g,
// grad)` overload (routing/top_k_backward.hpp). One thread per token on the device, a loop on
// the CPU; the same code and bits. Empty slots (id E) must carry g = 0.

#include <cstdint>

#include "moekit/arch/arch.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/routing/backward_buffers.hpp"
#include "moekit/routing/top_k_backward.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

MOEKIT_ARCH_NAMESPACE_BEGIN

template <class R>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(128, 1)
    route_backward_kernel(R router, BackwardBuffers<MemorySpace::device> b) {
  std::int64_t const stride = std::int64_t{arch::grid_dim().x} * 128;
  for (std::int64_t t = std::int64_t{arch::block_rank()} * 128 + arch::thread_rank(); t < b.logits.extent(0);
       t += stride) {
    backward_token(router, b.logits.pointer(t, 0), b.ids.pointer(t, 0), b.weight_grad.pointer(t, 0),
                   b.logit_grad.pointer(t, 0));
  }
}

template <class R>
[[nodiscard]] Status route_backward(R const& router, BackwardBuffers<MemorySpace::device> const& b, arch::Stream stream,
                                    unsigned max_blocks = 0) {
  if (Status s = check_backward_buffers(router, b); !s) {
    return s;
  }
  std::int64_t const tokens = b.logits.extent(0);
  if (tokens == 0) {
    return Status::ok;
  }
  std::int64_t blocks = (tokens + 127) / 128;
  blocks = blocks > 65535 ? 65535 : blocks;
  if (max_blocks != 0 && blocks > max_blocks) {
    blocks = max_blocks;
  }
  return arch::launch(route_backward_kernel<R>, arch::KernelLaunch{.grid = static_cast<unsigned>(blocks), .block = 128},
                      stream, router, b);
}

MOEKIT_ARCH_NAMESPACE_END
}  // namespace routing
MOEKIT_NAMESPACE_END
