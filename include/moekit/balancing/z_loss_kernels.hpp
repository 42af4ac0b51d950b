#pragma once
// The device path of the router z-loss (z_loss.hpp), in three launches on one stream with the
// fixed-order reductions of fp_loss_kernels.hpp: per chunk of ChunkTokens tokens the sum of
// l_t^2 over its valid tokens (token order) and its valid-token count; one block adds the
// chunks in order and writes the value and the gradient scale 2 c_z / N; then one thread per
// token writes scale * l_t * p_{t,j} (zero rows for padding). Bit-identical for any grid size
// and schedule; NaN logits propagate (the host reference refuses them).

#include <cstddef>
#include <cstdint>

#include "moekit/arch/arch.hpp"
#include "moekit/balancing/fp_loss.hpp"
#include "moekit/balancing/loss_buffers.hpp"
#include "moekit/balancing/loss_checks.hpp"
#include "moekit/balancing/z_loss.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/workspace.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

struct ZLossWorkspace {
  float* chunk_sums = nullptr;  // [chunks] sum of l_t^2 over the chunk's valid tokens
  int* chunk_valid = nullptr;   // [chunks]
  float* grad_scale = nullptr;  // [1] 2 c_z / N
};

namespace detail {
inline std::int64_t z_loss_chunks(std::int64_t tokens) { return (tokens + fp_chunk_tokens - 1) / fp_chunk_tokens; }

inline ZLossWorkspace carve_z_loss_workspace(Workspace& w, std::int64_t tokens) {
  ZLossWorkspace r;
  r.chunk_sums = w.take<float>(z_loss_chunks(tokens), "chunk sums");
  r.chunk_valid = w.take<int>(z_loss_chunks(tokens), "chunk valid tokens");
  r.grad_scale = w.take<float>(1, "gradient scale");
  return r;
}
}  // namespace detail

MOEKIT_ARCH_NAMESPACE_BEGIN

inline constexpr int z_loss_grad_threads = 128;

template <int ChunkTokens>
struct ZLossStatsStorage {
  arch::SharedArray<float, ChunkTokens> square;  // l_t^2, 0 for padding
  arch::SharedArray<int, ChunkTokens> valid;
};

template <int ChunkTokens>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(ChunkTokens, 1)
    z_loss_stats_kernel(float const* logits, std::int64_t logits_stride, std::int64_t tokens, int experts,
                        std::uint8_t const* valid, float* chunk_sums, int* chunk_valid) {
  auto& s = arch::shared_storage<ZLossStatsStorage<ChunkTokens>>();
  std::int64_t const chunks = (tokens + ChunkTokens - 1) / ChunkTokens;
  unsigned const r = arch::thread_rank();
  for (std::int64_t c = arch::block_rank(); c < chunks; c += arch::grid_dim().x) {
    std::int64_t const t = c * ChunkTokens + r;
    bool const is_valid = t < tokens && (valid == nullptr || valid[t] != 0);
    float square = 0.f;
    if (is_valid) {
      float const l = row_logsumexp(logits + t * logits_stride, experts).value;
      square = l * l;
    }
    s.square[r] = square;
    s.valid[r] = is_valid ? 1 : 0;
    arch::sync_threads();
    if (r == 0) {
      CompensatedSum sum;
      int n = 0;
      for (int i = 0; i < ChunkTokens; ++i) {
        sum.add(s.square[i]);
        n += s.valid[i];
      }
      chunk_sums[c] = sum.sum;
      chunk_valid[c] = n;
    }
    arch::sync_threads();  // the next chunk overwrites the shared arrays
  }
}

template <int ChunkTokens>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(32, 1)
    z_loss_combine_kernel(ZLoss policy, std::int64_t tokens, ZLossWorkspace w, float* value) {
  if (arch::thread_rank() != 0) {
    return;
  }
  std::int64_t const chunks = (tokens + ChunkTokens - 1) / ChunkTokens;
  double sum = 0.0;
  long long n = 0;
  for (std::int64_t c = 0; c < chunks; ++c) {
    sum += double(w.chunk_sums[c]);
    n += w.chunk_valid[c];
  }
  double const coef = double(policy.z_loss_coef);
  *value = n == 0 ? 0.f : static_cast<float>(coef * sum / double(n));
  *w.grad_scale = n == 0 ? 0.f : static_cast<float>(2.0 * coef / double(n));
}

