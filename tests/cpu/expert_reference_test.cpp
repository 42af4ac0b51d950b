// The expert-function oracle (host/expert_reference.hpp) against the worked examples of
// ALGORITHMS.md §1.2, §1.5, §1.9 and §3.3, the §1.10.1 index maps of the fused layouts, the
// combine (empty slots, shared expert, weight position), the backward against central finite
// differences of an independent double copy of the formulas, and every bad input.
//
// Tolerances: the worked examples print 7 decimals, so a printed value is within 5e-8 of the
// exact one; fp32 outputs of magnitude <= 1 add at most 6e-8 of rounding: abs 1e-7 (abs 1e-6 for
// the one value printed with 6 decimals). Gradients: the reference rounds each once to fp32 (rel
// 6e-8); central differences with step 1e-6 on the double formula have truncation error ~1e-12 and
// cancellation error ~1e-10 here: |ref - fd| <= 1e-6·(1 + |fd|).

#include "moekit/host/expert_reference.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include <catch2/catch.hpp>

using namespace moekit;
using host::Activation;
using host::ExpertFunction;
using host::ExpertKind;

namespace {

constexpr double example_tol = 1e-7;  // 7 printed decimals + fp32 rounding of values <= 1

template <class T>
HostTensor<T const, 1> v1(std::vector<T> const& v) {
  return HostTensor<T const, 1>::row_major(v.data(), {static_cast<std::int64_t>(v.size())});
}
template <class T>
HostTensor<T const, 2> v2(std::vector<T> const& v, std::int64_t r, std::int64_t c) {
  REQUIRE(static_cast<std::int64_t>(v.size()) == r * c);
  return HostTensor<T const, 2>::row_major(v.data(), {r, c});
}
HostTensor<float, 1> out1(std::vector<float>& v) {
  return HostTensor<float, 1>::row_major(v.data(), {static_cast<std::int64_t>(v.size())});
}
HostTensor<float, 2> out2(std::vector<float>& v, std::int64_t r, std::int64_t c) {
  return HostTensor<float, 2>::row_major(v.data(), {r, c});
}

// §1.9.1 example weights (H = I = 2).
std::vector<float> const ex_x = {1, -2};
std::vector<float> const ex_wg = {0.5f, 0.25f, -1, 0.75f};
std::vector<float> const ex_wu = {1, -0.5f, 0.25f, 0.5f};
std::vector<float> const ex_wd = {1, 2, -1.5f, 0.5f};

std::vector<float> random_vector(std::mt19937& rng, std::size_t n, float scale) {
  std::uniform_real_distribution<float> d(-scale, scale);
  std::vector<float> v(n);
  for (float& f : v) {
    f = d(rng);
  }
  return v;
}

// An independent double copy of the expert formulas (for finite differences).
struct DoubleExpert {
  int H = 0;
  int I = 0;
  ExpertFunction fn{};
  std::vector<double> wg, wu, wd, bg, bu, bd;  // biases all present (zeros when unused)

  [[nodiscard]] std::vector<double> forward(std::vector<double> const& x) const {
    std::vector<double> h(static_cast<std::size_t>(I));
    for (int m = 0; m < I; ++m) {
      double a = bg[static_cast<std::size_t>(m)];
      double u = bu[static_cast<std::size_t>(m)];
      for (int k = 0; k < H; ++k) {
        a += wg[static_cast<std::size_t>(m * H + k)] * x[static_cast<std::size_t>(k)];
        u += wu[static_cast<std::size_t>(m * H + k)] * x[static_cast<std::size_t>(k)];
      }
      double hm = 0;
      if (fn.kind == ExpertKind::gated) {
        hm = host::activation_value(fn.activation, a) * u;
      } else if (fn.kind == ExpertKind::plain) {
        hm = host::activation_value(fn.activation, u);
      } else {
        double const l = fn.clamp.limit;
        double const ah = std::min(a, l);
        double const uh = std::clamp(u, -l, l);
        hm = (uh + 1) * ah / (1 + std::exp(-fn.clamp.alpha * ah));
      }
      h[static_cast<std::size_t>(m)] = hm;
    }
    std::vector<double> o(static_cast<std::size_t>(H));
    for (int k = 0; k < H; ++k) {
      double s = bd[static_cast<std::size_t>(k)];
      for (int m = 0; m < I; ++m) {
        s += wd[static_cast<std::size_t>(k * I + m)] * h[static_cast<std::size_t>(m)];
      }
      o[static_cast<std::size_t>(k)] = s;
    }
    return o;
  }
};

std::vector<double> widen(std::vector<float> const& v) { return {v.begin(), v.end()}; }

}  // namespace

TEST_CASE("§1.9.1 worked example: SwiGLU, GeGLU erf and tanh, ReLU MLP", "[cpu][core][experts]") {
  struct Case {
    Activation act;
    double o0, o1;
  };
  for (Case c : {Case{Activation::silu, 0.2844682, 0.071117}, Case{Activation::gelu_erf, 0.0232862, 0.0058216},
                 Case{Activation::gelu_tanh, 0.0226264, 0.0056566}}) {
    std::vector<float> o(2, -7.f);
    REQUIRE(host::reference_gated_mlp(v1(ex_x), v2(ex_wg, 2, 2), v2(ex_wu, 2, 2), v2(ex_wd, 2, 2), c.act, out1(o)) ==
            Status::ok);
    INFO(host::to_string(c.act));
    CHECK(std::fabs(o[0] - c.o0) <= example_tol);
    CHECK(std::fabs(o[1] - c.o1) <= example_tol);
  }
  // Intermediates h = act(W_g x) ⊙ W_u x with W_g x = (0, -2.5), W_u x = (2, -0.75).
  CHECK(std::fabs(host::activation_value(Activation::silu, -2.5) * -0.75 - 0.1422341) <= 5e-8);
  CHECK(std::fabs(host::activation_value(Activation::gelu_erf, -2.5) * -0.75 - 0.0116431) <= 5e-8);
  CHECK(std::fabs(host::activation_value(Activation::gelu_tanh, -2.5) * -0.75 - 0.0113132) <= 5e-8);
  std::vector<float> o(2);
  REQUIRE(host::reference_plain_mlp(v1(ex_x), v2(ex_wu, 2, 2), v2(ex_wd, 2, 2), Activation::relu, out1(o)) ==
          Status::ok);
  CHECK(o[0] == 2.f);  // exact: small integers
  CHECK(o[1] == -3.f);
  // bf16 inputs: every example value is exact in bf16, so the result is the same to the bit.
  std::vector<bf16_t> xb, gb, ub, db;
  for (float f : ex_x) xb.push_back(bf16_t(f));
  for (float f : ex_wg) gb.push_back(bf16_t(f));
  for (float f : ex_wu) ub.push_back(bf16_t(f));
  for (float f : ex_wd) db.push_back(bf16_t(f));
  std::vector<float> ob(2), of(2);
  REQUIRE(host::reference_gated_mlp(v1(xb), v2(gb, 2, 2), v2(ub, 2, 2), v2(db, 2, 2), Activation::silu, out1(ob)) ==
          Status::ok);
  REQUIRE(host::reference_gated_mlp(v1(ex_x), v2(ex_wg, 2, 2), v2(ex_wu, 2, 2), v2(ex_wd, 2, 2), Activation::silu,
                                    out1(of)) == Status::ok);
  CHECK(ob == of);
}

