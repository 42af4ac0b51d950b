#pragma once
// The device path of every fP loss (fp_loss.hpp): three launches on one stream, no host
// synchronisation, no allocation, capturable in a CUDA graph.
//   1. stats: one block per chunk of fp_chunk_tokens tokens of one group (grid-stride over
//      chunks). Thread r takes token r of the chunk: its score normaliser and the k-th ranked
//      logit that bounds its counting set. Then thread e sums q_{t,e} over the chunk's valid
//      tokens in token order, and counts the tokens whose set holds e: one fp32 partial and one
//      integer count per (chunk, expert), written to the workspace.
//   2. combine: one block adds the partials of each (group, expert) in chunk order, builds the
//      coefficients F, the value and the per-group gradient scale; the running counts of the
//      global loss are updated here (one block, no atomics).
//   3. gradient: one thread per token: (scale_g / N_g) d_{t,j} (F_{g,j} - sum_i F_{g,i} q_{t,i}),
//      zero rows for padded tokens.
// Every sum has an order fixed by the chunking, never by the grid or the schedule: the results
// are bit-identical for any grid size and schedule. Non-finite logits are not checked here (the
// host reference refuses them); NaN propagates into the value and that token's gradient, as in
// PyTorch, and no count leaves [0, E).

#include <cstddef>
#include <cstdint>

#include "moekit/arch/arch.hpp"
#include "moekit/balancing/adamoe_loss.hpp"
#include "moekit/balancing/deepseek_v3_seq_loss.hpp"
#include "moekit/balancing/dit_moe_loss.hpp"
#include "moekit/balancing/fp_loss.hpp"
#include "moekit/balancing/gshard_loss.hpp"
#include "moekit/balancing/hf_load_balancing_loss.hpp"
#include "moekit/balancing/loss_buffers.hpp"
#include "moekit/balancing/loss_checks.hpp"
#include "moekit/balancing/megatron_aux_loss.hpp"
#include "moekit/balancing/megatron_global_aux_loss.hpp"
#include "moekit/balancing/megatron_seq_aux_loss.hpp"
#include "moekit/balancing/switch_loss.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/workspace.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace balancing {

// The workspace of one call, carved by one routine for the size query and the call.
struct FpWorkspace {
  float* chunk_sums = nullptr;        // [chunks, E] sum of q over the chunk's valid tokens
  int* chunk_counts = nullptr;        // [chunks, E] counting-set hits in the chunk
  int* chunk_valid = nullptr;         // [chunks] valid tokens in the chunk
  double* group_sums = nullptr;       // [G, E]
  long long* group_counts = nullptr;  // [G, E]
  long long* group_valid = nullptr;   // [G] N_g
  float* coef = nullptr;              // [G, E] F
  float* grad_scale = nullptr;        // [G] scale / N_g
  double* group_value = nullptr;      // [G] scale * sum_i F P
};

namespace detail {
inline FpWorkspace carve_fp_workspace(Workspace& w, FpForm const& f) {
  std::int64_t const chunks = f.num_chunks();
  std::int64_t const group_entries = std::int64_t{f.groups} * f.experts;
  FpWorkspace r;
  r.chunk_sums = w.take<float>(chunks * f.experts, "chunk sums");
  r.chunk_counts = w.take<int>(chunks * f.experts, "chunk counts");
  r.chunk_valid = w.take<int>(chunks, "chunk valid tokens");
  r.group_sums = w.take<double>(group_entries, "group sums");
  r.group_counts = w.take<long long>(group_entries, "group counts");
  r.group_valid = w.take<long long>(f.groups, "group valid tokens");
  r.coef = w.take<float>(group_entries, "coefficients F");
  r.grad_scale = w.take<float>(f.groups, "gradient scales");
  r.group_value = w.take<double>(f.groups, "group values");
  return r;
}
}  // namespace detail

MOEKIT_ARCH_NAMESPACE_BEGIN

inline constexpr int fp_stats_threads = fp_chunk_tokens;  // one thread per token of a chunk
inline constexpr int fp_combine_threads = 256;
inline constexpr int fp_grad_threads = 128;

struct FpStatsStorage {
  arch::SharedArray<float, fp_chunk_tokens> kth_key;  // the k-th ranked logit of each token
  arch::SharedArray<int, fp_chunk_tokens> kth_index;
  arch::SharedArray<float, fp_chunk_tokens> norm_max;
  arch::SharedArray<float, fp_chunk_tokens> norm_denominator;
  arch::SharedArray<int, fp_chunk_tokens> valid;  // 1: a valid token of the chunk
};

