#pragma once
// The device path of the per-token losses of ALGORITHMS.md §3 (DynMoLE §3.2, LoRA-Mixer §3.4):
// three launches, deterministic for any grid size and schedule (no float atomics).
//
//  1. partials   one block per chunk of `token_loss_chunk` tokens (grid-stride over chunks):
//                one thread per token computes its softmax, its per-token scalar (an entropy)
//                and its kept prefix (saved per token); then one thread per expert sums p and
//                kept p over the chunk's tokens in token order (fp64) and counts the kept ones.
//  2. finalize   one block: per expert, the chunk partials summed in chunk order -> f, P,
//                counts; thread 0 forms the value and the gradient constants.
//  3. gradient   one thread per token: ∂L/∂p from the policy, then the softmax back-projection
//                ∂L/∂z_j = p_j (g_j - Σ_i p_i g_i) in ascending expert order; zero rows for padding.
//
// The workspace (loss_workspace_size) holds the per-token stats, the chunk partials and the
// finalized vectors; it depends only on T and E and grows with T. Rows the host would refuse
// (NaN, +inf, all -inf) are counted in Diagnostics::nonfinite_rows and propagate NaN.

#include <cstddef>
#include <cstdint>

#include "moekit/arch/arch.hpp"
#include "moekit/balancing/concept.hpp"
#include "moekit/balancing/detail/token_loss_common.hpp"
#include "moekit/balancing/dynmole_loss.hpp"
#include "moekit/balancing/lora_mixer_loss.hpp"
#include "moekit/balancing/loss_buffers.hpp"
#include "moekit/config.hpp"
#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/workspace.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {
MOEKIT_ARCH_NAMESPACE_BEGIN

inline constexpr int token_loss_chunk = 128;             // tokens per chunk = threads of the partials block
inline constexpr int token_loss_finalize_threads = 256;  // the single finalize block
inline constexpr int token_loss_grad_threads = 128;

