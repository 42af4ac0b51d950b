#pragma once
// The CPU executor's expert-stage tests' common part: a random layer (Config, Layer), the
// oracle host::reference_moe_combine with a per-element error bound derived from the data
// (expected), an exact-size workspace, and check (1/2/3 threads bit-identical, within the bound).
// Used by experts_test.cpp (dense weights) and experts_quantized_test.cpp (the dequantised
// weights as fp32).
//
// Tolerance, per output element, from the data (u = 2^-24, γ(n) = (n + 4)·u, which bounds an
// fp32 sum of n terms in any order, FMA or not, relative to the sum of the terms' magnitudes):
//   g, u     δg ≤ γ(H + 2)·(Σ_h |W_g||x| + |b_g|)  (+1 term: on_input's fp32 w·x)
//   h        gated: δh ≤ L|u|δg + |act(g)|δu + L·δgδu + 16u|h|; plain: Lδu + 16u|h|;
//            clamped SwiGLU: (|û|+1)Lδg + |â σ(αâ)|δu + L·δgδu + 16u|h|. L = 1.2 bounds the
//            slope of every activation (max SiLU' ≈ 1.10, GELU' ≈ 1.13, ReLU' = 1); 16 ulp covers
//            the fp32 activations (a few ulp each, experts/activation.hpp).
//   o        δo ≤ γ(I + 1)·(Σ_m |W_d||h| + |b_d|) + (1 + γ(I))·Σ_m |W_d| δh (h's error propagated)
//   slot     after_expert: |w|δo + u|w||o|; identity: u|w x|; shared: σδS + δσ|S| + u σ|S| with
//            δσ ≤ ¼·γ(H)·Σ|w_sg||x| + 4uσ
//   y        Σ slot errors + γ(K + 2)·Σ |terms| (the combine's fp32 sum) + 2u|y| (the reference's
//            and our fp32 rounding) + half an ulp of Y (bf16: 2^-8|y|, fp16: 2^-11|y| + 2^-25).
// All magnitudes come from a double forward in the test. A wrong expert, weight, bias or slot
// is off by O(|y|), far above these bounds (relative ~ (H + I)·2^-24 of the magnitudes).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <type_traits>
#include <vector>

#include "../experts/expert_case.hpp"
#include <catch2/catch.hpp>

#include "moekit/cpu/experts.hpp"
#include "moekit/experts/clamped_swiglu.hpp"
#include "moekit/experts/gated_mlp.hpp"
#include "moekit/experts/plain_mlp.hpp"
#include "moekit/host/expert_reference.hpp"

namespace cpu_case {

using namespace moekit;
using experts::ExpertKind;
using experts::WeightPosition;

constexpr double unit = 0x1p-24;
constexpr double slope = 1.2;  // L above
inline double gamma(std::int64_t n) { return double(n + 4) * unit; }

template <class T>
double widen(T v) {
  if constexpr (std::is_same_v<T, float>) {
    return double(v);
  } else {
    return v.to_double();
  }
}

template <class T>
T narrow(double v) {
  if constexpr (std::is_same_v<T, float>) {
    return static_cast<float>(v);
  } else {
    return T(v);
  }
}

// Half an ulp of the output format relative to |y| (plus its smallest subnormal's half).
template <class Y>
double half_ulp(double magnitude) {
  if constexpr (std::is_same_v<Y, bf16_t>) {
    return 0x1p-8 * magnitude + 0x1p-134;
  } else if constexpr (std::is_same_v<Y, fp16_t>) {
    return 0x1p-11 * magnitude + 0x1p-25;
  } else {
    return 0.0;
  }
}

// Policy → the reference's ExpertFunction: tests/experts/expert_case.hpp's function_of.
using expert_case::function_of;

struct Config {
  std::int64_t tokens = 37, hidden = 50, inter = 36, shared_inter = 0;
  int slots = 2;
  experts::ExpertTable table{6, 0, 0};
  bool biases = false, shared_gate = false;
  WeightPosition position = WeightPosition::after_expert;
  std::int64_t capacity = -1;
  double empty = 0.0, invalid = 0.0;  // probability of an empty slot / an id outside [0, E]
  int all_to = -1;                    // >= 0: every token's slot 0 goes there, the others are empty
  int unused = -1;                    // an expert no token picks
  unsigned seed = 1;
};

// One layer's inputs (host vectors) and views of them.
template <class X, class W>
struct Layer {
  Config c;
  std::vector<X> x;
  std::vector<int> ids;
  std::vector<float> weights;
  std::vector<W> gate, up, down, gate_bias, up_bias, down_bias;                     // [Ec, ...]
  std::vector<W> s_gate, s_up, s_down, s_gate_bias, s_up_bias, s_down_bias, s_vec;  // shared

