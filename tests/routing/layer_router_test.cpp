// Dr.LLM layer router (ALGORITHMS.md §4.3): the focal-loss worked example (α, p, L, ∂L/∂z,
// decisions), the window rules (n = 10, 20, 5), argmax ties and the router_penalty blend, host
// path vs independent reference vs the emulated device kernel on random inputs (d not a
// multiple of 32, d above the 1024-feature chunk, bf16 hidden states), determinism over
// schedule seeds and grid sizes, the fp32 logits against the formula in double, gradients
// against central finite differences, and every bad input.
//
// Tolerances (u = 2^-24). Logits z and decisions: exact on every path (the same fp32 operations
// in the same order). Host path vs emulated device: every output bit for bit. Against the
// double reference, computed from the same fp32 z (so only the softmax/loss arithmetic differs):
//  - p_c = e_c / Σe: z_c − m rounds (u|z_c − m| through exp), each exp 1 ulp, two additions, a
//    division, the reference's rounding: u(6.5 + |z_c − m| + max_c' |z_c' − m|) p_c.
//  - the focal item −α (1−p_y)^γ log p_y and its gradient: focal_bound() below adds up, term by
//    term, the rounding of every fp32 operation the router performs (named there), relative to
//    the magnitudes the reference computes; the mean adds a chain of at most 256 + ceil(B/256)
//    additions (u of the running sum each) and the division.
// The fp32 z against the formula evaluated in double (GELU through std::tanh): the classic
// recursive-summation bounds, γ_m Σ|terms| for each dot product of m additions, carried through
// GELU (|GELU'| <= 1.13, its own fp32 steps within 8u of |x|) and the window mean: z_bound().

#include "moekit/routing/layer_router.hpp"

#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "depth_test_support.hpp"
#include <catch2/catch.hpp>

#include "moekit/core/dtypes.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/host/reference.hpp"

using namespace moekit;
using depth_test::nan_value;
using depth_test::u32;