// Kernels and launch steps; not `detail`, which would shadow balancing::detail inside this
// inline namespace.
namespace token_loss_kernels {

using balancing::detail::token_loss::check_loss_buffers;
using balancing::detail::token_loss::in_prefix;
using balancing::detail::token_loss::nonfinite_row;
using balancing::detail::token_loss::TokenStats;

// A per-token loss the chunked kernels can run (DynMoLELoss, LoraMixerLoss).
template <class L>
concept ChunkedTokenLoss = LossBalancer<L> && requires(L const& l, float const* z, int n, TokenStats const& s,
                                                       float* fo, float const* fi, typename L::GradConstants c) {
  { l.token_stats(z, n) } -> std::same_as<TokenStats>;
  l.expert_outputs(1ll, 0.0, 0.0, 1ll, *fo, *fo);
  { l.value(n, 1ll, fi, fi, 0.0) } -> std::same_as<double>;
  { l.grad_constants(n, 1ll) } -> std::same_as<typename L::GradConstants>;
  { l.dl_dp(0.f, 0.f, 0, true, s, fi, fi, c) } -> std::same_as<float>;
};

template <class GradConstants>
struct Carved {
  TokenStats* stats = nullptr;    // [T]
  double* part_p = nullptr;       // [chunks, E] Σ p
  double* part_kept = nullptr;    // [chunks, E] Σ p over kept (token, expert)
  int* part_count = nullptr;      // [chunks, E] kept (token, expert) pairs
  double* part_scalar = nullptr;  // [chunks] Σ per-token scalar
  int* part_n = nullptr;          // [chunks] valid tokens
  float* f = nullptr;             // [E]
  float* p = nullptr;             // [E]
  GradConstants* constants = nullptr;
};

// The one carving routine behind both the size query and the launch.
template <class GradConstants>
Carved<GradConstants> carve(Workspace& w, std::int64_t tokens, int experts) {
  std::int64_t const chunks = (tokens + token_loss_chunk - 1) / token_loss_chunk;
  Carved<GradConstants> c;
  c.stats = w.take<TokenStats>(tokens, "per-token stats");
  c.part_p = w.take<double>(chunks * experts, "chunk sums of p");
  c.part_kept = w.take<double>(chunks * experts, "chunk sums of kept p");
  c.part_count = w.take<int>(chunks * experts, "chunk counts");
  c.part_scalar = w.take<double>(chunks, "chunk scalar sums");
  c.part_n = w.take<int>(chunks, "chunk token counts");
  c.f = w.take<float>(experts, "f");
  c.p = w.take<float>(experts, "P");
  c.constants = w.take<GradConstants>(1, "gradient constants");
  return c;
}

[[nodiscard]] MOEKIT_HOST_DEVICE inline float p_of(float z, TokenStats const& s) noexcept {
  return fp32::exp(z - s.max) / s.denominator;
}

struct PartialsStorage {
  arch::SharedArray<TokenStats, token_loss_chunk> stats;
  arch::SharedArray<int, token_loss_chunk> use;
};

template <class L>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(token_loss_chunk, 1)
    token_loss_partials_kernel(L loss, float const* logits, std::int64_t ld, std::int64_t tokens, int experts,
                               std::uint8_t const* valid, Carved<typename L::GradConstants> ws,
                               Diagnostics* diagnostics) {
  auto& smem = arch::shared_storage<PartialsStorage>();
  int const tid = static_cast<int>(arch::thread_rank());
  std::int64_t const chunks = (tokens + token_loss_chunk - 1) / token_loss_chunk;
  for (std::int64_t c = arch::block_rank(); c < chunks; c += arch::grid_dim().x) {
    std::int64_t const first = c * token_loss_chunk;
    std::int64_t const t = first + tid;
    bool const use = t < tokens && (valid == nullptr || valid[t] != 0);
    if (use) {
      float const* row = logits + t * ld;
      if (diagnostics != nullptr && nonfinite_row(row, experts)) {
        arch::atomic_add(&diagnostics->nonfinite_rows, 1ull);
      }
      TokenStats const s = loss.token_stats(row, experts);
      ws.stats[t] = s;
      smem.stats[tid] = s;
    }
    smem.use[tid] = use ? 1 : 0;
    arch::sync_threads();
    for (int e = tid; e < experts; e += token_loss_chunk) {
      double sum_p = 0.0;
      double sum_kept = 0.0;
      int count = 0;
      for (int j = 0; j < token_loss_chunk; ++j) {
        if (smem.use[j] == 0) {
          continue;
        }
        TokenStats const s = smem.stats[j];
        float const* row = logits + (first + j) * ld;
        double const p = p_of(row[e], s);
        sum_p += p;
        if (in_prefix(row, s.last, e)) {
          sum_kept += p;
          ++count;
        }
      }
      ws.part_p[c * experts + e] = sum_p;
      ws.part_kept[c * experts + e] = sum_kept;
      ws.part_count[c * experts + e] = count;
    }
    if (tid == 0) {
      double sum = 0.0;
      int n = 0;
      for (int j = 0; j < token_loss_chunk; ++j) {
        if (smem.use[j] != 0) {
          sum += static_cast<TokenStats>(smem.stats[j]).scalar;
          ++n;
        }
      }
      ws.part_scalar[c] = sum;
      ws.part_n[c] = n;
    }
    arch::sync_threads();  // the next chunk overwrites the shared stats
  }
}

struct FinalizeStorage {
  long long n;
  double scalar;
};

template <class L>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(token_loss_finalize_threads, 1)
    token_loss_finalize_kernel(L loss, std::int64_t chunks, int experts, Carved<typename L::GradConstants> ws,
                               float* value, long long* counts, float* f_out, float* p_out) {
  auto& smem = arch::shared_storage<FinalizeStorage>();
  int const tid = static_cast<int>(arch::thread_rank());
  if (tid == 0) {
    long long n = 0;
    double scalar = 0.0;
    for (std::int64_t c = 0; c < chunks; ++c) {
      n += ws.part_n[c];
      scalar += ws.part_scalar[c];
    }
    smem.n = n;
    smem.scalar = scalar;
  }
  arch::sync_threads();
  long long const n = smem.n;
  for (int e = tid; e < experts; e += token_loss_finalize_threads) {
    double sum_p = 0.0;
    double sum_kept = 0.0;
    long long count = 0;
    for (std::int64_t c = 0; c < chunks; ++c) {
      sum_p += ws.part_p[c * experts + e];
      sum_kept += ws.part_kept[c * experts + e];
      count += ws.part_count[c * experts + e];
    }
    float f = 0.f;
    float p = 0.f;
    loss.expert_outputs(n, sum_p, sum_kept, count, f, p);
    ws.f[e] = f;
    ws.p[e] = p;
    if (counts != nullptr) {
      counts[e] = count;
    }
    if (f_out != nullptr) {
      f_out[e] = f;
    }
    if (p_out != nullptr) {
      p_out[e] = p;
    }
  }
  arch::sync_threads();  // f and P of every expert are written (block-visible global memory)
  if (tid == 0) {
    *value = static_cast<float>(loss.value(experts, n, ws.f, ws.p, smem.scalar));
    *ws.constants = loss.grad_constants(experts, n);
  }
}

template <class L>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(token_loss_grad_threads, 1)
    token_loss_grad_kernel(L loss, float const* logits, std::int64_t ld, std::int64_t tokens, int experts,
                           std::uint8_t const* valid, Carved<typename L::GradConstants> ws, float* grad,
                           std::int64_t grad_ld) {
  std::int64_t const stride = std::int64_t{arch::grid_dim().x} * token_loss_grad_threads;
  typename L::GradConstants const constants = *ws.constants;
  for (std::int64_t t = std::int64_t{arch::block_rank()} * token_loss_grad_threads + arch::thread_rank(); t < tokens;
       t += stride) {
    float* out = grad + t * grad_ld;
    if (valid != nullptr && valid[t] == 0) {
      for (int e = 0; e < experts; ++e) {
        out[e] = 0.f;
      }
      continue;
    }
    float const* row = logits + t * ld;
    TokenStats const s = ws.stats[t];
    float mean = 0.f;  // Σ_i p_i g_i
    for (int e = 0; e < experts; ++e) {
      float const p = p_of(row[e], s);
      if (p == 0.f) {
        out[e] = 0.f;
        continue;
      }
      float const g = loss.dl_dp(row[e], p, e, in_prefix(row, s.last, e), s, ws.f, ws.p, constants);
      out[e] = g;
      mean = ::fmaf(p, g, mean);
    }
    for (int e = 0; e < experts; ++e) {
      float const p = p_of(row[e], s);
      out[e] = p == 0.f ? 0.f : p * (out[e] - mean);
    }
  }
}

template <class L>
std::size_t workspace_size(std::int64_t tokens, int experts) {
  Workspace w;
  (void)carve<typename L::GradConstants>(w, tokens < 0 ? 0 : tokens, experts < 0 ? 0 : experts);
  return w.bytes_used();
}

template <class L>
[[nodiscard]] Status run(L const& loss, char const* what, LossInputs<MemorySpace::device> const& in,
                         LossOutputs<MemorySpace::device> const& out, Workspace& workspace, arch::Stream stream,
                         unsigned max_blocks, Diagnostics* diagnostics) {
  if (Status s = check_loss_buffers(in, out, what); !s) {
    return s;
  }
  std::int64_t const tokens = in.logits.extent(0);
  int const experts = static_cast<int>(in.logits.extent(1));
  if (Status s = loss.validate(experts); !s) {
    return s;
  }
  if (workspace.counting()) {
    return error(Status::invalid_argument,
                 "%s: workspace: a counting Workspace cannot hold data; pass Workspace(pointer, bytes)", what);
  }
  auto const ws = carve<typename L::GradConstants>(workspace, tokens, experts);
  if (Status s = workspace.status(); !s) {
    return error(s, "%s: workspace: buffer '%s' needs %zu bytes, %zu left (ask loss_workspace_size: %zu bytes)", what,
                 workspace.failed_buffer(), workspace.failed_bytes(), workspace.bytes_left_at_failure(),
                 workspace_size<L>(tokens, experts));
  }
  std::int64_t const chunks = (tokens + token_loss_chunk - 1) / token_loss_chunk;
  auto grid_for = [max_blocks](std::int64_t work) {
    std::int64_t b = work < 1 ? 1 : work;
    b = b > 65535 ? 65535 : b;
    if (max_blocks != 0 && b > max_blocks) {
      b = max_blocks;
    }
    return static_cast<unsigned>(b);
  };
  if (chunks > 0) {
    arch::KernelLaunch const l{
        .grid = grid_for(chunks), .block = token_loss_chunk, .dynamic_shared_bytes = sizeof(PartialsStorage)};
    if (Status s = arch::launch(token_loss_partials_kernel<L>, l, stream, loss, in.logits.data, in.logits.stride(0),
                                tokens, experts, in.valid, ws, diagnostics);
        !s) {
      return s;
    }
  }
  arch::KernelLaunch const fin{
      .grid = 1, .block = token_loss_finalize_threads, .dynamic_shared_bytes = sizeof(FinalizeStorage)};
  if (Status s = arch::launch(token_loss_finalize_kernel<L>, fin, stream, loss, chunks, experts, ws, out.value,
                              out.counts, out.f, out.P);
      !s) {
    return s;
  }
  if (out.grad.data == nullptr || tokens == 0) {
    return Status::ok;
  }
  arch::KernelLaunch const g{.grid = grid_for((tokens + token_loss_grad_threads - 1) / token_loss_grad_threads),
                             .block = token_loss_grad_threads};
  return arch::launch(token_loss_grad_kernel<L>, g, stream, loss, in.logits.data, in.logits.stride(0), tokens, experts,
                      in.valid, ws, out.grad.data, out.grad.stride(0));
}

}  // namespace token_loss_kernels