  explicit Layer(Config const& config) : c(config) {
    std::mt19937 rng(c.seed);
    std::uniform_real_distribution<double> sym(-1.0, 1.0), pos(0.05, 1.0), coin(0.0, 1.0);
    auto fill = [&](std::vector<W>& v, std::int64_t n, double scale) {
      v.resize(static_cast<std::size_t>(n));
      for (W& e : v) {
        e = narrow<W>(scale * sym(rng));
      }
    };
    std::int64_t const T = c.tokens, H = c.hidden, I = c.inter, Ec = c.table.computed;
    x.resize(static_cast<std::size_t>(T * H));
    for (X& v : x) {
      v = narrow<X>(2.0 * sym(rng));
    }
    int const E = c.table.num_experts();
    ids.resize(static_cast<std::size_t>(T * c.slots));
    weights.resize(ids.size());
    for (std::size_t a = 0; a < ids.size(); ++a) {
      int id = static_cast<int>(rng() % static_cast<unsigned>(E));
      if (id == c.unused) {
        id = (id + 1) % E;
      }
      double const r = coin(rng);
      if (r < c.empty) {
        id = E;
      } else if (r < c.empty + c.invalid) {
        id = (rng() & 1) != 0 ? -1 - static_cast<int>(rng() % 3) : E + 1 + static_cast<int>(rng() % 3);
      }
      if (c.all_to >= 0) {
        id = a % static_cast<std::size_t>(c.slots) == 0 ? c.all_to : E;
      }
      ids[a] = id;
      weights[a] = static_cast<float>(pos(rng));
    }
    fill(gate, Ec * I * H, 1.0 / std::sqrt(double(H)));
    fill(up, Ec * I * H, 1.0 / std::sqrt(double(H)));
    fill(down, Ec * H * I, 1.0 / std::sqrt(double(I)));
    if (c.biases) {
      fill(gate_bias, Ec * I, 0.5);
      fill(up_bias, Ec * I, 0.5);
      fill(down_bias, Ec * H, 0.5);
    }
    std::int64_t const Is = c.shared_inter;
    if (Is > 0) {
      fill(s_gate, Is * H, 1.0 / std::sqrt(double(H)));
      fill(s_up, Is * H, 1.0 / std::sqrt(double(H)));
      fill(s_down, H * Is, 1.0 / std::sqrt(double(Is)));
      if (c.biases) {
        fill(s_gate_bias, Is, 0.5);
        fill(s_up_bias, Is, 0.5);
        fill(s_down_bias, H, 0.5);
      }
      if (c.shared_gate) {
        fill(s_vec, H, 2.0 / std::sqrt(double(H)));
      }
    }
  }

  static experts::MlpWeights<W, MemorySpace::host> mlp(std::vector<W> const& g, std::vector<W> const& u,
                                                       std::vector<W> const& d, std::vector<W> const& gb,
                                                       std::vector<W> const& ub, std::vector<W> const& db,
                                                       std::int64_t E, std::int64_t H, std::int64_t I) {
    auto v3 = [](std::vector<W> const& v, std::int64_t a, std::int64_t b, std::int64_t cc) {
      return HostTensor<W const, 3>::row_major(v.empty() ? nullptr : v.data(), {a, b, cc});
    };
    auto v2 = [](std::vector<W> const& v, std::int64_t a, std::int64_t b) {
      return HostTensor<W const, 2>::row_major(v.empty() ? nullptr : v.data(), {a, b});
    };
    return {v3(g, E, I, H), v3(u, E, I, H), v3(d, E, H, I), v2(gb, E, I), v2(ub, E, I), v2(db, E, H)};
  }