TEST_CASE("activation derivatives match central differences", "[cpu][core][experts]") {
  for (Activation act : {Activation::silu, Activation::gelu_erf, Activation::gelu_tanh, Activation::relu}) {
    for (double a : {-6.0, -2.7, -2.5, -0.3, 0.4, 1.0, 2.7, 8.0}) {
      double const step = 1e-6;
      double const fd = (host::activation_value(act, a + step) - host::activation_value(act, a - step)) / (2 * step);
      INFO(host::to_string(act) << " at " << a);
      CHECK(std::fabs(host::activation_derivative(act, a) - fd) <= 1e-8 * (1 + std::fabs(fd)));
    }
  }
  // The two GELU forms differ by ~3% relative at a = -2.5 (§1.9.1): the name must be carried.
  double const erf_form = host::activation_value(Activation::gelu_erf, -2.5);
  double const tanh_form = host::activation_value(Activation::gelu_tanh, -2.5);
  CHECK(std::fabs(erf_form - tanh_form) / std::fabs(erf_form) > 0.02);
}

TEST_CASE("§1.5 clamped SwiGLU worked example (I = 4)", "[cpu][core][experts]") {
  std::vector<double> const v = {8, -9, -2, 0.5, 3, 7.5, 0, -3};
  double const a_hat[4] = {7, -2, 3, 0}, u_hat[4] = {-7, 0.5, 7, -3};
  double const f[4] = {6.9999531, -0.0643414, 2.9819287, 0};
  double const h[4] = {-41.9997188, -0.0965121, 23.8554295, 0};
  double const dh_da[4] = {0, -0.110723, 8.1963866, -1};
  double const dh_du[4] = {0, -0.0643414, 0, 0};
  host::ClampedSwigluParams const p{};  // α = 1.702, limit 7
  for (int m = 0; m < 4; ++m) {
    auto const r =
        host::clamped_swiglu_point(v[static_cast<std::size_t>(2 * m)], v[static_cast<std::size_t>(2 * m + 1)], p);
    INFO("m = " << m);
    CHECK(r.a_hat == a_hat[m]);
    CHECK(r.u_hat == u_hat[m]);
    CHECK(std::fabs(r.f - f[m]) <= 5e-8);  // double, 7 printed decimals
    CHECK(std::fabs(r.h - h[m]) <= 5e-8);
    CHECK(std::fabs(r.dh_da - dh_da[m]) <= (m == 1 ? 5e-7 : 5e-8));  // -0.110723 has 6 decimals
    CHECK(std::fabs(r.dh_du - dh_du[m]) <= 5e-8);
  }
  // Exactly at a bound the gradient is 0 (torch.clamp); limit = +inf disables the clamps.
  CHECK(host::clamped_swiglu_point(7, 0, p).dh_da == 0);
  CHECK(host::clamped_swiglu_point(0.5, 7, p).dh_du == 0);
  CHECK(host::clamped_swiglu_point(0.5, -7, p).dh_du == 0);
  host::ClampedSwigluParams const open{1.702, std::numeric_limits<double>::infinity()};
  auto const r = host::clamped_swiglu_point(8, -9, open);
  CHECK(r.a_hat == 8);
  CHECK(r.u_hat == -9);
  CHECK(r.dh_du == r.f);

  // End to end through reference_clamped_swiglu: x = v, the gpt-oss on-disk interleaved [2I, H]
  // gate_up = identity (so a_m = v_2m, u_m = v_2m+1), down = [I x I identity; 0] in [H, I].
  std::vector<float> const xf(v.begin(), v.end());
  std::vector<float> gate_up(64, 0.f), down(32, 0.f);
  for (int i = 0; i < 8; ++i) gate_up[static_cast<std::size_t>(i * 8 + i)] = 1.f;
  for (int m = 0; m < 4; ++m) down[static_cast<std::size_t>(m * 4 + m)] = 1.f;
  host::FusedGateUp<float> const fused{HostTensor<float const, 3>::row_major(gate_up.data(), {1, 8, 8}),
                                       host::GateUpLayout::interleaved_out_in};
  REQUIRE(fused.validate() == Status::ok);
  std::vector<float> o(8, -1.f);
  REQUIRE(host::reference_clamped_swiglu(v1(xf), fused.gate_view(0), fused.up_view(0), {}, {}, v2(down, 8, 4), {}, p,
                                         out1(o)) == Status::ok);
  for (int m = 0; m < 4; ++m) {
    CHECK(std::fabs(o[static_cast<std::size_t>(m)] - h[m]) <= 1e-7 + 6e-8 * std::fabs(h[m]));  // fp32 rounding
  }
  for (int k = 4; k < 8; ++k) CHECK(o[static_cast<std::size_t>(k)] == 0.f);
}

TEST_CASE("§1.2 shared-expert sigmoid gate", "[cpu][core][experts]") {
  std::vector<float> const w = {0.3f, 0.1f};
  float gate = -1;
  REQUIRE(host::reference_shared_expert_gate(v1(ex_x), v1(w), gate) == Status::ok);
  CHECK(std::fabs(gate - 0.5249792) <= example_tol);
  std::vector<float> const short_w = {0.3f};
  gate = -1;
  CHECK(host::reference_shared_expert_gate(v1(ex_x), v1(short_w), gate) == Status::invalid_argument);
  CHECK(gate == -1);
}

