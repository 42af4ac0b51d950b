#pragma once
// The CPU executor's expert stage: dispatch → the experts' two GEMMs → combine, for any Expert
// policy, activations X and weights E::Element in {float, bf16, fp16} or quantised (below),
// output Y in {float, X}.
//
//   0. plan     cpu::build_plan over all E = table.num_experts() ids, tiles of 16 rows: rows
//               grouped by expert in (token, slot) order, capacity drops and ids outside
//               [0, E] counted in Diagnostics and skipped;
//   1. gather   the rows of each computed expert's tiles (and every token, for the shared
//               expert) into an fp32 panel, times the routing weight for WeightPosition::on_input;
//   2. up       per (tile, 48 columns of I): g = W_g x + b_g, u = W_u x + b_u (plain: u only),
//               h = expert.hidden_unit(g, u) into an fp32 [rows, I] buffer;
//   3. down     per (tile, 48 columns of H): o = W_d h + b_d, times w for after_expert, into an
//               fp32 [rows, H] buffer; zero and identity experts' tiles do no GEMM;
//   4. combine  per token: y_t = Σ_j (slot order) of its row outputs (identity expert: w·x_t;
//               zero expert, empty slot, dropped or invalid assignment: nothing), then
//               + σ(w_sg·x_t)·S(x_t) (or S(x_t)), summed in fp32, rounded once to Y.
// Each phase is a ThreadPool::parallel_for over its items. Every output element is computed by
// one item in an order fixed by the plan (never by the schedule), so y is bit-identical for any
// thread count. CombineMode::atomic runs the deterministic combine: on the CPU it costs nothing.
//
// Quantized<Base> experts (experts/quantized.hpp): X is float or Base's Compute type. Each work
// item dequantises the few weight rows it multiplies to fp32 (experts::dequantize_run's bits;
// AVX2 for 1, 2, 3, 4, 8 bits: detail/dequantize.hpp) into a 6 KiB panel on its thread's stack,
// K-block by K-block, just before the microkernel reads them (detail::gemm_nt_dequantized). The
// CPU keeps fp32 operands: the weights are never rounded to Compute. The panel is on the stack,
// not in the workspace: the pool names no worker, and the workspace size is thread-count free.
// Single-row tiles (decode) decode the codes into the FMAs' registers instead (the same bits).
// The shared expert stays dense in Compute.
//
// Everything lives in the caller's workspace (experts_workspace_size), carved by one routine in
// the size query and the run; nothing is allocated on the call path. T = 0 returns after the
// argument checks (y is empty; no plan, nothing counted). NaN in x propagates (no value check).

#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/fp32_math.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/core/workspace.hpp"
#include "moekit/cpu/detail/dequantize.hpp"
#include "moekit/cpu/detail/expert_gemm.hpp"
#include "moekit/cpu/plan.hpp"
#include "moekit/cpu/thread_pool.hpp"
#include "moekit/experts/concept.hpp"
#include "moekit/experts/expert_args.hpp"
#include "moekit/experts/quantized.hpp"
#include "moekit/plan/dispatch_plan.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace cpu {

inline constexpr int expert_tile_rows = 16;               // rows per plan tile (one GEMM item)
inline constexpr std::int64_t expert_column_chunk = 48;   // output columns per GEMM item (16 blocks of 3)
inline constexpr std::int64_t expert_combine_tokens = 8;  // tokens per combine item

