#pragma once
// The two grouped GEMMs of the expert stage, on tensor cores (mma.sync m16n8k16, bf16 or fp16
// in, fp32 accumulate), operands through ldmatrix from a cp.async multistage pipeline:
//
//   up    h[row, :] = f(W_g[e] x_row + b_g, W_u[e] x_row + b_u)   (gated; plain: f(0, W_u x + b_u))
//         x rows are gathered on load through the dispatch plan (no permuted copy of x); with the
//         weight on the input (Llama-4) the row is scaled by its routing weight as it is loaded.
//         f is the Expert policy's hidden_unit, fused in the epilogue; h is stored in the
//         weights' 16-bit type (the A operand of the next GEMM).
//   down  out[row, :] = (W_d[e] h[row] + b_d) · w_row (w_row = 1 with the weight on the input)
//         in fp32, one row per (token, slot) assignment; the combine sums them in slot order.
//
// Work items are (tile of the plan, block_n columns); a grid-stride loop over them makes the
// grid size free (the result does not depend on it) and the launch independent of the routing:
// the number of tiles is read on the device. Tiles of zero/identity experts and padding rows do
// no work that reaches the output. Edges (H, I, rows not multiples of the tile) are zero-filled
// on load and masked on store.

#include <cstdint>

#include "moekit/arch/arch.hpp"
#include "moekit/config.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/experts/concept.hpp"
#include "moekit/experts/dequantize.hpp"
#include "moekit/experts/quantized.hpp"
#include "moekit/experts/quantized_weights.hpp"
#include "moekit/kernels/kernel_config.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace kernels {
MOEKIT_ARCH_NAMESPACE_BEGIN

// Which rows a GEMM runs and where they come from: the dispatch plan (routed experts), or
// all T tokens in order as one expert (the shared expert: no plan).
struct RowSource {
  std::int64_t const* row_assignment = nullptr;  // plan: t * K + slot of each row, -1 padding; null: dense
  int const* tile_expert = nullptr;
  std::int64_t const* tile_row = nullptr;
  std::int64_t const* num_tiles = nullptr;
  std::int64_t tokens = 0;
  int slots = 1;
  float const* weights = nullptr;  // routing weights [T, K] (row stride weights_stride); null: 1
  std::int64_t weights_stride = 0;

  [[nodiscard]] MOEKIT_DEVICE std::int64_t tiles(int block_m) const {
    return row_assignment != nullptr ? *num_tiles : (tokens + block_m - 1) / block_m;
  }
  [[nodiscard]] MOEKIT_DEVICE int expert_of(std::int64_t tile) const {
    return row_assignment != nullptr ? tile_expert[tile] : 0;
  }
  [[nodiscard]] MOEKIT_DEVICE std::int64_t first_row(std::int64_t tile, int block_m) const {
    return row_assignment != nullptr ? tile_row[tile] : tile * block_m;
  }
  // The token a row reads (-1: padding) and its routing weight.
  [[nodiscard]] MOEKIT_DEVICE std::int64_t token(std::int64_t row) const {
    if (row_assignment == nullptr) {
      return row < tokens ? row : -1;
    }
    std::int64_t const a = row_assignment[row];
    return a < 0 ? -1 : a / slots;
  }
  [[nodiscard]] MOEKIT_DEVICE float weight(std::int64_t row) const {
    if (row_assignment == nullptr || weights == nullptr) {
      return 1.0f;
    }
    std::int64_t const a = row_assignment[row];
    return a < 0 ? 0.0f : weights[a / slots * weights_stride + a % slots];
  }
};

// One projection of every expert: expert e's [rows, cols] matrix starts at data + e * expert_stride.
template <class T>
struct ExpertMatrices {
  T const* data = nullptr;
  std::int64_t expert_stride = 0;
  std::int64_t row_stride = 0;
};

template <class T>
struct ExpertBias {
  T const* data = nullptr;  // null: no bias
  std::int64_t expert_stride = 0;
};

// Quantized weights of one projection (experts/quantized_weights.hpp): codes dequantised to the
// 16-bit compute type as they are loaded into shared memory, so the tensor cores see the same
// operands as for dense weights.
struct QuantizedMatrices {
  experts::QuantizedWeights<MemorySpace::device> w;
};