TEST_CASE("§1.9.2 weight position: Llama-4 on_input vs after_expert", "[cpu][core][experts]") {
  std::vector<host::ExpertWeights<float>> experts(1);
  experts[0].gate = v2(ex_wg, 2, 2);
  experts[0].up = v2(ex_wu, 2, 2);
  experts[0].down = v2(ex_wd, 2, 2);
  std::vector<int> const ids = {0};
  std::vector<float> const w = {0.9241418f};
  std::vector<float> y(2);
  auto run = [&](host::WeightPosition pos) {
    return host::reference_moe_combine(v2(ex_x, 1, 2), v2(ids, 1, 1), v2(w, 1, 1),
                                       std::span<host::ExpertWeights<float> const>(experts), ExpertFunction{}, pos,
                                       nullptr, out2(y, 1, 2));
  };
  // w is printed with 7 decimals and stored in fp32: an input error <= 1e-7 moves E(w x) by < 1e-7.
  REQUIRE(run(host::WeightPosition::on_input) == Status::ok);
  CHECK(std::fabs(y[0] - 0.2890995) <= 2 * example_tol);
  CHECK(std::fabs(y[1] - 0.0722749) <= 2 * example_tol);
  REQUIRE(run(host::WeightPosition::after_expert) == Status::ok);
  CHECK(std::fabs(y[0] - 0.2628889) <= 2 * example_tol);
  CHECK(std::fabs(y[1] - 0.0657222) <= 2 * example_tol);
}

TEST_CASE("fused layouts follow the §1.10.1 index maps", "[cpu][core][experts]") {
  constexpr int E = 2, I = 3, H = 2;
  // Element code: 1000 e + 100 (1 gate, 2 up) + 10 m + h, placed by the index maps as written in §1.10.1.
  auto code = [](int e, int which, int m, int h) { return static_cast<float>(1000 * e + 100 * which + 10 * m + h); };
  struct Layout {
    host::GateUpLayout layout;
    bool out_in;
  };
  for (Layout L :
       {Layout{host::GateUpLayout::concatenated_out_in, true}, Layout{host::GateUpLayout::interleaved_in_out, false},
        Layout{host::GateUpLayout::concatenated_in_out, false}, Layout{host::GateUpLayout::interleaved_out_in, true}}) {
    std::vector<float> t(E * 2 * I * H, -1.f);
    auto at = [&](int e, int row, int h) -> float& {  // row along the fused 2I dimension
      return L.out_in ? t[static_cast<std::size_t>((e * 2 * I + row) * H + h)]
                      : t[static_cast<std::size_t>((e * H + h) * 2 * I + row)];
    };
    for (int e = 0; e < E; ++e) {
      for (int m = 0; m < I; ++m) {
        for (int h = 0; h < H; ++h) {
          if (host::is_interleaved(L.layout)) {  // gate = [.., 2m], up = [.., 2m+1]
            at(e, 2 * m, h) = code(e, 1, m, h);
            at(e, 2 * m + 1, h) = code(e, 2, m, h);
          } else {  // gate = [.., m], up = [.., I+m]
            at(e, m, h) = code(e, 1, m, h);
            at(e, I + m, h) = code(e, 2, m, h);
          }
        }
      }
    }
    std::array<std::int64_t, 3> const ext =
        L.out_in ? std::array<std::int64_t, 3>{E, 2 * I, H} : std::array<std::int64_t, 3>{E, H, 2 * I};
    host::FusedGateUp<float> const f{HostTensor<float const, 3>::row_major(t.data(), ext), L.layout};
    REQUIRE(f.validate() == Status::ok);
    CHECK(f.experts() == E);
    CHECK(f.hidden() == H);
    CHECK(f.intermediate() == I);
    int mismatches = 0;
    for (int e = 0; e < E; ++e) {
      auto const g = f.gate_view(e);
      auto const u = f.up_view(e);
      for (int m = 0; m < I; ++m) {
        for (int h = 0; h < H; ++h) {
          mismatches += f.gate(e, m, h) != code(e, 1, m, h);
          mismatches += f.up(e, m, h) != code(e, 2, m, h);
          mismatches += g(m, h) != code(e, 1, m, h);
          mismatches += u(m, h) != code(e, 2, m, h);
        }
      }
    }
    INFO("layout " << static_cast<int>(L.layout));
    CHECK(mismatches == 0);
  }
  // A hand-written gpt-oss [E=1, H=2, 2I=4] tensor: columns (g0, u0, g1, u1) per hidden row.
  std::vector<float> const gpt = {1, 2, 3, 4,   //
                                  5, 6, 7, 8};  //
  host::FusedGateUp<float> const g{HostTensor<float const, 3>::row_major(gpt.data(), {1, 2, 4}),
                                   host::GateUpLayout::interleaved_in_out};
  CHECK(g.gate(0, 0, 0) == 1);
  CHECK(g.up(0, 0, 0) == 2);
  CHECK(g.gate(0, 1, 1) == 7);
  CHECK(g.up(0, 1, 1) == 8);
  // The same numbers as Llama-4 [E, H, 2I]: columns (g0, g1, u0, u1).
  host::FusedGateUp<float> const l{HostTensor<float const, 3>::row_major(gpt.data(), {1, 2, 4}),
                                   host::GateUpLayout::concatenated_in_out};
  CHECK(l.gate(0, 1, 0) == 2);
  CHECK(l.up(0, 0, 1) == 7);
  // Biases [E, 2I]: gpt-oss interleaved b[e, 2m], b[e, 2m+1]; concatenated b[e, m], b[e, I+m].
  std::vector<float> const b = {10, 11, 12, 13, 20, 21, 22, 23};
  host::FusedGateUpBias<float> const bi{v2(b, 2, 4), true}, bc{v2(b, 2, 4), false};
  CHECK(bi.gate_view(1)(1) == 22);
  CHECK(bi.up_view(1)(0) == 21);
  CHECK(bc.gate_view(1)(1) == 21);
  CHECK(bc.up_view(0)(0) == 12);
  // down_proj: [E, H, I] ([out, in]) or [E, I, H] ([in, out]) -> the [H, I] view.
  std::vector<float> const d = {1, 2, 3, 4, 5, 6};  // E = 1, 2 x 3
  auto const out_in =
      host::down_view(HostTensor<float const, 3>::row_major(d.data(), {1, 2, 3}), host::DownLayout::out_in, 0);
  auto const in_out =
      host::down_view(HostTensor<float const, 3>::row_major(d.data(), {1, 3, 2}), host::DownLayout::in_out, 0);
  CHECK(out_in.extent(0) == 2);
  CHECK(out_in(1, 0) == 4);
  CHECK(in_out.extent(0) == 2);
  CHECK(in_out.extent(1) == 3);
  CHECK(in_out(1, 0) == 2);  // [in, out]: element (in 0, out 1)
  CHECK(in_out(0, 2) == 5);
}