namespace {

enum class Path { host, reference, device };
char const* name(Path p) { return p == Path::host ? "host" : p == Path::reference ? "reference" : "device"; }

struct Weights {
  std::int64_t d = 0;
  std::vector<float> w1, b1 = std::vector<float>(128), w2 = std::vector<float>(384), b2 = std::vector<float>(3);
  explicit Weights(std::int64_t dim) : d(dim), w1(static_cast<std::size_t>(128 * dim)) {}
  routing::LayerRouter router() const {
    return {.hidden_size = d, .w1 = w1.data(), .b1 = b1.data(), .w2 = w2.data(), .b2 = b2.data()};
  }
};

// z_c = GELU(m_c) − GELU(−m_c) = m_c (x σ(a) + x σ(−a) = x; in fp32 within a few ulp): the
// logits are (nearly) the pooled hidden state, d = 3, so a test can choose z through h.
Weights pass_through() {
  Weights w(3);
  for (int c = 0; c < 3; ++c) {
    w.w1[static_cast<std::size_t>(c * 3 + c)] = 1.f;
    w.w1[static_cast<std::size_t>((3 + c) * 3 + c)] = -1.f;
    w.w2[static_cast<std::size_t>(c * 128 + c)] = 1.f;
    w.w2[static_cast<std::size_t>(c * 128 + 3 + c)] = -1.f;
  }
  return w;
}

Weights random_weights(std::int64_t d, std::uint32_t seed) {
  Weights w(d);
  std::mt19937 rng(seed);
  float const scale = std::sqrt(6.f / float(128 + d));  // Xavier-uniform, as the reference initialises
  std::uniform_real_distribution<float> xavier(-scale, scale), small(-0.5f, 0.5f);
  for (float& v : w.w1) {
    v = xavier(rng);
  }
  for (float& v : w.b1) {
    v = small(rng);
  }
  float const scale2 = std::sqrt(6.f / float(128 + 3));
  std::uniform_real_distribution<float> xavier2(-scale2, scale2);
  for (float& v : w.w2) {
    v = xavier2(rng) * 4.f;
  }
  for (float& v : w.b2) {
    v = small(rng);
  }
  return w;
}

template <class T = float>
struct Input {
  std::int64_t batch = 0, length = 0, d = 0;
  std::vector<T> h;
  std::vector<std::int8_t> labels;
  Input(std::int64_t b, std::int64_t n, std::int64_t dim, std::vector<T> hidden = {}, std::vector<std::int8_t> y = {})
      : batch(b), length(n), d(dim), h(std::move(hidden)), labels(std::move(y)) {}
};

struct Output {
  Status status = Status::internal_error;
  std::vector<std::int8_t> decisions;
  std::vector<float> logits, probs, grad, grad_window, loss;
  Diagnostics diagnostics{};
};

template <MemorySpace Space, class T>
routing::LayerRouterBuffers<Space, T> buffers(Input<T> const& in, Output& out) {
  auto const b3 = static_cast<std::size_t>(3 * in.batch);
  out.decisions.assign(static_cast<std::size_t>(in.batch), -7);
  out.logits.assign(b3, -7.f);
  out.probs.assign(b3, -7.f);
  out.grad.assign(b3, -7.f);
  out.grad_window.assign(b3, -7.f);
  out.loss.assign(1, -7.f);
  routing::LayerRouterBuffers<Space, T> b;
  b.hidden = TensorView<T const, 3, Space>::row_major(in.h.data(), {in.batch, in.length, in.d});
  b.decisions = TensorView<std::int8_t, 1, Space>::row_major(out.decisions.data(), {in.batch});
  b.logits = TensorView<float, 2, Space>::row_major(out.logits.data(), {in.batch, 3});
  b.probs = TensorView<float, 2, Space>::row_major(out.probs.data(), {in.batch, 3});
  if (!in.labels.empty()) {
    b.labels = TensorView<std::int8_t const, 1, Space>::row_major(in.labels.data(), {in.batch});
    b.grad_logits = TensorView<float, 2, Space>::row_major(out.grad.data(), {in.batch, 3});
    b.grad_window_logits = TensorView<float, 2, Space>::row_major(out.grad_window.data(), {in.batch, 3});
    b.loss = TensorView<float, 1, Space>::row_major(out.loss.data(), {1});
  }
  return b;
}

template <class T>
Output run(routing::LayerRouter const& r, Input<T> const& in, Path path, std::uint64_t seed = 0,
           unsigned max_blocks = 0) {
  Output out;
  if (path == Path::device) {
    auto const b = buffers<MemorySpace::device>(in, out);
    depth_test::AlignedWorkspace ws(routing::workspace_size(r, in.batch));
    out.status = depth_test::with_schedule(
        seed, [&] { return routing::route(r, b, ws.data, ws.bytes, &out.diagnostics, nullptr, max_blocks); });
  } else {
    auto const b = buffers<MemorySpace::host>(in, out);
    out.status = path == Path::host ? routing::route(r, b) : host::reference_layer_router(r, b);
  }
  return out;
}

void require_identical(Output const& a, Output const& b) {
  REQUIRE(a.status == b.status);
  REQUIRE(a.decisions == b.decisions);
  depth_test::require_same_bits(a.logits, b.logits, "z");
  depth_test::require_same_bits(a.probs, b.probs, "p");
  depth_test::require_same_bits(a.grad, b.grad, "dL/dz");
  depth_test::require_same_bits(a.grad_window, b.grad_window, "dL/dz_w");
  depth_test::require_same_bits(a.loss, b.loss, "loss");
}

// Error bound of the router's fp32 focal item and gradient at fp32 logits z (see evaluate()).
struct FocalBound {
  double item = 0.0, item_abs = 0.0;
  std::array<double, 3> grad_abs{};
};
FocalBound focal_bound(float const* zf, int y, double alpha, double gamma, double divisor) {
  double const u = u32;
  double const z[3] = {zf[0], zf[1], zf[2]};
  double const m = std::max({z[0], z[1], z[2]});
  double e[3], s = 0.0;
  for (int c = 0; c < 3; ++c) {
    e[c] = std::exp(z[c] - m);
    s += e[c];
  }
  double q[3];
  for (int c = 0; c < 3; ++c) {
    q[c] = e[c] / s;
  }
  double const lp = (z[y] - m) - std::log(s);
  double const rest = 1.0 - q[y];
  FocalBound b;
  if (rest == 0.0 || q[y] == 1.0) {
    return b;  // p_y = 1 in fp32: item and gradient are exactly 0 on every path
  }
  double const log_rest = std::log(rest);
  // e_c = exp(z_c − m): the difference rounds (u|z_c − m|, amplified by exp into a relative
  // error) and exp adds 1 ulp; Σe adds two roundings; 1 − p_y = (Σ_{c≠y} e_c)/Σe one addition
  // and the division.
  double e_rel_max = 0.0, rest_e_rel = 0.0;
  for (int c = 0; c < 3; ++c) {
    double const er = u * (1.0 + std::fabs(z[c] - m));
    e_rel_max = std::max(e_rel_max, er);
    rest_e_rel = c == y ? rest_e_rel : std::max(rest_e_rel, er);
  }
  double const s_rel = e_rel_max + 2.0 * u;
  double const rest_rel = rest_e_rel + u + s_rel + u;
  // log p_y = (z_y − m) − log Σe: the difference (u|z_y − m|), log Σe (Σe's error plus log's
  // ulp), the subtraction.
  double const lp_abs = u * std::fabs(z[y] - m) + s_rel + u * std::fabs(std::log(s)) + u * std::fabs(lp);
  double const lp_rel = lp_abs / std::fabs(lp);
  double const log_rest_abs = rest_rel + u * std::fabs(log_rest);
  auto power_rel = [&](double e_) { return std::fabs(e_) * log_rest_abs + u * std::fabs(e_ * log_rest) + u; };
  double const focal = std::pow(rest, gamma);
  double const focal_rel = gamma == 0.0 ? 0.0 : power_rel(gamma);
  b.item = alpha * focal * std::fabs(lp);
  b.item_abs = b.item * (0.5 * u + focal_rel + lp_rel + 2.0 * u);  // α's rounding, two products
  double coef = alpha, coef_abs = 0.5 * u * alpha;
  if (gamma != 0.0) {
    double const term1 = gamma * std::pow(rest, gamma - 1.0) * q[y] * std::fabs(lp);
    double const q_rel = u * (1.0 + std::fabs(z[y] - m)) + s_rel + u;
    double const term1_rel = power_rel(gamma - 1.0) + q_rel + lp_rel + 3.0 * u;
    coef = alpha * (term1 + focal);  // both terms have the same sign: no cancellation
    coef_abs = alpha * (term1 * term1_rel + focal * focal_rel + u * (term1 + focal)) + 0.5 * u * coef;
  }
  for (int c = 0; c < 3; ++c) {
    double const dq = (c == y ? 1.0 : 0.0) - q[c];
    double const dq_abs = (u * (1.0 + std::fabs(z[c] - m)) + s_rel + u) * q[c] + u * std::fabs(dq);
    b.grad_abs[static_cast<std::size_t>(c)] =
        (coef_abs * std::fabs(dq) + coef * dq_abs + 2.5 * u * coef * std::fabs(dq)) / divisor;
  }
  return b;
}

template <class T>
void require_matches_reference(Output const& ref, Output const& got, Input<T> const& in,
                               routing::LayerRouter const& r) {
  REQUIRE(got.status == ref.status);
  REQUIRE(got.decisions == ref.decisions);
  depth_test::require_same_bits(got.logits, ref.logits, "z");
  // p_c = e_c / Σe: e_c within u(1 + |z_c − m|) (the rounded difference through exp, and exp's
  // ulp), Σe that of its largest term plus two additions, the division, the reference's rounding.
  std::vector<double> tol_p;
  for (std::int64_t s = 0; s < in.batch; ++s) {
    float const* z = &ref.logits[static_cast<std::size_t>(3 * s)];
    double const m = std::max({double(z[0]), double(z[1]), double(z[2])});
    double worst = 0.0;
    for (int c = 0; c < 3; ++c) {
      worst = std::max(worst, std::fabs(double(z[c]) - m));
    }
    for (int c = 0; c < 3; ++c) {
      double const rel = u32 * (1.0 + std::fabs(double(z[c]) - m)) + u32 * (1.0 + worst) + 2.0 * u32 + 1.5 * u32;
      tol_p.push_back(rel * ref.probs[static_cast<std::size_t>(3 * s + c)]);
    }
  }
  depth_test::require_within(got.probs, ref.probs, tol_p, "p");
  if (in.labels.empty()) {
    return;
  }
  std::array<double, 3> const alpha = host::reference_focal_alpha(r.focal_beta, r.class_counts);
  double const divisor = r.loss_normaliser > 0 ? r.loss_normaliser : double(in.batch);
  std::int64_t const windows = std::min<std::int64_t>(r.num_windows, in.length);
  std::vector<double> tol_g, tol_gw;
  double items = 0.0, items_abs = 0.0;
  for (std::int64_t s = 0; s < in.batch; ++s) {
    int const y = in.labels[static_cast<std::size_t>(s)];
    FocalBound const fb = focal_bound(&ref.logits[static_cast<std::size_t>(3 * s)], y,
                                      alpha[static_cast<std::size_t>(y)], r.focal_gamma, divisor);
    items += fb.item;
    items_abs += fb.item_abs;
    for (int c = 0; c < 3; ++c) {
      double const g = fb.grad_abs[static_cast<std::size_t>(c)] +
                       0.5 * u32 * std::fabs(ref.grad[static_cast<std::size_t>(3 * s + c)]);
      tol_g.push_back(g);
      tol_gw.push_back(g / double(windows) + u32 * std::fabs(ref.grad_window[static_cast<std::size_t>(3 * s + c)]));
    }
  }
  depth_test::require_within(got.grad, ref.grad, tol_g, "dL/dz");
  depth_test::require_within(got.grad_window, ref.grad_window, tol_gw, "dL/dz_w");
  double const chain = 256.0 + std::ceil(double(in.batch) / 256.0);
  depth_test::require_within(
      got.loss, ref.loss, {(items_abs + chain * u32 * items) / divisor + 1.5 * u32 * std::fabs(ref.loss[0])}, "loss");
}

// z in double from the definition (GELU through std::tanh), and a bound on the fp32 z's error.
template <class T>
void require_z_close_to_formula(Output const& got, Input<T> const& in, Weights const& w, int num_windows) {
  double const u = u32;
  std::int64_t const W = std::min<std::int64_t>(num_windows, in.length), ws = in.length / W, d = in.d;
  for (std::int64_t s = 0; s < in.batch; ++s) {
    std::array<double, 3> z{}, bound{}, magnitude{};
    for (std::int64_t win = 0; win < W; ++win) {
      std::vector<double> m(static_cast<std::size_t>(d)), m_err(static_cast<std::size_t>(d));
      for (std::int64_t k = 0; k < d; ++k) {
        double sum = 0.0, abs_sum = 0.0;
        for (std::int64_t q = win * ws; q < (win + 1) * ws; ++q) {
          double const v =
              static_cast<double>(static_cast<float>(in.h[static_cast<std::size_t>((s * in.length + q) * d + k)]));
          sum += v;
          abs_sum += std::fabs(v);
        }
        m[static_cast<std::size_t>(k)] = sum / double(ws);
        m_err[static_cast<std::size_t>(k)] = (double(ws) + 1.0) * u * abs_sum / double(ws);  // ws additions, a division
      }
      std::array<double, 128> g{}, g_err{};
      for (int j = 0; j < 128; ++j) {
        double pre = w.b1[static_cast<std::size_t>(j)], err = 0.0, abs_terms = std::fabs(pre);
        for (std::int64_t k = 0; k < d; ++k) {
          double const wk = w.w1[static_cast<std::size_t>(j * d + k)];
          pre += wk * m[static_cast<std::size_t>(k)];
          abs_terms += std::fabs(wk * m[static_cast<std::size_t>(k)]);
          err += std::fabs(wk) * m_err[static_cast<std::size_t>(k)];
        }
        err += (std::ceil(double(d) / 32.0) + 6.0) * u * abs_terms;  // lane chains, the tree, + b1
        double const x = pre;
        g[static_cast<std::size_t>(j)] = 0.5 * x * (1.0 + std::tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
        g_err[static_cast<std::size_t>(j)] = 1.13 * err + 8.0 * u * (std::fabs(x) + 1e-30);
      }
      for (int c = 0; c < 3; ++c) {
        double zc = w.b2[static_cast<std::size_t>(c)], err = 0.0, abs_terms = std::fabs(zc);
        for (int j = 0; j < 128; ++j) {
          double const wj = w.w2[static_cast<std::size_t>(c * 128 + j)];
          zc += wj * g[static_cast<std::size_t>(j)];
          abs_terms += std::fabs(wj * g[static_cast<std::size_t>(j)]);
          err += std::fabs(wj) * g_err[static_cast<std::size_t>(j)];
        }
        z[static_cast<std::size_t>(c)] += zc;
        bound[static_cast<std::size_t>(c)] += err + 130.0 * u * abs_terms;  // 128 fmas, + b2, into the window sum
        magnitude[static_cast<std::size_t>(c)] += std::fabs(zc);
      }
    }
    for (int c = 0; c < 3; ++c) {
      double const exact = z[static_cast<std::size_t>(c)] / double(W);
      double const tol =
          (bound[static_cast<std::size_t>(c)] + (double(W) + 1.0) * u * magnitude[static_cast<std::size_t>(c)]) /
          double(W);
      INFO("sequence " << s << ", class " << c);
      CHECK(std::fabs(double(got.logits[static_cast<std::size_t>(3 * s + c)]) - exact) <= tol);
    }
  }
}

}  // namespace

TEST_CASE("Dr.LLM focal loss reproduces the worked example of ALGORITHMS.md 4.3", "[routing][layer_router][emu]") {
  Weights const w = pass_through();
  routing::LayerRouter const r = w.router();
  std::array<double, 3> const alpha = r.focal_alpha();
  std::array<double, 3> const expected_alpha{0.915992785, 0.904760328, 1.179246887};
  for (std::size_t c = 0; c < 3; ++c) {
    CHECK(std::fabs(alpha[c] - expected_alpha[c]) <= 1e-9);
    CHECK(std::fabs(host::reference_focal_alpha(0.999, {4399, 120956, 1457})[c] - expected_alpha[c]) <= 1e-9);
  }
  // One position per sequence (W = 1): z is the pooled hidden state through the pass-through MLP.
  Input<> const in{2, 1, 3, {0.2f, 1.5f, -0.4f, 0.3f, 0.1f, 2.0f}, {0, 2}};
  std::vector<float> const p{0.191640331f, 0.703185226f, 0.105174443f, 0.137123836f, 0.112267501f, 0.750608663f};
  std::vector<float> const grad{-0.431433046f, 0.375299951f, 0.056133095f, 0.013712223f, 0.011226619f, -0.024938842f};
  for (Path path : {Path::host, Path::reference, Path::device}) {
    CAPTURE(name(path));
    Output const o = run(r, in, path, 3);
    REQUIRE(o.status == Status::ok);
    CHECK(o.decisions == std::vector<std::int8_t>{1, 2});  // item 0 → execute, item 1 → repeat
    // z within a few ulp of the example (x σ(a) + x σ(−a)); the example's 9 digits: 1e-6 relative.
    std::vector<double> tol_z, tol_p, tol_g;
    for (float v : in.h) {
      tol_z.push_back(8.0 * u32 * std::fabs(v));
    }
    for (float v : p) {
      tol_p.push_back(1e-6 * v);
    }
    for (float v : grad) {
      tol_g.push_back(1e-6 * std::fabs(v) + 1e-8);
    }
    depth_test::require_within(o.logits, in.h, tol_z, "z");
    depth_test::require_within(o.probs, p, tol_p, "p");
    depth_test::require_within(o.loss, {0.504963899f}, {1e-6 * 0.504963899}, "L");
    depth_test::require_within(o.grad, grad, tol_g, "dL/dz");
    CHECK(o.grad_window == o.grad);  // W = 1
  }
  // The same numbers from the double loss on the example's exact z.
  std::vector<double> const z{0.2, 1.5, -0.4, 0.3, 0.1, 2.0};
  std::vector<std::int8_t> const y{0, 2};
  std::vector<double> g(6);
  CHECK(std::fabs(host::reference_focal_loss(z, y, alpha, 2.0, 2.0, g) - 0.504963899) <= 1e-9);
  for (std::size_t i = 0; i < 6; ++i) {
    CHECK(std::fabs(g[i] - double(grad[i])) <= 1e-8);
  }
}

TEST_CASE("Dr.LLM windows: W = min(8, n), ws = floor(n/W), the tail ignored", "[routing][layer_router][emu]") {
  struct Case {
    std::int64_t n, windows, size;
  };
  Weights const w = random_weights(16, 2);
  routing::LayerRouter const r = w.router();
  for (Case c : {Case{10, 8, 1}, Case{20, 8, 2}, Case{5, 5, 1}, Case{8, 8, 1}, Case{1, 1, 1}, Case{70, 8, 8}}) {
    CAPTURE(c.n);
    CHECK(routing::layer_router_detail::windows(8, c.n) == c.windows);
    CHECK(c.n / c.windows == c.size);
    std::mt19937 rng(static_cast<std::uint32_t>(c.n));
    std::normal_distribution<float> normal(0.f, 1.f);
    Input<> in{1, c.n, 16};
    for (std::int64_t i = 0; i < c.n * 16; ++i) {
      in.h.push_back(normal(rng));
    }
    Input<> tail = in;  // the ignored positions changed: nothing changes
    for (std::int64_t i = c.windows * c.size; i < c.n; ++i) {
      for (int k = 0; k < 16; ++k) {
        tail.h[static_cast<std::size_t>(i * 16 + k)] = 1e6f;
      }
    }
    Input<> used = in;  // the last used position changed: z changes
    used.h[static_cast<std::size_t>((c.windows * c.size - 1) * 16)] += 1.f;
    for (Path path : {Path::host, Path::reference, Path::device}) {
      CAPTURE(name(path));
      Output const a = run(r, in, path, 1), b = run(r, tail, path, 2), d = run(r, used, path, 3);
      depth_test::require_same_bits(a.logits, b.logits, "z with the tail changed");
      CHECK(a.logits != d.logits);
    }
  }
}

TEST_CASE("Dr.LLM decisions: ties to the lower class, router_penalty blend, static routing",
          "[routing][layer_router][emu]") {
  Weights const w = pass_through();
  // Equal pooled values give bit-equal logits (the same operations): ties.
  Input<> const ties{4, 1, 3, {1.f, 1.f, 0.f, 0.f, 1.f, 1.f, 2.f, 0.f, 2.f, 0.5f, 0.5f, 0.5f}};
  for (Path path : {Path::host, Path::reference, Path::device}) {
    CAPTURE(name(path));
    CHECK(run(w.router(), ties, path, 1).decisions == std::vector<std::int8_t>{0, 1, 0, 0});
  }
  std::mt19937 rng(4);
  std::normal_distribution<float> normal(0.f, 1.5f);
  Input<> in{40, 1, 3};
  for (int i = 0; i < 120; ++i) {
    in.h.push_back(normal(rng));
  }
  Output const plain = run(w.router(), in, Path::host);
  for (float penalty : {-1.f, -0.75f, -0.5f, -0.2f, 0.f, 0.3f, 0.5f, 0.6f, 0.75f, 1.f}) {
    CAPTURE(penalty);
    routing::LayerRouter r = w.router();
    r.use_router_penalty = true;
    r.router_penalty = penalty;
    Output const host = run(r, in, Path::host);
    REQUIRE(host.status == Status::ok);
    CHECK(run(r, in, Path::reference).decisions == host.decisions);
    require_identical(host, run(r, in, Path::device, 5, 3));
    for (std::size_t s = 0; s < 40; ++s) {
      if (penalty == -1.f) {
        CHECK(host.decisions[s] == 0);  // f = e_skip
      } else if (penalty == -0.5f) {
        CHECK(host.decisions[s] == plain.decisions[s]);  // f = softmax(z): the plain argmax
      } else if (penalty == 0.5f) {
        CHECK(host.decisions[s] == 1);  // the Qwen2 file's value: always execute
      } else if (penalty == 1.f) {
        CHECK(host.decisions[s] == 2);
      } else if (penalty > 0.5f) {
        CHECK(host.decisions[s] == (penalty > 0.75f ? 2 : 1));  // f = (1−t) e_x + t e_r, tie at t = 0.5 → execute
      }
    }
  }
  routing::LayerRouter r = w.router();
  r.static_routing = true;
  for (Path path : {Path::host, Path::reference, Path::device}) {
    CHECK(run(r, in, path, 2).decisions == std::vector<std::int8_t>(40, 1));
  }
}

TEST_CASE("Dr.LLM: host path, reference and device agree; z against the formula in double",
          "[routing][layer_router][emu]") {
  auto const d = GENERATE(std::int64_t{1}, std::int64_t{33}, std::int64_t{100}, std::int64_t{1030});
  auto const n = GENERATE(std::int64_t{1}, std::int64_t{5}, std::int64_t{10}, std::int64_t{20}, std::int64_t{37});
  std::int64_t const batch = 3;
  CAPTURE(d, n);
  Weights const w = random_weights(d, static_cast<std::uint32_t>(d * 100 + n));
  std::mt19937 rng(static_cast<std::uint32_t>(d + n));
  std::normal_distribution<float> normal(0.f, 1.f);
  Input<> in{batch, n, d};
  for (std::int64_t i = 0; i < batch * n * d; ++i) {
    in.h.push_back(normal(rng));
  }
  in.labels = {0, 1, 2};
  for (double gamma : {2.0, 0.0, 0.5}) {
    CAPTURE(gamma);
    routing::LayerRouter r = w.router();
    r.focal_gamma = gamma;
    r.loss_normaliser = gamma == 0.5 ? 12.0 : 0.0;
    Output const ref = run(r, in, Path::reference);
    REQUIRE(ref.status == Status::ok);
    Output const host = run(r, in, Path::host);
    require_matches_reference(ref, host, in, r);
    require_identical(host, run(r, in, Path::device, gamma == 2.0 ? 0 : 9, gamma == 0.0 ? 1 : 0));
  }
  require_z_close_to_formula(run(w.router(), in, Path::host), in, w, 8);
  // Without labels: decisions and logits only.
  Input<> unlabelled = in;
  unlabelled.labels.clear();
  Output const host = run(w.router(), unlabelled, Path::host);
  require_matches_reference(run(w.router(), unlabelled, Path::reference), host, unlabelled, w.router());
  require_identical(host, run(w.router(), unlabelled, Path::device, 4));
}

TEST_CASE("Dr.LLM: bf16 hidden states; determinism over schedules and grids", "[routing][layer_router][emu]") {
  std::int64_t const batch = 5, n = 23, d = 70;
  Weights const w = random_weights(d, 8);
  std::mt19937 rng(8);
  std::normal_distribution<float> normal(0.f, 1.f);
  Input<bf16_t> in{batch, n, d};
  for (std::int64_t i = 0; i < batch * n * d; ++i) {
    in.h.push_back(bf16_t(normal(rng)));
  }
  in.labels = {2, 0, 1, 1, 0};
  routing::LayerRouter const r = w.router();
  Output const ref = run(r, in, Path::reference);
  Output const host = run(r, in, Path::host);
  require_matches_reference(ref, host, in, r);
  Output const d0 = run(r, in, Path::device, 0, 0);
  require_identical(host, d0);
  for (auto [seed, grid] : {std::pair{3u, 1u}, std::pair{4u, 2u}, std::pair{5u, 4u}}) {
    require_identical(d0, run(r, in, Path::device, seed, grid));
  }
}

TEST_CASE("Dr.LLM device: NaN logits and bad labels are counted; the host refuses them",
          "[routing][layer_router][emu]") {
  Weights const w = random_weights(8, 3);
  routing::LayerRouter const r = w.router();
  Input<> in{3, 4, 8};
  for (int i = 0; i < 96; ++i) {
    in.h.push_back(float(i % 7) / 7.f);
  }
  in.h[40] = nan_value;  // sequence 1
  in.labels = {0, 1, 2};
  Output const d = run(r, in, Path::device, 2);
  REQUIRE(d.status == Status::ok);
  CHECK(d.diagnostics.nonfinite_rows == 1);
  CHECK(d.decisions[1] == 0);  // NaN-last argmax over three NaN: the lowest class
  CHECK(std::isnan(d.loss[0]));
  clear_error_message();
  Output const h = run(r, in, Path::host);
  CHECK(h.status == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()),
             Catch::Contains("non-finite router input nan at sequence 1, position 1, feature 0"));
  CHECK(h.decisions == std::vector<std::int8_t>(3, -7));

