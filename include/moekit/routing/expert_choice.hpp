#pragma once
// Expert-choice routing (ALGORITHMS.md §1.8, Zhou et al. 2022): every expert picks its C best
// tokens of one routing group, so tokens get 0..E experts and experts exactly C tokens.
//   S = softmax(z_t) per token, fp32, the §1.0 softmax (routing/scores.hpp): values, not logits,
//       are compared across tokens, so host and device must produce the same bits;
//   C = max(min_capacity, round_half_even(capacity_factor * T / E)) in double, then C <= T;
//   expert e: token_ids[e, 0..C) = top-C of S[., e] over tokens (descending, ties to the lower
//       token index, NaN last), gates[e, r] = S[token_ids[e, r], e] (not renormalised).
// An optional padding mask (flaxformer) zeroes a padding token's scores before the top-C: its
// gate is 0, yet it can still fill a slot when fewer than C real tokens remain.
//
// Device path: one kernel computes S (one thread per token) into the workspace, transposed; a
// second runs one block per expert (grid-stride over experts), sorting the expert's column with
// a block-wide radix sort of 64-bit keys (score order, then token index), so the result is one
// total order: identical bits for any schedule and grid size. One call routes one group of at
// most max_tokens = 4096 tokens (the reference's max_group_size); larger T is unsupported_config.
// An optional per-token view ([T, E]: the experts that chose token t in ascending order, then
// the sentinel E) is written for the dispatch plan by a third, per-token kernel.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "moekit/arch/arch.hpp"
#include "moekit/config.hpp"
#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/core/workspace.hpp"
#include "moekit/routing/concept.hpp"
#include "moekit/routing/route.hpp"
#include "moekit/routing/route_buffers.hpp"
#include "moekit/routing/scores.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {

// x >= 0 rounded to the nearest integer, halves to even (Python's round), independent of the
// floating-point environment's rounding mode.
[[nodiscard]] inline double round_half_even(double x) noexcept {
  double const r = std::floor(x);
  double const f = x - r;
  if (f > 0.5) {
    return r + 1.0;
  }
  if (f < 0.5) {
    return r;
  }
  return std::fmod(r, 2.0) == 0.0 ? r : r + 1.0;
}

struct ExpertChoice {
  static constexpr RouterScope scope = RouterScope::per_batch;
  static constexpr std::int64_t max_tokens = 4096;  // tokens per routing group on the device path

  int experts = 0;               // E
  double capacity_factor = 1.0;  // c (the paper mostly uses 2)
  int min_capacity = 1;          // C_min; the reference's min_expert_capacity is 4

  [[nodiscard]] Status validate() const {
    if (experts < 1) {
      return error(Status::invalid_argument, "expert choice: num_experts must be >= 1 (got %d)", experts);
    }
    if (!(capacity_factor > 0.0) || !std::isfinite(capacity_factor)) {
      return error(Status::invalid_argument, "expert choice: capacity_factor must be > 0 and finite (got %g)",
                   capacity_factor);
    }
    if (min_capacity < 1) {
      return error(Status::invalid_argument, "expert choice: min_capacity must be >= 1 (got %d)", min_capacity);
    }
    return Status::ok;
  }

  // C for a group of `tokens` tokens (padding included, as in the reference): 0 only for T = 0.
  [[nodiscard]] std::int64_t capacity(std::int64_t tokens) const noexcept {
    if (tokens <= 0 || experts < 1 || !(capacity_factor > 0.0) || !std::isfinite(capacity_factor)) {
      return 0;  // nothing to route, or parameters validate() refuses
    }
    double c = round_half_even(capacity_factor * static_cast<double>(tokens) / static_cast<double>(experts));
    c = c < static_cast<double>(min_capacity) ? static_cast<double>(min_capacity) : c;
    c = c > static_cast<double>(tokens) ? static_cast<double>(tokens) : c;
    return static_cast<std::int64_t>(c);
  }

  // Bytes of device workspace for a group of `tokens` tokens (never shrinks as tokens grow).
  [[nodiscard]] std::size_t workspace_size(std::int64_t tokens) const noexcept;
};

static_assert(diagnose_router<ExpertChoice>() && BatchRouter<ExpertChoice>);