  template <class Y>
  experts::ExpertArgs<X, W, Y, MemorySpace::host> args(std::vector<Y>& y) const {
    std::int64_t const T = c.tokens, H = c.hidden;
    experts::ExpertArgs<X, W, Y, MemorySpace::host> a;
    a.x = HostTensor<X const, 2>::row_major(x.data(), {T, H});
    a.ids = HostTensor<int const, 2>::row_major(ids.data(), {T, c.slots});
    a.weights = HostTensor<float const, 2>::row_major(weights.data(), {T, c.slots});
    a.experts = mlp(gate, up, down, gate_bias, up_bias, down_bias, c.table.computed, H, c.inter);
    if (c.shared_inter > 0) {
      a.shared.weights = mlp(s_gate, s_up, s_down, s_gate_bias, s_up_bias, s_down_bias, 1, H, c.shared_inter);
      a.shared.gate = HostTensor<W const, 1>::row_major(s_vec.empty() ? nullptr : s_vec.data(), {H});
    }
    a.y = HostTensor<Y, 2>::row_major(y.data(), {T, H});
    return a;
  }

  experts::ExpertProblem problem() const {
    return {.tokens = c.tokens,
            .hidden = c.hidden,
            .intermediate = c.inter,
            .slots = c.slots,
            .table = c.table,
            .shared_intermediate = c.shared_inter,
            .capacity = c.capacity,
            .position = c.position};
  }