// The weight operand and bias types of the GEMMs for an Expert's Element W and activations X.
template <class W, class X>
struct GemmOperands {
  using Matrices = ExpertMatrices<X>;
  using Bias = X;
};
template <class Compute, class X>
struct GemmOperands<experts::QuantizedElement<Compute>, X> {
  using Matrices = QuantizedMatrices;
  using Bias = float;  // quantised layers keep their biases in fp32
};

template <class Cfg, int NumB, class T>
struct GemmStorage {
  alignas(128) arch::SharedArray<T, std::size_t{Cfg::stages} * Cfg::block_m * Cfg::smem_row> a;
  alignas(128) arch::SharedArray<T, std::size_t{NumB} * Cfg::stages * Cfg::block_n * Cfg::smem_row> b;
  arch::SharedArray<std::int64_t, Cfg::block_m> row_token;  // -1: padding
  arch::SharedArray<float, Cfg::block_m> row_scale;         // routing weight of each row
};

namespace detail {

template <class T>
MOEKIT_DEVICE MOEKIT_FORCEINLINE void mma(float (&d)[4], std::uint32_t const (&a)[4], std::uint32_t const (&b)[2]) {
  if constexpr (std::is_same_v<T, bf16_t>) {
    arch::mma_m16n8k16_bf16(d, a, b, d);
  } else {
    arch::mma_m16n8k16_f16(d, a, b, d);
  }
}

// Loads the [Rows, block_k) slice at column k0 of Rows global rows into shared `dst` (element
// offset `base`, row pitch smem_row). row(r) is the row's pointer or null (a zero row); columns
// at or past `cols` are zero. `vector`: every row pointer is 16-byte aligned, so each 8-element
// chunk is one cp.async (zero-filled past the edge); otherwise, and when `scaled` (each row
// multiplied by scale(r) before rounding to T), elements go through registers. `fallback` is a
// 16-byte-aligned global address that zero-byte copies name as their (unread) source.
template <class Cfg, int Rows, class T, std::size_t N, class RowPtr, class Scale>
MOEKIT_DEVICE void load_slice(arch::SharedArray<T, N>& dst, std::size_t base, RowPtr const& row, Scale const& scale,
                              std::int64_t k0, std::int64_t cols, bool vector, bool scaled, T const* fallback) {
  constexpr int chunks_per_row = Cfg::block_k / 8;
  for (int chunk = static_cast<int>(arch::thread_rank()); chunk < Rows * chunks_per_row; chunk += Cfg::threads) {
    int const r = chunk / chunks_per_row;
    int const c = (chunk % chunks_per_row) * 8;
    std::size_t const at = base + static_cast<std::size_t>(r) * Cfg::smem_row + static_cast<std::size_t>(c);
    T const* src = row(r);
    std::int64_t const k = k0 + c;
    std::int64_t const valid = src == nullptr || k >= cols ? 0 : (cols - k < 8 ? cols - k : 8);
    if (vector && !scaled) {
      T const* from = valid > 0 ? src + k : fallback;
      arch::cp_async<16>(dst.data() + at, from, static_cast<unsigned>(valid * 2));
    } else {
      float const s = valid > 0 && scaled ? scale(r) : 1.0f;
      MOEKIT_UNROLL
      for (int i = 0; i < 8; ++i) {
        T v = T(0.0f);
        if (i < valid) {
          v = scaled ? T(to_float(src[k + i]) * s) : src[k + i];
        }
        dst[at + static_cast<std::size_t>(i)] = v;
      }
    }
  }
}

// The dense operand: rows n0.. of expert e, through load_slice.
template <class Cfg, int Rows, class T, std::size_t N>
MOEKIT_DEVICE void load_weight_slice(arch::SharedArray<T, N>& dst, std::size_t base, ExpertMatrices<T> const& m, int e,
                                     std::int64_t n0, std::int64_t rows, std::int64_t k0, std::int64_t cols,
                                     bool vector) {
  auto const row = [&](int r) -> T const* {
    std::int64_t const n = n0 + r;
    return n < rows ? m.data + e * m.expert_stride + n * m.row_stride : nullptr;
  };
  auto const one = [](int) { return 1.0f; };
  load_slice<Cfg, Rows>(dst, base, row, one, k0, cols, vector, false, m.data);
}

// The quantised operand: each thread dequantises 8 codes of a row (one group's affine map: the
// row length is a multiple of the group size, itself a multiple of 8) and stores them.
template <class Cfg, int Rows, class T, std::size_t N>
MOEKIT_DEVICE void load_weight_slice(arch::SharedArray<T, N>& dst, std::size_t base, QuantizedMatrices const& m, int e,
                                     std::int64_t n0, std::int64_t rows, std::int64_t k0, std::int64_t cols,
                                     bool /*vector*/) {
  constexpr int chunks_per_row = Cfg::block_k / 8;
  experts::QuantizedWeights<MemorySpace::device> const& w = m.w;
  int const bits = w.bits[e];
  for (int chunk = static_cast<int>(arch::thread_rank()); chunk < Rows * chunks_per_row; chunk += Cfg::threads) {
    int const r = chunk / chunks_per_row;
    int const c = (chunk % chunks_per_row) * 8;
    std::size_t const at = base + static_cast<std::size_t>(r) * Cfg::smem_row + static_cast<std::size_t>(c);
    std::int64_t const n = n0 + r;
    std::int64_t const k = k0 + c;
    T v[8];
    if (n < rows && k < cols) {
      experts::dequantize_run(w.row(e, n), bits, k, 8, w.row_scales(e, n), w.row_zeros(e, n), w.group, v);
    } else {
      MOEKIT_UNROLL
      for (int i = 0; i < 8; ++i) {
        v[i] = T(0.0f);
      }
    }
    MOEKIT_UNROLL
    for (int i = 0; i < 8; ++i) {
      dst[at + static_cast<std::size_t>(i)] = v[i];
    }
  }
}

// acc[b] += A · B_bᵀ over K for one block tile: A [block_m, K] and each B_b [block_n, K] are
// row-major slices delivered by load_a(k0, stage) / load_b(b, k0, stage).
template <class Cfg, int NumB, class T, class LoadA, class LoadB>
MOEKIT_DEVICE void mainloop(GemmStorage<Cfg, NumB, T>& s, std::int64_t k_extent, LoadA const& load_a,
                            LoadB const& load_b, float (&acc)[NumB][Cfg::m_tiles][Cfg::n_tiles][4]) {
  constexpr int S = Cfg::stages;
  std::int64_t const k_tiles = (k_extent + Cfg::block_k - 1) / Cfg::block_k;
  auto const load_stage = [&](std::int64_t kt) {
    if (kt < k_tiles) {
      int const stage = static_cast<int>(kt % S);
      load_a(kt * Cfg::block_k, stage);
      MOEKIT_UNROLL
      for (int b = 0; b < NumB; ++b) {
        load_b(b, kt * Cfg::block_k, stage);
      }
    }
    arch::cp_async_commit();  // an empty group past the end keeps the wait counts uniform
  };
  for (int st = 0; st < S - 1; ++st) {
    load_stage(st);
  }
  unsigned const lane = arch::thread_rank() % 32;
  unsigned const warp = arch::thread_rank() / 32;
  int const warp_row = static_cast<int>(warp / Cfg::warps_n) * Cfg::warp_m;
  int const warp_col = static_cast<int>(warp % Cfg::warps_n) * Cfg::warp_n;
  int const j = static_cast<int>(lane / 8), r8 = static_cast<int>(lane % 8);
  for (std::int64_t kt = 0; kt < k_tiles; ++kt) {
    arch::cp_async_wait_group<S - 2>();  // slice kt has landed
    arch::sync_threads();                // ... for every thread; and stage (kt-1) % S is free again
    load_stage(kt + S - 1);
    int const stage = static_cast<int>(kt % S);
    T const* sa = s.a.data() + static_cast<std::size_t>(stage) * Cfg::block_m * Cfg::smem_row;
    MOEKIT_UNROLL
    for (int k16 = 0; k16 < Cfg::block_k; k16 += 16) {
      // ldmatrix.x4: lanes 8m..8m+7 address the rows of 8x8 matrix m.
      std::uint32_t fa[Cfg::m_tiles][4];
      MOEKIT_UNROLL
      for (int mt = 0; mt < Cfg::m_tiles; ++mt) {
        int const row = warp_row + mt * 16 + r8 + 8 * (j & 1);
        arch::ldmatrix_x4(fa[mt], sa + row * Cfg::smem_row + k16 + 8 * (j >> 1));
      }
      MOEKIT_UNROLL
      for (int b = 0; b < NumB; ++b) {
        T const* sb = s.b.data() + (static_cast<std::size_t>(b) * S + static_cast<std::size_t>(stage)) * Cfg::block_n *
                                       Cfg::smem_row;
        MOEKIT_UNROLL
        for (int np = 0; np < Cfg::n_tiles / 2; ++np) {
          int const row = warp_col + np * 16 + r8 + 8 * (j >> 1);
          std::uint32_t regs[4];
          arch::ldmatrix_x4(regs, sb + row * Cfg::smem_row + k16 + 8 * (j & 1));
          std::uint32_t const lo[2] = {regs[0], regs[1]};
          std::uint32_t const hi[2] = {regs[2], regs[3]};
          MOEKIT_UNROLL
          for (int mt = 0; mt < Cfg::m_tiles; ++mt) {
            mma<T>(acc[b][mt][2 * np], fa[mt], lo);
            mma<T>(acc[b][mt][2 * np + 1], fa[mt], hi);
          }
        }
      }
    }
  }
  arch::cp_async_wait_all();
  arch::sync_threads();  // the next work item refills every stage
}

// Calls f(row, col, values...) for each accumulator element this thread holds (row, col in the
// block tile), in the m16n8 C-fragment layout.
template <class Cfg, class F>
MOEKIT_DEVICE void for_each_fragment_element(F const& f) {
  unsigned const lane = arch::thread_rank() % 32;
  unsigned const warp = arch::thread_rank() / 32;
  int const warp_row = static_cast<int>(warp / Cfg::warps_n) * Cfg::warp_m;
  int const warp_col = static_cast<int>(warp % Cfg::warps_n) * Cfg::warp_n;
  int const g = static_cast<int>(lane / 4), t = static_cast<int>(lane % 4);
  MOEKIT_UNROLL
  for (int mt = 0; mt < Cfg::m_tiles; ++mt) {
    MOEKIT_UNROLL
    for (int nt = 0; nt < Cfg::n_tiles; ++nt) {
      MOEKIT_UNROLL
      for (int i = 0; i < 4; ++i) {
        f(mt, nt, i, warp_row + mt * 16 + g + 8 * (i >> 1), warp_col + nt * 8 + 2 * t + (i & 1));
      }
    }
  }
}

// Fills the block's row table for one tile: token (or -1) and routing weight of each row.
template <class Cfg, int NumB, class T>
MOEKIT_DEVICE void load_row_table(GemmStorage<Cfg, NumB, T>& s, RowSource const& rows, std::int64_t first_row) {
  arch::sync_threads();  // the previous item's epilogue may still read the table
  for (int r = static_cast<int>(arch::thread_rank()); r < Cfg::block_m; r += Cfg::threads) {
    s.row_token[static_cast<std::size_t>(r)] = rows.token(first_row + r);
    s.row_scale[static_cast<std::size_t>(r)] = rows.weight(first_row + r);
  }
  arch::sync_threads();
}

// The grid-stride loop over work items (tile of the plan, block_n output columns) shared by both
// GEMMs: consecutive items share a tile (its rows stay in L2); tiles of experts >= computed
// (zero, identity) are skipped, uniformly across the block; the row table is loaded for f.
template <class Cfg, int NumB, class T, class F>
MOEKIT_DEVICE void for_each_work_item(GemmStorage<Cfg, NumB, T>& s, RowSource const& rows, std::int64_t columns,
                                      int computed, F const& f) {
  std::int64_t const n_blocks = (columns + Cfg::block_n - 1) / Cfg::block_n;
  std::int64_t const items = rows.tiles(Cfg::block_m) * n_blocks;
  for (std::int64_t item = arch::block_rank(); item < items; item += arch::grid_dim().x) {
    std::int64_t const tile = item / n_blocks;
    int const e = rows.expert_of(tile);
    if (e >= computed) {
      continue;
    }
    std::int64_t const first_row = rows.first_row(tile, Cfg::block_m);
    load_row_table(s, rows, first_row);
    f(e, first_row, item % n_blocks * Cfg::block_n);
  }
}

}  // namespace detail

