#pragma once
// Depth routers: which tokens go through a layer at all (ALGORITHMS.md §4 preamble, §4.5, §4.6).
//   MixtureOfDepths  top-C tokens per sequence by a raw scalar router score r = w·x; the block's
//                    increment is scaled by r; BCE auxiliary loss (causal predictor rule r > 0).
//   GammaMod         γ-MoD: 2-way softmax router p = σ(l1 − l0), masked tokens never skipped,
//                    n_skip = floor(ρ·n_routable + 1e-9), CE toward its own choices; threshold
//                    inference (p > 0.005 prefill, p >= 0.5 decode); select_mod_layers by ARank.
// Both are batch-scope routers with a checked host entry point and a device entry point.
//
// The fp32 arithmetic is fixed so that the host path, the emulated kernel and the GPU agree bit
// for bit on scores and selections:
//  - every router dot product of length n is the "lane order" sum (lane_order_dot): 32 partial
//    sums, partial l = fmaf over k = l, l+32, ... ascending from 0, then partial[l] + partial[l^o]
//    for o = 16, 8, 4, 2, 1 (a warp's xor butterfly);
//  - selection sorts the uint32 selection_key of each score (larger score first, +inf an ordinary
//    value, -0 == +0, NaN after -inf), stably, so ties go to the lower position;
//  - per-sequence loss sums go over chunks of 16 positions (chunk c = positions [16c, 16c+16),
//    ascending), then over the chunks ascending; the batch total sums sequence b into partial
//    b mod 256, then the 256 partials ascending.
// Device: one block of 256 threads per sequence (a grid-stride loop over sequences, so results do
// not depend on the grid), a block radix sort of the keys (S <= 4096), compaction by a block scan.

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <numeric>
#include <span>
#include <type_traits>
#include <vector>

#include "moekit/arch/arch.hpp"
#include "moekit/config.hpp"
#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/core/workspace.hpp"
#include "moekit/routing/concept.hpp"
#include "moekit/routing/ranking.hpp"

// Full unrolling of the loops over a thread's keys, so they stay in registers (nvcc only).
#if MOEKIT_CUDA_COMPILER
#define MOEKIT_DEPTH_UNROLL _Pragma("unroll")
#else
#define MOEKIT_DEPTH_UNROLL
#endif

MOEKIT_NAMESPACE_BEGIN
namespace routing {

inline constexpr int depth_block_threads = 256;
inline constexpr int depth_items_per_thread = 16;
// The longest sequence a device depth router sorts in one block (256 threads x 16 keys).
inline constexpr std::int64_t max_depth_sequence = std::int64_t{depth_block_threads} * depth_items_per_thread;

namespace depth_detail {

inline constexpr std::uint32_t forced_key = 0u;            // selected before any score (masked, token 0)
inline constexpr std::uint32_t padding_key = 0xffffffffu;  // NaN's key; padding sorts after NaN by position

// The sort key of a score: ascending key order is the selection order (ALGORITHMS.md §0).
[[nodiscard]] MOEKIT_HOST_DEVICE inline std::uint32_t selection_key(float s) noexcept {
  if (s != s) {
    return padding_key;
  }
  if (s == 0.f) {
    s = 0.f;  // -0 ties +0
  }
  std::uint32_t u;
  std::memcpy(&u, &s, sizeof u);
  u = (u & 0x80000000u) != 0 ? ~u : (u | 0x80000000u);  // ascending in the float's order
  return ~u;                                            // descending; +inf gives 0x007fffff > forced_key
}

// NaN or +inf: what the device counts in Diagnostics::nonfinite_rows and the host refuses.
[[nodiscard]] MOEKIT_HOST_DEVICE inline bool is_bad_score(float s) noexcept { return s != s || s == INFINITY; }

// The lane-order dot product (see the top of this file), serially: the host path of every
// router whose device kernel computes it with a warp.
template <class A, class B>
[[nodiscard]] MOEKIT_HOST_DEVICE inline float lane_order_dot(A const* a, B const* b, std::int64_t n) noexcept {
  float partial[32];
  for (int l = 0; l < 32; ++l) {
    partial[l] = 0.f;
  }
  for (std::int64_t k = 0; k < n; ++k) {
    float& p = partial[k % 32];
    p = ::fmaf(static_cast<float>(a[k]), static_cast<float>(b[k]), p);
  }
  for (int o = 16; o > 0; o >>= 1) {
    float next[32];
    for (int l = 0; l < 32; ++l) {
      next[l] = partial[l] + partial[l ^ o];
    }
    for (int l = 0; l < 32; ++l) {
      partial[l] = next[l];
    }
  }
  return partial[0];
}

// softplus(z) = max(z, 0) + log1p(e^-|z|) in fp32 (log1p as log(1 + x): absolute error ~1 ulp of 1).
[[nodiscard]] MOEKIT_HOST_DEVICE inline float softplus(float z) noexcept {
  float const a = z < 0.f ? -z : z;
  float const m = z > 0.f ? z : 0.f;
  return m + fp32::log(1.f + fp32::exp(-a));
}

// floor(x * n + 1e-9) as one correctly rounded fma, so host and device (which would contract
// x * n + 1e-9 itself) give the same integer.
[[nodiscard]] MOEKIT_HOST_DEVICE inline std::int64_t floor_count(double x, std::int64_t n) noexcept {
  return static_cast<std::int64_t>(::floor(::fma(x, static_cast<double>(n), 1e-9)));
}

// Host replicas of the device's fixed summation orders.
[[nodiscard]] inline float chunked_sum(float const* terms, std::int64_t n) {
  float total = 0.f;
  for (std::int64_t c = 0; c * depth_items_per_thread < n; ++c) {
    float chunk = 0.f;
    for (std::int64_t i = c * depth_items_per_thread; i < std::min(n, (c + 1) * depth_items_per_thread); ++i) {
      chunk += terms[i];
    }
    total += chunk;
  }
  return total;
}
[[nodiscard]] inline float ordered_mean(std::vector<float> const& partials, float divisor) {
  float lanes[depth_block_threads] = {};
  for (std::size_t b = 0; b < partials.size(); ++b) {
    lanes[b % depth_block_threads] += partials[b];
  }
  float total = 0.f;
  for (float v : lanes) {
    total += v;
  }
  return divisor > 0.f ? total / divisor : 0.f;
}

// Positions 0..n-1 in selection order of keys (ascending key, ties to the lower position).
[[nodiscard]] inline std::vector<std::int64_t> selection_order(std::vector<std::uint32_t> const& keys) {
  std::vector<std::int64_t> order(keys.size());
  std::iota(order.begin(), order.end(), std::int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](std::int64_t a, std::int64_t b) { return keys[a] < keys[b]; });
  return order;
}

// A view the caller handed over (a default-constructed view means "not wanted").
template <class View>
[[nodiscard]] bool present(View const& v) noexcept {
  if (v.data != nullptr) {
    return true;
  }
  for (auto e : v.extents) {
    if (e != 0) {
      return true;
    }
  }
  return false;
}

template <std::size_t Rank>
void format_shape(char (&out)[128], std::array<std::int64_t, Rank> const& e) {
  int used = std::snprintf(out, sizeof out, "[");
  for (std::size_t d = 0; d < Rank && used > 0 && used < static_cast<int>(sizeof out); ++d) {
    used += std::snprintf(out + used, sizeof out - static_cast<std::size_t>(used), d + 1 < Rank ? "%lld, " : "%lld",
                          static_cast<long long>(e[d]));
  }
  if (used > 0 && used < static_cast<int>(sizeof out)) {
    std::snprintf(out + used, sizeof out - static_cast<std::size_t>(used), "]");
  }
}

// Shape, strides (last dimension contiguous, rows that do not overlap) and alignment of a view.
template <class T, int Rank, MemorySpace Space>
[[nodiscard]] Status check_view(TensorView<T, Rank, Space> const& v, char const* what,
                                std::type_identity_t<std::array<std::int64_t, Rank>> const& shape) {
  if (!v.validate()) {
    return error(Status::invalid_argument, "%s: null pointer or negative extent/stride", what);
  }
  if (v.extents != shape) {
    char expected[128], got[128];
    format_shape(expected, shape);
    format_shape(got, v.extents);
    return error(Status::invalid_argument, "%s: expected %s, got %s", what, expected, got);
  }
  if (v.size() == 0) {
    return Status::ok;
  }
  if (shape[Rank - 1] > 1 && v.stride(Rank - 1) != 1) {
    return error(Status::invalid_argument, "%s: the last dimension must be contiguous (stride %lld)", what,
                 static_cast<long long>(v.stride(Rank - 1)));
  }
  for (int d = 0; d + 1 < Rank; ++d) {
    std::int64_t const inner = shape[d + 1] * (d + 1 == Rank - 1 ? 1 : v.stride(d + 1));
    if (shape[d] > 1 && v.stride(d) < inner) {
      return error(Status::invalid_argument, "%s: dimension %d overlaps the next (stride %lld < %lld)", what, d,
                   static_cast<long long>(v.stride(d)), static_cast<long long>(inner));
    }
  }
  if (!v.is_aligned(alignof(T))) {
    return error(Status::misaligned, "%s: pointer not aligned to %zu bytes", what, alignof(T));
  }
  return Status::ok;
}

// A present view is checked against `shape`; an absent one is fine unless `required`.
template <class T, int Rank, MemorySpace Space>
[[nodiscard]] Status check_optional(TensorView<T, Rank, Space> const& v, char const* what,
                                    std::type_identity_t<std::array<std::int64_t, Rank>> const& shape,
                                    bool required = false) {
  if (!present(v)) {
    std::int64_t size = 1;
    for (std::int64_t e : shape) {
      size *= e;
    }
    // An output of no elements may be left out even when required (an empty problem).
    return required && size > 0 ? error(Status::invalid_argument, "%s: required but not given", what) : Status::ok;
  }
  return check_view(v, what, shape);
}

// The per-sequence loss partials every device depth router keeps in the caller's workspace.
[[nodiscard]] inline float* carve_partials(void* workspace, std::size_t bytes, std::int64_t batch, char const* who,
                                           Status& status) {
  Workspace w(workspace, bytes);
  float* p = w.take<float>(batch, "per-sequence loss partials");
  status = w.status();
  if (status == Status::misaligned) {
    status = error(status, "%s: workspace must be aligned to %zu bytes", who, Workspace::default_alignment);
  } else if (!status) {
    status = error(status, "%s: workspace: %s needs %zu bytes, %zu left (ask workspace_size())", who, w.failed_buffer(),
                   w.failed_bytes(), w.bytes_left_at_failure());
  }
  return p;
}

[[nodiscard]] inline std::size_t partials_bytes(std::int64_t batch) {
  Workspace w;
  (void)w.take<float>(batch < 0 ? 0 : batch, "per-sequence loss partials");
  return w.bytes_used();
}

// Non-finite router inputs (checked mode: any NaN or ±inf in x or the weights is refused).
template <class T>
[[nodiscard]] Status check_finite_inputs(HostTensor<T const, 3> const& x, char const* who) {
  for (std::int64_t b = 0; b < x.extent(0); ++b) {
    for (std::int64_t i = 0; i < x.extent(1); ++i) {
      for (std::int64_t h = 0; h < x.extent(2); ++h) {
        float const v = static_cast<float>(x(b, i, h));
        if (!std::isfinite(v)) {
          return error(Status::invalid_argument,
                       "%s: non-finite router input %g at sequence %lld, position %lld, feature %lld", who, double(v),
                       static_cast<long long>(b), static_cast<long long>(i), static_cast<long long>(h));
        }
      }
    }
  }
  return Status::ok;
}
template <class T>
[[nodiscard]] Status check_finite_weights(T const* w, std::int64_t n, char const* who, char const* name) {
  for (std::int64_t k = 0; k < n; ++k) {
    float const v = static_cast<float>(w[k]);
    if (!std::isfinite(v)) {
      return error(Status::invalid_argument, "%s: non-finite %s %g at index %lld", who, name, double(v),
                   static_cast<long long>(k));
    }
  }
  return Status::ok;
}

}  // namespace depth_detail

