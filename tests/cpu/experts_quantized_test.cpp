// cpu::run_experts with Quantized<Base> experts: mixed bit widths {1, ..., 8} per expert,
// symmetric and asymmetric, G = 32/64/128, gated (SwiGLU, clamped SwiGLU) and plain MLPs, a
// dense shared expert, zero and identity experts, T ∈ {0, 1, 37, 200}, H above one dequantisation
// K-block (512), X ∈ {float, Compute} (what the CPU accepts), 1/2/3 threads bit-identical; bad
// input returns a Status and leaves y untouched; and MoeLayer with quantised experts on the CPU
// against the emulated device.
//
// Oracle (run_experts): host::reference_moe_combine on the dequantised weights in fp32 — exactly
// the CPU's operands, since it dequantises to fp32 (experts::dequantize_run, the same fma as
// dequantize_matrix) and never rounds them to Compute — so experts_case.hpp's per-element bound
// applies unchanged. The dense shared expert's weights are Compute values (widened exactly).

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "experts_case.hpp"
#include <catch2/catch.hpp>

#include "moekit/emu/launch_config.hpp"
#include "moekit/experts/dequantize.hpp"
#include "moekit/experts/quantize.hpp"
#include "moekit/experts/quantized.hpp"
#include "moekit/layer.hpp"
#include "moekit/routing/top_k.hpp"

using namespace moekit;
using namespace cpu_case;

namespace {

// Replaces w [E, out, in] by its quantised-dequantised values (fp32) and returns the codes.
experts::QuantizedTensor quantize_in_place(std::vector<float>& w, std::int64_t E, std::int64_t out, std::int64_t in,
                                           std::vector<int> const& bits, experts::QuantizeOptions const& o) {
  experts::QuantizedTensor q;
  if (E == 0) {
    return q;  // zero/identity experts only: no codes
  }
  REQUIRE(experts::quantize_experts(HostTensor<float const, 3>::row_major(w.data(), {E, out, in}), bits, o, q) ==
          Status::ok);
  for (std::int64_t e = 0; e < E; ++e) {
    REQUIRE(experts::dequantize_matrix(
                q.view(), e, HostTensor<float, 2>::row_major(w.data() + e * out * in, {out, in})) == Status::ok);
  }
  return q;
}

// A Layer<X, float> whose routed weights are replaced by their dequantised values (the oracle's
// weights) and whose shared expert is rounded to Compute, with the codes and Compute copies the
// quantised run reads.
template <class X, class Compute>
struct QuantizedLayer {
  Layer<X, float> L;
  experts::QuantizedTensor gate, up, down;
  std::vector<Compute> s_gate, s_up, s_down, s_gate_bias, s_up_bias, s_down_bias, s_vec;

  QuantizedLayer(Config const& c, std::vector<int> const& bits, experts::QuantizeOptions const& o) : L(c) {
    std::int64_t const E = c.table.computed, H = c.hidden, I = c.inter;
    gate = quantize_in_place(L.gate, E, I, H, bits, o);
    up = quantize_in_place(L.up, E, I, H, bits, o);
    down = quantize_in_place(L.down, E, H, I, bits, o);
    auto const round = [](std::vector<float>& from, std::vector<Compute>& to) {
      for (float& v : from) {
        to.push_back(Compute(v));
        v = to.back().to_float();
      }
    };
    round(L.s_gate, s_gate);
    round(L.s_up, s_up);
    round(L.s_down, s_down);
    round(L.s_gate_bias, s_gate_bias);
    round(L.s_up_bias, s_up_bias);
    round(L.s_down_bias, s_down_bias);
    round(L.s_vec, s_vec);
  }