TEST_CASE("an expert read through a fused view equals the same expert from dense copies", "[cpu][core][experts]") {
  std::mt19937 rng(5);
  constexpr int E = 3, I = 5, H = 7;
  std::vector<float> const x = random_vector(rng, H, 1.f);
  for (auto layout : {host::GateUpLayout::concatenated_out_in, host::GateUpLayout::interleaved_in_out,
                      host::GateUpLayout::concatenated_in_out, host::GateUpLayout::interleaved_out_in}) {
    bool const out_in = host::is_out_in(layout);
    std::vector<float> const t = random_vector(rng, E * 2 * I * H, 0.5f);
    std::array<std::int64_t, 3> const ext =
        out_in ? std::array<std::int64_t, 3>{E, 2 * I, H} : std::array<std::int64_t, 3>{E, H, 2 * I};
    host::FusedGateUp<float> const f{HostTensor<float const, 3>::row_major(t.data(), ext), layout};
    std::vector<float> const down = random_vector(rng, H * I, 0.5f);
    for (int e = 0; e < E; ++e) {
      std::vector<float> g(I * H), u(I * H);
      for (int m = 0; m < I; ++m) {
        for (int h = 0; h < H; ++h) {
          g[static_cast<std::size_t>(m * H + h)] = f.gate(e, m, h);
          u[static_cast<std::size_t>(m * H + h)] = f.up(e, m, h);
        }
      }
      std::vector<float> o_view(H), o_dense(H);
      REQUIRE(host::reference_gated_mlp(v1(x), f.gate_view(e), f.up_view(e), v2(down, H, I), Activation::silu,
                                        out1(o_view)) == Status::ok);
      REQUIRE(host::reference_gated_mlp(v1(x), v2(g, I, H), v2(u, I, H), v2(down, H, I), Activation::silu,
                                        out1(o_dense)) == Status::ok);
      CHECK(o_view == o_dense);  // the same double arithmetic on the same values: identical bits
    }
  }
}

TEST_CASE("combine: slot order, empty slots, weight positions, shared expert", "[cpu][core][experts]") {
  std::mt19937 rng(11);
  constexpr int E = 3, I = 4, H = 5, T = 4, K = 3;
  std::vector<std::vector<float>> g(E), u(E), d(E);
  std::vector<host::ExpertWeights<float>> experts(E);
  for (int e = 0; e < E; ++e) {
    g[static_cast<std::size_t>(e)] = random_vector(rng, I * H, 0.7f);
    u[static_cast<std::size_t>(e)] = random_vector(rng, I * H, 0.7f);
    d[static_cast<std::size_t>(e)] = random_vector(rng, H * I, 0.7f);
    experts[static_cast<std::size_t>(e)] = {v2(g[static_cast<std::size_t>(e)], I, H),
                                            v2(u[static_cast<std::size_t>(e)], I, H),
                                            v2(d[static_cast<std::size_t>(e)], H, I),
                                            {},
                                            {},
                                            {}};
  }
  std::vector<float> const sg = random_vector(rng, I * H, 0.7f), su = random_vector(rng, I * H, 0.7f),
                           sd = random_vector(rng, H * I, 0.7f), wsg = random_vector(rng, H, 0.7f);
  host::SharedExpert<float> shared{{v2(sg, I, H), v2(su, I, H), v2(sd, H, I), {}, {}, {}}, ExpertFunction{}, v1(wsg)};
  std::vector<float> const x = random_vector(rng, T * H, 1.f);
  // Token 0: three experts; token 1: an empty slot in the middle (its weight NaN is never read);
  // token 2: all slots empty; token 3: expert 1 twice.
  std::vector<int> const ids = {2, 0, 1, 1, E, 0, E, E, E, 1, 1, 2};
  float const nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> const w = {0.5f, 0.3f, 0.2f, 0.6f, nan, 0.4f, 0.f, 0.f, 0.f, 0.25f, 0.25f, 0.5f};
  for (auto pos : {host::WeightPosition::after_expert, host::WeightPosition::on_input}) {
    for (bool with_shared : {false, true}) {
      std::vector<float> y(T * H, -9.f);
      REQUIRE(host::reference_moe_combine(v2(x, T, H), v2(ids, T, K), v2(w, T, K),
                                          std::span<host::ExpertWeights<float> const>(experts), ExpertFunction{}, pos,
                                          with_shared ? &shared : nullptr, out2(y, T, H)) == Status::ok);
      // Expected: per-slot expert outputs from reference_expert (each rounded to fp32), summed in double.
      double max_err = 0;
      for (int t = 0; t < T; ++t) {
        std::vector<double> expect(H, 0.0);
        std::vector<float> xt(x.begin() + t * H, x.begin() + (t + 1) * H);
        double bound = 0;  // sum of |terms|: each fp32-rounded term is off by <= 6e-8 of itself
        for (int j = 0; j < K; ++j) {
          int const id = ids[static_cast<std::size_t>(t * K + j)];
          if (id == E) continue;
          float const wj = w[static_cast<std::size_t>(t * K + j)];
          std::vector<float> xin = xt, o(H);
          if (pos == host::WeightPosition::on_input) {
            for (float& v : xin) v *= wj;  // exact enough: the product is rounded once to fp32
          }
          REQUIRE(host::reference_expert(v1(xin), experts[static_cast<std::size_t>(id)], ExpertFunction{}, out1(o)) ==
                  Status::ok);
          for (int h = 0; h < H; ++h) {
            double const term = pos == host::WeightPosition::on_input ? double(o[static_cast<std::size_t>(h)])
                                                                      : double(wj) * o[static_cast<std::size_t>(h)];
            expect[static_cast<std::size_t>(h)] += term;
            bound += std::fabs(term);
          }
        }
        if (with_shared) {
          float gate = 0;
          REQUIRE(host::reference_shared_expert_gate(v1(xt), v1(wsg), gate) == Status::ok);
          std::vector<float> o(H);
          REQUIRE(host::reference_expert(v1(xt), shared.weights, ExpertFunction{}, out1(o)) == Status::ok);
          for (int h = 0; h < H; ++h) {
            expect[static_cast<std::size_t>(h)] += double(gate) * o[static_cast<std::size_t>(h)];
            bound += std::fabs(double(gate) * o[static_cast<std::size_t>(h)]);
          }
        }
        for (int h = 0; h < H; ++h) {
          double const got = y[static_cast<std::size_t>(t * H + h)];
          double const err = std::fabs(got - expect[static_cast<std::size_t>(h)]);
          // fp32 rounding of the on_input product (feeds the expert, Lipschitz ~1 here), of each
          // term and of the result: 4 units of 6e-8 over the sum of |terms|.
          CHECK(err <= 2.4e-7 * (bound + std::fabs(got)) + 1e-12);
          max_err = std::max(max_err, err);
        }
        if (t == 2 && !with_shared) {  // all slots empty: exactly zero
          for (int h = 0; h < H; ++h) CHECK(y[static_cast<std::size_t>(t * H + h)] == 0.f);
        }
      }
      CHECK(max_err < 1e-5);
    }
  }
}