  in.h[40] = 0.5f;
  in.labels = {0, 3, 2};
  Output const bad = run(r, in, Path::device, 3);
  REQUIRE(bad.status == Status::ok);
  CHECK(bad.diagnostics.invalid_ids == 1);
  CHECK(bad.grad[3] == 0.f);  // that item adds nothing
  in.labels = {0, 1, 2};
  Output const good = run(r, in, Path::device, 3);
  CHECK(bad.grad[0] == good.grad[0]);
  in.labels = {0, 3, 2};
  for (Path path : {Path::host, Path::reference}) {
    clear_error_message();
    Output const o = run(r, in, path);
    CHECK(o.status == Status::invalid_argument);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains("layer label must be 0, 1 or 2"));
    CHECK(o.loss == std::vector<float>{-7.f});
  }
}

TEST_CASE("Dr.LLM focal gradient matches central finite differences, through the window mean",
          "[routing][layer_router]") {
  std::mt19937 rng(17);
  std::normal_distribution<double> normal(0.0, 1.5);
  std::array<double, 3> const alpha = host::reference_focal_alpha(0.999, {4399, 120956, 1457});
  std::vector<std::int8_t> const y{0, 1, 2, 2, 0};
  std::vector<double> z(15);
  for (double& v : z) {
    v = normal(rng);
  }
  for (double gamma : {2.0, 0.0, 0.5, 3.0}) {
    CAPTURE(gamma);
    std::vector<double> g(z.size());
    (void)host::reference_focal_loss(z, y, alpha, gamma, 7.0, g);
    std::vector<double> const fd = depth_test::central_differences(
        [&](std::vector<double> const& x) { return host::reference_focal_loss(x, y, alpha, gamma, 7.0); }, z);
    // Truncation h²|f'''|/6 and cancellation 1e-16/h: both below 1e-9 for these O(1) values.
    for (std::size_t i = 0; i < z.size(); ++i) {
      CHECK(std::fabs(g[i] - fd[i]) <= 1e-9);
    }
  }
  // ∂L/∂z_w = (∂L/∂z)/W: the loss of the mean of W = 4 per-window logits.
  std::vector<double> zw(12);
  for (double& v : zw) {
    v = normal(rng);
  }
  std::vector<std::int8_t> const one{1};
  auto loss_of_windows = [&](std::vector<double> const& x) {
    std::vector<double> mean(3, 0.0);
    for (int w = 0; w < 4; ++w) {
      for (int c = 0; c < 3; ++c) {
        mean[static_cast<std::size_t>(c)] += x[static_cast<std::size_t>(3 * w + c)] / 4.0;
      }
    }
    return host::reference_focal_loss(mean, one, alpha, 2.0, 1.0);
  };
  std::vector<double> mean(3, 0.0);
  for (int w = 0; w < 4; ++w) {
    for (int c = 0; c < 3; ++c) {
      mean[static_cast<std::size_t>(c)] += zw[static_cast<std::size_t>(3 * w + c)] / 4.0;
    }
  }
  std::vector<double> g(3);
  (void)host::reference_focal_loss(mean, one, alpha, 2.0, 1.0, g);
  std::vector<double> const fd = depth_test::central_differences(loss_of_windows, zw);
  for (std::size_t i = 0; i < zw.size(); ++i) {
    CHECK(std::fabs(g[i % 3] / 4.0 - fd[i]) <= 1e-9);
  }
}

