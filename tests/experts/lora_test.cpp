// LoRA experts (experts/lora.hpp, ALGORITHMS.md §3.3): LoraExpert through the device expert
// stage (kernels::run_expert_stage under the emulator, bf16 and fp16) and the CPU executor
// (cpu::run_experts, fp32 and bf16), r ∈ {1, 4, 8, 16}, H = 45 (not a multiple of 8), T ∈ {0, 1,
// 37}, E up to 16, K up to 4, ~10% empty slots, both scalings; merge_lora; bad parameters.
//
// Oracle: y_t = Σ_j w_tj·delta(e_tj, x_t), delta = host::reference_lora_delta (double inside,
// rounded once to fp32), summed over the slots in double and rounded once to fp32.
//
// Tolerance, per output element, derived from the data (u32 = 2^-24; γ(n) = (n + 4)·u32 bounds
// an fp32 sum of n terms in any order relative to Σ|terms|; u_h = the unit roundoff of h):
//   u_k = A_k·x        δu ≤ γ(H)·Σ_h |A_kh x_h|       (16-bit x and A: the products are exact in fp32)
//   h_k = s·u_k        δh ≤ s·δu + (u_h + 2·u32)·|h|   (s rounded to fp32, the fp32 product, then h
//                      stored in the 16-bit type on the device: u_h = 2^-8 bf16, 2^-11 fp16, read
//                      the top of kernels/expert_stage.hpp; the CPU executor keeps h in fp32: u32)
//   o = B·h            δo ≤ Σ_k |B| δh_k + γ(r)·Σ_k |B h_k|
//   slot               |w|·δo + 2·u32·|w o| (the fp32 product w·o, and the oracle's own fp32 delta)
//   y                  Σ slots + γ(K + 2)·Σ|w o| (the combine's fp32 sum) + (u_y + u32)·|y|
//                      (y's rounding to Y, the oracle's rounding), ×2 for second-order terms.
// A wrong expert, slot, weight or a scale applied twice / not at all is off by O(|y|), far above
// these bounds (bf16: ~2^-7 of the magnitudes).

#include "moekit/experts/lora.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "expert_case.hpp"
#include <catch2/catch.hpp>

#include "moekit/core/diagnostics.hpp"
#include "moekit/core/workspace.hpp"
#include "moekit/cpu/experts.hpp"
#include "moekit/emu/launch_config.hpp"
#include "moekit/host/expert_reference.hpp"
#include "moekit/kernels/expert_stage.hpp"
#include "moekit/layer.hpp"
#include "moekit/routing/dynmole.hpp"