namespace detail {

[[nodiscard]] constexpr std::int64_t round_up(std::int64_t n, std::int64_t m) noexcept { return (n + m - 1) / m * m; }
[[nodiscard]] constexpr std::int64_t ceil_div(std::int64_t n, std::int64_t m) noexcept { return (n + m - 1) / m; }

// Sizes of the executor's buffers; rows of the fp32 buffers are padded to 16 floats (64 bytes).
struct ExpertsLayout {
  plan::PlanProblem plan;
  std::int64_t max_rows = 0;     // routed rows (plan::max_rows); the shared expert's rows follow
  std::int64_t shared_rows = 0;  // T with a shared expert, else 0
  std::int64_t ldh = 0, ldi = 0, ldis = 0;
};

[[nodiscard]] inline ExpertsLayout experts_layout(experts::ExpertProblem const& p) noexcept {
  ExpertsLayout l;
  l.plan = plan::PlanProblem{.tokens = p.tokens,
                             .slots = p.slots,
                             .experts = p.table.num_experts(),
                             .capacity = p.capacity,
                             .tile_rows = expert_tile_rows};
  l.max_rows = plan::max_rows(l.plan);
  l.shared_rows = p.shared_intermediate > 0 ? p.tokens : 0;
  l.ldh = round_up(p.hidden, 16);
  l.ldi = round_up(p.intermediate, 16);
  l.ldis = round_up(p.shared_intermediate, 16);
  return l;
}

struct ExpertsWorkspace {
  plan::DispatchPlan<MemorySpace::host> plan;
  float* panel = nullptr;   // [max_rows + shared_rows, ldh] gathered inputs
  float* hidden = nullptr;  // [max_rows, ldi] then [shared_rows, ldis]
  float* out = nullptr;     // [max_rows + shared_rows, ldh] expert outputs
};

// The one carving routine behind experts_workspace_size and run_experts.
inline ExpertsWorkspace carve_experts_workspace(ExpertsLayout const& l, Workspace& w) noexcept {
  ExpertsWorkspace ws;
  std::int64_t const tiles = plan::max_tiles(l.plan);
  ws.plan.expert_counts = w.take<std::int64_t>(l.plan.experts, "expert counts");
  ws.plan.expert_offsets = w.take<std::int64_t>(l.plan.experts + 1, "expert offsets");
  ws.plan.row_assignment = w.take<std::int64_t>(l.max_rows, "row assignment");
  ws.plan.assignment_row = w.take<std::int64_t>(plan::assignments(l.plan), "assignment row");
  ws.plan.tile_expert = w.take<int>(tiles, "tile expert");
  ws.plan.tile_row = w.take<std::int64_t>(tiles, "tile row");
  ws.plan.num_rows = w.take<std::int64_t>(1, "plan rows");
  ws.plan.num_tiles = w.take<std::int64_t>(1, "plan tiles");
  ws.panel = w.take<float>((l.max_rows + l.shared_rows) * l.ldh, "input panel");
  ws.hidden = w.take<float>(l.max_rows * l.ldi + l.shared_rows * l.ldis, "hidden activations");
  ws.out = w.take<float>((l.max_rows + l.shared_rows) * l.ldh, "expert outputs");
  return ws;
}

template <class T>
[[nodiscard]] inline float widen(T v) noexcept {
  return widen_weight(v);
}

enum class Projection { gate, up, down };

// One run's phases; each member function is one parallel_for item. W is a dense element or a
// QuantizedElement: then the routed experts' rows are dequantised to fp32 into a per-thread
// panel as the microkernel needs them (gemm_nt_dequantized), and the shared expert stays dense.
template <class Ex, class X, class W, class Y>
struct ExpertsRun {
  using Weights = experts::WeightsOf<W, MemorySpace::host>;
  using Dense = typename Weights::dense;
  static constexpr bool quantized = Weights::quantized;

  Ex const& expert;
  experts::ExpertProblem const& p;
  experts::ExpertArgs<X, W, Y, MemorySpace::host> const& a;
  ExpertsLayout const& l;
  ExpertsWorkspace const& ws;
  std::int64_t routed_tiles;  // the plan's tiles (all E ids); the shared expert's tiles follow
  std::int64_t shared_tiles;

  struct Tile {
    std::int64_t row0 = 0;         // first row in panel / out
    std::int64_t rows = 0;         // 0: nothing to compute (zero/identity expert, all padding)
    std::int64_t first_token = 0;  // shared tiles: token of row0
    bool routed = true;
    experts::MlpWeights<Dense, MemorySpace::host> const* dense = nullptr;    // dense routed or shared
    experts::QuantizedMlpWeights<MemorySpace::host> const* codes = nullptr;  // quantised routed
    std::int64_t expert = 0;
    std::int64_t inter = 0;
    float* hidden = nullptr;  // this tile's rows of the hidden buffer
    std::int64_t ldi = 0;
  };

  [[nodiscard]] Tile tile(std::int64_t i) const noexcept {
    Tile t;
    if (i < routed_tiles) {
      int const e = ws.plan.tile_expert[i];
      if (p.table.kind(e) != experts::ExpertKind::computed) {
        return t;
      }
      t.row0 = ws.plan.tile_row[i];
      while (t.rows < expert_tile_rows && ws.plan.row_assignment[t.row0 + t.rows] >= 0) {
        ++t.rows;  // padding rows (-1) come last in a tile
      }
      if constexpr (quantized) {
        t.codes = &a.experts;
      } else {
        t.dense = &a.experts;
      }
      t.expert = e;
      t.inter = p.intermediate;
      t.hidden = ws.hidden + t.row0 * l.ldi;
      t.ldi = l.ldi;
      return t;
    }
    std::int64_t const s = i - routed_tiles;
    t.routed = false;
    t.first_token = s * expert_tile_rows;
    t.row0 = l.max_rows + t.first_token;
    t.rows = std::min<std::int64_t>(expert_tile_rows, p.tokens - t.first_token);
    t.dense = &a.shared.weights;
    t.inter = p.shared_intermediate;
    t.hidden = ws.hidden + l.max_rows * l.ldi + t.first_token * l.ldis;
    t.ldi = l.ldis;
    return t;
  }