MOEKIT_ARCH_NAMESPACE_BEGIN
namespace depth_device {

using SelectSort = arch::BlockRadixSort<std::uint32_t, depth_block_threads, depth_items_per_thread, int>;
using SelectScan = arch::BlockScan<int, depth_block_threads>;
inline constexpr int warps = depth_block_threads / static_cast<int>(arch::warp_size);

// Shared memory of a block that selects and compacts positions of one sequence.
struct SelectStorage {
  union Temp {
    typename SelectSort::TempStorage sort;
    typename SelectScan::TempStorage scan;
  } temp;
  arch::SharedArray<std::uint8_t, max_depth_sequence> keep;
  arch::SharedArray<float, depth_block_threads> partial;
  arch::SharedArray<float, 1> scalar;
};

// The lane-order dot product with one warp (every lane gets the same bits: + is commutative).
template <class A, class B>
MOEKIT_DEVICE inline float warp_dot(A const* a, B const* b, std::int64_t n) {
  float acc = 0.f;
  for (std::int64_t k = arch::lane_id(); k < n; k += arch::warp_size) {
    acc = ::fmaf(static_cast<float>(a[k]), static_cast<float>(b[k]), acc);
  }
  for (int o = 16; o > 0; o >>= 1) {
    acc = acc + arch::shfl_xor_sync(arch::full_warp_mask, acc, o);
  }
  return acc;
}

// Marks in s.keep the first `count` of the n positions in ascending key order (ties to the lower
// position); thread t holds the keys of positions [16t, 16t + 16), padding_key past n. Call after
// a barrier that ends every earlier use of s.temp; ends with one.
MOEKIT_DEVICE inline void mark_top(SelectStorage& s, std::uint32_t (&keys)[depth_items_per_thread],
                                   std::int64_t count) {
  int const base = static_cast<int>(arch::thread_rank()) * depth_items_per_thread;
  int values[depth_items_per_thread];
  MOEKIT_DEPTH_UNROLL
  for (int j = 0; j < depth_items_per_thread; ++j) {
    values[j] = base + j;
    s.keep[static_cast<std::size_t>(base + j)] = std::uint8_t{0};
  }
  SelectSort(s.temp.sort).sort(keys, values);
  MOEKIT_DEPTH_UNROLL
  for (int j = 0; j < depth_items_per_thread; ++j) {
    if (base + j < count) {
      s.keep[static_cast<std::size_t>(values[j])] = std::uint8_t{1};
    }
  }
  arch::sync_threads();
}

// Writes the marked positions of [0, n) ascending to selected[0..total) (then `fill` up to
// fill_to) and the 0/1 mask to keep_out; either may be null. Returns the number marked, in every
// thread. Call after a barrier; ends with one.
MOEKIT_DEVICE inline int compact(SelectStorage& s, std::int64_t n, int* selected, std::int64_t fill_to, int fill,
                                 std::uint8_t* keep_out) {
  int const base = static_cast<int>(arch::thread_rank()) * depth_items_per_thread;
  int count = 0;
  for (int j = 0; j < depth_items_per_thread; ++j) {
    if (base + j < n && s.keep[static_cast<std::size_t>(base + j)] != 0) {
      ++count;
    }
  }
  int offset = 0;
  int total = 0;
  SelectScan(s.temp.scan).exclusive_sum(count, offset, total);
  for (int j = 0; j < depth_items_per_thread; ++j) {
    int const pos = base + j;
    if (pos >= n) {
      break;
    }
    bool const kept = s.keep[static_cast<std::size_t>(pos)] != 0;
    if (keep_out != nullptr) {
      keep_out[pos] = kept ? std::uint8_t{1} : std::uint8_t{0};
    }
    if (kept && selected != nullptr) {
      selected[offset++] = pos;
    }
  }
  if (selected != nullptr) {
    for (std::int64_t i = total + static_cast<std::int64_t>(arch::thread_rank()); i < fill_to;
         i += depth_block_threads) {
      selected[i] = fill;
    }
  }
  arch::sync_threads();
  return total;
}

// The sum of one value per thread in thread order; valid in thread 0. Reuse s.partial only
// after a barrier.
MOEKIT_DEVICE inline float ordered_sum(SelectStorage& s, float v) {
  unsigned const t = arch::thread_rank();
  s.partial[t] = v;
  arch::sync_threads();
  float total = 0.f;
  if (t == 0) {
    for (int i = 0; i < depth_block_threads; ++i) {
      total += s.partial[static_cast<std::size_t>(i)];
    }
  }
  return total;
}

struct MeanStorage {
  arch::SharedArray<float, depth_block_threads> lanes;
};

}  // namespace depth_device

