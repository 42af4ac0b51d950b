#pragma once
// The device side of aux-loss-free balancing (balancing/expert_bias.hpp, ALGORITHMS.md §2.8):
//   accumulate_loads  A_j += Σ_t valid_t [j in ids_t], integer atomics (order-free, exact);
//   update_bias       one block: c̄ from the integer total, then per expert the same
//                     bias_delta / apply_bias_delta as the host, A <- 0, n <- n + 1.
// Both are plain stream operations: no host synchronisation, no allocation, capturable in a
// CUDA graph. Ids outside [0, E] are skipped and counted in Diagnostics::invalid_ids.

#include <cstdint>

#include "moekit/arch/arch.hpp"
#include "moekit/balancing/expert_bias.hpp"
#include "moekit/config.hpp"
#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {
MOEKIT_ARCH_NAMESPACE_BEGIN

inline constexpr int bias_block_threads = 256;

template <int Threads>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(Threads, 1)
    accumulate_loads_kernel(int const* ids, std::int64_t ids_ld, std::int64_t tokens, int slots,
                            std::uint8_t const* valid, long long* loads, int experts, Diagnostics* diagnostics) {
  std::int64_t const total = tokens * slots;
  std::int64_t const stride = std::int64_t{arch::grid_dim().x} * Threads;
  for (std::int64_t i = std::int64_t{arch::block_rank()} * Threads + arch::thread_rank(); i < total; i += stride) {
    std::int64_t const t = i / slots;
    if (valid != nullptr && valid[t] == 0) {
      continue;
    }
    int const id = ids[t * ids_ld + i % slots];
    if (id >= 0 && id < experts) {
      arch::atomic_add(&loads[id], 1ll);
    } else if (id != experts && diagnostics != nullptr) {
      arch::atomic_add(&diagnostics->invalid_ids, 1ull);
    }
  }
}

struct BiasUpdateStorage {
  long long total;
  long long n;
};

template <int Threads>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(Threads, 1)
    update_bias_kernel(BiasRule rule, double u, double n0, float* bias, long long* loads, long long* updates,
                       int experts) {
  auto& smem = arch::shared_storage<BiasUpdateStorage>();
  int const tid = static_cast<int>(arch::thread_rank());
  if (tid == 0) {
    long long total = 0;
    for (int e = 0; e < experts; ++e) {
      total += loads[e];
    }
    smem.total = total;
    smem.n = *updates;
  }
  arch::sync_threads();
  double const c = mean_load(smem.total, experts);
  long long const n = smem.n;
  for (int e = tid; e < experts; e += Threads) {
    bias[e] = apply_bias_delta(bias[e], bias_delta(rule, u, n0, n, c, loads[e]));
    loads[e] = 0;
  }
  if (tid == 0) {
    *updates = n + 1;
  }
}

// Adds the selections of ids [T, K] (device memory; valid [T] may be null) to the state's A.
// `max_blocks` (0: no cap) caps the grid; the counts are exact for any value. Diagnostics may be null.
[[nodiscard]] inline Status accumulate_loads(ExpertBias<MemorySpace::device> const& s, DeviceTensor<int const, 2> ids,
                                             std::uint8_t const* valid, Diagnostics* diagnostics, arch::Stream stream,
                                             unsigned max_blocks = 0) {
  auto const experts = static_cast<int>(s.bias.extent(0));
  if (Status st = s.validate(experts); !st) {
    return st;
  }
  if (!ids.validate() || (ids.extent(0) > 0 && ids.extent(1) < 1)) {
    return error(Status::invalid_argument, "bias loads: ids must be a valid [T, K >= 1] view (got [%lld, %lld])",
                 static_cast<long long>(ids.extent(0)), static_cast<long long>(ids.extent(1)));
  }
  if (ids.extent(0) > 0 && ids.extent(1) > 1 && ids.stride(1) != 1) {
    return error(Status::invalid_argument, "bias loads: ids rows must be contiguous (slot stride %lld)",
                 static_cast<long long>(ids.stride(1)));
  }
  if (ids.extent(1) > (1 << 20)) {
    return error(Status::unsupported_config, "bias loads: K=%lld slots per token is too many",
                 static_cast<long long>(ids.extent(1)));
  }
  if (!ids.is_aligned(alignof(int))) {
    return error(Status::misaligned, "bias loads: ids pointer not aligned to %zu bytes", alignof(int));
  }
  std::int64_t const work = ids.extent(0) * ids.extent(1);
  if (work == 0) {
    return Status::ok;
  }
  std::int64_t blocks = (work + bias_block_threads - 1) / bias_block_threads;
  blocks = blocks > 65535 ? 65535 : blocks;
  if (max_blocks != 0 && blocks > max_blocks) {
    blocks = max_blocks;
  }
  arch::KernelLaunch const l{.grid = static_cast<unsigned>(blocks), .block = bias_block_threads};
  return arch::launch(accumulate_loads_kernel<bias_block_threads>, l, stream, ids.data, ids.stride(0), ids.extent(0),
                      static_cast<int>(ids.extent(1)), valid, s.loads.data, experts, diagnostics);
}

// One update step on the device (after the optimizer step, once A holds the step's loads summed
// over every rank): the same bits as balancing::update_bias on the host.
[[nodiscard]] inline Status update_bias(ExpertBias<MemorySpace::device> const& s, arch::Stream stream) {
  auto const experts = static_cast<int>(s.bias.extent(0));
  if (Status st = s.validate(experts); !st) {
    return st;
  }
  arch::KernelLaunch const l{.grid = 1, .block = bias_block_threads, .dynamic_shared_bytes = sizeof(BiasUpdateStorage)};
  return arch::launch(update_bias_kernel<bias_block_threads>, l, stream, s.rule, s.update_rate, s.decay_steps,
                      s.bias.data, s.loads.data, s.updates, experts);
}

MOEKIT_ARCH_NAMESPACE_END
}  // namespace balancing
MOEKIT_NAMESPACE_END