  template <class Y>
  experts::ExpertArgs<X, experts::QuantizedElement<Compute>, Y, MemorySpace::host> args(std::vector<Y>& y) const {
    auto const d = L.template args<Y>(y);
    experts::ExpertArgs<X, experts::QuantizedElement<Compute>, Y, MemorySpace::host> a;
    a.x = d.x;
    a.ids = d.ids;
    a.weights = d.weights;
    a.y = d.y;
    a.experts = {gate.view(), up.view(), down.view(), d.experts.gate_bias, d.experts.up_bias, d.experts.down_bias};
    Config const& c = L.c;
    if (c.shared_inter > 0) {
      a.shared.weights = Layer<X, Compute>::mlp(s_gate, s_up, s_down, s_gate_bias, s_up_bias, s_down_bias, 1, c.hidden,
                                                c.shared_inter);
      a.shared.gate = HostTensor<Compute const, 1>::row_major(s_vec.empty() ? nullptr : s_vec.data(), {c.hidden});
    }
    return a;
  }
};

template <class Y, class X, class Base>
void check_quantized(Base const& base, Config const& c, std::vector<int> const& bits,
                     experts::QuantizeOptions const& o) {
  using Policy = experts::Quantized<Base>;
  using Compute = typename Base::Element;
  INFO("T " << c.tokens << " H " << c.hidden << " I " << c.inter << " G " << o.group
            << (o.scheme == experts::QuantScheme::symmetric ? " symmetric" : " asymmetric"));
  QuantizedLayer<X, Compute> const q(c, bits, o);
  Policy const policy{base};
  std::vector<double> want, bound;
  expected<Base, X, float, Y>(base, q.L, want, bound);
  auto const p = q.L.problem();
  auto const run_with = [&](std::vector<Y>& y, unsigned threads) {
    auto buffer = WorkspaceBuffer::make<Policy, X, Y>(policy, p);
    Workspace ws(buffer.base, buffer.bytes);
    cpu::ThreadPool pool(threads);
    Status const s = cpu::run_experts(policy, p, q.template args<Y>(y), ws, nullptr, &pool);
    INFO(last_error_message());
    return s;
  };
  check_runs<Y>(run_with, static_cast<std::size_t>(c.tokens * c.hidden), want, bound);
}

experts::QuantizeOptions options(std::int64_t group, experts::QuantScheme scheme) {
  experts::QuantizeOptions o;
  o.group = group;
  o.scheme = scheme;
  return o;
}

}  // namespace

TEST_CASE("cpu quantized experts: mixed bits, both schemes, G 32/64/128, against the fp32 dequantised oracle",
          "[cpu][experts][quantized]") {
  using experts::QuantScheme;
  SECTION("SwiGLU bf16, X bf16, asymmetric, G 32, bits 1/2/3/4/8/5, biases, gated shared expert") {
    Config c;
    c.hidden = 64;
    c.inter = 96;
    c.biases = true;
    c.shared_inter = 24;
    c.shared_gate = true;
    std::vector<int> const bits{1, 2, 3, 4, 8, 5};
    check_quantized<float, bf16_t>(experts::SwiGlu<bf16_t>{}, c, bits, options(32, QuantScheme::asymmetric));
    check_quantized<bf16_t, bf16_t>(experts::SwiGlu<bf16_t>{}, c, bits, options(32, QuantScheme::asymmetric));
  }
  SECTION("clamped SwiGLU bf16, X float, symmetric, G 64, T 200, zero/identity experts, on_input, drops") {
    Config c;
    c.tokens = 200;
    c.hidden = 128;
    c.inter = 64;
    c.slots = 4;
    c.table = experts::ExpertTable{5, 1, 1};
    c.empty = 0.1;
    c.invalid = 0.05;
    c.capacity = 120;
    c.position = experts::WeightPosition::on_input;
    c.biases = true;
    check_quantized<float, float>(experts::ClampedSwiglu<bf16_t>{1.702f, 1.5f}, c, {8, 4, 3, 2, 1},
                                  options(64, QuantScheme::symmetric));
  }
  SECTION("plain GELU MLP fp16, X fp16, asymmetric, G 128, H over two K-blocks, T 1 and 37") {
    Config c;
    c.hidden = 640;  // K-blocks 512 + 128 in the up projection
    c.inter = 128;
    c.table = experts::ExpertTable{4, 1, 0};
    c.shared_inter = 16;
    for (std::int64_t t : {1, 37}) {
      c.tokens = t;
      check_quantized<float, fp16_t>(experts::GeluMlp<fp16_t>{}, c, {4, 8, 2, 6},
                                     options(128, QuantScheme::asymmetric));
    }
  }
  SECTION("symmetric int4 everywhere, down over two K-blocks (I = 1024), G 128") {
    Config c;
    c.tokens = 37;
    c.hidden = 128;
    c.inter = 1024;
    c.table = experts::all_computed(3);
    check_quantized<float, bf16_t>(experts::SwiGlu<bf16_t>{}, c, {4, 4, 4}, options(128, QuantScheme::symmetric));
  }
  SECTION("only zero and identity experts (no codes)") {
    Config c;
    c.hidden = 64;
    c.inter = 32;
    c.table = experts::ExpertTable{0, 2, 2};
    check_quantized<float, float>(experts::SwiGlu<bf16_t>{}, c, {}, options(32, QuantScheme::asymmetric));
  }
  SECTION("T = 0") {
    Config c;
    c.tokens = 0;
    c.hidden = 64;
    c.inter = 32;
    QuantizedLayer<bf16_t, bf16_t> const q(c, {2, 3, 4, 8, 1, 4}, options(32, QuantScheme::asymmetric));
    std::vector<float> y;
    Workspace none;
    CHECK(cpu::run_experts(experts::Quantized<experts::SwiGlu<bf16_t>>{}, q.L.problem(), q.args<float>(y), none,
                           nullptr, nullptr) == Status::ok);
  }
}

