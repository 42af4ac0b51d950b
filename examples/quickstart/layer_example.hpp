#pragma once
// What an application writes around moekit::MoeLayer, shared by the examples: random weights,
// one run of a layer (Arguments, workspace sized and aligned, run on the CPU executor or on a
// CUDA stream, here the emulated device with racecheck on), routing statistics, and the
// comparison of the two backends against a bound derived from the data (compare_backends).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <vector>

#include "moekit/core/diagnostics.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/core/workspace.hpp"
#include "moekit/cpu/thread_pool.hpp"
#include "moekit/emu/launch_config.hpp"
#include "moekit/experts/expert_table.hpp"
#include "moekit/layer.hpp"

namespace example {

using moekit::bf16_t;

// A layer's inputs: x [T, H], the router weight [E, H] and the computed experts' bf16 weights.
struct LayerData {
  std::int64_t tokens = 0, hidden = 0, inter = 0;
  moekit::experts::ExpertTable table{};
  std::vector<bf16_t> x, gate_weight, w_gate, w_up, w_down;  // [T,H] [E,H] [C,I,H] [C,I,H] [C,H,I]

  // Entries uniform with variance 1 for x, 1/H for W_g and W_u, 1/I for W_d: g, u, h and y are
  // of order 1. Router rows have variance 4/(3H): logits O(1) apart, so selections are not
  // decided by near ties.
  static LayerData random(std::int64_t tokens, std::int64_t hidden, std::int64_t inter,
                          moekit::experts::ExpertTable table, std::uint32_t seed) {
    LayerData d{tokens, hidden, inter, table, {}, {}, {}, {}, {}};
    std::mt19937 rng(seed);
    auto const fill = [&](std::vector<bf16_t>& v, std::int64_t n, double variance) {
      double const half_width = std::sqrt(3.0 * variance);  // U(±a) has variance a²/3
      std::uniform_real_distribution<double> u(-half_width, half_width);
      v.resize(static_cast<std::size_t>(n));
      for (bf16_t& e : v) {
        e = bf16_t(u(rng));
      }
    };
    std::int64_t const E = table.num_experts(), C = table.computed;
    fill(d.x, tokens * hidden, 1.0);
    fill(d.gate_weight, E * hidden, 4.0 / (3.0 * double(hidden)));
    fill(d.w_gate, C * inter * hidden, 1.0 / double(hidden));
    fill(d.w_up, C * inter * hidden, 1.0 / double(hidden));
    fill(d.w_down, C * hidden * inter, 1.0 / double(inter));
    return d;
  }
  [[nodiscard]] double at(std::vector<bf16_t> const& v, std::int64_t i) const {
    return double(moekit::to_float(v[static_cast<std::size_t>(i)]));
  }
};

// One run's outputs: y [T, H] in fp32, the routing (ids, weights [T, K]) and the counts.
struct LayerRun {
  std::vector<float> y, logits, weights;
  std::vector<int> ids;
  moekit::Diagnostics diagnostics{};
  std::size_t workspace_bytes = 0;
};

// The layer's Arguments over `data` and `out` (sized here) in memory space S.
template <class Layer, moekit::MemorySpace S>
typename Layer::template Arguments<bf16_t, float, S> arguments(typename Layer::Problem const& p, std::int64_t K,
                                                               LayerData const& data, LayerRun& out) {
  using View2 = moekit::TensorView<bf16_t const, 2, S>;
  using View3 = moekit::TensorView<bf16_t const, 3, S>;
  std::int64_t const T = p.tokens, H = p.hidden, I = p.intermediate, E = p.table.num_experts(), C = p.table.computed;
  out.y.assign(static_cast<std::size_t>(T * H), 0.f);
  out.logits.assign(static_cast<std::size_t>(T * E), 0.f);
  out.ids.assign(static_cast<std::size_t>(T * K), -1);
  out.weights.assign(static_cast<std::size_t>(T * K), 0.f);
  out.diagnostics = {};
  typename Layer::template Arguments<bf16_t, float, S> a;
  a.x = View2::row_major(data.x.data(), {T, H});
  a.gate_weight = View2::row_major(data.gate_weight.data(), {E, H});  // HF layout [out, in]; no router bias
  a.experts.gate = View3::row_major(data.w_gate.data(), {C, I, H});
  a.experts.up = View3::row_major(data.w_up.data(), {C, I, H});
  a.experts.down = View3::row_major(data.w_down.data(), {C, H, I});
  a.y = moekit::TensorView<float, 2, S>::row_major(out.y.data(), {T, H});
  // Optional outputs (null views: kept in the workspace): the router's logits, ids and weights.
  a.logits = moekit::TensorView<float, 2, S>::row_major(out.logits.data(), {T, E});
  a.ids = moekit::TensorView<int, 2, S>::row_major(out.ids.data(), {T, K});
  a.weights = moekit::TensorView<float, 2, S>::row_major(out.weights.data(), {T, K});
  a.diagnostics = &out.diagnostics;  // in the memory space of the run
  return a;
}

// Runs `Layer` on `data` on the CPU executor (device = false) or on a CUDA stream (under the
// host compiler: moekit's emulator, with racecheck on and a shuffled schedule, two blocks
// resident at once). Device arguments point to device memory; under the emulator the host's
// memory is the device's. `launch`: the device path as one fused cooperative kernel (the
// default) or one kernel per stage; both give the same bits. Returns false (and prints why) on
// any error.
template <class Layer, class Router, class Expert>
bool run_layer(Router const& router, Expert const& expert, typename Layer::Problem const& p, LayerData const& data,
               bool device, LayerRun& out, moekit::LayerLaunch launch = moekit::LayerLaunch::fused) {
  using moekit::MemorySpace;
  using moekit::Status;
  if (Status s = Layer::template can_implement<bf16_t, float>(router, {}, expert, p, device); !s) {
    std::fprintf(stderr, "can_implement: %s: %s\n", moekit::to_string(s), moekit::last_error_message());
    return false;
  }
  // The workspace is the caller's: workspace_size() bytes at a 256-byte aligned base.
  out.workspace_bytes = Layer::template workspace_size<bf16_t, float>(router, p, device);
  std::size_t space = out.workspace_bytes + moekit::Workspace::default_alignment;
  auto const buffer = std::make_unique<std::byte[]>(space);
  void* base = buffer.get();
  base = std::align(moekit::Workspace::default_alignment, out.workspace_bytes, base, space);
  moekit::Workspace workspace(base, out.workspace_bytes);

  Status s = Status::ok;
  if (device) {
    moekit::emu::LaunchOptions o;  // ignored by a real CUDA build
    o.schedule_seed = 3;
    o.racecheck = true;
    o.max_resident_blocks = 2;
    moekit::emu::ScopedLaunchOptions const guard(o);
    s = Layer::run(router, {}, expert, p, arguments<Layer, MemorySpace::device>(p, router.slots(), data, out),
                   workspace, nullptr, launch);
  } else {
    moekit::cpu::ThreadPool pool(2);
    s = Layer::run(router, {}, expert, p, arguments<Layer, MemorySpace::host>(p, router.slots(), data, out), workspace,
                   pool);
  }
  if (!s) {
    std::fprintf(stderr, "MoeLayer::run on the %s: %s: %s\n", device ? "device" : "CPU", moekit::to_string(s),
                 moekit::last_error_message());
    return false;
  }
  return true;
}

// Tokens per expert, max/mean load, empty slots, and the run's Diagnostics.
inline void print_routing(LayerRun const& r, moekit::experts::ExpertTable table, int slots, char const* backend) {
  std::printf("\n");
  int const E = table.num_experts();
  std::vector<long long> load(static_cast<std::size_t>(E) + 1, 0);  // the last bin: empty slots (id = E)
  for (int id : r.ids) {
    ++load[static_cast<std::size_t>(std::clamp(id, 0, E))];
  }
  long long const assigned = static_cast<long long>(r.ids.size()) - load[static_cast<std::size_t>(E)];
  long long const max_load = *std::max_element(load.begin(), load.end() - 1);
  double const mean = double(assigned) / E;
  std::printf("routing on the %s:\n  tokens per expert:", backend);
  for (int e = 0; e < E; ++e) {
    char const* kind = table.kind(e) == moekit::experts::ExpertKind::zero       ? "z"
                       : table.kind(e) == moekit::experts::ExpertKind::identity ? "i"
                                                                                : "";
    std::printf(" %s%lld", kind, load[static_cast<std::size_t>(e)]);
  }
  std::printf("%s\n", table.zero + table.identity > 0 ? "   (z: zero expert, i: identity expert)" : "");
  std::printf("  max load %lld, mean %.2f (max/mean %.2f), empty slots %lld of %zu (K = %d)\n", max_load, mean,
              mean > 0 ? double(max_load) / mean : 0.0, load[static_cast<std::size_t>(E)], r.ids.size(), slots);
  moekit::Diagnostics const& d = r.diagnostics;
  std::printf("  diagnostics: nonfinite rows %llu, dropped %llu, invalid ids %llu, empty slots %llu, "
              "empty experts %llu, max load %llu\n",
              d.nonfinite_rows, d.dropped_assignments, d.invalid_ids, d.empty_slots, d.empty_experts, d.max_load);
}

// The hidden unit h = f(g, u) of the expert policy in double, with |∂h/∂g| and |∂h/∂u|.
struct HiddenUnit {
  double h = 0, dg = 0, du = 0;
};

struct Comparison {
  double max_abs = 0;      // max |y_cpu − y_device|
  double max_y = 0;        // max |y_cpu|
  double worst_ratio = 0;  // max |y_cpu − y_device| / bound, per element
  double max_bound = 0;    // the largest per-element bound
  long long id_mismatches = 0;
  bool launches_agree = true;  // the caller's extra check: fused and multi-launch y bit-identical
  [[nodiscard]] bool pass() const noexcept { return id_mismatches == 0 && worst_ratio <= 1.0 && launches_agree; }
};

// Compares the CPU executor's y with the device's, element by element, against a first-order
// bound on their difference computed from the data (after_expert weights, no shared expert).
// Both backends read the same bf16 x and weights and compute in fp32; with γ_n = n·2⁻²⁴:
//   logits   each backend within (H+3)·2⁻²⁴·L of the exact value, L = Σ_h |x_h·W_r,eh|
//            (layer_test.cpp's bound), so they differ by δz ≤ 2(H+3)·2⁻²⁴·max_e L;
//   weights  the same fp32 router code on logits δz apart: δw ≤ c_w·δz, c_w the router's
//            largest Σ_m |∂w_k/∂z_m| (softmax over the selected: 2w(1−w) ≤ ½);
//   g, u     length-H fp32 dot products in different orders: δg ≤ 2γ_H·Σ_h|x_h W_g,jh|, same for u;
//   h        the device rounds h to bf16 between the GEMMs (unit roundoff 2⁻⁸), the CPU keeps fp32,
//            and the activation is a few ulps on each: δh ≤ |∂h/∂g|δg + |∂h/∂u|δu + (2⁻⁸ + 8·2⁻²⁴)|h|;
//   o        length-I dot product: δo_i ≤ Σ_j |W_d,ij|·δh_j + 2γ_I·Σ_j |W_d,ij·h_j|;
//   y        Σ_k w_k·o_k in slot order: δy ≤ Σ_k (w_k·δo_k + δw_k·|o_k|) + 2γ_K·Σ_k |w_k·o_k|.
// Identity experts add w·x (only δw enters), zero experts nothing. The bound is first order;
// the second-order terms are products of two of these relative errors, each ≤ 2⁻⁸, hence at
// most 2⁻⁸ of the first-order ones: ×1.25 covers them with room to spare. (The logits are in
// fact bit-identical on both backends, cpu/gate_projection.hpp; the bound does not rely on it.)
// Summing |terms| makes it ~√I looser than the typical difference: it catches a wrong expert,
// slot or weight (errors of a few % of y), not sub-percent ones.
// It needs the same selections on both sides: a selection flipped by a last-bit logit tie
// would differ legitimately and is reported as a routing mismatch instead.
template <class Unit>
Comparison compare_backends(LayerData const& d, LayerRun const& cpu, LayerRun const& dev, int slots,
                            double weight_sensitivity, Unit const& unit) {
  Comparison c;
  for (std::size_t i = 0; i < cpu.ids.size(); ++i) {
    c.id_mismatches += cpu.ids[i] != dev.ids[i];
  }
  std::int64_t const T = d.tokens, H = d.hidden, I = d.inter, E = d.table.num_experts();
  double const u32 = 0x1p-24, u16 = 0x1p-8;
  std::vector<double> g(static_cast<std::size_t>(I)), dh(g.size()), h(g.size()), o(static_cast<std::size_t>(H)),
      bound(o.size());
  for (std::int64_t t = 0; t < T; ++t) {
    double max_l = 0;
    for (std::int64_t e = 0; e < E; ++e) {
      double l = 0;
      for (std::int64_t k = 0; k < H; ++k) {
        l += std::fabs(d.at(d.x, t * H + k) * d.at(d.gate_weight, e * H + k));
      }
      max_l = std::max(max_l, l);
    }
    double const dw = weight_sensitivity * 2.0 * double(H + 3) * u32 * max_l;
    std::fill(bound.begin(), bound.end(), 0.0);
    for (int k = 0; k < slots; ++k) {
      auto const slot = static_cast<std::size_t>(t * slots + k);
      int const id = cpu.ids[slot];
      double const w = cpu.weights[slot];
      auto const kind = d.table.kind(id);
      if (kind == moekit::experts::ExpertKind::identity) {
        for (std::int64_t i = 0; i < H; ++i) {
          bound[static_cast<std::size_t>(i)] += dw * std::fabs(d.at(d.x, t * H + i));
        }
      }
      if (kind != moekit::experts::ExpertKind::computed) {
        continue;
      }
      for (std::int64_t j = 0; j < I; ++j) {
        double gv = 0, uv = 0, gm = 0, um = 0;
        for (std::int64_t k2 = 0; k2 < H; ++k2) {
          double const xv = d.at(d.x, t * H + k2);
          double const wg = d.at(d.w_gate, (id * I + j) * H + k2), wu = d.at(d.w_up, (id * I + j) * H + k2);
          gv += xv * wg, uv += xv * wu, gm += std::fabs(xv * wg), um += std::fabs(xv * wu);
        }
        HiddenUnit const hu = unit(gv, uv);
        h[static_cast<std::size_t>(j)] = hu.h;
        dh[static_cast<std::size_t>(j)] =
            hu.dg * 2 * double(H) * u32 * gm + hu.du * 2 * double(H) * u32 * um + (u16 + 8 * u32) * std::fabs(hu.h);
      }
      for (std::int64_t i = 0; i < H; ++i) {
        double ov = 0, om = 0, od = 0;
        for (std::int64_t j = 0; j < I; ++j) {
          double const wd = d.at(d.w_down, (id * H + i) * I + j);
          ov += wd * h[static_cast<std::size_t>(j)];
          om += std::fabs(wd * h[static_cast<std::size_t>(j)]);
          od += std::fabs(wd) * dh[static_cast<std::size_t>(j)];
        }
        bound[static_cast<std::size_t>(i)] += std::fabs(w) * (od + 2 * double(I) * u32 * om) + dw * std::fabs(ov) +
                                              2 * double(slots) * u32 * std::fabs(w * ov);
      }
    }
    for (std::int64_t i = 0; i < H; ++i) {
      auto const at = static_cast<std::size_t>(t * H + i);
      double const diff = std::fabs(double(cpu.y[at]) - double(dev.y[at]));
      c.max_abs = std::max(c.max_abs, diff);
      c.max_y = std::max(c.max_y, std::fabs(double(cpu.y[at])));
      double const b = 1.25 * bound[static_cast<std::size_t>(i)] + 1e-30;
      c.worst_ratio = std::max(c.worst_ratio, diff / b);
      c.max_bound = std::max(c.max_bound, b);
    }
  }
  return c;
}

// Prints the comparison and the one-line verdict; returns the exit code.
inline int report(Comparison const& c, std::size_t cpu_workspace, std::size_t device_workspace) {
  std::printf("\nworkspace: %zu bytes on the CPU executor, %zu bytes on the device\n", cpu_workspace, device_workspace);
  std::printf("CPU vs device: max |y_cpu - y_device| = %.3g, max relative difference (to max|y| = %.3g) = %.3g\n",
              c.max_abs, c.max_y, c.max_y > 0 ? c.max_abs / c.max_y : 0.0);
  std::printf("               routing mismatches %lld, worst |difference| / per-element bound = %.3g "
              "(largest bound %.3g)\n",
              c.id_mismatches, c.worst_ratio, c.max_bound);
  std::printf("verdict: %s\n", c.pass() ? "PASS: the CPU executor and the emulated device agree within the bound"
                               : c.launches_agree ? "FAIL: the backends differ beyond the bound"
                                                  : "FAIL: the fused and multi-launch device paths differ");
  return c.pass() ? 0 : 1;
}

}  // namespace example