  // c[r, j] = Σ_k act[r, k] · W[row0 + j, k] for the tile's rows and j < cols, W the tile's
  // projection `which` (n = its input size).
  void project(Tile const& t, Projection which, std::int64_t row0, std::int64_t cols, std::int64_t n, float const* act,
               std::int64_t lda, float* c, std::int64_t ldc) const noexcept {
    if constexpr (quantized) {
      if (t.codes != nullptr) {
        auto const& q = which == Projection::gate ? t.codes->gate
                        : which == Projection::up ? t.codes->up
                                                  : t.codes->down;
        int const bits = q.bits_of(t.expert);
        auto const code_row = [&q, &t, row0](std::int64_t j) {
          std::int64_t const r = row0 + j;
          return CodeRow{q.row(t.expert, r), q.row_scales(t.expert, r), q.row_zeros(t.expert, r)};
        };
        if (t.rows == 1 && gemv_dequantized(bits, cols, n, act, q.group, code_row, c)) {
          return;  // decode: codes straight into the FMAs (the same bits as the panel below)
        }
        auto const dequant = [&q, &t, bits, row0](std::int64_t j, std::int64_t k0, std::int64_t kn, float* out) {
          std::int64_t const r = row0 + j;
          dequantize_run_f32(q.row(t.expert, r), bits, k0, kn, q.row_scales(t.expert, r), q.row_zeros(t.expert, r),
                             q.group, out);
        };
        gemm_nt_dequantized(t.rows, cols, n, act, lda, dequant, c, ldc);
        return;
      }
    }
    auto const& d = which == Projection::gate ? t.dense->gate : which == Projection::up ? t.dense->up : t.dense->down;
    gemm_nt(t.rows, cols, n, act, lda, d.pointer(t.expert, row0, 0), d.stride(1), c, ldc);
  }

  // Element i of the tile's bias of projection `which`, 0 when absent.
  [[nodiscard]] float bias(Tile const& t, Projection which, std::int64_t i) const noexcept {
    auto const of = [&](auto const& w) {
      auto const& b = which == Projection::gate ? w.gate_bias : which == Projection::up ? w.up_bias : w.down_bias;
      return b.data != nullptr ? widen(*b.pointer(t.expert, i)) : 0.0f;
    };
    if constexpr (quantized) {
      if (t.codes != nullptr) {
        return of(*t.codes);
      }
    }
    return of(*t.dense);
  }

  [[nodiscard]] float routing_weight(std::int64_t row) const noexcept {
    std::int64_t const asg = ws.plan.row_assignment[row];
    return *a.weights.pointer(asg / p.slots, asg % p.slots);
  }

  void gather(std::int64_t i) const noexcept {
    Tile const t = tile(i);
    for (std::int64_t r = 0; r < t.rows; ++r) {
      std::int64_t const row = t.row0 + r;
      std::int64_t const token = t.routed ? ws.plan.row_assignment[row] / p.slots : t.first_token + r;
      float const scale = t.routed && p.position == experts::WeightPosition::on_input ? routing_weight(row) : 1.0f;
      X const* x = a.x.pointer(token, 0);
      float* dst = ws.panel + row * l.ldh;
      if (scale == 1.0f) {
        for (std::int64_t h = 0; h < p.hidden; ++h) {
          dst[h] = widen(x[h]);
        }
      } else {
        for (std::int64_t h = 0; h < p.hidden; ++h) {
          dst[h] = scale * widen(x[h]);
        }
      }
    }
  }

  // Item i: (tile, chunk of I). Routed tiles first, then the shared tiles (their own I).
  [[nodiscard]] std::int64_t up_items() const noexcept {
    return routed_tiles * ceil_div(p.intermediate, expert_column_chunk) +
           shared_tiles * ceil_div(p.shared_intermediate, expert_column_chunk);
  }