// out[0] = (sum of partial[0..n)) / divisor in the fixed order of depth_detail::ordered_mean
// (0 when divisor is 0). One block of depth_block_threads threads.
template <int BlockThreads>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(BlockThreads, 1)
    depth_ordered_mean_kernel(float const* partial, std::int64_t n, float divisor, float* out) {
  static_assert(BlockThreads == depth_block_threads, "the order is defined for depth_block_threads lanes");
  auto& s = arch::shared_storage<depth_device::MeanStorage>();
  unsigned const t = arch::thread_rank();
  float acc = 0.f;
  for (std::int64_t i = t; i < n; i += BlockThreads) {
    acc += partial[i];
  }
  s.lanes[t] = acc;
  arch::sync_threads();
  if (t == 0) {
    float total = 0.f;
    for (int i = 0; i < BlockThreads; ++i) {
      total += s.lanes[static_cast<std::size_t>(i)];
    }
    out[0] = divisor > 0.f ? total / divisor : 0.f;
  }
}

namespace depth_device {
[[nodiscard]] inline Status launch_mean(float const* partial, std::int64_t n, float divisor, float* out,
                                        arch::Stream stream) {
  arch::KernelLaunch const l{.grid = 1, .block = depth_block_threads, .dynamic_shared_bytes = sizeof(MeanStorage)};
  return arch::launch(depth_ordered_mean_kernel<depth_block_threads>, l, stream, partial, n, divisor, out);
}
[[nodiscard]] inline unsigned grid_for(std::int64_t batch, unsigned max_blocks) {
  std::int64_t blocks = batch < 65535 ? batch : 65535;
  if (max_blocks != 0 && blocks > max_blocks) {
    blocks = max_blocks;
  }
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks);
}
}  // namespace depth_device
MOEKIT_ARCH_NAMESPACE_END

// ---------------------------------------------------------------------------------------------
// Mixture-of-Depths (§4.5)

struct MixtureOfDepths {
  static constexpr RouterScope scope = RouterScope::per_batch;

  double capacity_fraction = 0.125;  // c: C = ceil(c·S − 1e-9) tokens per sequence (paper: 12.5%)
  std::int64_t capacity = -1;        // an integer C instead (>= 0); -1: use capacity_fraction

  // The causal rule at sampling (§4.5 step 5a, router trained with the BCE aux loss): a token
  // is processed iff r > 0, i.e. σ(r) > 0.5. Not capacity-exact.
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr bool process_at_sampling(float r) noexcept { return r > 0.f; }

  [[nodiscard]] Status validate() const {
    if (capacity < -1) {
      return error(Status::invalid_argument,
                   "MixtureOfDepths: capacity must be >= 0, or -1 to use capacity_fraction (got %lld)",
                   static_cast<long long>(capacity));
    }
    if (capacity == -1 && !(capacity_fraction >= 0.0 && capacity_fraction <= 1.0)) {
      return error(Status::invalid_argument, "MixtureOfDepths: capacity fraction must be in [0,1] (got %g)",
                   capacity_fraction);
    }
    return Status::ok;
  }

  // C for sequences of `length` tokens.
  [[nodiscard]] Status capacity_for(std::int64_t length, std::int64_t& c) const {
    if (Status s = validate(); !s) {
      return s;
    }
    std::int64_t const v =
        capacity >= 0 ? capacity : static_cast<std::int64_t>(std::ceil(capacity_fraction * double(length) - 1e-9));
    if (v > length) {
      return error(Status::invalid_argument, "MixtureOfDepths: capacity exceeds sequence length (C=%lld, S=%lld)",
                   static_cast<long long>(v), static_cast<long long>(length));
    }
    c = v < 0 ? 0 : v;
    return Status::ok;
  }
};
static_assert(diagnose_router<MixtureOfDepths>() && Router<MixtureOfDepths>);

// The router input is either the scores r [B, S] or the block input x [B, S, H] with the router
// weight w [H] (then r = w·x in lane order is written to scores_out). At least one of selected
// and keep is wanted; the others may be left default (absent).
template <MemorySpace Space, class T = float>
struct MixtureOfDepthsBuffers {
  TensorView<float const, 2, Space> scores;  // r [B, S], or absent with x
  TensorView<T const, 3, Space> x;           // [B, S, H]
  TensorView<T const, 1, Space> weight;      // w [H]
  TensorView<float, 2, Space> scores_out;    // r [B, S]; required with x
  TensorView<int, 2, Space> selected;        // [B, C]: selected positions, ascending
  TensorView<std::uint8_t, 2, Space> keep;   // [B, S]: 1 = selected
  TensorView<float, 2, Space> grad_scores;   // ∂L_aux/∂r = (σ(r) − y)/(B·S) [B, S]
  TensorView<float, 1, Space> aux_loss;      // L_aux = mean softplus(r) − y·r [1]
};