namespace {

using expert_case::Case;
using expert_case::Shape;
using moekit::bf16_t;
using moekit::Diagnostics;
using moekit::fp16_t;
using moekit::HostTensor;
using moekit::MemorySpace;
using moekit::Status;
namespace experts = moekit::experts;
namespace host = moekit::host;
namespace kernels = moekit::kernels;

constexpr double u32 = 0x1p-24;
double gamma(std::int64_t n) { return double(n + 4) * u32; }

template <class T>
double widen(T v) {
  return double(moekit::to_float(v));
}

host::LoraScaling host_scaling(experts::LoraScaling s) {
  return s == experts::LoraScaling::standard ? host::LoraScaling::standard : host::LoraScaling::rank_stabilized;
}

struct Lora {
  double alpha = 16.0;
  experts::LoraScaling scaling = experts::LoraScaling::standard;
};

// A LoRA problem as an expert_case::Case with I = r: up = A [E, r, H], down = B [E, H, r].
Shape lora_shape(std::int64_t tokens, std::int64_t rank, int experts, int slots, std::uint32_t seed) {
  Shape s;
  s.tokens = tokens;
  s.hidden = 45;
  s.inter = rank;
  s.slots = slots;
  s.table = experts::all_computed(experts);
  s.seed = seed;
  return s;
}

struct Oracle {
  std::vector<float> y;
  std::vector<double> bound;
};

template <class X, class W>
Oracle oracle(Case<X, W> const& c, Lora const& lora, double u_h, double u_y) {
  auto const T = c.shape.tokens, H = c.shape.hidden, r = c.shape.inter;
  int const K = c.shape.slots, E = c.shape.table.computed;
  double const s = host::lora_scale(lora.alpha, r, host_scaling(lora.scaling));
  // reference_lora_delta takes fp32 A and B: the 16-bit weights widen exactly.
  std::vector<float> a(c.up.size()), b(c.down.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    a[i] = moekit::to_float(c.up[i]);
  }
  for (std::size_t i = 0; i < b.size(); ++i) {
    b[i] = moekit::to_float(c.down[i]);
  }
  Oracle o;
  o.y.assign(static_cast<std::size_t>(T * H), 0.0f);
  o.bound.assign(o.y.size(), 0.0);
  std::vector<float> delta(static_cast<std::size_t>(H));
  std::vector<double> acc(static_cast<std::size_t>(H)), mag(static_cast<std::size_t>(H)),
      err(static_cast<std::size_t>(H));
  std::vector<double> hk(static_cast<std::size_t>(r)), dh(static_cast<std::size_t>(r));
  for (std::int64_t t = 0; t < T; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0);
    std::fill(mag.begin(), mag.end(), 0.0);
    std::fill(err.begin(), err.end(), 0.0);
    for (int j = 0; j < K; ++j) {
      int const e = c.ids[static_cast<std::size_t>(t * K + j)];
      if (e >= E) {
        continue;  // empty slot
      }
      double const w = double(c.weights[static_cast<std::size_t>(t * K + j)]);
      auto const off_a = static_cast<std::size_t>(e) * static_cast<std::size_t>(r * H);
      REQUIRE(host::reference_lora_delta<X>(HostTensor<X const, 1>::row_major(c.x.data() + t * H, {H}),
                                            HostTensor<float const, 2>::row_major(a.data() + off_a, {r, H}),
                                            HostTensor<float const, 2>::row_major(b.data() + off_a, {H, r}), lora.alpha,
                                            host_scaling(lora.scaling),
                                            HostTensor<float, 1>::row_major(delta.data(), {H})) == Status::ok);
      for (std::int64_t k = 0; k < r; ++k) {
        double u = 0, au = 0;
        for (std::int64_t h = 0; h < H; ++h) {
          double const p = double(a[off_a + static_cast<std::size_t>(k * H + h)]) * widen(c.x[t * H + h]);
          u += p;
          au += std::fabs(p);
        }
        hk[static_cast<std::size_t>(k)] = s * u;
        dh[static_cast<std::size_t>(k)] = s * gamma(H) * au + (u_h + 2 * u32) * std::fabs(s * u);
      }
      for (std::int64_t h = 0; h < H; ++h) {
        double ov = 0, ao = 0, dov = 0;
        for (std::int64_t k = 0; k < r; ++k) {
          double const bk = double(b[off_a + static_cast<std::size_t>(h * r + k)]);
          ov += bk * hk[static_cast<std::size_t>(k)];
          ao += std::fabs(bk * hk[static_cast<std::size_t>(k)]);
          dov += std::fabs(bk) * dh[static_cast<std::size_t>(k)];
        }
        auto const at = static_cast<std::size_t>(h);
        acc[at] += w * double(delta[at]);
        err[at] += std::fabs(w) * (dov + gamma(r) * ao) + 2 * u32 * std::fabs(w * ov);
        mag[at] += std::fabs(w * ov);
      }
    }
    for (std::int64_t h = 0; h < H; ++h) {
      auto const at = static_cast<std::size_t>(t * H + h);
      auto const i = static_cast<std::size_t>(h);
      o.y[at] = static_cast<float>(acc[i]);
      o.bound[at] = 2.0 * (err[i] + gamma(K + 2) * mag[i] + (u_y + u32) * std::fabs(acc[i])) + 1e-30;
    }
  }
  return o;
}