  void up(std::int64_t item) const noexcept {
    std::int64_t const routed_items = routed_tiles * ceil_div(p.intermediate, expert_column_chunk);
    std::int64_t i = 0, chunk = 0;
    if (item < routed_items) {
      i = item / ceil_div(p.intermediate, expert_column_chunk);
      chunk = item % ceil_div(p.intermediate, expert_column_chunk);
    } else {
      std::int64_t const chunks = ceil_div(p.shared_intermediate, expert_column_chunk);
      i = routed_tiles + (item - routed_items) / chunks;
      chunk = (item - routed_items) % chunks;
    }
    Tile const t = tile(i);
    if (t.rows == 0) {
      return;
    }
    std::int64_t const m0 = chunk * expert_column_chunk;
    std::int64_t const cols = std::min(expert_column_chunk, t.inter - m0);
    float const* panel = ws.panel + t.row0 * l.ldh;
    float g[expert_tile_rows * expert_column_chunk];
    float u[expert_tile_rows * expert_column_chunk];
    constexpr bool gated = Ex::shape == experts::ExpertShape::gated;
    if constexpr (gated) {
      project(t, Projection::gate, m0, cols, p.hidden, panel, l.ldh, g, expert_column_chunk);
    }
    project(t, Projection::up, m0, cols, p.hidden, panel, l.ldh, u, expert_column_chunk);
    for (std::int64_t c = 0; c < cols; ++c) {
      float const bg = gated ? bias(t, Projection::gate, m0 + c) : 0.0f;
      float const bu = bias(t, Projection::up, m0 + c);
      for (std::int64_t r = 0; r < t.rows; ++r) {
        float const gv = gated ? g[r * expert_column_chunk + c] + bg : 0.0f;
        t.hidden[r * t.ldi + m0 + c] = expert.hidden_unit(gv, u[r * expert_column_chunk + c] + bu);
      }
    }
  }

  [[nodiscard]] std::int64_t down_items() const noexcept {
    return (routed_tiles + shared_tiles) * ceil_div(p.hidden, expert_column_chunk);
  }

  void down(std::int64_t item) const noexcept {
    std::int64_t const chunks = ceil_div(p.hidden, expert_column_chunk);
    Tile const t = tile(item / chunks);
    if (t.rows == 0) {
      return;
    }
    std::int64_t const n0 = item % chunks * expert_column_chunk;
    std::int64_t const cols = std::min(expert_column_chunk, p.hidden - n0);
    float* out = ws.out + t.row0 * l.ldh + n0;
    project(t, Projection::down, n0, cols, t.inter, t.hidden, t.ldi, out, l.ldh);
    bool const scale = t.routed && p.position == experts::WeightPosition::after_expert;
    for (std::int64_t r = 0; r < t.rows; ++r) {
      float const s = scale ? routing_weight(t.row0 + r) : 1.0f;
      for (std::int64_t c = 0; c < cols; ++c) {
        float const b = bias(t, Projection::down, n0 + c);
        float const o = out[r * l.ldh + c] + b;
        out[r * l.ldh + c] = scale ? s * o : o;
      }
    }
  }

  // σ(w_sg · x_t) from the gathered fp32 row, 1 without a gate vector.
  [[nodiscard]] float shared_gate(std::int64_t token) const noexcept {
    auto const& gate = a.shared.gate;
    if (gate.data == nullptr) {
      return 1.0f;
    }
    float const* x = ws.panel + (l.max_rows + token) * l.ldh;
    float dot = 0.0f;
    if (p.hidden == 1 || gate.stride(0) == 1) {
      gemm_nt(1, 1, p.hidden, x, l.ldh, gate.data, p.hidden, &dot, 1);
    } else {
      for (std::int64_t h = 0; h < p.hidden; ++h) {
        dot += widen(*gate.pointer(h)) * x[h];
      }
    }
    return fp32::sigmoid(dot);
  }

