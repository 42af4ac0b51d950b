#pragma once
// The gate projection on the device: logits[t, e] = sum_h x[t, h] · Wg[e, h] (+ b[e]), fp32 or
// bf16 inputs, fp32 accumulation, fp32 logits (ALGORITHMS.md §1.0; HF computes them in bf16 for
// most families: round the logits with the router's bf16 option to reproduce that).
//
// Determinism: every logit is accumulated by ONE thread, in ascending h, with an explicit fmaf per
// product (acc = fmaf(x, w, acc) from acc = +0), then the bias is added once. The grid only decides
// which block computes which tile, so the bits are the same for any grid size or schedule, and the
// CPU path (cpu/gate_projection.hpp), which runs the same sequence, gives the same bits too.
//
// Tiling: a block of 128 threads computes a 16-token × 32-expert tile; chunks of 32 hidden
// columns of x and Wg are staged in shared memory (coalesced loads; rows padded to 33 floats so
// the per-lane reads of Wg hit distinct banks); each thread owns one expert and four tokens.
// Tiles are visited by a grid-stride loop. No host synchronisation, no allocation, no atomics.

#include <cmath>
#include <cstdint>

#include "moekit/arch/arch.hpp"
#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/status.hpp"
#include "moekit/routing/gate_projection_buffers.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace routing {
MOEKIT_ARCH_NAMESPACE_BEGIN

inline constexpr int gate_block_threads = 128;
inline constexpr int gate_tile_tokens = 16;
inline constexpr int gate_tile_experts = 32;
inline constexpr int gate_tile_hidden = 32;
inline constexpr int gate_tokens_per_thread = gate_tile_tokens / (gate_block_threads / gate_tile_experts);

struct GateProjectionStorage {
  float x[gate_tile_tokens][gate_tile_hidden + 1];
  float w[gate_tile_experts][gate_tile_hidden + 1];
};

// The kernel's body, also a phase of the fused layer kernel (kernels/fused_layer.hpp): any grid
// of gate_block_threads-thread blocks, a grid-stride loop over tiles.
template <GateElement X, GateElement W>
MOEKIT_DEVICE void gate_projection_phase(X const* x, std::int64_t x_stride, W const* w, std::int64_t w_stride,
                                         float const* bias, std::int64_t tokens, std::int64_t hidden, int experts,
                                         float* logits, std::int64_t logits_stride) {
  static_assert(gate_block_threads % gate_tile_experts == 0 &&
                gate_tile_tokens % (gate_block_threads / gate_tile_experts) == 0);
  auto& smem = arch::shared_storage<GateProjectionStorage>();
  int const thread = static_cast<int>(arch::thread_rank());
  int const lane = thread % gate_tile_experts;                                    // the expert of the tile
  int const first_token = (thread / gate_tile_experts) * gate_tokens_per_thread;  // the thread's four tokens
  std::int64_t const expert_tiles = (experts + gate_tile_experts - 1) / gate_tile_experts;
  std::int64_t const tiles = (tokens + gate_tile_tokens - 1) / gate_tile_tokens * expert_tiles;
  for (std::int64_t tile = arch::block_rank(); tile < tiles; tile += arch::grid_dim().x) {
    std::int64_t const t0 = tile / expert_tiles * gate_tile_tokens;
    std::int64_t const e0 = tile % expert_tiles * gate_tile_experts;
    float acc[gate_tokens_per_thread];
    for (int j = 0; j < gate_tokens_per_thread; ++j) {
      acc[j] = 0.f;
    }
    for (std::int64_t h0 = 0; h0 < hidden; h0 += gate_tile_hidden) {
      for (int i = thread; i < gate_tile_tokens * gate_tile_hidden; i += gate_block_threads) {
        int const r = i / gate_tile_hidden, c = i % gate_tile_hidden;
        std::int64_t const t = t0 + r, h = h0 + c;
        smem.x[r][c] = t < tokens && h < hidden ? to_float(x[t * x_stride + h]) : 0.f;
      }
      for (int i = thread; i < gate_tile_experts * gate_tile_hidden; i += gate_block_threads) {
        int const r = i / gate_tile_hidden, c = i % gate_tile_hidden;
        std::int64_t const e = e0 + r, h = h0 + c;
        smem.w[r][c] = e < experts && h < hidden ? to_float(w[e * w_stride + h]) : 0.f;
      }
      arch::sync_threads();
      // Only the real columns: a padded fmaf(0, 0, -0.f) would turn a -0 sum into +0.
      int const columns = hidden - h0 < gate_tile_hidden ? static_cast<int>(hidden - h0) : gate_tile_hidden;
      for (int c = 0; c < columns; ++c) {
        float const wv = smem.w[lane][c];
        for (int j = 0; j < gate_tokens_per_thread; ++j) {
          acc[j] = ::fmaf(smem.x[first_token + j][c], wv, acc[j]);
        }
      }
      arch::sync_threads();
    }
    std::int64_t const e = e0 + lane;
    if (e < experts) {
      float const b = bias != nullptr ? bias[e] : 0.f;
      for (int j = 0; j < gate_tokens_per_thread; ++j) {
        std::int64_t const t = t0 + first_token + j;
        if (t < tokens) {
          logits[t * logits_stride + e] = bias != nullptr ? acc[j] + b : acc[j];
        }
      }
    }
  }
}

template <GateElement X, GateElement W>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(gate_block_threads, 1)
    gate_projection_kernel(X const* x, std::int64_t x_stride, W const* w, std::int64_t w_stride, float const* bias,
                           std::int64_t tokens, std::int64_t hidden, int experts, float* logits,
                           std::int64_t logits_stride) {
  gate_projection_phase(x, x_stride, w, w_stride, bias, tokens, hidden, experts, logits, logits_stride);
}

// Computes the logits of `b` on `stream`. `max_blocks` (0: one block per tile, up to 65535) caps
// the grid; results are identical for any value. Device memory only; the inputs are not checked
// for NaN/inf here (that needs the host): non-finite values propagate into the logits, which the
// route kernel then counts in Diagnostics.
template <GateElement X, GateElement W>
[[nodiscard]] Status gate_projection(GateProjectionBuffers<X, W, MemorySpace::device> const& b, arch::Stream stream,
                                     unsigned max_blocks = 0) {
  if (Status s = check_gate_projection_buffers(b); !s) {
    return s;
  }
  std::int64_t const tokens = b.hidden.extent(0);
  if (tokens == 0) {
    return Status::ok;
  }
  auto const experts = static_cast<int>(b.weight.extent(0));
  std::int64_t const tiles =
      (tokens + gate_tile_tokens - 1) / gate_tile_tokens * ((experts + gate_tile_experts - 1) / gate_tile_experts);
  std::int64_t blocks = tiles > 65535 ? 65535 : tiles;
  if (max_blocks != 0 && blocks > max_blocks) {
    blocks = max_blocks;
  }
  arch::KernelLaunch const l{.grid = static_cast<unsigned>(blocks),
                             .block = gate_block_threads,
                             .dynamic_shared_bytes = sizeof(GateProjectionStorage)};
  return arch::launch(gate_projection_kernel<X, W>, l, stream, b.hidden.data, b.hidden.stride(0), b.weight.data,
                      b.weight.stride(0), b.has_bias() ? b.bias.data : nullptr, tokens, b.hidden.extent(1), experts,
                      b.logits.data, b.logits.stride(0));
}

MOEKIT_ARCH_NAMESPACE_END
}  // namespace routing
MOEKIT_NAMESPACE_END