template <class Y>
void require_within(std::vector<Y> const& got, Oracle const& o) {
  REQUIRE(got.size() == o.y.size());
  double worst = 0;
  std::size_t at = 0;
  for (std::size_t i = 0; i < got.size(); ++i) {
    double const ratio = std::fabs(widen(got[i]) - double(o.y[i])) / o.bound[i];
    if (!(ratio <= worst)) {
      worst = ratio;
      at = i;
    }
  }
  INFO("worst element " << at << ": error/bound " << worst);
  if (std::getenv("MOEKIT_TEST_SHOW_BOUNDS") != nullptr) {
    std::printf("worst error/bound %.3g (element %zu of %zu)\n", worst, at, got.size());
  }
  REQUIRE(worst <= 1.0);
}

// Emulated launches: a shuffled schedule, racecheck and initcheck on, 2 resident blocks.
moekit::emu::LaunchOptions checked_launches(std::uint64_t schedule_seed) {
  moekit::emu::LaunchOptions o;
  o.schedule_seed = schedule_seed;
  o.racecheck = true;
  o.initcheck = true;
  o.max_resident_blocks = 2;
  return o;
}

template <class Cfg, class Y, class T>
Status run_device(experts::LoraExpert<T> const& expert, Case<T, T> const& c, std::vector<Y>& y) {
  moekit::emu::ScopedLaunchOptions const guard(checked_launches(3));
  y.assign(static_cast<std::size_t>(c.shape.tokens * c.shape.hidden), Y(-7.0f));
  auto const p = c.problem();
  expert_case::AlignedWorkspace ws(kernels::expert_stage_workspace_size<Cfg, T>(p));
  Diagnostics d{};
  return kernels::run_expert_stage<Cfg>(expert, p, c.template args<Y, MemorySpace::device>(y), ws.w, &d, nullptr,
                                        kernels::LaunchOptions{3});
}

template <class Y, class X, class W>
Status run_cpu(experts::LoraExpert<W> const& expert, Case<X, W> const& c, std::vector<Y>& y, int threads) {
  y.assign(static_cast<std::size_t>(c.shape.tokens * c.shape.hidden), Y(-7.0f));
  auto const p = c.problem();
  expert_case::AlignedWorkspace ws(moekit::cpu::experts_workspace_size<experts::LoraExpert<W>, X, Y>(expert, p));
  moekit::cpu::ThreadPool pool(threads);
  return moekit::cpu::run_experts(expert, p, c.template args<Y, MemorySpace::host>(y), ws.w, nullptr, &pool);
}

// The shapes every backend runs: r × T, with E and K growing with r.
struct Sweep {
  std::int64_t rank;
  std::int64_t tokens;
  int experts;
  int slots;
  Lora lora;
};

std::vector<Sweep> sweep() {
  std::vector<Sweep> v;
  for (std::int64_t r : {1, 4, 8, 16}) {
    for (std::int64_t t : {0, 1, 37}) {
      int const e = r <= 4 ? 5 : 16;
      int const k = r == 1 ? 1 : (r == 16 ? 4 : 2);
      Lora const l = r == 8 ? Lora{12.0, experts::LoraScaling::rank_stabilized} : Lora{2.0 * double(r), {}};
      v.push_back({r, t, e, k, l});
    }
  }
  return v;
}

std::string describe(Sweep const& w) {
  return "r " + std::to_string(w.rank) + ", T " + std::to_string(w.tokens) + ", E " + std::to_string(w.experts) +
         ", K " + std::to_string(w.slots) + (w.lora.scaling == experts::LoraScaling::standard ? ", α/r" : ", α/√r");
}

}  // namespace