namespace depth_detail {
struct SequenceShape {
  std::int64_t batch = 0, length = 0, hidden = 0, capacity = 0;
};

template <MemorySpace Space, class T>
[[nodiscard]] Status check_buffers(MixtureOfDepths const& r, MixtureOfDepthsBuffers<Space, T> const& b,
                                   SequenceShape& shape) {
  if (Status s = r.validate(); !s) {
    return s;
  }
  bool const from_x = present(b.x);
  if (from_x ? present(b.scores) : !present(b.scores) && (present(b.selected) || present(b.keep))) {
    return error(Status::invalid_argument,
                 "MixtureOfDepths: give either scores [B, S] or x [B, S, H] with weight [H], not both");
  }
  if (from_x) {
    shape = {b.x.extent(0), b.x.extent(1), b.x.extent(2), 0};
    if (Status s = check_view(b.x, "MixtureOfDepths: x", {shape.batch, shape.length, shape.hidden}); !s) {
      return s;
    }
    if (Status s = check_optional(b.weight, "MixtureOfDepths: weight", {shape.hidden}, true); !s) {
      return s;
    }
    if (Status s = check_optional(b.scores_out, "MixtureOfDepths: scores_out", {shape.batch, shape.length}, true); !s) {
      return s;
    }
  } else {
    shape = {b.scores.extent(0), b.scores.extent(1), 0, 0};
    if (Status s = check_view(b.scores, "MixtureOfDepths: scores", {shape.batch, shape.length}); !s) {
      return s;
    }
    if (present(b.scores_out)) {
      return error(Status::invalid_argument, "MixtureOfDepths: scores_out is written only when routing from x");
    }
  }
  if (Status s = r.capacity_for(shape.length, shape.capacity); !s) {
    return s;
  }
  if (shape.batch * shape.length > 0 && !present(b.selected) && !present(b.keep)) {
    return error(Status::invalid_argument, "MixtureOfDepths: want at least one of selected [B, C] and keep [B, S]");
  }
  if (Status s = check_optional(b.selected, "MixtureOfDepths: selected", {shape.batch, shape.capacity}); !s) {
    return s;
  }
  if (Status s = check_optional(b.keep, "MixtureOfDepths: keep", {shape.batch, shape.length}); !s) {
    return s;
  }
  if (Status s = check_optional(b.grad_scores, "MixtureOfDepths: grad_scores", {shape.batch, shape.length}); !s) {
    return s;
  }
  return check_optional(b.aux_loss, "MixtureOfDepths: aux_loss", {1});
}
}  // namespace depth_detail

// Bytes of device workspace the device entry point needs for `batch` sequences (when a loss is
// wanted; without one, the workspace may be null).
[[nodiscard]] inline std::size_t workspace_size(MixtureOfDepths const&, std::int64_t batch) {
  return depth_detail::partials_bytes(batch);
}

// Host entry point, checked mode: a NaN or +inf score (or any non-finite x or w) is refused,
// naming the sequence and position, before any output is written. Same fp32 arithmetic as the
// device kernel.
template <class T>
[[nodiscard]] Status route(MixtureOfDepths const& router, MixtureOfDepthsBuffers<MemorySpace::host, T> const& b) {
  depth_detail::SequenceShape sh;
  if (Status s = depth_detail::check_buffers(router, b, sh); !s) {
    return s;
  }
  auto const n = static_cast<std::size_t>(sh.batch * sh.length);
  std::vector<float> r(n);
  bool const from_x = depth_detail::present(b.x);
  if (from_x) {
    if (Status s = depth_detail::check_finite_inputs(b.x, "MixtureOfDepths"); !s) {
      return s;
    }
    if (Status s = depth_detail::check_finite_weights(b.weight.data, sh.hidden, "MixtureOfDepths", "router weight");
        !s) {
      return s;
    }
  }
  for (std::int64_t s = 0; s < sh.batch; ++s) {
    for (std::int64_t i = 0; i < sh.length; ++i) {
      float const v =
          from_x ? depth_detail::lane_order_dot(b.x.pointer(s, i, 0), b.weight.data, sh.hidden) : b.scores(s, i);
      if (depth_detail::is_bad_score(v)) {
        return error(Status::invalid_argument,
                     "MixtureOfDepths: non-finite routing score %g at sequence %lld, position %lld", double(v),
                     static_cast<long long>(s), static_cast<long long>(i));
      }
      r[static_cast<std::size_t>(s * sh.length + i)] = v;
    }
  }
  float const divisor = static_cast<float>(double(sh.batch) * double(sh.length));
  std::vector<float> partials(static_cast<std::size_t>(sh.batch));
  std::vector<std::uint32_t> keys(static_cast<std::size_t>(sh.length));
  std::vector<std::uint8_t> keep(static_cast<std::size_t>(sh.length));
  std::vector<float> terms(static_cast<std::size_t>(sh.length));
  for (std::int64_t s = 0; s < sh.batch; ++s) {
    float const* rs = r.data() + s * sh.length;
    for (std::int64_t i = 0; i < sh.length; ++i) {
      keys[i] = depth_detail::selection_key(rs[i]);
      keep[i] = 0;
    }
    std::vector<std::int64_t> const order = depth_detail::selection_order(keys);
    for (std::int64_t j = 0; j < sh.capacity; ++j) {
      keep[order[j]] = 1;
    }
    std::int64_t next = 0;
    for (std::int64_t i = 0; i < sh.length; ++i) {
      bool const y = keep[i] != 0;
      if (from_x) {
        b.scores_out(s, i) = rs[i];
      }
      if (y && depth_detail::present(b.selected)) {
        b.selected(s, next) = static_cast<int>(i);
      }
      next += y ? 1 : 0;
      if (depth_detail::present(b.keep)) {
        b.keep(s, i) = keep[i];
      }
      if (depth_detail::present(b.grad_scores)) {
        b.grad_scores(s, i) = (fp32::sigmoid(rs[i]) - (y ? 1.f : 0.f)) / divisor;
      }
      float const sp = depth_detail::softplus(rs[i]);
      terms[i] = y ? sp - rs[i] : sp;
    }
    partials[s] = depth_detail::chunked_sum(terms.data(), sh.length);
  }
  if (depth_detail::present(b.aux_loss)) {
    b.aux_loss(0) = depth_detail::ordered_mean(partials, divisor);
  }
  return Status::ok;
}

MOEKIT_ARCH_NAMESPACE_BEGIN

template <class T>
struct ModKernelParams {
  std::int64_t batch, length, hidden, capacity;
  float const* scores;
  std::int64_t scores_stride;
  T const* x;
  std::int64_t x_stride0, x_stride1;
  T const* weight;
  float* scores_out;
  std::int64_t scores_out_stride;
  int* selected;
  std::int64_t selected_stride;
  std::uint8_t* keep;
  std::int64_t keep_stride;
  float* grad;
  std::int64_t grad_stride;
  float divisor;   // B·S
  float* partial;  // [B] or null
  Diagnostics* diagnostics;
};

template <class T>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(depth_block_threads, 1) mod_route_kernel(ModKernelParams<T> p) {
  using namespace depth_device;
  auto& s = arch::shared_storage<SelectStorage>();
  unsigned const t = arch::thread_rank();
  int const base = static_cast<int>(t) * depth_items_per_thread;
  for (std::int64_t b = arch::block_rank(); b < p.batch; b += arch::grid_dim().x) {
    arch::sync_threads();  // the previous sequence is done with shared memory
    if (p.x != nullptr) {
      for (std::int64_t i = arch::warp_id(); i < p.length; i += warps) {
        float const r = warp_dot(p.x + b * p.x_stride0 + i * p.x_stride1, p.weight, p.hidden);
        if (arch::lane_id() == 0) {
          p.scores_out[b * p.scores_out_stride + i] = r;
        }
      }
      arch::sync_threads();  // every score of the sequence is written
    }
    float const* r = p.x != nullptr ? p.scores_out + b * p.scores_out_stride : p.scores + b * p.scores_stride;
    std::uint32_t keys[depth_items_per_thread];
    unsigned long long bad = 0;
    MOEKIT_DEPTH_UNROLL
    for (int j = 0; j < depth_items_per_thread; ++j) {
      float const v = base + j < p.length ? r[base + j] : 0.f;
      keys[j] = base + j < p.length ? depth_detail::selection_key(v) : depth_detail::padding_key;
      bad += base + j < p.length && depth_detail::is_bad_score(v) ? 1u : 0u;
    }
    if (bad != 0) {
      arch::atomic_add(&p.diagnostics->nonfinite_rows, bad);
    }
    mark_top(s, keys, p.capacity);
    (void)compact(s, p.length, p.selected != nullptr ? p.selected + b * p.selected_stride : nullptr, 0, 0,
                  p.keep != nullptr ? p.keep + b * p.keep_stride : nullptr);
    float acc = 0.f;
    for (int j = 0; j < depth_items_per_thread && base + j < p.length; ++j) {
      float const v = r[base + j];
      bool const y = s.keep[static_cast<std::size_t>(base + j)] != 0;
      if (p.grad != nullptr) {
        p.grad[b * p.grad_stride + base + j] = (fp32::sigmoid(v) - (y ? 1.f : 0.f)) / p.divisor;
      }
      float const sp = depth_detail::softplus(v);
      acc += y ? sp - v : sp;
    }
    float const total = ordered_sum(s, acc);
    if (t == 0 && p.partial != nullptr) {
      p.partial[b] = total;
    }
  }
}