// The executor's AVX2 dequantiser (b = 1, 2, 3, 4, 8) does dequantize_run's one fma per element:
// the same bits, for every width, both schemes, and runs that start inside a row.
TEST_CASE("cpu quantized experts: the executor's dequantiser gives experts::dequantize_run's bits",
          "[cpu][experts][quantized]") {
  std::int64_t const rows = 3, in = 256;
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> sym(-1.0f, 1.0f);
  std::vector<float> w(static_cast<std::size_t>(8 * rows * in));
  for (float& v : w) {
    v = sym(rng);
  }
  for (auto scheme : {experts::QuantScheme::asymmetric, experts::QuantScheme::symmetric}) {
    experts::QuantizedTensor q;
    REQUIRE(experts::quantize_experts(HostTensor<float const, 3>::row_major(w.data(), {8, rows, in}),
                                      std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8}, options(64, scheme), q) == Status::ok);
    auto const v = q.view();
    for (std::int64_t e = 0; e < 8; ++e) {
      for (std::int64_t r = 0; r < rows; ++r) {
        for (std::int64_t first : {0, 8, 72}) {
          std::int64_t const count = in - first - 8;
          std::vector<float> want(static_cast<std::size_t>(count)), got(want.size(), -1.0f);
          experts::dequantize_run(v.row(e, r), v.bits_of(e), first, count, v.row_scales(e, r), v.row_zeros(e, r),
                                  v.group, want.data());
          cpu::detail::dequantize_run_f32(v.row(e, r), v.bits_of(e), first, count, v.row_scales(e, r),
                                          v.row_zeros(e, r), v.group, got.data());
          INFO("bits " << v.bits_of(e) << " row " << r << " first " << first);
          REQUIRE(std::memcmp(want.data(), got.data(), want.size() * sizeof(float)) == 0);
        }
      }
    }
  }
}

// The decode path (one activation row: codes decoded into the FMAs' registers) gives the panel
// path's bits, over two K-blocks and column counts that leave 1 and 2 rows in the last block.
TEST_CASE("cpu quantized experts: single-row decode path == dequantised panel path, bit for bit",
          "[cpu][experts][quantized]") {
  std::int64_t const out = 7, in = 640;
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> sym(-1.0f, 1.0f);
  std::vector<float> w(static_cast<std::size_t>(8 * out * in)), x(static_cast<std::size_t>(in));
  for (float& v : w) {
    v = sym(rng);
  }
  for (float& v : x) {
    v = sym(rng);
  }
  experts::QuantizedTensor q;
  REQUIRE(experts::quantize_experts(HostTensor<float const, 3>::row_major(w.data(), {8, out, in}),
                                    std::vector<int>{1, 2, 3, 4, 5, 6, 7, 8},
                                    options(128, experts::QuantScheme::asymmetric), q) == Status::ok);
  auto const v = q.view();
  for (std::int64_t e = 0; e < 8; ++e) {
    for (std::int64_t columns : {out, out - 1}) {
      auto const row = [&](std::int64_t j) {
        return cpu::detail::CodeRow{v.row(e, j), v.row_scales(e, j), v.row_zeros(e, j)};
      };
      auto const dequant = [&](std::int64_t j, std::int64_t k0, std::int64_t kn, float* o) {
        cpu::detail::dequantize_run_f32(v.row(e, j), v.bits_of(e), k0, kn, v.row_scales(e, j), v.row_zeros(e, j),
                                        v.group, o);
      };
      std::vector<float> panel(static_cast<std::size_t>(out), -1.0f), fused(panel);
      cpu::detail::gemm_nt_dequantized(1, columns, in, x.data(), in, dequant, panel.data(), out);
      bool const has = cpu::detail::gemv_dequantized(v.bits_of(e), columns, in, x.data(), v.group, row, fused.data());
      INFO("bits " << v.bits_of(e) << " columns " << columns);
      CHECK(has == (MOEKIT_CPU_GEMM_AVX2 && v.bits_of(e) != 5 && v.bits_of(e) != 6 && v.bits_of(e) != 7));
      if (has) {
        CHECK(std::memcmp(panel.data(), fused.data(), panel.size() * sizeof(float)) == 0);
      }
    }
  }
}