template <LossScore Score>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(fp_stats_threads, 1)
    fp_loss_stats_kernel(FpForm form, float const* logits, std::int64_t logits_stride, std::uint8_t const* valid,
                         float* chunk_sums, int* chunk_counts, int* chunk_valid) {
  auto& s = arch::shared_storage<FpStatsStorage>();
  int const experts = form.experts;
  std::int64_t const per_group = form.chunks_per_group();
  std::int64_t const chunks = form.num_chunks();
  unsigned const r = arch::thread_rank();
  for (std::int64_t c = arch::block_rank(); c < chunks; c += arch::grid_dim().x) {
    int const g = static_cast<int>(c / per_group);
    std::int64_t const first = (c % per_group) * fp_chunk_tokens;
    std::int64_t const rest = form.group_len - first;
    int const count = static_cast<int>(rest < fp_chunk_tokens ? rest : fp_chunk_tokens);
    // Phase 1: one token per thread.
    int is_valid = 0;
    if (static_cast<int>(r) < count) {
      std::int64_t const t = form.token(g, first + r);
      is_valid = form.is_valid(valid, t) ? 1 : 0;
      if (is_valid != 0) {
        float const* row = logits + t * logits_stride;
        ScoreNormaliser const n = score_normaliser<Score>(row, experts);
        RankedLogit const kth = kth_ranked_logit(row, experts, form.count_k);
        s.norm_max[r] = n.max;
        s.norm_denominator[r] = n.denominator;
        s.kth_key[r] = kth.key;
        s.kth_index[r] = kth.index;
      }
    }
    s.valid[r] = is_valid;
    arch::sync_threads();
    // Phase 2: one expert per thread, tokens in order.
    for (int e = static_cast<int>(r); e < experts; e += fp_stats_threads) {
      CompensatedSum sum;
      int hits = 0;
      for (int i = 0; i < count; ++i) {
        if (s.valid[i] == 0) {
          continue;
        }
        float const z = logits[form.token(g, first + i) * logits_stride + e];
        sum.add(loss_score<Score>(z, ScoreNormaliser{s.norm_max[i], s.norm_denominator[i]}));
        hits += in_counting_set(z, e, RankedLogit{s.kth_key[i], s.kth_index[i]}) ? 1 : 0;
      }
      chunk_sums[c * experts + e] = sum.sum;
      chunk_counts[c * experts + e] = hits;
    }
    if (r == 0) {
      int n = 0;
      for (int i = 0; i < count; ++i) {
        n += s.valid[i];
      }
      chunk_valid[c] = n;
    }
    arch::sync_threads();  // the next chunk overwrites the shared arrays
  }
}

template <CountRule Rule>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(fp_combine_threads, 1)
    fp_loss_combine_kernel(FpForm form, FpWorkspace w, float* value, long long* counts, float* f, float* P) {
  unsigned const r = arch::thread_rank();
  int const experts = form.experts;
  int const groups = form.groups;
  std::int64_t const per_group = form.chunks_per_group();
  std::int64_t const group_entries = std::int64_t{groups} * experts;
  // 1. Each (group, expert): its chunks in order.
  for (std::int64_t idx = r; idx < group_entries; idx += fp_combine_threads) {
    std::int64_t const g = idx / experts;
    std::int64_t const e = idx % experts;
    double sum = 0.0;
    long long hits = 0;
    for (std::int64_t j = 0; j < per_group; ++j) {
      std::int64_t const c = g * per_group + j;
      sum += double(w.chunk_sums[c * experts + e]);
      hits += w.chunk_counts[c * experts + e];
    }
    w.group_sums[idx] = sum;
    w.group_counts[idx] = hits;
  }
  for (int g = static_cast<int>(r); g < groups; g += fp_combine_threads) {
    long long n = 0;
    for (std::int64_t j = 0; j < per_group; ++j) {
      n += w.chunk_valid[g * per_group + j];
    }
    w.group_valid[g] = n;
  }
  arch::sync_threads();
  // 2. Each group: F, its value and its gradient scale (experts in ascending order).
  for (int g = static_cast<int>(r); g < groups; g += fp_combine_threads) {
    long long const n = w.group_valid[g];
    long long const* c = w.group_counts + std::int64_t{g} * experts;
    double const* sums = w.group_sums + std::int64_t{g} * experts;
    float* F = w.coef + std::int64_t{g} * experts;
    if constexpr (Rule == CountRule::running_mean) {
      for (int e = 0; e < experts; ++e) {
        form.running_counts[e] += c[e];
      }
    }
    if (n == 0) {
      for (int e = 0; e < experts; ++e) {
        F[e] = 0.f;
      }
      w.grad_scale[g] = 0.f;
      w.group_value[g] = 0.0;
      continue;
    }
    double const denominator = double(form.count_k) * double(n);
    double null_f = 0.0;
    int const first_null = experts - form.null_experts;
    if constexpr (Rule == CountRule::null_group) {
      long long null_hits = 0;
      for (int e = first_null; e < experts; ++e) {
        null_hits += c[e];
      }
      null_f = double(null_hits) / double(form.null_experts) / denominator;
    }
    double v = 0.0;
    for (int e = 0; e < experts; ++e) {
      double fe = 0.0;
      if constexpr (Rule == CountRule::running_mean) {
        fe = double(form.running_counts[e]) / double(form.running_m) / denominator;
      } else if constexpr (Rule == CountRule::null_group) {
        fe = e < first_null ? double(c[e]) / denominator : null_f;
      } else {
        fe = double(c[e]) / denominator;
      }
      F[e] = static_cast<float>(fe);
      v += double(F[e]) * (sums[e] / double(n));
    }
    w.group_value[g] = form.scale * v;
    w.grad_scale[g] = static_cast<float>(form.scale / double(n));
  }
  arch::sync_threads();
  // 3. Outputs: the value, and batch-level counts, f and P for logging.
  if (r == 0) {
    double total = 0.0;
    for (int g = 0; g < groups; ++g) {
      total += w.group_value[g];
    }
    *value = static_cast<float>(total);
  }
  long long n = 0;
  for (int g = 0; g < groups; ++g) {
    n += w.group_valid[g];
  }
  for (int e = static_cast<int>(r); e < experts; e += fp_combine_threads) {
    long long hits = 0;
    double sum = 0.0;
    for (int g = 0; g < groups; ++g) {
      hits += w.group_counts[std::int64_t{g} * experts + e];
      sum += w.group_sums[std::int64_t{g} * experts + e];
    }
    if (counts != nullptr) {
      counts[e] = hits;
    }
    if (f != nullptr) {
      f[e] = groups == 1 ? w.coef[e]
                         : (n == 0 ? 0.f : static_cast<float>(double(hits) / (double(form.count_k) * double(n))));
    }
    if (P != nullptr) {
      P[e] = n == 0 ? 0.f : static_cast<float>(sum / double(n));
    }
  }
}