TEMPLATE_TEST_CASE("LoRA experts on the emulated device against host::reference_lora_delta", "[experts][lora][emu]",
                   bf16_t, fp16_t) {
  using T = TestType;
  std::uint32_t seed = 300;
  for (Sweep const& w : sweep()) {
    SECTION(describe(w)) {
      auto const c = expert_case::make_case<T, T>(lora_shape(w.tokens, w.rank, w.experts, w.slots, ++seed));
      auto const expert = experts::lora_expert<T>(w.lora.alpha, w.rank, w.lora.scaling);
      std::vector<float> y;
      // Decode tiles (16 rows) for T ≤ 1, as MoeLayer picks them; prefill tiles otherwise.
      Status const s = w.tokens <= 1 ? run_device<kernels::DecodeConfig, float>(expert, c, y)
                                     : run_device<kernels::PrefillConfig, float>(expert, c, y);
      INFO(moekit::last_error_message());
      REQUIRE(s == Status::ok);
      require_within(y, oracle(c, w.lora, expert_case::unit_roundoff<T>(), u32));
    }
  }
  SECTION("16-bit output") {
    auto const c = expert_case::make_case<T, T>(lora_shape(37, 8, 16, 4, 77));
    std::vector<T> y;
    REQUIRE(run_device<kernels::PrefillConfig, T>(experts::lora_expert<T>(16.0, 8), c, y) == Status::ok);
    require_within(y, oracle(c, Lora{16.0, {}}, expert_case::unit_roundoff<T>(), expert_case::unit_roundoff<T>()));
  }
}

TEMPLATE_TEST_CASE("LoRA experts on the CPU executor against host::reference_lora_delta", "[experts][lora][cpu]", float,
                   bf16_t) {
  using T = TestType;
  std::uint32_t seed = 500;
  for (Sweep const& w : sweep()) {
    SECTION(describe(w)) {
      auto const c = expert_case::make_case<T, T>(lora_shape(w.tokens, w.rank, w.experts, w.slots, ++seed));
      auto const expert = experts::lora_expert<T>(w.lora.alpha, w.rank, w.lora.scaling);
      std::vector<float> y1, y3;
      REQUIRE(run_cpu(expert, c, y1, 1) == Status::ok);
      REQUIRE(run_cpu(expert, c, y3, 3) == Status::ok);
      REQUIRE((y1.empty() || std::memcmp(y1.data(), y3.data(), y1.size() * sizeof(float)) == 0));  // any thread count
      // The CPU executor keeps h in fp32.
      require_within(y1, oracle(c, w.lora, u32, u32));
    }
  }
  SECTION("output in the activation type") {
    auto const c = expert_case::make_case<T, T>(lora_shape(37, 4, 16, 3, 78));
    std::vector<T> y;
    REQUIRE(run_cpu(experts::lora_expert<T>(8.0, 4), c, y, 2) == Status::ok);
    require_within(y, oracle(c, Lora{8.0, {}}, u32, expert_case::unit_roundoff<T>()));
  }
}

TEST_CASE("LoRA expert: the scale and its placement", "[experts][lora]") {
  STATIC_REQUIRE(experts::Expert<experts::LoraExpert<bf16_t>>);
  STATIC_REQUIRE(experts::LoraExpert<float>::shape == experts::ExpertShape::plain);
  auto const lora = experts::lora_expert<float>(16.0, 8);
  REQUIRE(lora.scale == 2.0f);
  REQUIRE(experts::lora_expert<float>(16.0, 4, experts::LoraScaling::rank_stabilized).scale == 8.0f);
  REQUIRE(lora.hidden_unit(123.0f, 1.5f) == 3.0f);  // h = s·u, the gate argument is ignored
  REQUIRE(lora.validate() == Status::ok);
}