template <MemorySpace Space>
struct ExpertChoiceBuffers {
  TensorView<float const, 2, Space> logits;  // [T, E]
  std::uint8_t const* valid = nullptr;       // [T], 1 = real token, 0 = padding; null: all real
  TensorView<int, 2, Space> token_ids;       // [E, C]: expert e's tokens, best first
  TensorView<float, 2, Space> gates;         // [E, C]: S[token, e] (0 for padding tokens)
  // Optional per-token view for the dispatch plan (token_experts.data null: not written).
  TensorView<int, 2, Space> token_experts;  // [T, E]: experts that chose token t, ascending, then E
  TensorView<float, 2, Space> token_gates;  // [T, E]: their gates, then 0
  int* token_counts = nullptr;              // [T]: how many experts chose token t (optional)
};

namespace detail {

inline float* carve_expert_choice(int experts, std::int64_t tokens, Workspace& w) noexcept {
  return w.take<float>(static_cast<std::int64_t>(experts) * tokens, "expert choice scores [E, T]");
}

// The 64-bit key whose ascending order is the selection order of (value, token): larger value
// first, NaN after every number (-inf included), equal values and NaN among NaN by ascending
// token; -0 ties +0.
[[nodiscard]] MOEKIT_HOST_DEVICE inline std::uint64_t token_rank_key(float v, std::int64_t token) noexcept {
  std::uint32_t descending = 0xffffffffu;
  if (v == v) {
    std::uint32_t u = 0;
    if (v != 0.f) {
      std::memcpy(&u, &v, sizeof u);
    }
    std::uint32_t const ascending = (u & 0x80000000u) != 0 ? ~u : (u | 0x80000000u);
    descending = ~ascending;
  }
  return (std::uint64_t{descending} << 32) | static_cast<std::uint32_t>(token);
}

}  // namespace detail

inline std::size_t ExpertChoice::workspace_size(std::int64_t tokens) const noexcept {
  Workspace w;
  (void)detail::carve_expert_choice(experts, tokens, w);
  return w.bytes_used();
}

// Parameters, then every buffer: the checks shared by the host reference and the device path.
template <MemorySpace Space>
[[nodiscard]] Status check_expert_choice_buffers(ExpertChoice const& r, ExpertChoiceBuffers<Space> const& b) {
  if (Status s = r.validate(); !s) {
    return s;
  }
  std::int64_t const tokens = b.logits.extent(0);
  if (tokens < 0) {
    return error(Status::invalid_argument, "logits: negative token count %lld", static_cast<long long>(tokens));
  }
  if (tokens > 0x7fffffffLL) {
    return error(Status::unsupported_config, "expert choice: %lld tokens do not fit the int32 token ids",
                 static_cast<long long>(tokens));
  }
  std::int64_t const c = r.capacity(tokens);
  if (Status s = detail::check_matrix(b.logits, "logits", tokens, r.experts); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(b.token_ids, "expert choice token ids", r.experts, c); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(b.gates, "expert choice gates", r.experts, c); !s) {
    return s;
  }
  if (b.token_experts.data != nullptr || b.token_gates.data != nullptr) {
    if (Status s = detail::check_matrix(b.token_experts, "per-token experts", tokens, r.experts); !s) {
      return s;
    }
    if (Status s = detail::check_matrix(b.token_gates, "per-token gates", tokens, r.experts); !s) {
      return s;
    }
    if (tokens > 0 && (b.token_experts.data == nullptr || b.token_gates.data == nullptr)) {
      return error(Status::invalid_argument, "expert choice: per-token experts and gates come together");
    }
  }
  if (b.token_counts != nullptr && b.token_experts.data == nullptr) {
    return error(Status::invalid_argument, "expert choice: token_counts needs the per-token experts and gates");
  }
  return Status::ok;
}

// Checked mode for the host paths: NaN or +inf in a real token's logits, or a real token with
// every expert at -inf, is refused naming the token and expert. Padding rows are not read.
[[nodiscard]] inline Status check_valid_rows_finite(HostTensor<float const, 2> logits, std::uint8_t const* valid,
                                                    char const* what) {
  for (std::int64_t t = 0; t < logits.extent(0); ++t) {
    if (valid != nullptr && valid[t] == 0) {
      continue;
    }
    bool any_unmasked = logits.extent(1) == 0;
    for (std::int64_t e = 0; e < logits.extent(1); ++e) {
      float const v = logits(t, e);
      if (std::isnan(v) || v == INFINITY) {
        return error(Status::invalid_argument, "%s: non-finite value %g at token %lld, expert %lld", what, double(v),
                     static_cast<long long>(t), static_cast<long long>(e));
      }
      any_unmasked = any_unmasked || v != -INFINITY;
    }
    if (!any_unmasked) {
      return error(Status::invalid_argument, "%s: all experts masked (-inf) at token %lld", what,
                   static_cast<long long>(t));
    }
  }
  return Status::ok;
}