TEST_CASE("expert backward matches central differences of the double formula", "[cpu][core][experts]") {
  std::mt19937 rng(23);
  constexpr int T = 3, H = 5, I = 4;
  struct Case {
    ExpertFunction fn;
    bool biases;
    char const* name;
  };
  Case const cases[] = {
      {{ExpertKind::gated, Activation::silu, {}}, false, "swiglu"},
      {{ExpertKind::gated, Activation::gelu_erf, {}}, true, "geglu erf, biases"},
      {{ExpertKind::gated, Activation::gelu_tanh, {}}, false, "geglu tanh"},
      {{ExpertKind::plain, Activation::gelu_erf, {}}, true, "plain gelu"},
      {{ExpertKind::plain, Activation::relu, {}}, false, "plain relu"},
      {{ExpertKind::clamped_swiglu, Activation::silu, {1.702, 0.6}}, true, "clamped swiglu, limit 0.6"},
      {{ExpertKind::clamped_swiglu, Activation::silu, {1.702, std::numeric_limits<double>::infinity()}},
       true,
       "clamped swiglu, no limit"},
  };
  for (Case const& c : cases) {
    INFO(c.name);
    std::vector<float> const x = random_vector(rng, T * H, 1.5f), go = random_vector(rng, T * H, 1.f);
    std::vector<float> const wg = random_vector(rng, I * H, 0.8f), wu = random_vector(rng, I * H, 0.8f),
                             wd = random_vector(rng, H * I, 0.8f);
    std::vector<float> const bg = random_vector(rng, I, 0.3f), bu = random_vector(rng, I, 0.3f),
                             bd = random_vector(rng, H, 0.3f);
    host::ExpertWeights<float> w{v2(wg, I, H), v2(wu, I, H), v2(wd, H, I), {}, {}, {}};
    DoubleExpert de{H,
                    I,
                    c.fn,
                    widen(wg),
                    widen(wu),
                    widen(wd),
                    std::vector<double>(I),
                    std::vector<double>(I),
                    std::vector<double>(H)};
    if (c.biases) {
      w.gate_bias = v1(bg);
      w.up_bias = v1(bu);
      w.down_bias = v1(bd);
      de.bg = widen(bg);
      de.bu = widen(bu);
      de.bd = widen(bd);
    }
    std::vector<float> gx(T * H), gg(I * H), gu(I * H), gd(H * I), gbg(I), gbu(I), gbd(H);
    host::ExpertGradients const grads{out2(gx, T, H), out2(gg, I, H), out2(gu, I, H), out2(gd, H, I),
                                      out1(gbg),      out1(gbu),      out1(gbd)};
    REQUIRE(host::reference_expert_backward(v2(x, T, H), w, c.fn, v2(go, T, H), grads) == Status::ok);

    // L = Σ_t <go_t, E(x_t)> on the double formula; each parameter perturbed by ±step.
    double const step = 1e-6;
    auto loss = [&](DoubleExpert const& m, std::vector<double> const& xs) {
      double l = 0;
      for (int t = 0; t < T; ++t) {
        std::vector<double> xt(xs.begin() + t * H, xs.begin() + (t + 1) * H);
        std::vector<double> const o = m.forward(xt);
        for (int h = 0; h < H; ++h) l += go[static_cast<std::size_t>(t * H + h)] * o[static_cast<std::size_t>(h)];
      }
      return l;
    };
    std::vector<double> const xd = widen(x);
    // Pre-activations must stay clear of the clamp and relu kinks for a central difference to
    // mean anything: the check below is skipped for no entry, it asserts the distance instead.
    for (int t = 0; t < T; ++t) {
      for (int m = 0; m < I; ++m) {
        double a = de.bg[static_cast<std::size_t>(m)], uu = de.bu[static_cast<std::size_t>(m)];
        for (int h = 0; h < H; ++h) {
          a += de.wg[static_cast<std::size_t>(m * H + h)] * xd[static_cast<std::size_t>(t * H + h)];
          uu += de.wu[static_cast<std::size_t>(m * H + h)] * xd[static_cast<std::size_t>(t * H + h)];
        }
        double const l = c.fn.clamp.limit;
        if (c.fn.kind == ExpertKind::clamped_swiglu && std::isfinite(l)) {
          CHECK(std::fabs(a - l) > 1e-4);
          CHECK(std::fabs(std::fabs(uu) - l) > 1e-4);
        }
        if (c.fn.kind == ExpertKind::plain && c.fn.activation == Activation::relu) CHECK(std::fabs(uu) > 1e-4);
      }
    }
    auto check_param = [&](std::vector<double> DoubleExpert::*member, std::vector<float> const& got, char const* what) {
      int bad = 0;
      for (std::size_t i = 0; i < got.size(); ++i) {
        DoubleExpert plus = de, minus = de;
        (plus.*member)[i] += step;
        (minus.*member)[i] -= step;
        double const fd = (loss(plus, xd) - loss(minus, xd)) / (2 * step);
        if (std::fabs(got[i] - fd) > 1e-6 * (1 + std::fabs(fd))) {
          ++bad;
          UNSCOPED_INFO(what << "[" << i << "]: reference " << got[i] << ", finite difference " << fd);
        }
      }
      CHECK(bad == 0);
    };
    if (c.fn.kind != ExpertKind::plain) {
      check_param(&DoubleExpert::wg, gg, "grad gate");
    }
    check_param(&DoubleExpert::wu, gu, "grad up");
    check_param(&DoubleExpert::wd, gd, "grad down");
    if (c.biases) {
      if (c.fn.kind != ExpertKind::plain) check_param(&DoubleExpert::bg, gbg, "grad gate bias");
      check_param(&DoubleExpert::bu, gbu, "grad up bias");
      check_param(&DoubleExpert::bd, gbd, "grad down bias");
    }
    int bad = 0;
    for (std::size_t i = 0; i < xd.size(); ++i) {
      std::vector<double> plus = xd, minus = xd;
      plus[i] += step;
      minus[i] -= step;
      double const fd = (loss(de, plus) - loss(de, minus)) / (2 * step);
      bad += std::fabs(gx[i] - fd) > 1e-6 * (1 + std::fabs(fd));
    }
    CHECK(bad == 0);
    // The forward agrees with the double formula to fp32 rounding.
    for (int t = 0; t < T; ++t) {
      std::vector<float> xt(x.begin() + t * H, x.begin() + (t + 1) * H), o(H);
      REQUIRE(host::reference_expert(v1(xt), w, c.fn, out1(o)) == Status::ok);
      std::vector<double> const od = de.forward(widen(xt));
      for (int h = 0; h < H; ++h) {
        CHECK(std::fabs(o[static_cast<std::size_t>(h)] - od[static_cast<std::size_t>(h)]) <=
              6e-8 * std::fabs(od[static_cast<std::size_t>(h)]) + 1e-30);
      }
    }
  }
}

