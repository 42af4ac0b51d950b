#pragma once
// Random and adversarial expert-stage problems, their oracle (host::reference_moe_combine, with
// zero/identity experts and capacity drops applied by the rules of experts/expert_args.hpp and
// plan/dispatch_plan.hpp), and an error bound per output element derived from the data.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <span>
#include <vector>

#include <catch2/catch.hpp>

#include "moekit/core/float16.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/core/workspace.hpp"
#include "moekit/experts/activation.hpp"
#include "moekit/experts/clamped_swiglu.hpp"
#include "moekit/experts/expert_args.hpp"
#include "moekit/experts/gated_mlp.hpp"
#include "moekit/experts/plain_mlp.hpp"
#include "moekit/host/expert_reference.hpp"

namespace expert_case {

using moekit::HostTensor;
using moekit::MemorySpace;
namespace experts = moekit::experts;
namespace host = moekit::host;

// One rounding to T, relative: bf16 2^-8, fp16 2^-11, fp32 2^-24.
template <class T>
constexpr double unit_roundoff() {
  if constexpr (std::is_same_v<T, moekit::bf16_t>) {
    return 0x1p-8;
  } else if constexpr (std::is_same_v<T, moekit::fp16_t>) {
    return 0x1p-11;
  } else {
    return 0x1p-24;
  }
}

// Bit-identical contents (memcmp is not called on the null data of empty vectors: UBSan).
template <class T>
[[nodiscard]] bool same_bits(std::vector<T> const& a, std::vector<T> const& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
}

// A workspace of n bytes aligned as Workspace::take expects (256 bytes); fresh() carves it anew.
struct AlignedWorkspace {
  std::vector<std::byte> buffer;
  void* base = nullptr;
  std::size_t space = 0;
  moekit::Workspace w;
  explicit AlignedWorkspace(std::size_t n) : buffer(n + moekit::Workspace::default_alignment) {
    base = buffer.data();
    space = buffer.size();
    base = std::align(moekit::Workspace::default_alignment, 1, base, space);
    w = moekit::Workspace(base, space);
  }
  [[nodiscard]] moekit::Workspace fresh() const { return moekit::Workspace(base, space); }
};

// The host reference's name for each activation / policy.
template <class Act>
constexpr host::Activation activation_of() {
  if constexpr (std::is_same_v<Act, experts::act::SiLU>) {
    return host::Activation::silu;
  } else if constexpr (std::is_same_v<Act, experts::act::Gelu>) {
    return host::Activation::gelu_erf;
  } else if constexpr (std::is_same_v<Act, experts::act::GeluTanh>) {
    return host::Activation::gelu_tanh;
  } else {
    static_assert(std::is_same_v<Act, experts::act::ReLU>, "no host reference for this activation");
    return host::Activation::relu;
  }
}

template <class Act, class W>
host::ExpertFunction function_of(experts::GatedMlp<Act, W> const&) {
  return {host::ExpertKind::gated, activation_of<Act>(), {}};
}
template <class Act, class W>
host::ExpertFunction function_of(experts::PlainMlp<Act, W> const&) {
  return {host::ExpertKind::plain, activation_of<Act>(), {}};
}
template <class W>
host::ExpertFunction function_of(experts::ClampedSwiglu<W> const& e) {
  return {host::ExpertKind::clamped_swiglu, host::Activation::silu, {double(e.alpha), double(e.limit)}};
}

enum class Routing {
  random,      // K distinct experts per token (of all E ids), ~10% empty slots
  one_expert,  // every token's first slot is expert 0
  skip_last,   // like random, but the last computed expert never receives a token
};

struct Shape {
  std::int64_t tokens = 0, hidden = 0, inter = 0;
  int slots = 1;
  experts::ExpertTable table{};
  std::int64_t shared_inter = 0;
  bool shared_gate = false;
  bool biases = false;
  std::int64_t capacity = -1;
  experts::WeightPosition position = experts::WeightPosition::after_expert;
  Routing routing = Routing::random;
  std::uint32_t seed = 1;
};

// One problem's data in host memory (the emulator's device memory is host memory too).
template <class X, class W>
struct Case {
  Shape shape;
  std::vector<X> x;                              // [T, H]
  std::vector<int> ids;                          // [T, K]
  std::vector<float> weights;                    // [T, K]
  std::vector<W> gate, up, down;                 // [E, I, H], [E, I, H], [E, H, I]
  std::vector<W> gate_bias, up_bias, down_bias;  // [E, I], [E, I], [E, H] (empty: none)
  std::vector<W> s_gate, s_up, s_down, s_gate_vec;