// Host: dL/dz from the upstream gradient of the gates, dL/dgates [E, C] (§1.8:
// dL/dz_tm = sum over (e, r) with token_ids[e, r] = t of gbar_er S_te (delta_em - S_tm)), in
// double, rounded to fp32. Padding tokens (gate 0, no gradient) get zero rows.
[[nodiscard]] inline Status expert_choice_backward(ExpertChoice const& r, HostTensor<float const, 2> logits,
                                                   std::uint8_t const* valid, HostTensor<int const, 2> token_ids,
                                                   HostTensor<float const, 2> grad_gates,
                                                   HostTensor<float, 2> grad_logits) {
  if (Status s = r.validate(); !s) {
    return s;
  }
  std::int64_t const tokens = logits.extent(0);
  std::int64_t const c = r.capacity(tokens);
  if (Status s = detail::check_matrix(logits, "logits", tokens, r.experts); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(token_ids, "expert choice token ids", r.experts, c); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(grad_gates, "gradient of the gates", r.experts, c); !s) {
    return s;
  }
  if (Status s = detail::check_matrix(grad_logits, "gradient of the logits", tokens, r.experts); !s) {
    return s;
  }
  for (int e = 0; e < r.experts; ++e) {
    for (std::int64_t j = 0; j < c; ++j) {
      int const t = token_ids(e, j);
      if (t < 0 || t >= tokens) {
        return error(Status::invalid_argument,
                     "expert choice backward: token id %d out of [0, %lld) at expert %d, slot %lld", t,
                     static_cast<long long>(tokens), e, static_cast<long long>(j));
      }
    }
  }
  if (Status s = check_valid_rows_finite(logits, valid, "router logits"); !s) {
    return s;
  }
  int const n = r.experts;
  // gbar[t, e]: the upstream gradient of the gate expert e gave token t (0 if it did not).
  std::vector<double> gbar(static_cast<std::size_t>(tokens * n), 0.0);
  for (int e = 0; e < n; ++e) {
    for (std::int64_t j = 0; j < c; ++j) {
      gbar[static_cast<std::size_t>(token_ids(e, j) * n + e)] += double(grad_gates(e, j));
    }
  }
  std::vector<double> p(static_cast<std::size_t>(n));
  for (std::int64_t t = 0; t < tokens; ++t) {
    double const* g = &gbar[static_cast<std::size_t>(t * n)];
    bool const padding = valid != nullptr && valid[t] == 0;  // gate 0 whatever z is: no gradient
    double mx = -INFINITY;
    for (int e = 0; e < n; ++e) {
      mx = std::fmax(mx, double(logits(t, e)));
    }
    double sum = 0;
    for (int e = 0; e < n; ++e) {
      p[e] = padding ? 0.0 : std::exp(double(logits(t, e)) - mx);
      sum += p[e];
    }
    double dot = 0;  // sum_e gbar_te p_te
    for (int e = 0; e < n; ++e) {
      p[e] = padding ? 0.0 : p[e] / sum;
      dot += g[e] * p[e];
    }
    for (int m = 0; m < n; ++m) {
      grad_logits(t, m) = static_cast<float>(p[m] * (g[m] - dot));
    }
  }
  return Status::ok;
}

MOEKIT_ARCH_NAMESPACE_BEGIN

inline constexpr int expert_choice_block_threads = 256;

// Per token: S = softmax(z_t) (fp32, the §1.0 softmax), written transposed ([E, T]) so that an
// expert's column is contiguous for the selection kernel; padding tokens get 0. Rows the host
// would refuse are counted in Diagnostics and go through the formulas (NaN ranks last).
// (Kernels are templates, here on the block size, so that no non-inline __global__ definition
// sits in a header.)
template <int Threads = expert_choice_block_threads>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(Threads, 1)
    expert_choice_scores_kernel(float const* logits, std::int64_t logits_stride, std::uint8_t const* valid,
                                std::int64_t tokens, int experts, float* scores, Diagnostics* diagnostics) {
  std::int64_t const stride = std::int64_t{arch::grid_dim().x} * Threads;
  for (std::int64_t t = std::int64_t{arch::block_rank()} * Threads + arch::thread_rank(); t < tokens; t += stride) {
    float const* row = logits + t * logits_stride;
    if (valid != nullptr && valid[t] == 0) {
      for (int e = 0; e < experts; ++e) {
        scores[e * tokens + t] = 0.f;
      }
      continue;
    }
    if (is_nonfinite_row(row, experts)) {
      arch::atomic_add(&diagnostics->nonfinite_rows, 1ull);
    }
    SoftmaxNormaliser const n = softmax_normaliser(row, experts);
    for (int e = 0; e < experts; ++e) {
      scores[e * tokens + t] = softmax_entry(row[e], n);
    }
  }
}