template <class Expert, class X>
struct UpParams {
  Expert expert;
  X const* x = nullptr;  // [T, H], row stride x_stride
  std::int64_t x_stride = 0;
  bool x_vector = false;     // x rows 16-byte aligned: cp.async
  bool scale_input = false;  // weight on the input (Llama-4): rows are w · x
  RowSource rows;
  int computed = 0;  // experts >= computed (zero, identity) do no GEMM
  typename GemmOperands<typename Expert::Element, X>::Matrices gate, up;  // [I, H] per expert
  ExpertBias<typename GemmOperands<typename Expert::Element, X>::Bias> gate_bias, up_bias;
  bool weights_vector = false;  // weight rows 16-byte aligned
  std::int64_t hidden = 0, inter = 0;
  X* h = nullptr;  // [rows, h_stride] out
  std::int64_t h_stride = 0;
};

// Each kernel's body is a phase of the fused layer kernel too (kernels/fused_layer.hpp).
template <class Cfg, class Expert, class X>
MOEKIT_DEVICE void expert_up_phase(UpParams<Expert, X> const& p) {
  constexpr bool gated = Expert::shape == experts::ExpertShape::gated;
  constexpr int NumB = gated ? 2 : 1;
  auto& s = arch::shared_storage<GemmStorage<Cfg, NumB, X>>();
  detail::for_each_work_item<Cfg>(s, p.rows, p.inter, p.computed, [&](int e, std::int64_t first_row, std::int64_t n0) {
    using Matrices = typename GemmOperands<typename Expert::Element, X>::Matrices;
    Matrices const mats[2] = {gated ? p.gate : p.up, p.up};
    auto const load_a = [&](std::int64_t k0, int stage) {
      auto const row = [&](int r) -> X const* {
        std::int64_t const t = s.row_token[static_cast<std::size_t>(r)];
        return t < 0 ? nullptr : p.x + t * p.x_stride;
      };
      auto const scale = [&](int r) -> float { return s.row_scale[static_cast<std::size_t>(r)]; };
      detail::load_slice<Cfg, Cfg::block_m>(s.a, static_cast<std::size_t>(stage) * Cfg::block_m * Cfg::smem_row, row,
                                            scale, k0, p.hidden, p.x_vector, p.scale_input, p.x);
    };
    auto const load_b = [&](int b, std::int64_t k0, int stage) {
      std::size_t const base =
          (static_cast<std::size_t>(b) * Cfg::stages + static_cast<std::size_t>(stage)) * Cfg::block_n * Cfg::smem_row;
      detail::load_weight_slice<Cfg, Cfg::block_n>(s.b, base, mats[b], e, n0, p.inter, k0, p.hidden, p.weights_vector);
    };
    float acc[NumB][Cfg::m_tiles][Cfg::n_tiles][4] = {};
    detail::mainloop<Cfg, NumB>(s, p.hidden, load_a, load_b, acc);
    using Bias = ExpertBias<typename GemmOperands<typename Expert::Element, X>::Bias>;
    Bias const biases[2] = {gated ? p.gate_bias : p.up_bias, p.up_bias};
    detail::for_each_fragment_element<Cfg>([&](int mt, int nt, int i, int r, int c) {
      std::int64_t const n = n0 + c;
      std::int64_t const row = first_row + r;
      if (n >= p.inter || (p.rows.row_assignment == nullptr && row >= p.rows.tokens)) {
        return;
      }
      float v[2];
      MOEKIT_UNROLL
      for (int b = 0; b < 2; ++b) {
        int const bb = b < NumB ? b : 0;
        Bias const& bias = biases[bb];
        v[b] = acc[bb][mt][nt][i] + (bias.data != nullptr ? to_float(bias.data[e * bias.expert_stride + n]) : 0.0f);
      }
      float const hv = gated ? p.expert.hidden_unit(v[0], v[1]) : p.expert.hidden_unit(0.0f, v[0]);
      p.h[row * p.h_stride + n] = X(hv);
    });
  });
}