TEST_CASE("LoRA delta s·B(Ax), standard and rank-stabilised scaling", "[cpu][core][experts]") {
  std::vector<float> const x = {1, 2, 3};
  std::vector<float> const a = {1, 0, 1, 0, 1, 0};  // [r = 2, d_in = 3]
  std::vector<float> const b = {1, 2, 3, -1};       // [d_out = 2, r = 2]
  std::vector<float> d(2, -1.f);
  // A x = (4, 2), B (A x) = (8, 10); α = 4, r = 2: s = 2 or 4/√2.
  REQUIRE(host::reference_lora_delta(v1(x), v2(a, 2, 3), v2(b, 2, 2), 4.0, host::LoraScaling::standard, out1(d)) ==
          Status::ok);
  CHECK(d[0] == 16.f);  // exact
  CHECK(d[1] == 20.f);
  REQUIRE(host::reference_lora_delta(v1(x), v2(a, 2, 3), v2(b, 2, 2), 4.0, host::LoraScaling::rank_stabilized,
                                     out1(d)) == Status::ok);
  CHECK(std::fabs(d[0] - 8 * 4 / std::sqrt(2.0)) <= 6e-8 * 23);  // one fp32 rounding
  CHECK(std::fabs(d[1] - 10 * 4 / std::sqrt(2.0)) <= 6e-8 * 29);
  // Bad rank and alpha: outputs untouched.
  std::fill(d.begin(), d.end(), -1.f);
  std::vector<float> const a3 = {1, 0, 1, 0, 1, 0, 1, 1, 1};  // r = 3 > min(3, 2)
  std::vector<float> const b3 = {1, 2, 3, -1, 0, 0};
  clear_error_message();
  CHECK(host::reference_lora_delta(v1(x), v2(a3, 3, 3), v2(b3, 2, 3), 4.0, host::LoraScaling::standard, out1(d)) ==
        Status::invalid_argument);
  CHECK(std::strstr(last_error_message(), "rank must be in [1, min(d_in,d_out)]") != nullptr);
  CHECK(host::reference_lora_delta(v1(x), v2(a, 2, 3), v2(b, 2, 2), 0.0, host::LoraScaling::standard, out1(d)) ==
        Status::invalid_argument);
  CHECK(std::strstr(last_error_message(), "alpha") != nullptr);
  CHECK(d == std::vector<float>{-1.f, -1.f});
}