  // Kept assignments: id in [0, E) and among the first `capacity` of its expert in (t, j) order.
  std::vector<bool> kept() const {
    int const E = c.table.num_experts();
    std::vector<std::int64_t> load(static_cast<std::size_t>(E), 0);
    std::vector<bool> k(ids.size(), false);
    for (std::size_t a = 0; a < ids.size(); ++a) {
      int const id = ids[a];
      if (id >= 0 && id < E) {
        k[a] = c.capacity < 0 || load[static_cast<std::size_t>(id)] < c.capacity;
        ++load[static_cast<std::size_t>(id)];
      }
    }
    return k;
  }
};

// Double forward of one expert on xin, giving o and the error bound of our fp32 o (see top).
template <class Policy, class W>
void forward_bound(Policy const& policy, experts::MlpWeights<W, MemorySpace::host> const& w, std::int64_t e,
                   std::int64_t H, std::int64_t I, double const* xin, double xin_terms, std::vector<double>& o,
                   std::vector<double>& mag, std::vector<double>& err) {
  host::ExpertFunction const fn = function_of(policy);
  bool const gated = Policy::shape == experts::ExpertShape::gated;
  std::vector<double> h(static_cast<std::size_t>(I)), dh(h.size());
  for (std::int64_t m = 0; m < I; ++m) {
    double g = 0, u = 0, ag = 0, au = 0;
    for (std::int64_t k = 0; k < H; ++k) {
      double const xv = xin[k];
      if (gated) {
        double const wg = widen(*w.gate.pointer(e, m, k));
        g += wg * xv;
        ag += std::abs(wg * xv);
      }
      double const wu = widen(*w.up.pointer(e, m, k));
      u += wu * xv;
      au += std::abs(wu * xv);
    }
    if (gated && w.gate_bias.data != nullptr) {
      g += widen(*w.gate_bias.pointer(e, m));
      ag += std::abs(widen(*w.gate_bias.pointer(e, m)));
    }
    if (w.up_bias.data != nullptr) {
      u += widen(*w.up_bias.pointer(e, m));
      au += std::abs(widen(*w.up_bias.pointer(e, m)));
    }
    double const dg = gamma(H + 2) * ag + xin_terms * ag, du = gamma(H + 2) * au + xin_terms * au;
    double hv = 0, d = 0;
    switch (fn.kind) {
      case host::ExpertKind::gated: {
        double const act = host::activation_value(fn.activation, g);
        hv = act * u;
        d = slope * std::abs(u) * dg + std::abs(act) * du + slope * dg * du;
        break;
      }
      case host::ExpertKind::plain:
        hv = host::activation_value(fn.activation, u);
        d = slope * du;
        break;
      case host::ExpertKind::clamped_swiglu: {
        host::ClampedSwigluPoint const pt = host::clamped_swiglu_point(g, u, fn.clamp);
        hv = pt.h;
        d = (std::abs(pt.u_hat) + 1.0) * slope * dg + std::abs(pt.f) * du + slope * dg * du;
        break;
      }
    }
    h[static_cast<std::size_t>(m)] = hv;
    dh[static_cast<std::size_t>(m)] = d + 16 * unit * std::abs(hv);
  }
  o.assign(static_cast<std::size_t>(H), 0.0);
  mag.assign(o.size(), 0.0);
  err.assign(o.size(), 0.0);
  for (std::int64_t n = 0; n < H; ++n) {
    double s = 0, a = 0, prop = 0;
    for (std::int64_t m = 0; m < I; ++m) {
      double const wd = widen(*w.down.pointer(e, n, m));
      s += wd * h[static_cast<std::size_t>(m)];
      a += std::abs(wd * h[static_cast<std::size_t>(m)]);
      prop += std::abs(wd) * dh[static_cast<std::size_t>(m)];
    }
    if (w.down_bias.data != nullptr) {
      s += widen(*w.down_bias.pointer(e, n));
      a += std::abs(widen(*w.down_bias.pointer(e, n)));
    }
    auto const k = static_cast<std::size_t>(n);
    o[k] = s;
    mag[k] = a;
    err[k] = gamma(I + 1) * (a + prop) + (1.0 + gamma(I)) * prop;
  }
}

// The expected y (reference + identity slots, in double) and the per-element bound.
template <class Policy, class X, class W, class Y>
void expected(Policy const& policy, Layer<X, W> const& L, std::vector<double>& want, std::vector<double>& bound) {
  Config const& c = L.c;
  std::int64_t const T = c.tokens, H = c.hidden, K = c.slots;
  int const Ec = c.table.computed;
  std::vector<bool> const kept = L.kept();
  std::vector<int> ref_ids(L.ids.size());
  for (std::size_t a = 0; a < ref_ids.size(); ++a) {
    bool const computed = c.table.kind(L.ids[a]) == ExpertKind::computed && L.ids[a] >= 0;
    ref_ids[a] = kept[a] && computed ? L.ids[a] : Ec;
  }
  std::vector<float> y_ref(static_cast<std::size_t>(T * H));
  std::vector<float> unused_y(y_ref.size());
  auto const args = L.template args<float>(unused_y);
  std::vector<host::ExpertWeights<W>> ref_experts(static_cast<std::size_t>(std::max(Ec, 1)));
  auto slice = [](auto const& v3, std::int64_t e) {
    return HostTensor<W const, 2>{v3.pointer(e, 0, 0), {v3.extent(1), v3.extent(2)}, {v3.stride(1), v3.stride(2)}};
  };
  auto slice1 = [](auto const& v2, std::int64_t e) {
    return v2.data == nullptr ? HostTensor<W const, 1>{}
                              : HostTensor<W const, 1>{v2.pointer(e, 0), {v2.extent(1)}, {v2.stride(1)}};
  };
  auto ref_weights = [&](experts::MlpWeights<W, MemorySpace::host> const& w, std::int64_t e) {
    host::ExpertWeights<W> r;
    if (Policy::shape == experts::ExpertShape::gated) {
      r.gate = slice(w.gate, e);
      r.gate_bias = slice1(w.gate_bias, e);
    }
    r.up = slice(w.up, e);
    r.down = slice(w.down, e);
    r.up_bias = slice1(w.up_bias, e);
    r.down_bias = slice1(w.down_bias, e);
    return r;
  };
  std::vector<W> dummy(static_cast<std::size_t>(H * c.inter), narrow<W>(0.0));
  for (int e = 0; e < std::max(Ec, 1); ++e) {
    if (Ec == 0) {  // the reference needs one expert; no id reaches it
      auto const d = HostTensor<W const, 2>::row_major(dummy.data(), {c.inter, H});
      ref_experts[0].gate = d;
      ref_experts[0].up = d;
      ref_experts[0].down = HostTensor<W const, 2>::row_major(dummy.data(), {H, c.inter});
    } else {
      ref_experts[static_cast<std::size_t>(e)] = ref_weights(args.experts, e);
    }
  }
  host::SharedExpert<W> shared;
  if (c.shared_inter > 0) {
    shared.weights = ref_weights(args.shared.weights, 0);
    shared.function = function_of(policy);
    shared.gate = args.shared.gate;
  }
  REQUIRE(
      host::reference_moe_combine<X, W>(
          args.x, HostTensor<int const, 2>::row_major(ref_ids.data(), {T, K}), args.weights,
          std::span<host::ExpertWeights<W> const>(ref_experts.data(), ref_experts.size()), function_of(policy),
          c.position == WeightPosition::on_input ? host::WeightPosition::on_input : host::WeightPosition::after_expert,
          c.shared_inter > 0 ? &shared : nullptr, HostTensor<float, 2>::row_major(y_ref.data(), {T, H})) == Status::ok);

  want.assign(y_ref.size(), 0.0);
  bound.assign(y_ref.size(), 0.0);
  std::vector<double> xt(static_cast<std::size_t>(H)), xin(xt.size()), o, mag, err;
  std::vector<double> terms(xt.size());
  for (std::int64_t t = 0; t < T; ++t) {
    std::fill(terms.begin(), terms.end(), 0.0);
    double* bt = bound.data() + t * H;
    double* wt = want.data() + t * H;
    for (std::int64_t k = 0; k < H; ++k) {
      xt[static_cast<std::size_t>(k)] = widen(L.x[static_cast<std::size_t>(t * H + k)]);
      wt[k] = double(y_ref[static_cast<std::size_t>(t * H + k)]);
    }
    for (std::int64_t j = 0; j < K; ++j) {
      auto const a = static_cast<std::size_t>(t * K + j);
      if (!kept[a]) {
        continue;
      }
      double const w = double(L.weights[a]);
      ExpertKind const kind = c.table.kind(L.ids[a]);
      if (kind == ExpertKind::identity) {
        for (std::int64_t k = 0; k < H; ++k) {
          double const v = w * xt[static_cast<std::size_t>(k)];
          wt[k] += v;
          terms[static_cast<std::size_t>(k)] += std::abs(v);
          bt[k] += unit * std::abs(v);
        }
      } else if (kind == ExpertKind::computed) {
        bool const on_input = c.position == WeightPosition::on_input;
        for (std::int64_t k = 0; k < H; ++k) {
          xin[static_cast<std::size_t>(k)] = (on_input ? w : 1.0) * xt[static_cast<std::size_t>(k)];
        }
        forward_bound(policy, args.experts, L.ids[a], H, c.inter, xin.data(), on_input ? unit : 0.0, o, mag, err);
        double const s = on_input ? 1.0 : w;
        for (std::size_t k = 0; k < xt.size(); ++k) {
          terms[k] += s * mag[k];
          bt[k] += s * err[k] + (on_input ? 0.0 : unit * s * mag[k]);
        }
      }
    }
    if (c.shared_inter > 0) {
      double sg = 1.0, dsg = 0.0;
      if (c.shared_gate) {
        double dot = 0, adot = 0;
        for (std::int64_t k = 0; k < H; ++k) {
          double const v = widen(L.s_vec[static_cast<std::size_t>(k)]) * xt[static_cast<std::size_t>(k)];
          dot += v;
          adot += std::abs(v);
        }
        sg = 1.0 / (1.0 + std::exp(-dot));
        dsg = 0.25 * gamma(H) * adot + 4 * unit * sg;
      }
      forward_bound(policy, args.shared.weights, 0, H, c.shared_inter, xt.data(), 0.0, o, mag, err);
      for (std::size_t k = 0; k < xt.size(); ++k) {
        terms[k] += sg * mag[k];
        bt[k] += sg * err[k] + dsg * mag[k] + unit * sg * mag[k];
      }
    }
    for (std::int64_t k = 0; k < H; ++k) {
      double const b = bt[k] + gamma(K + 2) * terms[static_cast<std::size_t>(k)] + 2 * unit * std::abs(wt[k]);
      bt[k] = b + half_ulp<Y>(std::abs(wt[k]) + b);
    }
  }
}

// The run's workspace: exactly experts_workspace_size bytes, aligned as Workspace wants.
struct WorkspaceBuffer {
  std::vector<std::byte> storage;
  void* base = nullptr;
  std::size_t bytes = 0;
  template <class Policy, class X, class Y>
  static WorkspaceBuffer make(Policy const& policy, experts::ExpertProblem const& p) {
    WorkspaceBuffer b;
    b.bytes = cpu::experts_workspace_size<Policy, X, Y>(policy, p);
    b.storage.resize(b.bytes + Workspace::default_alignment);
    b.base = b.storage.data();
    std::size_t space = b.storage.size();
    std::align(Workspace::default_alignment, b.bytes, b.base, space);
    return b;
  }
};

template <class Y, class X, class W, class Policy>
Status run(Policy const& policy, Layer<X, W> const& L, std::vector<Y>& y, unsigned threads,
           Diagnostics* diagnostics = nullptr) {
  auto const p = L.problem();
  auto buffer = WorkspaceBuffer::make<Policy, X, Y>(policy, p);
  Workspace ws(buffer.base, buffer.bytes);
  cpu::ThreadPool pool(threads);
  return cpu::run_experts(policy, p, L.template args<Y>(y), ws, diagnostics, threads == 0 ? nullptr : &pool);
}

// Runs run_with(y, threads) for 1, 2 and 3 threads (bit-identical; the first gets `diagnostics`)
// and checks y against want ± bound, element by element.
template <class Y, class RunWith>
void check_runs(RunWith const& run_with, std::size_t n, std::vector<double> const& want,
                std::vector<double> const& bound) {
  std::vector<Y> y1(n, narrow<Y>(-7.0)), y2(n, narrow<Y>(-7.0)), y3(n, narrow<Y>(-7.0));
  REQUIRE(run_with(y1, 1u) == Status::ok);
  REQUIRE(run_with(y2, 2u) == Status::ok);
  REQUIRE(run_with(y3, 3u) == Status::ok);
  CHECK(std::memcmp(y1.data(), y2.data(), n * sizeof(Y)) == 0);
  CHECK(std::memcmp(y1.data(), y3.data(), n * sizeof(Y)) == 0);
  std::size_t bad = 0;
  for (std::size_t i = 0; i < n; ++i) {
    double const got = widen(y1[i]);
    if (!(std::abs(got - want[i]) <= bound[i])) {
      if (bad++ < 3) {
        UNSCOPED_INFO("element " << i << ": got " << got << ", want " << want[i] << ", bound " << bound[i]);
      }
    }
  }
  CHECK(bad == 0);
}

// Runs with 1, 2 and 3 threads (bit-identical) and checks against the reference.
template <class Y, class X, class W, class Policy>
void check(Policy const& policy, Config const& c, Diagnostics* diagnostics = nullptr) {
  Layer<X, W> const L(c);
  std::vector<double> want, bound;
  expected<Policy, X, W, Y>(policy, L, want, bound);
  auto const run_with = [&](std::vector<Y>& y, unsigned threads) {
    return run(policy, L, y, threads, threads == 1 ? diagnostics : nullptr);
  };
  check_runs<Y>(run_with, static_cast<std::size_t>(c.tokens * c.hidden), want, bound);
}

}  // namespace cpu_case