TEST_CASE("Dr.LLM: bad parameters and buffers are refused with a message, outputs untouched",
          "[routing][layer_router][emu]") {
  Weights const w = random_weights(4, 1);
  Input<> const in{2, 3, 4, std::vector<float>(24, 0.25f), {1, 2}};
  auto expect = [&](routing::LayerRouter const& r, Input<> const& input, Status code, char const* fragment) {
    CAPTURE(fragment);
    for (Path path : {Path::host, Path::reference, Path::device}) {
      clear_error_message();
      Output const o = run(r, input, path);
      CHECK(o.status == code);
      CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
      CHECK(o.decisions == std::vector<std::int8_t>(static_cast<std::size_t>(input.batch), -7));
      CHECK(o.loss == std::vector<float>{-7.f});
    }
  };
  auto with = [&](auto mutate) {
    routing::LayerRouter r = w.router();
    mutate(r);
    return r;
  };
  expect(with([](auto& r) { r.num_windows = 0; }), in, Status::invalid_argument, "num_windows must be >= 1 (got 0)");
  expect(with([](auto& r) { r.hidden_size = 5; }), in, Status::invalid_argument,
         "LayerRouter: hidden: expected [2, 3, 5], got [2, 3, 4]");
  expect(with([](auto& r) { r.focal_beta = 1.0; }), in, Status::invalid_argument, "focal beta must be in (0,1)");
  expect(with([](auto& r) { r.class_counts[1] = 0.0; }), in, Status::invalid_argument,
         "class count n_1 must be finite and > 0");
  expect(with([](auto& r) { r.focal_gamma = -1.0; }), in, Status::invalid_argument, "focal gamma must be finite");
  expect(with([](auto& r) { r.use_router_penalty = true, r.router_penalty = 1.5f; }), in, Status::invalid_argument,
         "router_penalty must be in [-1, 1]");
  expect(with([](auto& r) { r.b2 = nullptr; }), in, Status::invalid_argument, "w1, b1, w2 and b2 must all be given");
  expect(with([](auto& r) { r.loss_normaliser = -1.0; }), in, Status::invalid_argument, "loss normaliser");
  expect(w.router(), Input<>{2, 0, 4, {}, {1, 2}}, Status::invalid_argument, "empty sequence");

  routing::LayerRouter const r = w.router();
  auto expect_buffers = [&](auto mutate, Status code, char const* fragment) {
    CAPTURE(fragment);
    Output out;
    auto hb = buffers<MemorySpace::host>(in, out);
    mutate(hb);
    clear_error_message();
    CHECK(routing::route(r, hb) == code);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    Output dout;
    auto db = buffers<MemorySpace::device>(in, dout);
    mutate(db);
    Diagnostics d{};
    depth_test::AlignedWorkspace ws(256);
    CHECK(routing::route(r, db, ws.data, ws.bytes, &d, nullptr) == code);
    CHECK(out.decisions == std::vector<std::int8_t>(2, -7));
    CHECK(dout.decisions == std::vector<std::int8_t>(2, -7));
  };
  expect_buffers([](auto& b) { b.labels = {}; }, Status::invalid_argument, "the loss and its gradients need labels");
  expect_buffers([](auto& b) { b.decisions = {}; }, Status::invalid_argument, "decisions: required but not given");
  expect_buffers([](auto& b) { b.probs.extents[1] = 2; }, Status::invalid_argument,
                 "probs: expected [2, 3], got [2, 2]");
  expect_buffers([](auto& b) { b.hidden.data = nullptr; }, Status::invalid_argument, "hidden: null pointer");

  // Non-finite router weights (host, checked).
  Weights bad = w;
  bad.w1[17] = nan_value;
  clear_error_message();
  Output const o = run(bad.router(), in, Path::host);
  CHECK(o.status == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("non-finite router weight w1 nan at index 17"));

  // Device-only.
  Output out;
  auto const db = buffers<MemorySpace::device>(in, out);
  depth_test::AlignedWorkspace ws(routing::workspace_size(r, 2));
  Diagnostics d{};
  clear_error_message();
  CHECK(routing::route(r, db, ws.data, ws.bytes, nullptr, nullptr) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("diagnostics must point to device memory"));
  CHECK(routing::route(r, db, ws.data, 4, &d, nullptr) == Status::workspace_too_small);
  CHECK(out.decisions == std::vector<std::int8_t>(2, -7));
}