template <LossScore Score>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(fp_grad_threads, 1)
    fp_loss_grad_kernel(FpForm form, float const* logits, std::int64_t logits_stride, std::uint8_t const* valid,
                        float const* coef, float const* grad_scale, float* grad, std::int64_t grad_stride) {
  int const experts = form.experts;
  std::int64_t const stride = std::int64_t{arch::grid_dim().x} * fp_grad_threads;
  for (std::int64_t t = std::int64_t{arch::block_rank()} * fp_grad_threads + arch::thread_rank(); t < form.tokens;
       t += stride) {
    float* out = grad + t * grad_stride;
    if (!form.is_valid(valid, t)) {
      for (int e = 0; e < experts; ++e) {
        out[e] = 0.f;
      }
      continue;
    }
    int const g = form.group_of(t);
    float const* F = coef + std::int64_t{g} * experts;
    float const scale = grad_scale[g];
    float const* row = logits + t * logits_stride;
    ScoreNormaliser const n = score_normaliser<Score>(row, experts);
    CompensatedSum dot;  // F, q >= 0: a few ulp for any E
    for (int e = 0; e < experts; ++e) {
      dot.add(::fmaf(F[e], loss_score<Score>(row[e], n), 0.f));  // the rounded product; nothing to contract
    }
    for (int e = 0; e < experts; ++e) {
      out[e] = scale * loss_score_slope<Score>(row[e], n) * (F[e] - dot.sum);
    }
  }
}

// Sets n values to v (the device reset of a GlobalAuxState).
template <class T>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(fp_grad_threads, 1) fill_kernel(T* p, std::int64_t n, T v) {
  std::int64_t const stride = std::int64_t{arch::grid_dim().x} * fp_grad_threads;
  for (std::int64_t i = std::int64_t{arch::block_rank()} * fp_grad_threads + arch::thread_rank(); i < n; i += stride) {
    p[i] = v;
  }
}

// Exact workspace bytes for T tokens and E experts (grows with T, never shrinks).
template <FpLossPolicy P>
[[nodiscard]] std::size_t loss_workspace_size(P const& policy, std::int64_t tokens, int experts) {
  Workspace counting;
  (void)detail::carve_fp_workspace(counting, policy.fp_form(tokens, experts));
  return counting.bytes_used();
}