// Device entry point: one block per sequence, no host synchronisation, no allocation. NaN and
// +inf scores are counted in diagnostics->nonfinite_rows (one per token); NaN ranks last.
// `workspace` (workspace_size bytes) is needed only when aux_loss is wanted. `max_blocks` caps
// the grid (0: one block per sequence); results are identical for any value.
template <class T>
[[nodiscard]] Status route(MixtureOfDepths const& router, MixtureOfDepthsBuffers<MemorySpace::device, T> const& b,
                           void* workspace, std::size_t workspace_bytes, Diagnostics* diagnostics, arch::Stream stream,
                           unsigned max_blocks = 0) {
  depth_detail::SequenceShape sh;
  if (Status s = depth_detail::check_buffers(router, b, sh); !s) {
    return s;
  }
  if (diagnostics == nullptr) {
    return error(Status::invalid_argument, "MixtureOfDepths: diagnostics must point to device memory");
  }
  if (sh.length > max_depth_sequence) {
    return error(Status::unsupported_config,
                 "MixtureOfDepths: sequence length %lld exceeds the device kernel's bound %lld (one block sorts a "
                 "sequence)",
                 static_cast<long long>(sh.length), static_cast<long long>(max_depth_sequence));
  }
  bool const loss = depth_detail::present(b.aux_loss);
  float* partial = nullptr;
  if (loss) {
    Status s = Status::ok;
    partial = depth_detail::carve_partials(workspace, workspace_bytes, sh.batch, "MixtureOfDepths", s);
    if (!s) {
      return s;
    }
  }
  float const divisor = static_cast<float>(double(sh.batch) * double(sh.length));
  if (sh.batch > 0) {
    ModKernelParams<T> const p{sh.batch,
                               sh.length,
                               sh.hidden,
                               sh.capacity,
                               b.scores.data,
                               b.scores.stride(0),
                               b.x.data,
                               b.x.stride(0),
                               b.x.stride(1),
                               b.weight.data,
                               b.scores_out.data,
                               b.scores_out.stride(0),
                               b.selected.data,
                               b.selected.stride(0),
                               b.keep.data,
                               b.keep.stride(0),
                               b.grad_scores.data,
                               b.grad_scores.stride(0),
                               divisor,
                               partial,
                               diagnostics};
    arch::KernelLaunch const l{.grid = depth_device::grid_for(sh.batch, max_blocks),
                               .block = depth_block_threads,
                               .dynamic_shared_bytes = sizeof(depth_device::SelectStorage)};
    if (Status s = arch::launch(mod_route_kernel<T>, l, stream, p); !s) {
      return s;
    }
  }
  return loss ? depth_device::launch_mean(partial, sh.batch, divisor, b.aux_loss.data, stream) : Status::ok;
}

MOEKIT_ARCH_NAMESPACE_END

// ---------------------------------------------------------------------------------------------
// The block output of a depth router (§4.5 step 4, §4.6 step 3): x[b, p] += scale[b, p] · f[b, j]
// for each selected position p = selected[b, j]; other rows of x are left as they are (in place,
// the residual path of a skipped token). Entries equal to S (γ-MoD's padding) are skipped;
// f [B, K, H] is the block's increment for the compacted selected tokens. fmaf, so host and
// device agree bit for bit.

template <MemorySpace Space>
struct CombineBuffers {
  TensorView<int const, 2, Space> selected;  // [B, K] ascending positions, padding S
  TensorView<float const, 2, Space> scale;   // r (MoD) or p (γ-MoD, MLP part) [B, S]
  TensorView<float const, 3, Space> update;  // f [B, K, H]
  TensorView<float, 3, Space> x;             // [B, S, H], updated in place
};

namespace depth_detail {
template <MemorySpace Space>
[[nodiscard]] Status check_combine(CombineBuffers<Space> const& b) {
  std::int64_t const batch = b.x.extent(0), length = b.x.extent(1), hidden = b.x.extent(2);
  std::int64_t const k = b.selected.extent(1);
  if (Status s = check_view(b.x, "combine_selected: x", {batch, length, hidden}); !s) {
    return s;
  }
  if (Status s = check_view(b.selected, "combine_selected: selected", {batch, k}); !s) {
    return s;
  }
  if (Status s = check_view(b.scale, "combine_selected: scale", {batch, length}); !s) {
    return s;
  }
  return check_view(b.update, "combine_selected: update", {batch, k, hidden});
}
}  // namespace depth_detail

// Host: positions must be strictly ascending in [0, S), then padding S only.
[[nodiscard]] inline Status combine_selected(CombineBuffers<MemorySpace::host> const& b) {
  if (Status s = depth_detail::check_combine(b); !s) {
    return s;
  }
  std::int64_t const length = b.x.extent(1);
  for (std::int64_t s = 0; s < b.selected.extent(0); ++s) {
    for (std::int64_t j = 0; j < b.selected.extent(1); ++j) {
      int const p = b.selected(s, j);
      int const prev = j > 0 ? b.selected(s, j - 1) : -1;
      if (p != length && !(p >= 0 && p < length && p > prev)) {
        return error(Status::invalid_argument,
                     "combine_selected: selected[%lld, %lld] = %d is not an ascending position in [0, %lld) or the "
                     "padding %lld (previous %d)",
                     static_cast<long long>(s), static_cast<long long>(j), p, static_cast<long long>(length),
                     static_cast<long long>(length), prev);
      }
    }
  }
  for (std::int64_t s = 0; s < b.selected.extent(0); ++s) {
    for (std::int64_t j = 0; j < b.selected.extent(1); ++j) {
      int const p = b.selected(s, j);
      if (p == length) {
        continue;
      }
      float const g = b.scale(s, p);
      for (std::int64_t h = 0; h < b.x.extent(2); ++h) {
        b.x(s, p, h) = ::fmaf(g, b.update(s, j, h), b.x(s, p, h));
      }
    }
  }
  return Status::ok;
}

MOEKIT_ARCH_NAMESPACE_BEGIN

struct CombineKernelParams {
  std::int64_t batch, length, k, hidden;
  int const* selected;
  std::int64_t selected_stride;
  float const* scale;
  std::int64_t scale_stride;
  float const* update;
  std::int64_t update_stride0, update_stride1;
  float* x;
  std::int64_t x_stride0, x_stride1;
  Diagnostics* diagnostics;
};