TEST_CASE("cpu quantized experts: bad input returns a Status with a message and leaves y untouched",
          "[cpu][experts][quantized]") {
  using Policy = experts::Quantized<experts::SwiGlu<bf16_t>>;
  Config c;
  c.hidden = 64;
  c.inter = 96;
  QuantizedLayer<bf16_t, bf16_t> q(c, {2, 3, 4, 8, 1, 4}, options(32, experts::QuantScheme::asymmetric));
  Policy const policy;
  auto const p = q.L.problem();
  std::vector<float> y(static_cast<std::size_t>(c.tokens * c.hidden), 3.0f);
  auto buffer = WorkspaceBuffer::make<Policy, bf16_t, float>(policy, p);
  auto attempt = [&](auto const& args) {
    Workspace ws(buffer.base, buffer.bytes);
    clear_error_message();
    Status const s = cpu::run_experts(policy, p, args, ws, nullptr, nullptr);
    CHECK(std::all_of(y.begin(), y.end(), [](float v) { return v == 3.0f; }));
    return s;
  };
  SECTION("down projection with the up projection's shape") {
    auto a = q.args<float>(y);
    a.experts.down = q.up.view();
    CHECK(attempt(a) == Status::invalid_argument);
    CHECK(std::string(last_error_message()).find("down") != std::string::npos);
  }
  SECTION("bits that do not match the offsets (expert 0 says 8 bits, its codes are 2-bit)") {
    q.up.bits[0] = 8;
    CHECK(attempt(q.args<float>(y)) == Status::invalid_argument);
    CHECK(std::string(last_error_message()).find("up") != std::string::npos);
  }
  SECTION("a bit width outside [1, 8]") {
    q.gate.bits[2] = 9;
    CHECK(attempt(q.args<float>(y)) == Status::invalid_argument);
    CHECK(std::string(last_error_message()).find("9 bits") != std::string::npos);
  }
  SECTION("a group size the format does not have") {
    auto a = q.args<float>(y);
    a.experts.up.group = 16;
    CHECK(attempt(a) == Status::invalid_argument);
  }
  SECTION("workspace too small") {
    Workspace ws(buffer.base, buffer.bytes - 1);
    CHECK(cpu::run_experts(policy, p, q.args<float>(y), ws, nullptr, nullptr) == Status::workspace_too_small);
    CHECK(std::all_of(y.begin(), y.end(), [](float v) { return v == 3.0f; }));
  }
}