TEST_CASE("LoRA: bad rank, alpha or scale give a Status with a message", "[experts][lora]") {
  using experts::LoraScaling;
  auto const message = [] { return std::string(moekit::last_error_message()); };
  SECTION("check_lora_params") {
    REQUIRE(experts::check_lora_params(45, 0, 45, 16.0, LoraScaling::standard) == Status::invalid_argument);
    REQUIRE(message().find("rank must be in [1, min(d_in,d_out)]") != std::string::npos);
    REQUIRE(experts::check_lora_params(45, 46, 64, 16.0, LoraScaling::standard) == Status::invalid_argument);
    REQUIRE(message().find("rank 46, d_in 45, d_out 64") != std::string::npos);
    REQUIRE(experts::check_lora_params(45, 8, 45, 0.0, LoraScaling::standard) == Status::invalid_argument);
    REQUIRE(message().find("alpha must be finite and > 0") != std::string::npos);
    REQUIRE(experts::check_lora_params(45, 8, 45, std::nan(""), LoraScaling::standard) == Status::invalid_argument);
    REQUIRE(experts::check_lora_params(45, 8, 45, 16.0, static_cast<LoraScaling>(7)) == Status::invalid_argument);
    REQUIRE(message().find("bad scaling 7") != std::string::npos);
    REQUIRE(experts::check_lora_params(45, 45, 45, 16.0, LoraScaling::rank_stabilized) == Status::ok);
  }
  SECTION("an expert built from bad parameters is refused by both backends, y untouched") {
    for (auto const& bad : {experts::lora_expert<bf16_t>(-1.0, 8), experts::lora_expert<bf16_t>(16.0, 0),
                            experts::lora_expert<bf16_t>(std::numeric_limits<double>::infinity(), 8),
                            experts::LoraExpert<bf16_t>{0.0f}}) {
      REQUIRE(bad.validate() == Status::invalid_argument);
      REQUIRE(message().find("LoRA expert: scale must be finite and > 0") != std::string::npos);
      auto const c = expert_case::make_case<bf16_t, bf16_t>(lora_shape(5, 8, 4, 2, 9));
      std::vector<float> y(static_cast<std::size_t>(5 * 45), -7.0f);
      expert_case::AlignedWorkspace ws(1 << 16);
      REQUIRE(moekit::cpu::run_experts(bad, c.problem(), c.args<float, MemorySpace::host>(y), ws.w, nullptr, nullptr) ==
              Status::invalid_argument);
      Diagnostics d{};
      REQUIRE(kernels::run_expert_stage<kernels::PrefillConfig>(bad, c.problem(), c.args<float, MemorySpace::device>(y),
                                                                ws.w, &d, nullptr) == Status::invalid_argument);
      REQUIRE(std::all_of(y.begin(), y.end(), [](float v) { return v == -7.0f; }));
    }
  }
}

namespace {

// merge_lora against the reference: for a few inputs x, W'_e x must equal W_e x + delta_e(x)
// (host::reference_lora_delta). W' is rounded once to W from the exact W + s·B·A, so per output
// |W'x − (Wx + δ)| ≤ u_W·Σ_i |W + sBA|_oi |x_i| (the merged weights' rounding; the sums here are
// in double) + u32·|δ| (the reference's fp32 delta) + 1e-12·Σ|terms| (double sums), ×2 for the
// second-order terms. And element-wise |W' − (W + sBA)| ≤ u_W·|W + sBA| (one rounding).
template <class W>
void check_merge(std::int64_t E, std::int64_t d_out, std::int64_t d_in, std::int64_t r, Lora const& lora,
                 bool in_place) {
  std::mt19937 rng(static_cast<std::uint32_t>(d_out * 131 + r));
  auto const n = static_cast<std::size_t>(E * d_out * d_in);
  auto const base = expert_case::random_vector<W>(n, 1.0 / std::sqrt(double(d_in)), rng);
  auto const a = expert_case::random_vector<float>(static_cast<std::size_t>(E * r * d_in), 0.5, rng);
  auto const b = expert_case::random_vector<float>(static_cast<std::size_t>(E * d_out * r), 0.5, rng);
  std::vector<W> merged = in_place ? base : std::vector<W>(n, W(-7.0f));
  REQUIRE(experts::merge_lora<W, float>(
              HostTensor<W const, 3>::row_major(in_place ? merged.data() : base.data(), {E, d_out, d_in}),
              HostTensor<float const, 3>::row_major(a.data(), {E, r, d_in}),
              HostTensor<float const, 3>::row_major(b.data(), {E, d_out, r}), lora.alpha, lora.scaling,
              HostTensor<W, 3>::row_major(merged.data(), {E, d_out, d_in})) == Status::ok);
  double const s = host::lora_scale(lora.alpha, r, host_scaling(lora.scaling));
  double const uw = expert_case::unit_roundoff<W>();
  auto const x = expert_case::random_vector<float>(static_cast<std::size_t>(d_in), 1.0, rng);
  std::vector<float> delta(static_cast<std::size_t>(d_out));
  for (std::int64_t e = 0; e < E; ++e) {
    auto const ab = static_cast<std::size_t>(e * r * d_in), bb = static_cast<std::size_t>(e * d_out * r),
               wb = static_cast<std::size_t>(e * d_out * d_in);
    REQUIRE(host::reference_lora_delta<float>(HostTensor<float const, 1>::row_major(x.data(), {d_in}),
                                              HostTensor<float const, 2>::row_major(a.data() + ab, {r, d_in}),
                                              HostTensor<float const, 2>::row_major(b.data() + bb, {d_out, r}),
                                              lora.alpha, host_scaling(lora.scaling),
                                              HostTensor<float, 1>::row_major(delta.data(), {d_out})) == Status::ok);
    for (std::int64_t o = 0; o < d_out; ++o) {
      double merged_x = 0, base_x = 0, bound = 0;
      for (std::int64_t i = 0; i < d_in; ++i) {
        double exact = widen(base[wb + static_cast<std::size_t>(o * d_in + i)]), terms = std::fabs(exact);
        for (std::int64_t k = 0; k < r; ++k) {
          double const t = s * double(b[bb + static_cast<std::size_t>(o * r + k)]) *
                           double(a[ab + static_cast<std::size_t>(k * d_in + i)]);
          exact += t;
          terms += std::fabs(t);
        }
        double const got = widen(merged[wb + static_cast<std::size_t>(o * d_in + i)]);
        // One rounding of a value that our double sum and merge_lora's (another order) agree on
        // to ~1e-16 of the terms' magnitudes.
        REQUIRE(std::fabs(got - exact) <= uw * std::fabs(exact) + 1e-14 * terms);
        merged_x += got * double(x[static_cast<std::size_t>(i)]);
        base_x += widen(base[wb + static_cast<std::size_t>(o * d_in + i)]) * double(x[static_cast<std::size_t>(i)]);
        bound += std::fabs(exact * double(x[static_cast<std::size_t>(i)]));
      }
      double const d = double(delta[static_cast<std::size_t>(o)]);
      double const tol = 2.0 * ((uw + 1e-12) * bound + u32 * std::fabs(d));
      REQUIRE(std::fabs(merged_x - (base_x + d)) <= tol);
    }
  }
}

}  // namespace