// One block per (sequence, selected slot) in a grid-stride loop; threads stride over H. A slot
// that is not strictly above its predecessor (so could alias another row) or out of range is
// skipped and counted in diagnostics->invalid_ids; the padding S is skipped silently.
template <int BlockThreads>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(BlockThreads, 1) depth_combine_kernel(CombineKernelParams p) {
  std::int64_t const rows = p.batch * p.k;
  for (std::int64_t row = arch::block_rank(); row < rows; row += arch::grid_dim().x) {
    std::int64_t const s = row / p.k, j = row % p.k;
    int const* sel = p.selected + s * p.selected_stride;
    int const pos = sel[j];
    if (pos == p.length) {
      continue;
    }
    bool const ok = pos >= 0 && pos < p.length && (j == 0 || sel[j - 1] < pos);
    if (!ok) {
      if (arch::thread_rank() == 0) {
        arch::atomic_add(&p.diagnostics->invalid_ids, 1ull);
      }
      continue;
    }
    float const g = p.scale[s * p.scale_stride + pos];
    float const* f = p.update + s * p.update_stride0 + j * p.update_stride1;
    float* x = p.x + s * p.x_stride0 + pos * p.x_stride1;
    for (std::int64_t h = arch::thread_rank(); h < p.hidden; h += BlockThreads) {
      x[h] = ::fmaf(g, f[h], x[h]);
    }
  }
}

[[nodiscard]] inline Status combine_selected(CombineBuffers<MemorySpace::device> const& b, Diagnostics* diagnostics,
                                             arch::Stream stream, unsigned max_blocks = 0) {
  if (Status s = depth_detail::check_combine(b); !s) {
    return s;
  }
  if (diagnostics == nullptr) {
    return error(Status::invalid_argument, "combine_selected: diagnostics must point to device memory");
  }
  std::int64_t const rows = b.selected.extent(0) * b.selected.extent(1);
  if (rows == 0 || b.x.extent(2) == 0) {
    return Status::ok;
  }
  CombineKernelParams const p{b.x.extent(0),   b.x.extent(1),        b.selected.extent(1), b.x.extent(2),
                              b.selected.data, b.selected.stride(0), b.scale.data,         b.scale.stride(0),
                              b.update.data,   b.update.stride(0),   b.update.stride(1),   b.x.data,
                              b.x.stride(0),   b.x.stride(1),        diagnostics};
  arch::KernelLaunch const l{.grid = depth_device::grid_for(rows, max_blocks), .block = depth_block_threads};
  return arch::launch(depth_combine_kernel<depth_block_threads>, l, stream, p);
}

MOEKIT_ARCH_NAMESPACE_END

// ---------------------------------------------------------------------------------------------
// γ-MoD (§4.6)

enum class ModInference {
  topk,      // training rule: top-k by p + [masked], k = S − floor(ρ·n_routable + 1e-9)
  threshold  // reference inference: p > prefill_threshold when S > 1, p >= decode_threshold when S == 1
};

struct GammaMod {
  static constexpr RouterScope scope = RouterScope::per_batch;

  double routing_ratio = 0.5;  // ρ: skip this fraction of the routable tokens (config.mod capacity_factor)
  ModInference mode = ModInference::topk;
  float prefill_threshold = 0.005f;
  float decode_threshold = 0.5f;

  [[nodiscard]] Status validate() const {
    if (!(routing_ratio >= 0.0 && routing_ratio <= 1.0)) {
      return error(Status::invalid_argument, "GammaMod: routing ratio must be in [0,1] (got %g)", routing_ratio);
    }
    if (!(prefill_threshold >= 0.f && prefill_threshold <= 1.f) ||
        !(decode_threshold >= 0.f && decode_threshold <= 1.f)) {
      return error(Status::invalid_argument,
                   "GammaMod: thresholds must be probabilities in [0,1] (prefill %g, decode %g)",
                   double(prefill_threshold), double(decode_threshold));
    }
    return Status::ok;
  }

  // Tokens kept in top-k mode for a sequence of `length` tokens of which `routable` may be skipped.
  [[nodiscard]] MOEKIT_HOST_DEVICE std::int64_t kept(std::int64_t length, std::int64_t routable) const noexcept {
    return length - depth_detail::floor_count(routing_ratio, routable);
  }
};
static_assert(diagnose_router<GammaMod>() && Router<GammaMod>);

// Router input: logits l [B, S, 2] (column 1 = "process"), or x = RMSNorm_in(h) [B, S, H] with
// W_r [2, H] (then l = W_r·x in lane order is written to logits_out). masked [B, S] (nonzero =
// never skipped: the question/answer text) is optional. selected has room for every position:
// row b holds the counts[b] kept positions ascending, then S.
template <MemorySpace Space, class T = float>
struct GammaModBuffers {
  TensorView<float const, 3, Space> logits;         // [B, S, 2], or absent with x
  TensorView<T const, 3, Space> x;                  // [B, S, H]
  TensorView<T const, 2, Space> weight;             // W_r [2, H]
  TensorView<std::uint8_t const, 2, Space> masked;  // [B, S]
  TensorView<float, 3, Space> logits_out;           // [B, S, 2]; required with x
  TensorView<float, 2, Space> probs;                // p = σ(l1 − l0) [B, S]
  TensorView<int, 2, Space> selected;               // [B, S]
  TensorView<int, 1, Space> counts;                 // [B]
  TensorView<std::uint8_t, 2, Space> keep;          // [B, S]
  TensorView<float, 3, Space> grad_logits;          // ∂CE/∂l [B, S, 2]
  TensorView<float, 1, Space> loss;                 // CE [1]
};

namespace depth_detail {
template <MemorySpace Space, class T>
[[nodiscard]] Status check_buffers(GammaMod const& r, GammaModBuffers<Space, T> const& b, SequenceShape& shape) {
  if (Status s = r.validate(); !s) {
    return s;
  }
  bool const from_x = present(b.x);
  if (from_x ? present(b.logits) : !present(b.logits) && (present(b.selected) || present(b.keep))) {
    return error(Status::invalid_argument,
                 "GammaMod: give either logits [B, S, 2] or x [B, S, H] with weight [2, H], not both");
  }
  if (from_x) {
    shape = {b.x.extent(0), b.x.extent(1), b.x.extent(2), 0};
    if (Status s = check_view(b.x, "GammaMod: x", {shape.batch, shape.length, shape.hidden}); !s) {
      return s;
    }
    if (Status s = check_optional(b.weight, "GammaMod: weight", {2, shape.hidden}, true); !s) {
      return s;
    }
    if (Status s = check_optional(b.logits_out, "GammaMod: logits_out", {shape.batch, shape.length, 2}, true); !s) {
      return s;
    }
  } else {
    shape = {b.logits.extent(0), b.logits.extent(1), 0, 0};
    if (Status s = check_view(b.logits, "GammaMod: logits", {shape.batch, shape.length, 2}); !s) {
      return s;
    }
    if (present(b.logits_out)) {
      return error(Status::invalid_argument, "GammaMod: logits_out is written only when routing from x");
    }
  }
  std::int64_t const B = shape.batch, S = shape.length;
  if (S > 2147483647) {
    return error(Status::invalid_argument, "GammaMod: sequence length %lld does not fit int positions",
                 static_cast<long long>(S));
  }
  if (B * S > 0 && !present(b.selected) && !present(b.keep)) {
    return error(Status::invalid_argument, "GammaMod: want at least one of selected [B, S] and keep [B, S]");
  }
  if (Status s = check_optional(b.masked, "GammaMod: masked", {B, S}); !s) {
    return s;
  }
  if (Status s = check_optional(b.probs, "GammaMod: probs", {B, S}); !s) {
    return s;
  }
  if (Status s = check_optional(b.selected, "GammaMod: selected", {B, S}); !s) {
    return s;
  }
  if (Status s = check_optional(b.counts, "GammaMod: counts", {B}); !s) {
    return s;
  }
  if (Status s = check_optional(b.keep, "GammaMod: keep", {B, S}); !s) {
    return s;
  }
  if (Status s = check_optional(b.grad_logits, "GammaMod: grad_logits", {B, S, 2}); !s) {
    return s;
  }
  return check_optional(b.loss, "GammaMod: loss", {1});
}

// True when threshold mode processes a token of probability p in a sequence of `length` tokens.
[[nodiscard]] MOEKIT_HOST_DEVICE inline bool passes_threshold(GammaMod const& r, float p,
                                                              std::int64_t length) noexcept {
  return length > 1 ? p > r.prefill_threshold : p >= r.decode_threshold;
}
}  // namespace depth_detail