TEST_CASE("bad inputs return invalid_argument with a message and leave outputs untouched", "[cpu][core][experts]") {
  std::vector<float> o(2, -7.f);
  std::vector<float> const untouched(2, -7.f);
  auto expect = [&](Status s, char const* text) {
    CHECK(s == Status::invalid_argument);
    INFO(last_error_message());
    CHECK(std::strstr(last_error_message(), text) != nullptr);
    CHECK(o == untouched);
  };
  for (double limit : {0.0, -1.0, std::numeric_limits<double>::quiet_NaN()}) {
    clear_error_message();
    expect(host::reference_clamped_swiglu(v1(ex_x), v2(ex_wg, 2, 2), v2(ex_wu, 2, 2), {}, {}, v2(ex_wd, 2, 2), {},
                                          host::ClampedSwigluParams{1.702, limit}, out1(o)),
           "swiglu_limit must be > 0");
  }
  expect(host::reference_gated_mlp(v1(ex_x), v2(ex_wg, 2, 2), v2(ex_wu, 2, 2), v2(ex_wd, 2, 2),
                                   static_cast<Activation>(7), out1(o)),
         "bad activation");
  std::vector<float> const wide = {1, 2, 3, 4, 5, 6};  // [2, 3]: H mismatch
  expect(
      host::reference_gated_mlp(v1(ex_x), v2(ex_wg, 2, 2), v2(wide, 2, 3), v2(ex_wd, 2, 2), Activation::silu, out1(o)),
      "up (W_in) weight has extent 3");
  expect(
      host::reference_gated_mlp(v1(ex_x), v2(wide, 2, 3), v2(ex_wu, 2, 2), v2(ex_wd, 2, 2), Activation::silu, out1(o)),
      "gate weight has extent 3");
  expect(host::reference_plain_mlp(v1(ex_x), v2(ex_wu, 2, 2), v2(wide, 3, 2), Activation::relu, out1(o)),
         "down weight has extent 3");
  std::vector<float> const short_bias = {1};
  expect(host::reference_clamped_swiglu(v1(ex_x), v2(ex_wg, 2, 2), v2(ex_wu, 2, 2), v1(short_bias), {}, v2(ex_wd, 2, 2),
                                        {}, host::ClampedSwigluParams{}, out1(o)),
         "gate bias has extent 1");
  std::vector<float> o3(3, -7.f);
  CHECK(host::reference_gated_mlp(v1(ex_x), v2(ex_wg, 2, 2), v2(ex_wu, 2, 2), v2(ex_wd, 2, 2), Activation::silu,
                                  out1(o3)) == Status::invalid_argument);
  CHECK(o3 == std::vector<float>(3, -7.f));

  // Combine: ids out of [0, E], a non-finite weight on a used slot, a non-finite input.
  std::vector<host::ExpertWeights<float>> experts(1);
  experts[0] = {v2(ex_wg, 2, 2), v2(ex_wu, 2, 2), v2(ex_wd, 2, 2), {}, {}, {}};
  auto combine = [&](std::vector<float> const& x, std::vector<int> const& ids, std::vector<float> const& w) {
    return host::reference_moe_combine(v2(x, 1, 2), v2(ids, 1, 1), v2(w, 1, 1),
                                       std::span<host::ExpertWeights<float> const>(experts), ExpertFunction{},
                                       host::WeightPosition::after_expert, nullptr, out2(o, 1, 2));
  };
  expect(combine(ex_x, {2}, {1.f}), "expert id 2 at token 0, slot 0 not in [0, 1]");
  expect(combine(ex_x, {-1}, {1.f}), "expert id -1");
  expect(combine(ex_x, {0}, {std::numeric_limits<float>::infinity()}), "weight inf at token 0, slot 0 (expert 0)");
  expect(combine({1.f, std::numeric_limits<float>::quiet_NaN()}, {0}, {1.f}), "x at token 0, h 1 is nan");
  CHECK(host::reference_moe_combine(v2(ex_x, 1, 2), v2(std::vector<int>{0}, 1, 1), v2(std::vector<float>{1.f}, 1, 1),
                                    std::span<host::ExpertWeights<float> const>(experts), ExpertFunction{},
                                    static_cast<host::WeightPosition>(5), nullptr,
                                    out2(o, 1, 2)) == Status::invalid_argument);
  CHECK(host::reference_moe_combine(v2(ex_x, 1, 2), v2(std::vector<int>{0}, 1, 1), v2(std::vector<float>{1.f}, 1, 1),
                                    std::span<host::ExpertWeights<float> const>(), ExpertFunction{},
                                    host::WeightPosition::after_expert, nullptr,
                                    out2(o, 1, 2)) == Status::invalid_argument);
  CHECK(o == untouched);
  // Fused tensor with an odd fused dimension.
  std::vector<float> const odd(6);
  host::FusedGateUp<float> const f{HostTensor<float const, 3>::row_major(odd.data(), {1, 3, 2}),
                                   host::GateUpLayout::concatenated_out_in};
  CHECK(f.validate() == Status::invalid_argument);
  // Backward: grad_o of the wrong shape.
  std::vector<float> const go(3);
  std::vector<float> gx(2, -7.f);
  CHECK(host::reference_expert_backward(v2(ex_x, 1, 2), experts[0], ExpertFunction{}, v2(go, 1, 3),
                                        host::ExpertGradients{out2(gx, 1, 2), {}, {}, {}, {}, {}, {}}) ==
        Status::invalid_argument);
  CHECK(gx == std::vector<float>(2, -7.f));
}

TEST_CASE("LoRA backward matches central differences of the double formula", "[cpu][core][experts]") {
  std::mt19937 rng(31);
  constexpr int T = 3, Din = 5, R = 2, Dout = 4;
  for (auto scaling : {host::LoraScaling::standard, host::LoraScaling::rank_stabilized}) {
    std::vector<float> const x = random_vector(rng, T * Din, 1.f), w = random_vector(rng, T, 1.f),
                             a = random_vector(rng, R * Din, 0.5f), b = random_vector(rng, Dout * R, 0.5f),
                             gy = random_vector(rng, T * Dout, 1.f);
    double const alpha = 3.0;
    std::vector<float> gx(T * Din), ga(R * Din), gb(Dout * R), gw(T);
    REQUIRE(host::reference_lora_backward(
                v2(x, T, Din), v1(w), v2(a, R, Din), v2(b, Dout, R), alpha, scaling, v2(gy, T, Dout),
                host::LoraGradients{out2(gx, T, Din), out2(ga, R, Din), out2(gb, Dout, R), out1(gw)}) == Status::ok);
    // L = Σ_t <g_t, w_t s B A x_t>, written out in double.
    double const s = scaling == host::LoraScaling::standard ? alpha / R : alpha / std::sqrt(double(R));
    struct P {
      std::vector<double> x, w, a, b;
    };
    auto loss = [&](P const& p) {
      double l = 0;
      for (int t = 0; t < T; ++t) {
        for (int o = 0; o < Dout; ++o) {
          double y = 0;
          for (int k = 0; k < R; ++k) {
            double u = 0;
            for (int i = 0; i < Din; ++i) u += p.a[std::size_t(k * Din + i)] * p.x[std::size_t(t * Din + i)];
            y += p.b[std::size_t(o * R + k)] * u;
          }
          l += gy[std::size_t(t * Dout + o)] * p.w[std::size_t(t)] * s * y;
        }
      }
      return l;
    };
    P const p0{widen(x), widen(w), widen(a), widen(b)};
    double const step = 1e-6;
    auto check = [&](std::vector<double> P::*member, std::vector<float> const& got, char const* what) {
      int bad = 0;
      for (std::size_t i = 0; i < got.size(); ++i) {
        P plus = p0, minus = p0;
        (plus.*member)[i] += step;
        (minus.*member)[i] -= step;
        double const fd = (loss(plus) - loss(minus)) / (2 * step);
        if (std::fabs(got[i] - fd) > 1e-6 * (1 + std::fabs(fd))) {  // same bound as the expert backward
          ++bad;
          UNSCOPED_INFO(what << "[" << i << "]: reference " << got[i] << ", finite difference " << fd);
        }
      }
      CHECK(bad == 0);
    };
    check(&P::x, gx, "grad x");
    check(&P::w, gw, "grad weight");
    check(&P::a, ga, "grad A");
    check(&P::b, gb, "grad B");
  }
  // A gradient view of the wrong shape: invalid_argument, nothing written.
  std::vector<float> const x(2 * 3, 1.f), w(2, 1.f), a(2 * 3, 1.f), b(2 * 2, 1.f), gy(2 * 2, 1.f);
  std::vector<float> ga(3 * 3, -7.f);
  CHECK(host::reference_lora_backward(v2(x, 2, 3), v1(w), v2(a, 2, 3), v2(b, 2, 2), 1.0, host::LoraScaling::standard,
                                      v2(gy, 2, 2),
                                      host::LoraGradients{{}, out2(ga, 3, 3), {}, {}}) == Status::invalid_argument);
  CHECK(std::strstr(last_error_message(), "LoRA grad A") != nullptr);
  CHECK(ga == std::vector<float>(9, -7.f));
}