// MoeLayer<TopK<8>, None, Quantized<SwiGlu<bf16_t>>> on the CPU against the emulated device, same
// inputs. The device rounds the dequantised weights to bf16 (tensor-core operands) and h to bf16;
// the CPU keeps both in fp32. Tolerance per element, by the triangle inequality through the exact
// result on the dequantised fp32 weights: Σ_slots w·(δo_cpu + δo_dev) + |w_cpu − w_dev|·|o| +
// 2γ(K + 2)·Σ|terms| + 2u|y|, with δo_cpu experts_case's forward bound and δo_dev the same bound
// with every gate/up weight relatively perturbed by 2^-9 (its x-relative term), plus 2·2^-9·Σ|W_d h|
// for the rounded down weights and h, times 1.01 for the second-order products. The routing
// weights are the runs' own (the gate projections may differ in the last bits); the ids must agree.
TEST_CASE("cpu quantized experts: MoeLayer on the CPU agrees with the emulated device", "[cpu][experts][quantized]") {
  using Base = experts::SwiGlu<bf16_t>;
  using Policy = experts::Quantized<Base>;
  using Router = routing::TopK<8>;
  using Layer = MoeLayer<Router, balancing::None, Policy>;
  Config c;
  c.tokens = 37;
  c.hidden = 64;
  c.inter = 96;
  c.table = experts::all_computed(8);
  c.slots = 2;
  c.shared_inter = 32;  // dense, in bf16
  QuantizedLayer<bf16_t, bf16_t> const q(c, {2, 3, 4, 8, 4, 2, 8, 3}, options(32, experts::QuantScheme::asymmetric));
  Router const router = routing::mixtral_router(8, 2);
  std::int64_t const T = c.tokens, H = c.hidden, E = 8, K = 2;
  std::mt19937 rng(77);
  std::uniform_real_distribution<float> sym(-1.0f, 1.0f);
  std::vector<bf16_t> gate_weight(static_cast<std::size_t>(E * H));
  for (bf16_t& v : gate_weight) {
    v = bf16_t(sym(rng) * 2.0f / std::sqrt(float(H)));  // logits O(1) apart: no near ties
  }
  Layer::Problem p;
  p.tokens = T;
  p.hidden = H;
  p.intermediate = c.inter;
  p.table = c.table;
  p.shared_intermediate = c.shared_inter;

  struct Out {
    std::vector<float> y, weights, logits;
    std::vector<int> ids;
  };
  auto const run = [&](bool device) {
    Out o;
    o.y.assign(static_cast<std::size_t>(T * H), -7.0f);
    o.logits.assign(static_cast<std::size_t>(T * E), 0.0f);
    o.weights.assign(static_cast<std::size_t>(T * K), 0.0f);
    o.ids.assign(static_cast<std::size_t>(T * K), -1);
    std::vector<float> scratch(o.y.size());
    auto const h = q.args<float>(scratch);
    REQUIRE(Layer::can_implement<bf16_t, float>(router, {}, Policy{}, p, device) == Status::ok);
    std::vector<std::byte> buffer(Layer::workspace_size<bf16_t, float>(router, p, device) + 256);
    void* base = buffer.data();
    std::size_t space = buffer.size();
    base = std::align(256, 1, base, space);
    Workspace w(base, space);
    Diagnostics d{};
    auto const fill = [&](auto& a, auto space_tag) {
      constexpr MemorySpace S = decltype(space_tag)::value;
      a.x = TensorView<bf16_t const, 2, S>::row_major(q.L.x.data(), {T, H});
      a.gate_weight = TensorView<bf16_t const, 2, S>::row_major(gate_weight.data(), {E, H});
      a.shared.weights.gate = {h.shared.weights.gate.data, h.shared.weights.gate.extents,
                               h.shared.weights.gate.strides};
      a.shared.weights.up = {h.shared.weights.up.data, h.shared.weights.up.extents, h.shared.weights.up.strides};
      a.shared.weights.down = {h.shared.weights.down.data, h.shared.weights.down.extents,
                               h.shared.weights.down.strides};
      a.y = TensorView<float, 2, S>::row_major(o.y.data(), {T, H});
      a.logits = TensorView<float, 2, S>::row_major(o.logits.data(), {T, E});
      a.ids = TensorView<int, 2, S>::row_major(o.ids.data(), {T, K});
      a.weights = TensorView<float, 2, S>::row_major(o.weights.data(), {T, K});
      a.diagnostics = &d;
    };
    Status s = Status::ok;
    if (device) {
      moekit::emu::LaunchOptions lo;
      lo.schedule_seed = 5;
      lo.max_resident_blocks = 2;
      moekit::emu::ScopedLaunchOptions const guard(lo);
      Layer::Arguments<bf16_t, float, MemorySpace::device> a;
      fill(a, std::integral_constant<MemorySpace, MemorySpace::device>{});
      auto const on_device = [](experts::QuantizedWeights<MemorySpace::host> const& v) {
        // (the emulator's device memory is host memory)
        return experts::QuantizedWeights<MemorySpace::device>{v.bits,  v.offsets, v.data, v.scales, v.zeros,
                                                              v.bytes, v.experts, v.out,  v.in,     v.group};
      };
      a.experts.gate = on_device(h.experts.gate);
      a.experts.up = on_device(h.experts.up);
      a.experts.down = on_device(h.experts.down);
      auto const layout = [](experts::QuantizedTensor const& t) {
        return experts::QuantizedLayout{t.bits.data(), t.offsets.data()};
      };
      a.quantized_layout = {layout(q.gate), layout(q.up), layout(q.down)};
      s = Layer::run(router, {}, Policy{}, p, a, w, nullptr);
    } else {
      Layer::Arguments<bf16_t, float, MemorySpace::host> a;
      fill(a, std::integral_constant<MemorySpace, MemorySpace::host>{});
      a.experts = h.experts;
      cpu::ThreadPool pool(2);
      s = Layer::run(router, {}, Policy{}, p, a, w, pool);
    }
    INFO((device ? "device: " : "cpu: ") << last_error_message());
    REQUIRE(s == Status::ok);
    return o;
  };
  Out const cpu_out = run(false);
  Out const dev_out = run(true);
  REQUIRE(cpu_out.ids == dev_out.ids);

  // The bound, from double forwards on the dequantised fp32 weights (q.L's).
  std::vector<float> scratch(static_cast<std::size_t>(T * H));
  auto const dense = q.L.template args<float>(scratch);
  std::vector<double> xt(static_cast<std::size_t>(H)), o, mag, err, o_dev, mag_dev, err_dev;
  std::size_t bad = 0;
  double worst = 0.0;
  for (std::int64_t t = 0; t < T; ++t) {
    for (std::int64_t k = 0; k < H; ++k) {
      xt[static_cast<std::size_t>(k)] = q.L.x[static_cast<std::size_t>(t * H + k)].to_double();
    }
    std::vector<double> bound(static_cast<std::size_t>(H), 0.0), terms(bound.size(), 0.0);
    auto const add = [&](experts::MlpWeights<float, MemorySpace::host> const& mw, std::int64_t e, std::int64_t I,
                         double w, double dw) {
      forward_bound(Base{}, mw, e, H, I, xt.data(), 0.0, o, mag, err);
      forward_bound(Base{}, mw, e, H, I, xt.data(), 0x1p-9, o_dev, mag_dev, err_dev);
      for (std::size_t n = 0; n < bound.size(); ++n) {
        double const dev = 1.01 * (err_dev[n] + 2 * 0x1p-9 * mag[n]);
        bound[n] += w * (err[n] + dev) + dw * std::abs(o[n]);
        terms[n] += w * mag[n];
      }
    };
    for (std::int64_t j = 0; j < K; ++j) {
      auto const a = static_cast<std::size_t>(t * K + j);
      double const w = std::max(double(cpu_out.weights[a]), double(dev_out.weights[a]));
      add(dense.experts, cpu_out.ids[a], c.inter, w, std::abs(double(cpu_out.weights[a]) - dev_out.weights[a]));
    }
    add(dense.shared.weights, 0, c.shared_inter, 1.0, 0.0);
    for (std::int64_t n = 0; n < H; ++n) {
      auto const i = static_cast<std::size_t>(t * H + n);
      double const diff = std::abs(double(cpu_out.y[i]) - double(dev_out.y[i]));
      double const b = bound[static_cast<std::size_t>(n)] + 2 * gamma(K + 2) * terms[static_cast<std::size_t>(n)] +
                       2 * unit * std::abs(double(cpu_out.y[i]));
      worst = std::max(worst, diff / b);
      if (!(diff <= b) && bad++ < 3) {
        UNSCOPED_INFO("token " << t << " column " << n << ": cpu " << cpu_out.y[i] << ", device " << dev_out.y[i]
                               << ", bound " << b);
      }
    }
  }
  INFO("largest |cpu - device| / bound: " << worst);
  CHECK(bad == 0);
  CHECK(worst > 0.0);  // the backends do differ (bf16 operands on the device): the bound is exercised
}