[[nodiscard]] inline std::size_t workspace_size(GammaMod const&, std::int64_t batch) {
  return depth_detail::partials_bytes(batch);
}

// Host entry point, checked mode: a NaN or +inf logit, a token whose two logits are both -inf,
// or any non-finite x or W_r is refused (sequence, position named) before any output is written.
template <class T>
[[nodiscard]] Status route(GammaMod const& router, GammaModBuffers<MemorySpace::host, T> const& b) {
  depth_detail::SequenceShape sh;
  if (Status s = depth_detail::check_buffers(router, b, sh); !s) {
    return s;
  }
  bool const from_x = depth_detail::present(b.x);
  if (from_x) {
    if (Status s = depth_detail::check_finite_inputs(b.x, "GammaMod"); !s) {
      return s;
    }
    for (std::int64_t c = 0; c < 2; ++c) {
      if (Status s = depth_detail::check_finite_weights(b.weight.pointer(c, 0), sh.hidden, "GammaMod", "router weight");
          !s) {
        return s;
      }
    }
  }
  auto const n = static_cast<std::size_t>(sh.batch * sh.length);
  std::vector<float> l(2 * n);
  for (std::int64_t s = 0; s < sh.batch; ++s) {
    for (std::int64_t i = 0; i < sh.length; ++i) {
      float v[2];
      for (int c = 0; c < 2; ++c) {
        v[c] = from_x ? depth_detail::lane_order_dot(b.x.pointer(s, i, 0), b.weight.pointer(c, 0), sh.hidden)
                      : b.logits(s, i, c);
        if (depth_detail::is_bad_score(v[c])) {
          return error(Status::invalid_argument,
                       "GammaMod: non-finite router logit %g at sequence %lld, position %lld, logit %d", double(v[c]),
                       static_cast<long long>(s), static_cast<long long>(i), c);
        }
      }
      if (v[0] == -INFINITY && v[1] == -INFINITY) {
        return error(Status::invalid_argument, "GammaMod: both logits -inf at sequence %lld, position %lld",
                     static_cast<long long>(s), static_cast<long long>(i));
      }
      l[2 * static_cast<std::size_t>(s * sh.length + i)] = v[0];
      l[2 * static_cast<std::size_t>(s * sh.length + i) + 1] = v[1];
    }
  }
  bool const masks = depth_detail::present(b.masked);
  float const divisor = static_cast<float>(double(sh.batch) * double(sh.length));
  std::vector<float> partials(static_cast<std::size_t>(sh.batch));
  std::vector<std::uint32_t> keys(static_cast<std::size_t>(sh.length));
  std::vector<std::uint8_t> keep(static_cast<std::size_t>(sh.length));
  std::vector<float> terms(static_cast<std::size_t>(sh.length));
  for (std::int64_t s = 0; s < sh.batch; ++s) {
    float const* ls = l.data() + 2 * s * sh.length;
    std::int64_t routable = 0;
    for (std::int64_t i = 0; i < sh.length; ++i) {
      bool const m = masks && b.masked(s, i) != 0;
      float const p = fp32::sigmoid(ls[2 * i + 1] - ls[2 * i]);
      keys[i] = m ? depth_detail::forced_key : depth_detail::selection_key(p);
      routable += m ? 0 : 1;
      keep[i] =
          router.mode == ModInference::threshold && (m || depth_detail::passes_threshold(router, p, sh.length)) ? 1 : 0;
    }
    if (router.mode == ModInference::topk) {
      std::vector<std::int64_t> const order = depth_detail::selection_order(keys);
      std::int64_t const k = router.kept(sh.length, routable);
      for (std::int64_t j = 0; j < k; ++j) {
        keep[order[j]] = 1;
      }
    }
    std::int64_t next = 0;
    for (std::int64_t i = 0; i < sh.length; ++i) {
      float const d = ls[2 * i + 1] - ls[2 * i];
      float const p = fp32::sigmoid(d);
      bool const y = keep[i] != 0;
      if (from_x) {
        b.logits_out(s, i, 0) = ls[2 * i];
        b.logits_out(s, i, 1) = ls[2 * i + 1];
      }
      if (depth_detail::present(b.probs)) {
        b.probs(s, i) = p;
      }
      if (y && depth_detail::present(b.selected)) {
        b.selected(s, next) = static_cast<int>(i);
      }
      next += y ? 1 : 0;
      if (depth_detail::present(b.keep)) {
        b.keep(s, i) = keep[i];
      }
      if (depth_detail::present(b.grad_logits)) {
        float const g = (p - (y ? 1.f : 0.f)) / divisor;
        b.grad_logits(s, i, 0) = -g;
        b.grad_logits(s, i, 1) = g;
      }
      terms[i] = depth_detail::softplus(y ? -d : d);
    }
    if (depth_detail::present(b.selected)) {
      for (std::int64_t j = next; j < sh.length; ++j) {
        b.selected(s, j) = static_cast<int>(sh.length);
      }
    }
    if (depth_detail::present(b.counts)) {
      b.counts(s) = static_cast<int>(next);
    }
    partials[s] = depth_detail::chunked_sum(terms.data(), sh.length);
  }
  if (depth_detail::present(b.loss)) {
    b.loss(0) = depth_detail::ordered_mean(partials, divisor);
  }
  return Status::ok;
}

MOEKIT_ARCH_NAMESPACE_BEGIN

template <class T>
struct GammaModKernelParams {
  GammaMod router;
  std::int64_t batch, length, hidden;
  float const* logits;
  std::int64_t logits_stride0, logits_stride1;
  T const* x;
  std::int64_t x_stride0, x_stride1;
  T const* weight;
  std::int64_t weight_stride;
  std::uint8_t const* masked;
  std::int64_t masked_stride;
  float* logits_out;
  std::int64_t logits_out_stride0, logits_out_stride1;
  float* probs;
  std::int64_t probs_stride;
  int* selected;
  std::int64_t selected_stride;
  int* counts;
  std::uint8_t* keep;
  std::int64_t keep_stride;
  float* grad;
  std::int64_t grad_stride0, grad_stride1;
  float divisor;
  float* partial;
  Diagnostics* diagnostics;
};