namespace launch_detail {
inline unsigned grid_for(std::int64_t items, std::int64_t per_block, unsigned max_blocks) {
  std::int64_t blocks = (items + per_block - 1) / per_block;
  blocks = blocks > 65535 ? 65535 : blocks;
  if (max_blocks != 0 && blocks > max_blocks) {
    blocks = max_blocks;
  }
  return static_cast<unsigned>(blocks);
}

template <LossScore Score>
Status launch_fp_loss(FpForm const& form, FpWorkspace const& w, LossInputs<MemorySpace::device> const& in,
                      LossOutputs<MemorySpace::device> const& out, arch::Stream stream, unsigned max_blocks) {
  if (form.num_chunks() > 0) {
    arch::KernelLaunch const l{.grid = grid_for(form.num_chunks(), 1, max_blocks),
                               .block = fp_stats_threads,
                               .dynamic_shared_bytes = sizeof(FpStatsStorage)};
    if (Status s = arch::launch(fp_loss_stats_kernel<Score>, l, stream, form, in.logits.data, in.logits.stride(0),
                                in.valid, w.chunk_sums, w.chunk_counts, w.chunk_valid);
        !s) {
      return s;
    }
  }
  arch::KernelLaunch const one{.grid = 1u, .block = fp_combine_threads};
  Status s = Status::ok;
  switch (form.rule) {
    case CountRule::plain:
      s = arch::launch(fp_loss_combine_kernel<CountRule::plain>, one, stream, form, w, out.value, out.counts, out.f,
                       out.P);
      break;
    case CountRule::running_mean:
      s = arch::launch(fp_loss_combine_kernel<CountRule::running_mean>, one, stream, form, w, out.value, out.counts,
                       out.f, out.P);
      break;
    case CountRule::null_group:
      s = arch::launch(fp_loss_combine_kernel<CountRule::null_group>, one, stream, form, w, out.value, out.counts,
                       out.f, out.P);
      break;
  }
  if (!s) {
    return s;
  }
  if (out.grad.data == nullptr || form.tokens == 0) {
    return Status::ok;
  }
  arch::KernelLaunch const l{.grid = grid_for(form.tokens, fp_grad_threads, max_blocks), .block = fp_grad_threads};
  return arch::launch(fp_loss_grad_kernel<Score>, l, stream, form, in.logits.data, in.logits.stride(0), in.valid,
                      static_cast<float const*>(w.coef), static_cast<float const*>(w.grad_scale), out.grad.data,
                      out.grad.stride(0));
}
}  // namespace launch_detail

// Runs the loss `policy` on `stream`: value, gradient (when out.grad.data is set), counts, f
// and P. The workspace must be a carving Workspace of at least loss_workspace_size(policy, T, E)
// bytes. `max_blocks` (0: as many as useful) caps the grids; results are identical for any
// value. Every check runs before the first launch; on failure nothing is written (a global
// loss's state included).
template <FpLossPolicy P>
[[nodiscard]] Status loss(P const& policy, LossInputs<MemorySpace::device> const& in,
                          LossOutputs<MemorySpace::device> const& out, Workspace& workspace, arch::Stream stream,
                          unsigned max_blocks = 0) {
  char const* const who = "balance loss";
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
  FpForm const form = policy.fp_form(tokens, experts);
  FpWorkspace const w = detail::carve_fp_workspace(workspace, form);
  if (Status s = workspace.status(); !s) {
    return error(s, "%s: workspace: %s needs %zu bytes, %zu left (ask loss_workspace_size)", who,
                 workspace.failed_buffer(), workspace.failed_bytes(), workspace.bytes_left_at_failure());
  }
  Status const s = form.score == LossScore::softmax
                       ? launch_detail::launch_fp_loss<LossScore::softmax>(form, w, in, out, stream, max_blocks)
                       : launch_detail::launch_fp_loss<LossScore::nsigmoid>(form, w, in, out, stream, max_blocks);
  if constexpr (requires { policy.commit(form); }) {
    if (s == Status::ok) {
      policy.commit(form);
    }
  }
  return s;
}

// Zeroes a GlobalAuxState whose C lives in device memory, on `stream` (after each optimizer step).
[[nodiscard]] inline Status reset_global_aux_state(GlobalAuxState& state, arch::Stream stream) {
  if (state.experts < 0 || (state.C == nullptr && state.experts > 0)) {
    return error(Status::invalid_argument, "global aux state: C is null or E=%d is negative", state.experts);
  }
  if (state.experts > 0) {
    arch::KernelLaunch const l{.grid = launch_detail::grid_for(state.experts, fp_grad_threads, 0),
                               .block = fp_grad_threads};
    if (Status s = arch::launch(fill_kernel<long long>, l, stream, state.C, std::int64_t{state.experts}, 0LL); !s) {
      return s;
    }
  }
  state.m = 0;
  return Status::ok;
}

MOEKIT_ARCH_NAMESPACE_END
}  // namespace balancing
MOEKIT_NAMESPACE_END