  template <MemorySpace S>
  experts::MlpWeights<W, S> routed() const {
    auto const E = shape.table.computed;
    auto const H = shape.hidden, I = shape.inter;
    experts::MlpWeights<W, S> w;
    w.gate = moekit::TensorView<W const, 3, S>::row_major(gate.data(), {E, I, H});
    w.up = moekit::TensorView<W const, 3, S>::row_major(up.data(), {E, I, H});
    w.down = moekit::TensorView<W const, 3, S>::row_major(down.data(), {E, H, I});
    if (shape.biases) {
      w.gate_bias = moekit::TensorView<W const, 2, S>::row_major(gate_bias.data(), {E, I});
      w.up_bias = moekit::TensorView<W const, 2, S>::row_major(up_bias.data(), {E, I});
      w.down_bias = moekit::TensorView<W const, 2, S>::row_major(down_bias.data(), {E, H});
    }
    return w;
  }
  template <MemorySpace S>
  experts::SharedExpertWeights<W, S> shared() const {
    experts::SharedExpertWeights<W, S> s;
    if (shape.shared_inter == 0) {
      return s;
    }
    auto const H = shape.hidden, I = shape.shared_inter;
    s.weights.gate = moekit::TensorView<W const, 3, S>::row_major(s_gate.data(), {1, I, H});
    s.weights.up = moekit::TensorView<W const, 3, S>::row_major(s_up.data(), {1, I, H});
    s.weights.down = moekit::TensorView<W const, 3, S>::row_major(s_down.data(), {1, H, I});
    if (shape.shared_gate) {
      s.gate = moekit::TensorView<W const, 1, S>::row_major(s_gate_vec.data(), {H});
    }
    return s;
  }
  experts::ExpertProblem problem() const {
    experts::ExpertProblem p;
    p.tokens = shape.tokens;
    p.hidden = shape.hidden;
    p.intermediate = shape.inter;
    p.slots = shape.slots;
    p.table = shape.table;
    p.shared_intermediate = shape.shared_inter;
    p.capacity = shape.capacity;
    p.position = shape.position;
    return p;
  }
  template <class Y, MemorySpace S>
  experts::ExpertArgs<X, W, Y, S> args(std::vector<Y>& y) const {
    auto const T = shape.tokens, H = shape.hidden, K = std::int64_t{shape.slots};
    experts::ExpertArgs<X, W, Y, S> a;
    a.x = moekit::TensorView<X const, 2, S>::row_major(x.data(), {T, H});
    a.ids = moekit::TensorView<int const, 2, S>::row_major(ids.data(), {T, K});
    a.weights = moekit::TensorView<float const, 2, S>::row_major(weights.data(), {T, K});
    a.experts = routed<S>();
    a.shared = shared<S>();
    a.y = moekit::TensorView<Y, 2, S>::row_major(y.data(), {T, H});
    return a;
  }
};

template <class T>
std::vector<T> random_vector(std::size_t n, double scale, std::mt19937& rng) {
  std::uniform_real_distribution<double> u(-scale, scale);
  std::vector<T> v(n);
  for (auto& e : v) {
    e = T(static_cast<float>(u(rng)));
  }
  return v;
}

template <class X, class W>
Case<X, W> make_case(Shape const& s) {
  std::mt19937 rng(s.seed);
  Case<X, W> c;
  c.shape = s;
  auto const T = static_cast<std::size_t>(s.tokens), H = static_cast<std::size_t>(s.hidden),
             I = static_cast<std::size_t>(s.inter), K = static_cast<std::size_t>(s.slots);
  auto const E = static_cast<std::size_t>(s.table.computed);
  int const all = s.table.num_experts();
  c.x = random_vector<X>(T * H, 1.0, rng);
  // Weights ~ U(±1/√in): activations stay O(1) through both projections, like trained layers.
  double const wh = 1.0 / std::sqrt(double(H)), wi = 1.0 / std::sqrt(double(I));
  c.gate = random_vector<W>(E * I * H, 2.0 * wh, rng);
  c.up = random_vector<W>(E * I * H, 2.0 * wh, rng);
  c.down = random_vector<W>(E * H * I, 2.0 * wi, rng);
  if (s.biases) {
    c.gate_bias = random_vector<W>(E * I, 0.5, rng);
    c.up_bias = random_vector<W>(E * I, 0.5, rng);
    c.down_bias = random_vector<W>(E * H, 0.5, rng);
  }
  if (s.shared_inter > 0) {
    auto const Is = static_cast<std::size_t>(s.shared_inter);
    c.s_gate = random_vector<W>(Is * H, 2.0 * wh, rng);
    c.s_up = random_vector<W>(Is * H, 2.0 * wh, rng);
    c.s_down = random_vector<W>(H * Is, 2.0 / std::sqrt(double(Is)), rng);
    c.s_gate_vec = random_vector<W>(H, 2.0 * wh, rng);
  }
  c.ids.assign(T * K, all);
  c.weights.assign(T * K, 0.0f);
  std::uniform_real_distribution<float> w01(0.05f, 1.0f);
  std::uniform_int_distribution<int> pick(0, all - 1);
  std::uniform_int_distribution<int> percent(0, 99);
  for (std::size_t t = 0; t < T; ++t) {
    std::vector<int> chosen;
    for (std::size_t j = 0; j < K; ++j) {
      int id = all;
      if (s.routing == Routing::one_expert && j == 0) {
        id = 0;
      } else if (percent(rng) >= 10 && static_cast<int>(chosen.size()) < all) {
        do {
          id = pick(rng);
        } while (std::find(chosen.begin(), chosen.end(), id) != chosen.end() ||
                 (s.routing == Routing::skip_last && id == s.table.computed - 1 && all > 1));
      }
      if (id != all) {
        chosen.push_back(id);
        c.weights[t * K + j] = w01(rng);
      }
      c.ids[t * K + j] = id;
    }
  }
  return c;
}

// The oracle's output y [T, H] in double-rounded-to-float, and a bound per element on the error
// of a kernel that (a) keeps x, weights and h in the 16-bit type W (h rounded once: relative
// u_h = 2^-8 for bf16, 2^-11 for fp16; with the weight on the input, w·x rounded the same way),
// (b) accumulates in fp32 (γ_n = (n + 2)·2^-24 relative to the sum of |terms|), (c) rounds y
// once to Y (u_y). The bound is first-order: δh = |∂h/∂g|δg + |∂h/∂u|δu + u_h|h|, propagated
// through |W_d|, with a factor 2 for the second-order terms; it is computed in double from the
// same data, so it scales with each element's own magnitudes instead of one global number.
struct Oracle {
  std::vector<float> y;
  std::vector<double> bound;
};

template <class X, class W, class Y, class Policy>
Oracle oracle(Case<X, W> const& c, Policy const& policy, double u_h, double u_y) {
  Shape const& s = c.shape;
  auto const T = s.tokens, H = s.hidden, I = s.inter;
  int const K = s.slots;
  int const computed = s.table.computed;
  // Capacity drops: the earliest assignments in (token, slot) order stay.
  std::vector<int> ref_ids(c.ids.size());
  std::vector<std::int64_t> load(static_cast<std::size_t>(s.table.num_experts()), 0);
  std::vector<bool> kept(c.ids.size(), false);
  for (std::size_t a = 0; a < c.ids.size(); ++a) {
    int const id = c.ids[a];
    if (id >= 0 && id < s.table.num_experts()) {
      kept[a] = s.capacity < 0 || load[static_cast<std::size_t>(id)] < s.capacity;
      ++load[static_cast<std::size_t>(id)];
    }
    ref_ids[a] = kept[a] && id < computed ? id : computed;  // zero / identity / dropped → empty for the oracle
  }
  std::vector<host::ExpertWeights<W>> ew(static_cast<std::size_t>(computed));
  for (int e = 0; e < computed; ++e) {
    auto& w = ew[static_cast<std::size_t>(e)];
    auto const ii = static_cast<std::size_t>(e) * static_cast<std::size_t>(I * H);
    w.gate = HostTensor<W const, 2>::row_major(c.gate.data() + ii, {I, H});
    w.up = HostTensor<W const, 2>::row_major(c.up.data() + ii, {I, H});
    w.down = HostTensor<W const, 2>::row_major(c.down.data() + ii, {H, I});
    if (s.biases) {
      w.gate_bias = HostTensor<W const, 1>::row_major(c.gate_bias.data() + e * I, {I});
      w.up_bias = HostTensor<W const, 1>::row_major(c.up_bias.data() + e * I, {I});
      w.down_bias = HostTensor<W const, 1>::row_major(c.down_bias.data() + e * H, {H});
    }
  }
  host::SharedExpert<W> shared;
  if (s.shared_inter > 0) {
    auto const Is = s.shared_inter;
    shared.weights.gate = HostTensor<W const, 2>::row_major(c.s_gate.data(), {Is, H});
    shared.weights.up = HostTensor<W const, 2>::row_major(c.s_up.data(), {Is, H});
    shared.weights.down = HostTensor<W const, 2>::row_major(c.s_down.data(), {H, Is});
    shared.function = function_of(policy);
    if (s.shared_gate) {
      shared.gate = HostTensor<W const, 1>::row_major(c.s_gate_vec.data(), {H});
    }
  }
  Oracle o;
  o.y.assign(static_cast<std::size_t>(T * H), 0.0f);
  o.bound.assign(o.y.size(), 0.0);
  if (T == 0) {
    return o;
  }
  host::WeightPosition const pos = s.position == experts::WeightPosition::on_input ? host::WeightPosition::on_input
                                                                                   : host::WeightPosition::after_expert;
  if (computed > 0 || s.shared_inter > 0) {  // (the reference needs at least one expert with weights)
    REQUIRE(host::reference_moe_combine<X, W>(HostTensor<X const, 2>::row_major(c.x.data(), {T, H}),
                                              HostTensor<int const, 2>::row_major(ref_ids.data(), {T, K}),
                                              HostTensor<float const, 2>::row_major(c.weights.data(), {T, K}),
                                              std::span<host::ExpertWeights<W> const>(ew), function_of(policy), pos,
                                              s.shared_inter > 0 ? &shared : nullptr,
                                              HostTensor<float, 2>::row_major(o.y.data(), {T, H})) ==
            moekit::Status::ok);
  }

  // Identity experts add w·x (the oracle saw an empty slot there).
  auto const xd = [&](std::int64_t t, std::int64_t h) { return double(moekit::to_float(c.x[t * H + h])); };
  auto const wd = [](W v) { return double(moekit::to_float(v)); };
  host::ExpertFunction const fn = function_of(policy);
  for (std::int64_t t = 0; t < T; ++t) {
    for (int j = 0; j < K; ++j) {
      std::size_t const a = static_cast<std::size_t>(t * K + j);
      if (kept[a] && s.table.kind(c.ids[a]) == experts::ExpertKind::identity) {
        for (std::int64_t h = 0; h < H; ++h) {
          o.y[t * H + h] = static_cast<float>(double(o.y[t * H + h]) + double(c.weights[a]) * xd(t, h));
        }
      }
    }
  }

  // The bound, one expert evaluation at a time.
  double const g32 = std::ldexp(1.0, -24);
  std::vector<double> mag(o.y.size(), 0.0);  // Σ |contributions| per output, for the combine's sum
  auto const add_expert = [&](std::int64_t t, double w, bool on_input, W const* gw, W const* uw, W const* dw,
                              W const* gb, W const* ub, W const* db, std::int64_t inter) {
    double const xs = on_input ? w : 1.0;
    double const ux = on_input ? u_h : 0.0;  // w·x rounded to the 16-bit type
    for (std::int64_t i = 0; i < inter; ++i) {
      double g = gb ? wd(gb[i]) : 0.0, u = ub ? wd(ub[i]) : 0.0, ag = 0, au = 0;
      for (std::int64_t h = 0; h < H; ++h) {
        double const xv = xs * xd(t, h);
        g += wd(gw[i * H + h]) * xv;
        u += wd(uw[i * H + h]) * xv;
        ag += std::fabs(wd(gw[i * H + h]) * xv);
        au += std::fabs(wd(uw[i * H + h]) * xv);
      }
      double const dg = (double(H + 2) * g32 + ux) * ag, du = (double(H + 2) * g32 + ux) * au;
      double hv = 0, dh_dg = 0, dh_du = 0;
      if (fn.kind == host::ExpertKind::gated) {
        hv = host::activation_value(fn.activation, g) * u;
        dh_dg = host::activation_derivative(fn.activation, g) * u;
        dh_du = host::activation_value(fn.activation, g);
      } else if (fn.kind == host::ExpertKind::plain) {
        hv = host::activation_value(fn.activation, u);
        dh_du = host::activation_derivative(fn.activation, u);
      } else {
        auto const pt = host::clamped_swiglu_point(g, u, fn.clamp);
        hv = pt.h, dh_dg = pt.dh_da, dh_du = pt.dh_du;
      }
      // Activation in fp32: a few ulp of |h|, and of the terms it is built from.
      double const dh = std::fabs(dh_dg) * dg + std::fabs(dh_du) * du + (u_h + 8 * g32) * std::fabs(hv) +
                        8 * g32 * (std::fabs(dh_dg * g) + std::fabs(dh_du * u));
      for (std::int64_t h = 0; h < H; ++h) {
        double const wdi = wd(dw[h * inter + i]);
        std::size_t const at = static_cast<std::size_t>(t * H + h);
        double const scale = on_input ? 1.0 : std::fabs(w);
        o.bound[at] += scale * (std::fabs(wdi) * dh + double(inter + 2) * g32 * std::fabs(wdi * hv));
        mag[at] += scale * std::fabs(wdi * hv);
      }
    }
    for (std::int64_t h = 0; h < H; ++h) {
      std::size_t const at = static_cast<std::size_t>(t * H + h);
      double const b = db ? std::fabs(wd(db[h])) : 0.0;
      o.bound[at] += (on_input ? 1.0 : std::fabs(w)) * (b * 2 * g32) + 2 * g32 * mag[at];
      mag[at] += (on_input ? 1.0 : std::fabs(w)) * b;
    }
  };
  bool const on_input = s.position == experts::WeightPosition::on_input;
  for (std::int64_t t = 0; t < T; ++t) {
    for (int j = 0; j < K; ++j) {
      std::size_t const a = static_cast<std::size_t>(t * K + j);
      int const id = c.ids[a];
      if (!kept[a] || id >= computed) {
        if (kept[a] && s.table.kind(id) == experts::ExpertKind::identity) {
          for (std::int64_t h = 0; h < H; ++h) {
            mag[static_cast<std::size_t>(t * H + h)] += std::fabs(double(c.weights[a]) * xd(t, h));
          }
        }
        continue;
      }
      auto const e = static_cast<std::size_t>(id);
      auto const ii = e * static_cast<std::size_t>(I * H);
      add_expert(t, double(c.weights[a]), on_input, c.gate.data() + ii, c.up.data() + ii, c.down.data() + ii,
                 s.biases ? c.gate_bias.data() + e * static_cast<std::size_t>(I) : nullptr,
                 s.biases ? c.up_bias.data() + e * static_cast<std::size_t>(I) : nullptr,
                 s.biases ? c.down_bias.data() + e * static_cast<std::size_t>(H) : nullptr, I);
    }
    if (s.shared_inter > 0) {
      double gate = 1.0;
      if (s.shared_gate) {
        double z = 0, az = 0;
        for (std::int64_t h = 0; h < H; ++h) {
          z += wd(c.s_gate_vec[static_cast<std::size_t>(h)]) * xd(t, h);
          az += std::fabs(wd(c.s_gate_vec[static_cast<std::size_t>(h)]) * xd(t, h));
        }
        gate = 1.0 / (1.0 + std::exp(-z));
        // σ' ≤ 1/4: the gate's own fp32 error, relative to the shared output it scales.
        double const dgate = 0.25 * double(H + 8) * g32 * az + 4 * g32 * gate;
        std::vector<double> before(static_cast<std::size_t>(H));
        for (std::int64_t h = 0; h < H; ++h) {
          before[static_cast<std::size_t>(h)] = mag[static_cast<std::size_t>(t * H + h)];
        }
        add_expert(t, gate, false, c.s_gate.data(), c.s_up.data(), c.s_down.data(), nullptr, nullptr, nullptr,
                   s.shared_inter);
        for (std::int64_t h = 0; h < H; ++h) {
          std::size_t const at = static_cast<std::size_t>(t * H + h);
          o.bound[at] += dgate / gate * (mag[at] - before[static_cast<std::size_t>(h)]);
        }
      } else {
        add_expert(t, gate, false, c.s_gate.data(), c.s_up.data(), c.s_down.data(), nullptr, nullptr, nullptr,
                   s.shared_inter);
      }
    }
  }
  for (std::size_t at = 0; at < o.bound.size(); ++at) {
    // The combine's fp32 sum over ≤ K + 1 terms, then y's rounding; ×2 for second-order terms.
    o.bound[at] =
        2.0 * (o.bound[at] + double(K + 3) * g32 * mag[at] + u_y * (std::fabs(double(o.y[at])) + o.bound[at])) + 1e-30;
  }
  return o;
}

template <class Y>
void require_within(std::vector<Y> const& got, Oracle const& o) {
  REQUIRE(got.size() == o.y.size());
  std::size_t worst = 0;
  double worst_ratio = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    double const err = std::fabs(double(moekit::to_float(got[i])) - double(o.y[i]));
    double const ratio = err / o.bound[i];
    if (!(ratio <= worst_ratio)) {
      worst_ratio = ratio;
      worst = i;
    }
  }
  INFO("worst element " << worst << ": got " << double(moekit::to_float(got[worst])) << ", oracle " << o.y[worst]
                        << ", bound " << o.bound[worst] << " (error/bound " << worst_ratio << ")");
  if (std::getenv("MOEKIT_TEST_SHOW_BOUNDS") != nullptr) {
    std::printf("worst error/bound %.3g (element %zu)\n", worst_ratio, worst);
  }
  REQUIRE(worst_ratio <= 1.0);
}

}  // namespace expert_case