template <int ItemsPerThread>
struct ExpertChoiceSortStorage {
  typename arch::BlockRadixSort<unsigned long long, expert_choice_block_threads, ItemsPerThread>::TempStorage sort;
};

// One block per expert (grid-stride): the expert's column of S, keyed by (score order, token),
// sorted block-wide; the first C keys are its tokens. tokens <= block threads * ItemsPerThread.
// `token_marks` ([T, E], optional) receives the slot r of (t, e) when expert e chose t, else -1:
// every entry is written exactly once, by the block of its expert.
template <int ItemsPerThread>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(expert_choice_block_threads, 1)
    expert_choice_select_kernel(float const* scores, std::int64_t tokens, int experts, std::int64_t capacity,
                                int* token_ids, std::int64_t ids_stride, float* gates, std::int64_t gates_stride,
                                int* token_marks, std::int64_t marks_stride) {
  using Sort = arch::BlockRadixSort<unsigned long long, expert_choice_block_threads, ItemsPerThread>;
  auto& smem = arch::shared_storage<ExpertChoiceSortStorage<ItemsPerThread>>();
  std::int64_t const first = std::int64_t{arch::thread_rank()} * ItemsPerThread;
  for (int e = static_cast<int>(arch::block_rank()); e < experts; e += static_cast<int>(arch::grid_dim().x)) {
    float const* column = scores + e * tokens;
    unsigned long long keys[ItemsPerThread];
    for (int i = 0; i < ItemsPerThread; ++i) {
      std::int64_t const t = first + i;
      keys[i] = t < tokens ? detail::token_rank_key(column[t], t) : ~0ull;  // unused items sort last
    }
    Sort(smem.sort).sort(keys);
    for (int i = 0; i < ItemsPerThread; ++i) {
      std::int64_t const position = first + i;
      if (position >= tokens) {
        break;
      }
      auto const t = static_cast<std::int64_t>(keys[i] & 0xffffffffull);
      if (position < capacity) {
        token_ids[e * ids_stride + position] = static_cast<int>(t);
        gates[e * gates_stride + position] = column[t];
      }
      if (token_marks != nullptr) {
        token_marks[t * marks_stride + e] = position < capacity ? static_cast<int>(position) : -1;
      }
    }
    arch::sync_threads();  // the sort's storage is reused for the next expert
  }
}

// Per token: the marks of its row become the list of experts that chose it (ascending expert),
// then E; the gates follow the same order, then 0. In place: slot j <= e is written only after
// mark j has been read.
template <int Threads = expert_choice_block_threads>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(Threads, 1)
    expert_choice_token_slots_kernel(float const* gates, std::int64_t gates_stride, std::int64_t tokens, int experts,
                                     int* token_experts, std::int64_t experts_stride, float* token_gates,
                                     std::int64_t token_gates_stride, int* token_counts) {
  std::int64_t const stride = std::int64_t{arch::grid_dim().x} * Threads;
  for (std::int64_t t = std::int64_t{arch::block_rank()} * Threads + arch::thread_rank(); t < tokens; t += stride) {
    int* ids = token_experts + t * experts_stride;
    float* w = token_gates + t * token_gates_stride;
    int count = 0;
    for (int e = 0; e < experts; ++e) {
      int const slot = ids[e];
      if (slot >= 0) {
        ids[count] = e;
        w[count] = gates[e * gates_stride + slot];
        ++count;
      }
    }
    for (int j = count; j < experts; ++j) {
      ids[j] = experts;
      w[j] = 0.f;
    }
    if (token_counts != nullptr) {
      token_counts[t] = count;
    }
  }
}