template <class T>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(depth_block_threads, 1) gamma_mod_route_kernel(GammaModKernelParams<T> p) {
  using namespace depth_device;
  auto& s = arch::shared_storage<SelectStorage>();
  unsigned const t = arch::thread_rank();
  int const base = static_cast<int>(t) * depth_items_per_thread;
  for (std::int64_t b = arch::block_rank(); b < p.batch; b += arch::grid_dim().x) {
    arch::sync_threads();
    if (p.x != nullptr) {
      for (std::int64_t i = arch::warp_id(); i < p.length; i += warps) {
        T const* xi = p.x + b * p.x_stride0 + i * p.x_stride1;
        float const l0 = warp_dot(xi, p.weight, p.hidden);
        float const l1 = warp_dot(xi, p.weight + p.weight_stride, p.hidden);
        if (arch::lane_id() == 0) {
          float* out = p.logits_out + b * p.logits_out_stride0 + i * p.logits_out_stride1;
          out[0] = l0;
          out[1] = l1;
        }
      }
      arch::sync_threads();
    }
    float const* l = p.x != nullptr ? p.logits_out + b * p.logits_out_stride0 : p.logits + b * p.logits_stride0;
    std::int64_t const ls = p.x != nullptr ? p.logits_out_stride1 : p.logits_stride1;
    std::uint32_t keys[depth_items_per_thread];
    unsigned long long bad = 0;
    int routable = 0;
    MOEKIT_DEPTH_UNROLL
    for (int j = 0; j < depth_items_per_thread; ++j) {
      int const pos = base + j;
      if (pos >= p.length) {
        keys[j] = depth_detail::padding_key;
        if (p.router.mode == ModInference::threshold) {
          s.keep[static_cast<std::size_t>(pos)] = std::uint8_t{0};
        }
        continue;
      }
      float const l0 = l[pos * ls], l1 = l[pos * ls + 1];
      bool const m = p.masked != nullptr && p.masked[b * p.masked_stride + pos] != 0;
      float const pv = fp32::sigmoid(l1 - l0);
      bad += depth_detail::is_bad_score(l0) || depth_detail::is_bad_score(l1) || (l0 == -INFINITY && l1 == -INFINITY)
                 ? 1u
                 : 0u;
      routable += m ? 0 : 1;
      keys[j] = m ? depth_detail::forced_key : depth_detail::selection_key(pv);
      if (p.probs != nullptr) {
        p.probs[b * p.probs_stride + pos] = pv;
      }
      if (p.router.mode == ModInference::threshold) {
        bool const y = m || depth_detail::passes_threshold(p.router, pv, p.length);
        s.keep[static_cast<std::size_t>(pos)] = y ? std::uint8_t{1} : std::uint8_t{0};
      }
    }
    if (bad != 0) {
      arch::atomic_add(&p.diagnostics->nonfinite_rows, bad);
    }
    if (p.router.mode == ModInference::topk) {
      int ignored = 0, total_routable = 0;
      SelectScan(s.temp.scan).exclusive_sum(routable, ignored, total_routable);
      arch::sync_threads();  // the scan's storage is the sort's
      mark_top(s, keys, p.router.kept(p.length, total_routable));
    } else {
      arch::sync_threads();
    }
    int const total = compact(s, p.length, p.selected != nullptr ? p.selected + b * p.selected_stride : nullptr,
                              p.selected != nullptr ? p.length : 0, static_cast<int>(p.length),
                              p.keep != nullptr ? p.keep + b * p.keep_stride : nullptr);
    if (t == 0 && p.counts != nullptr) {
      p.counts[b] = total;
    }
    float acc = 0.f;
    for (int j = 0; j < depth_items_per_thread && base + j < p.length; ++j) {
      int const pos = base + j;
      float const d = l[pos * ls + 1] - l[pos * ls];
      bool const y = s.keep[static_cast<std::size_t>(pos)] != 0;
      if (p.grad != nullptr) {
        float const g = (fp32::sigmoid(d) - (y ? 1.f : 0.f)) / p.divisor;
        float* out = p.grad + b * p.grad_stride0 + pos * p.grad_stride1;
        out[0] = -g;
        out[1] = g;
      }
      acc += depth_detail::softplus(y ? -d : d);
    }
    float const sum = ordered_sum(s, acc);
    if (t == 0 && p.partial != nullptr) {
      p.partial[b] = sum;
    }
  }
}

// Device entry point (see the MixtureOfDepths one): non-finite logit rows are counted in
// diagnostics->nonfinite_rows; NaN p ranks last (never selected while a number is left) and
// fails every threshold.
template <class T>
[[nodiscard]] Status route(GammaMod const& router, GammaModBuffers<MemorySpace::device, T> const& b, void* workspace,
                           std::size_t workspace_bytes, Diagnostics* diagnostics, arch::Stream stream,
                           unsigned max_blocks = 0) {
  depth_detail::SequenceShape sh;
  if (Status s = depth_detail::check_buffers(router, b, sh); !s) {
    return s;
  }
  if (diagnostics == nullptr) {
    return error(Status::invalid_argument, "GammaMod: diagnostics must point to device memory");
  }
  if (sh.length > max_depth_sequence) {
    return error(Status::unsupported_config,
                 "GammaMod: sequence length %lld exceeds the device kernel's bound %lld (one block sorts a sequence)",
                 static_cast<long long>(sh.length), static_cast<long long>(max_depth_sequence));
  }
  bool const loss = depth_detail::present(b.loss);
  float* partial = nullptr;
  if (loss) {
    Status s = Status::ok;
    partial = depth_detail::carve_partials(workspace, workspace_bytes, sh.batch, "GammaMod", s);
    if (!s) {
      return s;
    }
  }
  float const divisor = static_cast<float>(double(sh.batch) * double(sh.length));
  if (sh.batch > 0) {
    GammaModKernelParams<T> const p{router,
                                    sh.batch,
                                    sh.length,
                                    sh.hidden,
                                    b.logits.data,
                                    b.logits.stride(0),
                                    b.logits.stride(1),
                                    b.x.data,
                                    b.x.stride(0),
                                    b.x.stride(1),
                                    b.weight.data,
                                    b.weight.stride(0),
                                    b.masked.data,
                                    b.masked.stride(0),
                                    b.logits_out.data,
                                    b.logits_out.stride(0),
                                    b.logits_out.stride(1),
                                    b.probs.data,
                                    b.probs.stride(0),
                                    b.selected.data,
                                    b.selected.stride(0),
                                    b.counts.data,
                                    b.keep.data,
                                    b.keep.stride(0),
                                    b.grad_logits.data,
                                    b.grad_logits.stride(0),
                                    b.grad_logits.stride(1),
                                    divisor,
                                    partial,
                                    diagnostics};
    arch::KernelLaunch const l{.grid = depth_device::grid_for(sh.batch, max_blocks),
                               .block = depth_block_threads,
                               .dynamic_shared_bytes = sizeof(depth_device::SelectStorage)};
    if (Status s = arch::launch(gamma_mod_route_kernel<T>, l, stream, p); !s) {
      return s;
    }
  }
  return loss ? depth_device::launch_mean(partial, sh.batch, divisor, b.loss.data, stream) : Status::ok;
}

MOEKIT_ARCH_NAMESPACE_END

// γ-MoD layer selection: the m layers with the lowest mean ARank (ties to the lower layer),
// written ascending to `layers` (size m). Host only; checked: NaN or ±inf ARank is refused.
[[nodiscard]] inline Status select_mod_layers(std::span<double const> arank, int m, std::span<int> layers) {
  auto const n = static_cast<std::int64_t>(arank.size());
  if (m < 0 || m > n) {
    return error(Status::invalid_argument, "select_mod_layers: m must be in [0, %lld] (got %d)",
                 static_cast<long long>(n), m);
  }
  if (static_cast<std::int64_t>(layers.size()) != m) {
    return error(Status::invalid_argument, "select_mod_layers: layers has %zu entries, expected m = %d", layers.size(),
                 m);
  }
  for (std::int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(arank[static_cast<std::size_t>(i)])) {
      return error(Status::invalid_argument, "select_mod_layers: non-finite ARank %g at layer %lld",
                   arank[static_cast<std::size_t>(i)], static_cast<long long>(i));
    }
  }
  std::vector<int> order(arank.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    return arank[static_cast<std::size_t>(a)] < arank[static_cast<std::size_t>(b)];
  });
  order.resize(static_cast<std::size_t>(m));
  std::sort(order.begin(), order.end());
  std::copy(order.begin(), order.end(), layers.begin());
  return Status::ok;
}

}  // namespace routing
MOEKIT_NAMESPACE_END