TEST_CASE("combine backward: grad x, grad weights and shared gate against central differences",
          "[cpu][core][experts]") {
  std::mt19937 rng(41);
  constexpr int E = 3, H = 4, I = 3, T = 4, K = 2;
  std::vector<std::vector<float>> g(E + 1), u(E + 1), d(E + 1);  // index E: the shared expert
  std::vector<host::ExpertWeights<float>> experts(E);
  std::vector<DoubleExpert> de(E + 1);
  for (std::size_t e = 0; e <= E; ++e) {
    g[e] = random_vector(rng, I * H, 0.8f);
    u[e] = random_vector(rng, I * H, 0.8f);
    d[e] = random_vector(rng, H * I, 0.8f);
    de[e] = DoubleExpert{H,
                         I,
                         {},
                         widen(g[e]),
                         widen(u[e]),
                         widen(d[e]),
                         std::vector<double>(I),
                         std::vector<double>(I),
                         std::vector<double>(H)};
    if (e < E) experts[e] = {v2(g[e], I, H), v2(u[e], I, H), v2(d[e], H, I), {}, {}, {}};
  }
  std::vector<float> const wsg = random_vector(rng, H, 0.8f);
  host::SharedExpert<float> const shared{
      {v2(g[E], I, H), v2(u[E], I, H), v2(d[E], H, I), {}, {}, {}}, ExpertFunction{}, v1(wsg)};
  std::vector<float> const x = random_vector(rng, T * H, 1.f), gy = random_vector(rng, T * H, 1.f);
  std::vector<int> const ids = {0, 2, 1, E, E, E, 2, 2};  // an empty slot, an empty token, a repeat
  std::vector<float> const w = {0.7f, 0.3f, 0.9f, 0.f, 0.f, 0.f, 0.4f, 0.6f};
  for (auto pos : {host::WeightPosition::after_expert, host::WeightPosition::on_input}) {
    INFO((pos == host::WeightPosition::on_input ? "on_input" : "after_expert"));
    std::vector<float> gx(T * H), gw(T * K, -7.f), gsg(H);
    REQUIRE(host::reference_moe_combine_backward(
                v2(x, T, H), v2(ids, T, K), v2(w, T, K), std::span<host::ExpertWeights<float> const>(experts),
                ExpertFunction{}, pos, &shared, v2(gy, T, H), out2(gx, T, H), out2(gw, T, K), out1(gsg)) == Status::ok);
    struct P {
      std::vector<double> x, w, wsg;
    };
    auto loss = [&](P const& p) {
      double l = 0;
      for (int t = 0; t < T; ++t) {
        std::vector<double> xt(p.x.begin() + t * H, p.x.begin() + (t + 1) * H), y(H, 0.0);
        for (int j = 0; j < K; ++j) {
          int const id = ids[std::size_t(t * K + j)];
          if (id == E) continue;
          double const wj = p.w[std::size_t(t * K + j)];
          std::vector<double> xin = xt;
          if (pos == host::WeightPosition::on_input) {
            for (double& v : xin) v *= wj;
          }
          std::vector<double> const o = de[std::size_t(id)].forward(xin);
          for (int h = 0; h < H; ++h)
            y[std::size_t(h)] += (pos == host::WeightPosition::on_input ? 1.0 : wj) * o[std::size_t(h)];
        }
        double a = 0;
        for (int h = 0; h < H; ++h) a += p.wsg[std::size_t(h)] * xt[std::size_t(h)];
        std::vector<double> const so = de[E].forward(xt);
        for (int h = 0; h < H; ++h) y[std::size_t(h)] += so[std::size_t(h)] / (1 + std::exp(-a));
        for (int h = 0; h < H; ++h) l += gy[std::size_t(t * H + h)] * y[std::size_t(h)];
      }
      return l;
    };
    P const p0{widen(x), widen(w), widen(wsg)};
    double const step = 1e-6;
    auto check = [&](std::vector<double> P::*member, std::vector<float> const& got, char const* what) {
      int bad = 0;
      for (std::size_t i = 0; i < got.size(); ++i) {
        P plus = p0, minus = p0;
        (plus.*member)[i] += step;
        (minus.*member)[i] -= step;
        double const fd = (loss(plus) - loss(minus)) / (2 * step);
        if (std::fabs(got[i] - fd) > 1e-6 * (1 + std::fabs(fd))) {  // same bound as the expert backward
          ++bad;
          UNSCOPED_INFO(what << "[" << i << "]: reference " << got[i] << ", finite difference " << fd);
        }
      }
      CHECK(bad == 0);
    };
    check(&P::x, gx, "grad x");
    check(&P::w, gw, "grad weight");  // empty slots: fd = 0 and the reference writes 0
    check(&P::wsg, gsg, "grad shared gate");
    CHECK(gw[3] == 0.f);
    CHECK(gw[4] == 0.f);
    CHECK(gw[5] == 0.f);
  }
  // grad_shared_gate without a gated shared expert: invalid_argument.
  std::vector<float> gx(T * H), gsg(H, -7.f);
  CHECK(host::reference_moe_combine_backward(v2(x, T, H), v2(ids, T, K), v2(w, T, K),
                                             std::span<host::ExpertWeights<float> const>(experts), ExpertFunction{},
                                             host::WeightPosition::after_expert, nullptr, v2(gy, T, H), out2(gx, T, H),
                                             {}, out1(gsg)) == Status::invalid_argument);
  CHECK(gsg == std::vector<float>(H, -7.f));
}