template <int ItemsPerThread>
Status launch_expert_choice_select(ExpertChoice const& r, ExpertChoiceBuffers<MemorySpace::device> const& b,
                                   float const* scores, std::int64_t tokens, std::int64_t capacity, unsigned blocks,
                                   arch::Stream stream) {
  arch::KernelLaunch const l{.grid = blocks,
                             .block = expert_choice_block_threads,
                             .dynamic_shared_bytes = sizeof(ExpertChoiceSortStorage<ItemsPerThread>)};
  return arch::launch(expert_choice_select_kernel<ItemsPerThread>, l, stream, scores, tokens, r.experts, capacity,
                      b.token_ids.data, b.token_ids.stride(0), b.gates.data, b.gates.stride(0), b.token_experts.data,
                      b.token_experts.stride(0));
}

// Routes one group on `stream`: no host synchronisation, no allocation. `workspace` holds
// r.workspace_size(T) bytes (256-byte aligned). `max_blocks` (0: no cap) caps the grids;
// results are identical for any value. Diagnostics are added to, not reset.
[[nodiscard]] inline Status route(ExpertChoice const& r, ExpertChoiceBuffers<MemorySpace::device> const& b,
                                  void* workspace, std::size_t workspace_bytes, Diagnostics* diagnostics,
                                  arch::Stream stream, unsigned max_blocks = 0) {
  if (Status s = check_expert_choice_buffers(r, b); !s) {
    return s;
  }
  if (diagnostics == nullptr) {
    return error(Status::invalid_argument, "expert choice: diagnostics must point to device memory");
  }
  std::int64_t const tokens = b.logits.extent(0);
  if (tokens > ExpertChoice::max_tokens) {
    return error(Status::unsupported_config,
                 "expert choice: %lld tokens exceed the device path's routing group of at most %lld tokens; split the "
                 "batch into groups (the reference's max_group_size is 4096)",
                 static_cast<long long>(tokens), static_cast<long long>(ExpertChoice::max_tokens));
  }
  Workspace w(workspace, workspace_bytes);
  float* scores = routing::detail::carve_expert_choice(r.experts, tokens, w);
  if (!w.status()) {
    return error(w.status(),
                 "expert choice: workspace buffer '%s' needs %zu bytes, %zu left (workspace_size(%lld) = %zu)",
                 w.failed_buffer(), w.failed_bytes(), w.bytes_left_at_failure(), static_cast<long long>(tokens),
                 r.workspace_size(tokens));
  }
  if (tokens == 0) {
    return Status::ok;
  }
  auto cap = [max_blocks](std::int64_t wanted) {
    wanted = wanted > 65535 ? 65535 : wanted;
    return static_cast<unsigned>(max_blocks != 0 && wanted > max_blocks ? max_blocks : wanted);
  };
  unsigned const token_blocks = cap((tokens + expert_choice_block_threads - 1) / expert_choice_block_threads);
  arch::KernelLaunch const per_token{.grid = token_blocks, .block = expert_choice_block_threads};
  if (Status s = arch::launch(expert_choice_scores_kernel<expert_choice_block_threads>, per_token, stream,
                              b.logits.data, b.logits.stride(0), b.valid, tokens, r.experts, scores, diagnostics);
      !s) {
    return s;
  }
  std::int64_t const capacity = r.capacity(tokens);
  unsigned const expert_blocks = cap(r.experts);
  Status s = Status::ok;
  if (tokens <= expert_choice_block_threads) {
    s = launch_expert_choice_select<1>(r, b, scores, tokens, capacity, expert_blocks, stream);
  } else if (tokens <= 4 * expert_choice_block_threads) {
    s = launch_expert_choice_select<4>(r, b, scores, tokens, capacity, expert_blocks, stream);
  } else {
    s = launch_expert_choice_select<16>(r, b, scores, tokens, capacity, expert_blocks, stream);
  }
  if (!s || b.token_experts.data == nullptr) {
    return s;
  }
  return arch::launch(expert_choice_token_slots_kernel<expert_choice_block_threads>, per_token, stream, b.gates.data,
                      b.gates.stride(0), tokens, r.experts, b.token_experts.data, b.token_experts.stride(0),
                      b.token_gates.data, b.token_gates.stride(0), b.token_counts);
}

static_assert(16 * expert_choice_block_threads == ExpertChoice::max_tokens,
              "the largest selection kernel must cover max_tokens");

MOEKIT_ARCH_NAMESPACE_END
}  // namespace routing
MOEKIT_NAMESPACE_END