  void combine(std::int64_t block) const noexcept {
    constexpr std::int64_t span = 64;  // columns summed at once in registers/L1
    std::int64_t const end = std::min(p.tokens, (block + 1) * expert_combine_tokens);
    for (std::int64_t t = block * expert_combine_tokens; t < end; ++t) {
      float const sg = l.shared_rows > 0 ? shared_gate(t) : 0.0f;
      for (std::int64_t h0 = 0; h0 < p.hidden; h0 += span) {
        std::int64_t const n = std::min(span, p.hidden - h0);
        float acc[span] = {};
        for (int j = 0; j < p.slots; ++j) {
          std::int64_t const row = ws.plan.assignment_row[t * p.slots + j];
          if (row < 0) {
            continue;  // empty slot, invalid id, dropped by capacity
          }
          experts::ExpertKind const kind = p.table.kind(*a.ids.pointer(t, j));
          if (kind == experts::ExpertKind::computed) {
            float const* o = ws.out + row * l.ldh + h0;
            for (std::int64_t c = 0; c < n; ++c) {
              acc[c] += o[c];
            }
          } else if (kind == experts::ExpertKind::identity) {
            float const w = *a.weights.pointer(t, j);
            X const* x = a.x.pointer(t, h0);
            for (std::int64_t c = 0; c < n; ++c) {
              acc[c] += w * widen(x[c]);
            }
          }
        }
        if (l.shared_rows > 0) {
          float const* s = ws.out + (l.max_rows + t) * l.ldh + h0;
          for (std::int64_t c = 0; c < n; ++c) {
            acc[c] += sg * s[c];
          }
        }
        Y* y = a.y.pointer(t, h0);
        for (std::int64_t c = 0; c < n; ++c) {
          y[c] = static_cast<Y>(acc[c]);
        }
      }
    }
  }
};

}  // namespace detail

// Bytes of workspace run_experts needs for this problem (any thread count).
template <experts::Expert E, class X, class Y>
[[nodiscard]] std::size_t experts_workspace_size(E const& /*expert*/, experts::ExpertProblem const& p) {
  Workspace counting;
  detail::carve_experts_workspace(detail::experts_layout(p), counting);
  return counting.bytes_used();
}

// y = the MoE layer's expert stage (see the top of this file). Bad arguments or a workspace
// smaller than experts_workspace_size return a Status with a message and leave y untouched.
// diagnostics (may be null) gets the plan's counts added; pool null runs on the calling thread.
template <experts::Expert E, class X, class Y>
[[nodiscard]] Status run_experts(E const& expert, experts::ExpertProblem const& p,
                                 experts::ExpertArgs<X, typename E::Element, Y, MemorySpace::host> const& args,
                                 Workspace& workspace, Diagnostics* diagnostics, ThreadPool* pool) {
  static_assert(experts::DenseElement<X>, "cpu::run_experts: activations must be float, bf16_t or fp16_t");
  static_assert(std::same_as<Y, float> || std::same_as<Y, X>, "cpu::run_experts: the output is float or X");
  using Weights = experts::WeightsOf<typename E::Element, MemorySpace::host>;
  static_assert(!Weights::quantized || std::same_as<X, float> || std::same_as<X, typename Weights::dense>,
                "cpu::run_experts: with quantised experts the activations are float or the policy's Compute type");
  if (Status s = experts::check_expert_args(expert, p, args); !s) {
    return s;
  }
  if (p.tokens == 0) {
    return Status::ok;
  }
  detail::ExpertsLayout const layout = detail::experts_layout(p);
  detail::ExpertsWorkspace const ws = detail::carve_experts_workspace(layout, workspace);
  if (Status s = workspace.status(); !s) {
    return error(s, "cpu experts: workspace: buffer '%s' needs %zu bytes, %zu left (experts_workspace_size = %zu)",
                 workspace.failed_buffer(), workspace.failed_bytes(), workspace.bytes_left_at_failure(),
                 experts_workspace_size<E, X, Y>(expert, p));
  }
  Diagnostics local;
  if (Status s = build_plan(layout.plan, args.ids, ws.plan, diagnostics != nullptr ? *diagnostics : local); !s) {
    return s;
  }
  detail::ExpertsRun<E, X, typename E::Element, Y> const run{
      expert, p, args, layout, ws, *ws.plan.num_tiles, detail::ceil_div(layout.shared_rows, expert_tile_rows)};
  auto parallel = [pool](std::int64_t n, auto const& f) {
    if (pool != nullptr) {
      pool->parallel_for(n, f);
    } else {
      for (std::int64_t i = 0; i < n; ++i) {
        f(i);
      }
    }
  };
  parallel(run.routed_tiles + run.shared_tiles, [&run](std::int64_t i) { run.gather(i); });
  parallel(run.up_items(), [&run](std::int64_t i) { run.up(i); });
  parallel(run.down_items(), [&run](std::int64_t i) { run.down(i); });
  parallel(detail::ceil_div(p.tokens, expert_combine_tokens), [&run](std::int64_t i) { run.combine(i); });
  return Status::ok;
}

}  // namespace cpu
MOEKIT_NAMESPACE_END