// Bytes of workspace compute_loss needs for `tokens` x `experts` logits (never shrinks as T grows).
[[nodiscard]] inline std::size_t loss_workspace_size(DynMoLELoss const&, std::int64_t tokens, int experts) {
  return token_loss_kernels::workspace_size<DynMoLELoss>(tokens, experts);
}
[[nodiscard]] inline std::size_t loss_workspace_size(LoraMixerLoss const&, std::int64_t tokens, int experts) {
  return token_loss_kernels::workspace_size<LoraMixerLoss>(tokens, experts);
}

// The loss value, its gradient w.r.t. the logits (when out.grad.data is set) and counts / f / P
// (where not null) on `stream`, in a carving Workspace of at least loss_workspace_size bytes.
// No allocation, no host synchronisation. `max_blocks` (0: no cap) caps each grid; results are
// bit-identical for any value. Non-finite rows are added to diagnostics->nonfinite_rows (when
// not null). Every check runs before the first launch; on failure nothing is written.
[[nodiscard]] inline Status loss(DynMoLELoss const& policy, LossInputs<MemorySpace::device> const& in,
                                 LossOutputs<MemorySpace::device> const& out, Workspace& workspace, arch::Stream stream,
                                 unsigned max_blocks = 0, Diagnostics* diagnostics = nullptr) {
  return token_loss_kernels::run(policy, "DynMoLE loss", in, out, workspace, stream, max_blocks, diagnostics);
}
[[nodiscard]] inline Status loss(LoraMixerLoss const& policy, LossInputs<MemorySpace::device> const& in,
                                 LossOutputs<MemorySpace::device> const& out, Workspace& workspace, arch::Stream stream,
                                 unsigned max_blocks = 0, Diagnostics* diagnostics = nullptr) {
  return token_loss_kernels::run(policy, "LoRA-Mixer RSL", in, out, workspace, stream, max_blocks, diagnostics);
}

MOEKIT_ARCH_NAMESPACE_END
}  // namespace balancing
MOEKIT_NAMESPACE_END