template <int ChunkTokens>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(z_loss_grad_threads, 1)
    z_loss_grad_kernel(float const* logits, std::int64_t logits_stride, std::int64_t tokens, int experts,
                       std::uint8_t const* valid, float const* grad_scale, float* grad, std::int64_t grad_stride) {
  std::int64_t const stride = std::int64_t{arch::grid_dim().x} * z_loss_grad_threads;
  for (std::int64_t t = std::int64_t{arch::block_rank()} * z_loss_grad_threads + arch::thread_rank(); t < tokens;
       t += stride) {
    float* out = grad + t * grad_stride;
    if (valid != nullptr && valid[t] == 0) {
      for (int e = 0; e < experts; ++e) {
        out[e] = 0.f;
      }
      continue;
    }
    float const* row = logits + t * logits_stride;
    LogSumExp const l = row_logsumexp(row, experts);
    float const a = *grad_scale * l.value;
    for (int e = 0; e < experts; ++e) {
      out[e] = a * (fp32::exp(row[e] - l.max) / l.denominator);
    }
  }
}

// Exact workspace bytes for T tokens (grows with T, never shrinks).
[[nodiscard]] inline std::size_t loss_workspace_size(ZLoss const&, std::int64_t tokens, int) {
  Workspace counting;
  (void)detail::carve_z_loss_workspace(counting, tokens);
  return counting.bytes_used();
}

// Runs the z-loss on `stream`: value and, when out.grad.data is set, the gradient; counts, f
// and P are not written. Same contract as the fP losses' loss() (fp_loss_kernels.hpp).
[[nodiscard]] inline Status loss(ZLoss const& policy, LossInputs<MemorySpace::device> const& in,
                                 LossOutputs<MemorySpace::device> const& out, Workspace& workspace, arch::Stream stream,
                                 unsigned max_blocks = 0) {
  char const* const who = "router z-loss";
  if (Status s = check_loss_logits(who, in); !s) {
    return s;
  }
  std::int64_t const tokens = in.logits.extent(0);
  int const experts = static_cast<int>(in.logits.extent(1));
  if (Status s = policy.validate(experts); !s) {
    return s;
  }
  if (Status s = policy.check_shape(tokens, in.valid_entries); !s) {
    return s;
  }
  if (Status s = check_loss_outputs(who, in, out); !s) {
    return s;
  }
  if (workspace.counting()) {
    return error(Status::invalid_argument,
                 "%s: workspace: a counting Workspace cannot hold data; pass Workspace(pointer, bytes)", who);
  }
  ZLossWorkspace const w = detail::carve_z_loss_workspace(workspace, tokens);
  if (Status s = workspace.status(); !s) {
    return error(s, "%s: workspace: %s needs %zu bytes, %zu left (ask loss_workspace_size)", who,
                 workspace.failed_buffer(), workspace.failed_bytes(), workspace.bytes_left_at_failure());
  }
  auto cap = [max_blocks](std::int64_t items, std::int64_t per_block) {
    std::int64_t blocks = (items + per_block - 1) / per_block;
    blocks = blocks > 65535 ? 65535 : blocks;
    return static_cast<unsigned>(max_blocks != 0 && blocks > max_blocks ? max_blocks : blocks);
  };
  constexpr int chunk = fp_chunk_tokens;
  if (tokens > 0) {
    arch::KernelLaunch const l{
        .grid = cap(tokens, chunk), .block = chunk, .dynamic_shared_bytes = sizeof(ZLossStatsStorage<chunk>)};
    if (Status s = arch::launch(z_loss_stats_kernel<chunk>, l, stream, in.logits.data, in.logits.stride(0), tokens,
                                experts, in.valid, w.chunk_sums, w.chunk_valid);
        !s) {
      return s;
    }
  }
  arch::KernelLaunch const one{.grid = 1u, .block = 32u};
  if (Status s = arch::launch(z_loss_combine_kernel<chunk>, one, stream, policy, tokens, w, out.value); !s) {
    return s;
  }
  if (out.grad.data == nullptr || tokens == 0) {
    return Status::ok;
  }
  arch::KernelLaunch const l{.grid = cap(tokens, z_loss_grad_threads), .block = z_loss_grad_threads};
  return arch::launch(z_loss_grad_kernel<chunk>, l, stream, in.logits.data, in.logits.stride(0), tokens, experts,
                      in.valid, static_cast<float const*>(w.grad_scale), out.grad.data, out.grad.stride(0));
}

MOEKIT_ARCH_NAMESPACE_END
}  // namespace balancing
MOEKIT_NAMESPACE_END