template <class Cfg, class Expert, class X>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(Cfg::threads, 1) expert_up_kernel(UpParams<Expert, X> p) {
  expert_up_phase<Cfg>(p);
}

template <class Expert, class X>
struct DownParams {
  RowSource rows;
  bool weight_output = true;  // after_expert: multiply by the routing weight
  int computed = 0;
  X const* h = nullptr;  // [rows, h_stride], 16-byte aligned rows
  std::int64_t h_stride = 0;
  typename GemmOperands<typename Expert::Element, X>::Matrices down;  // [H, I] per expert
  ExpertBias<typename GemmOperands<typename Expert::Element, X>::Bias> down_bias;
  bool weights_vector = false;
  std::int64_t hidden = 0, inter = 0;
  float* out = nullptr;     // [rows, hidden] fp32; with `accumulate`, [T, hidden]
  bool accumulate = false;  // CombineMode::atomic: add each row into its token's row of out
};

template <class Cfg, class Expert, class X>
MOEKIT_DEVICE void expert_down_phase(DownParams<Expert, X> const& p) {
  auto& s = arch::shared_storage<GemmStorage<Cfg, 1, X>>();
  detail::for_each_work_item<Cfg>(s, p.rows, p.hidden, p.computed, [&](int e, std::int64_t first_row, std::int64_t n0) {
    auto const one = [](int) { return 1.0f; };
    auto const load_a = [&](std::int64_t k0, int stage) {
      auto const row = [&](int r) -> X const* {
        bool const live = p.rows.row_assignment != nullptr || first_row + r < p.rows.tokens;
        return live ? p.h + (first_row + r) * p.h_stride : nullptr;
      };
      detail::load_slice<Cfg, Cfg::block_m>(s.a, static_cast<std::size_t>(stage) * Cfg::block_m * Cfg::smem_row, row,
                                            one, k0, p.inter, true, false, p.h);
    };
    auto const load_b = [&](int, std::int64_t k0, int stage) {
      detail::load_weight_slice<Cfg, Cfg::block_n>(s.b, static_cast<std::size_t>(stage) * Cfg::block_n * Cfg::smem_row,
                                                   p.down, e, n0, p.hidden, k0, p.inter, p.weights_vector);
    };
    float acc[1][Cfg::m_tiles][Cfg::n_tiles][4] = {};
    detail::mainloop<Cfg, 1>(s, p.inter, load_a, load_b, acc);
    detail::for_each_fragment_element<Cfg>([&](int mt, int nt, int i, int r, int c) {
      std::int64_t const n = n0 + c;
      std::int64_t const row = first_row + r;
      if (n >= p.hidden || (p.rows.row_assignment == nullptr && row >= p.rows.tokens)) {
        return;
      }
      float o = acc[0][mt][nt][i];
      if (p.down_bias.data != nullptr) {
        o += to_float(p.down_bias.data[e * p.down_bias.expert_stride + n]);
      }
      if (p.weight_output) {
        o *= s.row_scale[static_cast<std::size_t>(r)];
      }
      if (p.accumulate) {
        std::int64_t const token = s.row_token[static_cast<std::size_t>(r)];
        if (token >= 0) {
          arch::atomic_add(&p.out[token * p.hidden + n], o);  // the order of the K adds varies run to run
        }
      } else {
        p.out[row * p.hidden + n] = o;
      }
    });
  });
}

// Zeroes n floats, grid-stride (the atomic combine's accumulator, before the down GEMM).
MOEKIT_DEVICE inline void zero_phase(float* p, std::int64_t n) {
  std::int64_t const stride = std::int64_t{arch::grid_dim().x} * arch::block_dim().x;
  for (std::int64_t i = std::int64_t{arch::block_rank()} * arch::block_dim().x + arch::thread_rank(); i < n;
       i += stride) {
    p[i] = 0.0f;
  }
}

template <int Threads>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(Threads, 1) zero_kernel(float* p, std::int64_t n) {
  zero_phase(p, n);
}

template <class Cfg, class Expert, class X>
MOEKIT_KERNEL void MOEKIT_LAUNCH_BOUNDS(Cfg::threads, 1) expert_down_kernel(DownParams<Expert, X> p) {
  expert_down_phase<Cfg>(p);
}

MOEKIT_ARCH_NAMESPACE_END
}  // namespace kernels
MOEKIT_NAMESPACE_END