TEST_CASE("merge_lora: W + s·B·A per expert, one rounding, against the reference delta", "[experts][lora]") {
  SECTION("fp32, square, standard scaling") { check_merge<float>(3, 45, 45, 8, Lora{16.0, {}}, false); }
  SECTION("bf16 in place, rectangular (gate/up [I, H]), rsLoRA") {
    check_merge<bf16_t>(4, 24, 45, 4, Lora{8.0, experts::LoraScaling::rank_stabilized}, true);
  }
  SECTION("fp16, down [H, I], rank 1") { check_merge<fp16_t>(2, 45, 24, 1, Lora{2.0, {}}, false); }
  SECTION("bad rank or shapes: a Status, merged untouched") {
    std::vector<float> base(2 * 6 * 5, 1.0f), a(2 * 6 * 5, 0.5f), b(2 * 6 * 6, 0.5f), merged(base.size(), -7.0f);
    auto const run = [&](std::int64_t r, std::int64_t b_rows, double alpha) {
      return experts::merge_lora<float, float>(HostTensor<float const, 3>::row_major(base.data(), {2, 6, 5}),
                                               HostTensor<float const, 3>::row_major(a.data(), {2, r, 5}),
                                               HostTensor<float const, 3>::row_major(b.data(), {2, b_rows, r}), alpha,
                                               experts::LoraScaling::standard,
                                               HostTensor<float, 3>::row_major(merged.data(), {2, 6, 5}));
    };
    REQUIRE(run(6, 6, 4.0) == Status::invalid_argument);  // r = 6 > min(d_in = 5, d_out = 6)
    REQUIRE(std::string(moekit::last_error_message()).find("rank must be in [1, min(d_in,d_out)]") !=
            std::string::npos);
    REQUIRE(run(2, 5, 4.0) == Status::invalid_argument);  // B has 5 rows, base 6
    REQUIRE(std::string(moekit::last_error_message()).find("do not fit") != std::string::npos);
    REQUIRE(run(2, 6, -1.0) == Status::invalid_argument);
    REQUIRE(std::string(moekit::last_error_message()).find("alpha must be finite and > 0") != std::string::npos);
    REQUIRE(std::all_of(merged.begin(), merged.end(), [](float v) { return v == -7.0f; }));
    REQUIRE(run(2, 6, 4.0) == Status::ok);
  }
}

TEST_CASE("MoeLayer: DynMoLE routing over LoRA experts, CPU executor and emulated device", "[experts][lora][layer]") {
  // DynMoLE (§3.2): E = 6 LoRA experts of rank 8 (α = 16), slots() = E, weights p·mask (not
  // renormalised), broadcast to all experts for uncertain tokens. y is checked with the oracle on
  // the layer's own ids and weights (the routers have their own tests).
  using T = bf16_t;
  using Router = moekit::routing::DynMoLE<8>;
  using Layer = moekit::MoeLayer<Router, moekit::balancing::None, experts::LoraExpert<T>>;
  Router const router{6, {}};
  auto const expert = experts::lora_expert<T>(16.0, 8);
  Shape const shape = lora_shape(37, 8, 6, 6, 901);
  auto const c = expert_case::make_case<T, T>(shape);
  std::mt19937 rng(902);
  // Router weights ~ U(±2/√H): logits O(1), so both narrow and broadcast tokens occur.
  auto const gate =
      expert_case::random_vector<T>(static_cast<std::size_t>(6 * shape.hidden), 2.0 / std::sqrt(45.0), rng);
  Layer::Problem p;
  p.tokens = shape.tokens;
  p.hidden = shape.hidden;
  p.intermediate = shape.inter;
  p.table = shape.table;
  for (bool const device : {false, true}) {
    INFO((device ? "device" : "cpu"));
    Case<T, T> routed = c;
    std::vector<float> y(static_cast<std::size_t>(shape.tokens * shape.hidden), -7.0f);
    auto const args = [&]<MemorySpace S>(Diagnostics* d) {
      typename Layer::template Arguments<T, float, S> a;
      a.x = moekit::TensorView<T const, 2, S>::row_major(c.x.data(), {shape.tokens, shape.hidden});
      a.gate_weight = moekit::TensorView<T const, 2, S>::row_major(gate.data(), {6, shape.hidden});
      a.experts = c.template routed<S>();
      a.y = moekit::TensorView<float, 2, S>::row_major(y.data(), {shape.tokens, shape.hidden});
      a.ids = moekit::TensorView<int, 2, S>::row_major(routed.ids.data(), {shape.tokens, 6});
      a.weights = moekit::TensorView<float, 2, S>::row_major(routed.weights.data(), {shape.tokens, 6});
      a.diagnostics = d;
      return a;
    };
    expert_case::AlignedWorkspace ws(Layer::workspace_size<T, float>(router, p, device));
    Diagnostics d{};
    Status s = Status::ok;
    if (device) {
      moekit::emu::ScopedLaunchOptions const guard(checked_launches(4));
      s = Layer::run(router, {}, expert, p, args.template operator()<MemorySpace::device>(&d), ws.w, nullptr);
    } else {
      moekit::cpu::ThreadPool pool(2);
      s = Layer::run(router, {}, expert, p, args.template operator()<MemorySpace::host>(&d), ws.w, pool);
    }
    INFO(moekit::last_error_message());
    REQUIRE(s == Status::ok);
    // Both kinds of token occur: some keep fewer than E experts, some are broadcast to all E.
    int narrow = 0, broadcast = 0;
    for (std::int64_t t = 0; t < shape.tokens; ++t) {
      int kept = 0;
      for (int j = 0; j < 6; ++j) {
        kept += routed.ids[static_cast<std::size_t>(t * 6 + j)] < 6 ? 1 : 0;
      }
      narrow += kept < 6 ? 1 : 0;
      broadcast += kept == 6 ? 1 : 0;
    }
    CHECK(narrow > 0);
    CHECK(broadcast > 0);
    require_within(y, oracle(routed, Lora{16.0, {}}, device ? expert_case::unit_roundoff<T>() : u32, u32));
  }
}
