// Mixture-of-Depths (ALGORITHMS.md §4.5) and γ-MoD (§4.6): the worked examples, the host path
// vs the independent host reference vs the emulated device kernel on random and adversarial
// scores (ties, -inf, NaN on the device, S = 0, 1, S not a multiple of 256, S = 4096, C = 0,
// C = S), determinism over schedule seeds and grid sizes, the loss gradients against central
// finite differences, the block-output combine, select_mod_layers, and every bad input.
//
// Tolerances (u = 2^-24, the fp32 unit roundoff). Scores, selections, keep masks and counts are
// compared exactly (the same fp32 operations in the same order on every path). The host path
// and the emulated kernel run the same fp32 code in the same order, so every output is compared
// bit for bit between them. Against the double reference (rounded once, 0.5u):
//  - ∂L_aux/∂r = (σ(r) − y)/n: σ within 2u, the subtraction u (|σ − y| <= 1), the division u,
//    the reference's rounding 0.5u, all relative to quantities <= 1: |Δ| <= 5u/n.
//  - γ-MoD additionally rounds d = l1 − l0 (u|d|, σ' <= 1/4): |Δ| <= (5u + u|d|/4)/n; p the
//    same without /n.
//  - the mean losses: each term softplus(±v) [− v] is within u(4 + |v| + 2|t|) (exp 1 ulp,
//    1 + e and log within 3u absolute, the additions u relative); the sums run over chains of
//    at most 16 (a chunk) + 256 (the chunks) + ceil(B/256) + 256 (the batch lanes) additions,
//    each adding u of the running sum; then the division and the reference's rounding:
//    |Δ| <= (Σ_i u(4 + |v_i| + 2|t_i|) + m u Σ_i |t_i|)/n + 2u|L|, m the chain length.

#include "moekit/routing/depth.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "depth_test_support.hpp"
#include <catch2/catch.hpp>

#include "moekit/core/dtypes.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/host/reference.hpp"

using namespace moekit;
using depth_test::inf_value;
using depth_test::nan_value;
using depth_test::u32;

namespace {

enum class Path { host, reference, device };

char const* name(Path p) { return p == Path::host ? "host" : p == Path::reference ? "reference" : "device"; }

// ---------------------------------------------------------------------------------------------
// MoD runner: inputs, outputs pre-filled with values no router writes.

template <class T = float>
struct ModInput {
  std::int64_t batch = 0, length = 0, hidden = 0;
  std::vector<float> scores;  // [B, S] when !from_x
  std::vector<T> x, w;        // [B, S, H], [H] when from_x
  bool from_x = false;
  ModInput(std::int64_t b, std::int64_t s, std::int64_t h, std::vector<float> sc = {})
      : batch(b), length(s), hidden(h), scores(std::move(sc)) {}
};

struct ModOutput {
  Status status = Status::internal_error;
  std::vector<float> scores_out;
  std::vector<int> selected;
  std::vector<std::uint8_t> keep;
  std::vector<float> grad;
  std::vector<float> loss;
  Diagnostics diagnostics{};
};

template <MemorySpace Space, class T>
routing::MixtureOfDepthsBuffers<Space, T> mod_buffers(ModInput<T> const& in, ModOutput& out, std::int64_t capacity) {
  std::int64_t const B = in.batch, S = in.length;
  out.scores_out.assign(static_cast<std::size_t>(B * S), -7.f);
  out.selected.assign(static_cast<std::size_t>(B * capacity), -7);
  out.keep.assign(static_cast<std::size_t>(B * S), 7);
  out.grad.assign(static_cast<std::size_t>(B * S), -7.f);
  out.loss.assign(1, -7.f);
  routing::MixtureOfDepthsBuffers<Space, T> b;
  using F = TensorView<float, 2, Space>;
  if (in.from_x) {
    b.x = TensorView<T const, 3, Space>::row_major(in.x.data(), {B, S, in.hidden});
    b.weight = TensorView<T const, 1, Space>::row_major(in.w.data(), {in.hidden});
    b.scores_out = F::row_major(out.scores_out.data(), {B, S});
  } else {
    b.scores = TensorView<float const, 2, Space>::row_major(in.scores.data(), {B, S});
  }
  b.selected = TensorView<int, 2, Space>::row_major(out.selected.data(), {B, capacity});
  b.keep = TensorView<std::uint8_t, 2, Space>::row_major(out.keep.data(), {B, S});
  b.grad_scores = F::row_major(out.grad.data(), {B, S});
  b.aux_loss = TensorView<float, 1, Space>::row_major(out.loss.data(), {1});
  return b;
}

std::int64_t capacity_or_zero(routing::MixtureOfDepths const& r, std::int64_t length) {
  std::int64_t c = 0;
  return r.capacity_for(length, c) == Status::ok ? c : 0;
}

template <class T>
ModOutput run_mod(routing::MixtureOfDepths const& r, ModInput<T> const& in, Path path, std::uint64_t seed = 0,
                  unsigned max_blocks = 0) {
  ModOutput out;
  std::int64_t const capacity = capacity_or_zero(r, in.length);
  if (path == Path::device) {
    auto const b = mod_buffers<MemorySpace::device>(in, out, capacity);
    depth_test::AlignedWorkspace ws(routing::workspace_size(r, in.batch));
    out.status = depth_test::with_schedule(
        seed, [&] { return routing::route(r, b, ws.data, ws.bytes, &out.diagnostics, nullptr, max_blocks); });
  } else {
    auto const b = mod_buffers<MemorySpace::host>(in, out, capacity);
    out.status = path == Path::host ? routing::route(r, b) : host::reference_mod(r, b);
  }
  return out;
}

void require_identical(ModOutput const& a, ModOutput const& b) {
  REQUIRE(a.status == b.status);
  REQUIRE(a.selected == b.selected);
  REQUIRE(a.keep == b.keep);
  depth_test::require_same_bits(a.scores_out, b.scores_out, "scores_out");
  depth_test::require_same_bits(a.grad, b.grad, "grad");
  depth_test::require_same_bits(a.loss, b.loss, "loss");
}

// The loss bound of the header comment, from the scores v, targets y and the batch size.
double loss_tolerance(std::vector<double> const& v, std::vector<double> const& terms, std::int64_t batch, double loss) {
  double per_term = 0.0, magnitude = 0.0;
  for (std::size_t i = 0; i < v.size(); ++i) {
    if (std::isfinite(v[i])) {  // an unselected -inf score contributes exactly 0 on every path
      per_term += u32 * (4.0 + std::fabs(v[i]) + 2.0 * std::fabs(terms[i]));
      magnitude += std::fabs(terms[i]);
    }
  }
  double const chain = 16.0 + 256.0 + std::ceil(double(batch) / 256.0) + 256.0;
  double const n = v.empty() ? 1.0 : double(v.size());
  return (per_term + chain * u32 * magnitude) / n + 2.0 * u32 * std::fabs(loss);
}

// The reference's outputs against a router path: exact selections, the stated tolerances.
template <class T>
void require_matches_reference(ModOutput const& ref, ModOutput const& got, ModInput<T> const& in) {
  REQUIRE(got.status == ref.status);
  REQUIRE(got.selected == ref.selected);
  REQUIRE(got.keep == ref.keep);
  depth_test::require_same_bits(got.scores_out, ref.scores_out, "scores_out");
  auto const n = static_cast<double>(in.batch * in.length);
  std::vector<double> const tol(got.grad.size(), 5.0 * u32 / std::max(n, 1.0));
  depth_test::require_within(got.grad, ref.grad, tol, "grad");
  std::vector<double> v, terms;
  for (std::size_t i = 0; i < got.keep.size(); ++i) {
    double const r = in.from_x ? double(ref.scores_out[i]) : double(in.scores[i]);
    v.push_back(r);
    terms.push_back(std::max(r, 0.0) + std::log1p(std::exp(-std::fabs(r))) - (got.keep[i] ? r : 0.0));
  }
  depth_test::require_within(got.loss, ref.loss, {loss_tolerance(v, terms, in.batch, ref.loss[0])}, "aux loss");
}

enum class Pattern { random, ties, coarse, neg_inf, descending };

char const* name(Pattern p) {
  switch (p) {
    case Pattern::random: return "random";
    case Pattern::ties: return "ties";
    case Pattern::coarse: return "coarse";
    case Pattern::neg_inf: return "neg_inf";
    case Pattern::descending: return "descending";
  }
  return "?";
}

std::vector<float> make_scores(std::int64_t count, Pattern p, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 2.f);
  std::uniform_int_distribution<int> three(-1, 1), quarter(-8, 8);
  std::vector<float> v(static_cast<std::size_t>(count));
  for (std::int64_t i = 0; i < count; ++i) {
    float x = 0.f;
    switch (p) {
      case Pattern::random: x = normal(rng); break;
      case Pattern::ties: x = float(three(rng)); break;
      case Pattern::coarse: x = float(quarter(rng)) / 4.f; break;
      case Pattern::neg_inf: x = i % 3 == 1 ? -inf_value : normal(rng); break;
      case Pattern::descending: x = -float(i) / 8.f; break;
    }
    v[static_cast<std::size_t>(i)] = x;
  }
  return v;
}

std::vector<float> worked_r() { return {0.5f, -0.2f, 1.3f, 0.5f, 0.9f, -0.7f}; }

}  // namespace

// ---------------------------------------------------------------------------------------------
// Worked examples

TEST_CASE("MoD reproduces the worked example of ALGORITHMS.md 4.5", "[routing][depth][emu]") {
  routing::MixtureOfDepths const r{.capacity_fraction = 0.5};
  std::int64_t c = -1;
  REQUIRE(r.capacity_for(6, c) == Status::ok);
  CHECK(c == 3);
  ModInput<> in{1, 6, 0, worked_r()};
  // Descending stable order [2, 4, 0, 3, 1, 5]: 0 and 3 tie at 0.5 and 0 wins.
  std::vector<std::uint32_t> keys;
  for (float v : in.scores) {
    keys.push_back(routing::depth_detail::selection_key(v));
  }
  CHECK(routing::depth_detail::selection_order(keys) == std::vector<std::int64_t>{2, 4, 0, 3, 1, 5});
  std::vector<float> const grad{-0.062923445f, 0.075027667f, -0.035694169f, 0.103743222f, -0.048175083f, 0.055302038f};
  for (Path path : {Path::host, Path::reference, Path::device}) {
    for (unsigned grid : {0u, 1u}) {
      CAPTURE(name(path), grid);
      ModOutput const o = run_mod(r, in, path, 3, grid);
      REQUIRE(o.status == Status::ok);
      CHECK(o.selected == std::vector<int>{0, 2, 4});
      CHECK(o.keep == std::vector<std::uint8_t>{1, 0, 1, 0, 1, 0});
      // The example's 9 digits: within 1e-6 relative (fp32 carries 7).
      depth_test::require_within(o.loss, {0.505273536f}, {1e-6 * 0.505273536}, "L_aux");
      std::vector<double> tol;
      for (float g : grad) {
        tol.push_back(1e-6 * std::fabs(g));
      }
      depth_test::require_within(o.grad, grad, tol, "dL/dr");
    }
  }
  // Causal rule at sampling: r > 0 → tokens [0, 2, 3, 4] (not capacity-exact).
  std::vector<int> causal;
  for (int i = 0; i < 6; ++i) {
    if (routing::MixtureOfDepths::process_at_sampling(in.scores[static_cast<std::size_t>(i)])) {
      causal.push_back(i);
    }
  }
  CHECK(causal == std::vector<int>{0, 2, 3, 4});
}

TEST_CASE("MoD block output x + r·f for the selected tokens (ALGORITHMS.md 4.5 step 4)", "[routing][depth][emu]") {
  std::vector<float> const r = worked_r();
  std::vector<float> const x0{1, 0, 0, 1, 1, 1, 2, 0, 0, 2, 1, -1};
  std::vector<float> const f_all{0.1f, 0.2f, 0.3f, 0.3f, -0.2f, 0.4f, 0.5f, 0.5f, 0.0f, -0.3f, 0.2f, 0.2f};
  std::vector<int> const selected{0, 2, 4};
  std::vector<float> f;  // the block's increments for the compacted selected tokens
  for (int p : selected) {
    f.push_back(f_all[static_cast<std::size_t>(2 * p)]);
    f.push_back(f_all[static_cast<std::size_t>(2 * p + 1)]);
  }
  std::vector<float> const expected{1.05f, 0.10f, 0, 1, 0.74f, 1.52f, 2, 0, 0.00f, 1.73f, 1, -1};
  auto host_buffers = [&](std::vector<float>& x) {
    return routing::CombineBuffers<MemorySpace::host>{HostTensor<int const, 2>::row_major(selected.data(), {1, 3}),
                                                      HostTensor<float const, 2>::row_major(r.data(), {1, 6}),
                                                      HostTensor<float const, 3>::row_major(f.data(), {1, 3, 2}),
                                                      HostTensor<float, 3>::row_major(x.data(), {1, 6, 2})};
  };
  std::vector<float> host = x0, reference = x0, device = x0;
  REQUIRE(routing::combine_selected(host_buffers(host)) == Status::ok);
  REQUIRE(host::reference_combine(host_buffers(reference)) == Status::ok);
  Diagnostics d{};
  routing::CombineBuffers<MemorySpace::device> const db{DeviceTensor<int const, 2>::row_major(selected.data(), {1, 3}),
                                                        DeviceTensor<float const, 2>::row_major(r.data(), {1, 6}),
                                                        DeviceTensor<float const, 3>::row_major(f.data(), {1, 3, 2}),
                                                        DeviceTensor<float, 3>::row_major(device.data(), {1, 6, 2})};
  REQUIRE(depth_test::with_schedule(5, [&] { return routing::combine_selected(db, &d, nullptr); }) == Status::ok);
  CHECK(d.invalid_ids == 0);
  // fmaf rounds x + r·f once; the reference rounds the double result once: within 1 ulp of each
  // other, and both within 1e-6 of the example's 2-digit values (|x| <= 2).
  depth_test::require_same_bits(device, host, "device vs host");
  std::vector<double> const tol(expected.size(), 1e-6);
  depth_test::require_within(host, expected, tol, "out");
  depth_test::require_within(reference, expected, tol, "reference out");

  // Not ascending: the host refuses (x untouched), the device skips and counts.
  std::vector<int> const bad{2, 2, 4};
  std::vector<float> untouched = x0;
  routing::CombineBuffers<MemorySpace::host> hb = host_buffers(untouched);
  hb.selected = HostTensor<int const, 2>::row_major(bad.data(), {1, 3});
  clear_error_message();
  CHECK(routing::combine_selected(hb) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("selected[0, 1] = 2"));
  CHECK(untouched == x0);
  std::vector<float> device_bad = x0;
  routing::CombineBuffers<MemorySpace::device> dbad = db;
  dbad.selected = DeviceTensor<int const, 2>::row_major(bad.data(), {1, 3});
  dbad.x = DeviceTensor<float, 3>::row_major(device_bad.data(), {1, 6, 2});
  Diagnostics d2{};
  REQUIRE(depth_test::with_schedule(1, [&] { return routing::combine_selected(dbad, &d2, nullptr); }) == Status::ok);
  CHECK(d2.invalid_ids == 1);
  // Slot 0 (position 2 with f row 0) and slot 2 (position 4) are applied, slot 1 is not.
  CHECK(device_bad[2 * 2] == ::fmaf(r[2], f[0], x0[2 * 2]));
  CHECK(device_bad[2 * 4 + 1] == host[2 * 4 + 1]);
}

namespace {

struct GammaOutput {
  Status status = Status::internal_error;
  std::vector<float> logits_out, probs, grad, loss;
  std::vector<int> selected, counts;
  std::vector<std::uint8_t> keep;
  Diagnostics diagnostics{};
};

template <class T = float>
struct GammaInput {
  std::int64_t batch = 0, length = 0, hidden = 0;
  std::vector<float> logits;  // [B, S, 2]
  std::vector<T> x, w;        // [B, S, H], [2, H]
  std::vector<std::uint8_t> masked;
  bool from_x = false;
  GammaInput(std::int64_t b, std::int64_t s, std::int64_t h = 0, std::vector<float> l = {}, std::vector<T> x_ = {},
             std::vector<T> w_ = {}, std::vector<std::uint8_t> m = {})
      : batch(b), length(s), hidden(h), logits(std::move(l)), x(std::move(x_)), w(std::move(w_)), masked(std::move(m)) {
  }
};

template <MemorySpace Space, class T>
routing::GammaModBuffers<Space, T> gamma_buffers(GammaInput<T> const& in, GammaOutput& out) {
  std::int64_t const B = in.batch, S = in.length;
  auto const n = static_cast<std::size_t>(B * S);
  out.logits_out.assign(2 * n, -7.f);
  out.probs.assign(n, -7.f);
  out.grad.assign(2 * n, -7.f);
  out.loss.assign(1, -7.f);
  out.selected.assign(n, -7);
  out.counts.assign(static_cast<std::size_t>(B), -7);
  out.keep.assign(n, 7);
  routing::GammaModBuffers<Space, T> b;
  if (in.from_x) {
    b.x = TensorView<T const, 3, Space>::row_major(in.x.data(), {B, S, in.hidden});
    b.weight = TensorView<T const, 2, Space>::row_major(in.w.data(), {2, in.hidden});
    b.logits_out = TensorView<float, 3, Space>::row_major(out.logits_out.data(), {B, S, 2});
  } else {
    b.logits = TensorView<float const, 3, Space>::row_major(in.logits.data(), {B, S, 2});
  }
  if (!in.masked.empty()) {
    b.masked = TensorView<std::uint8_t const, 2, Space>::row_major(in.masked.data(), {B, S});
  }
  b.probs = TensorView<float, 2, Space>::row_major(out.probs.data(), {B, S});
  b.selected = TensorView<int, 2, Space>::row_major(out.selected.data(), {B, S});
  b.counts = TensorView<int, 1, Space>::row_major(out.counts.data(), {B});
  b.keep = TensorView<std::uint8_t, 2, Space>::row_major(out.keep.data(), {B, S});
  b.grad_logits = TensorView<float, 3, Space>::row_major(out.grad.data(), {B, S, 2});
  b.loss = TensorView<float, 1, Space>::row_major(out.loss.data(), {1});
  return b;
}

template <class T>
GammaOutput run_gamma(routing::GammaMod const& r, GammaInput<T> const& in, Path path, std::uint64_t seed = 0,
                      unsigned max_blocks = 0) {
  GammaOutput out;
  if (path == Path::device) {
    auto const b = gamma_buffers<MemorySpace::device>(in, out);
    depth_test::AlignedWorkspace ws(routing::workspace_size(r, in.batch));
    out.status = depth_test::with_schedule(
        seed, [&] { return routing::route(r, b, ws.data, ws.bytes, &out.diagnostics, nullptr, max_blocks); });
  } else {
    auto const b = gamma_buffers<MemorySpace::host>(in, out);
    out.status = path == Path::host ? routing::route(r, b) : host::reference_gamma_mod(r, b);
  }
  return out;
}

void require_identical(GammaOutput const& a, GammaOutput const& b) {
  REQUIRE(a.status == b.status);
  REQUIRE(a.selected == b.selected);
  REQUIRE(a.counts == b.counts);
  REQUIRE(a.keep == b.keep);
  depth_test::require_same_bits(a.logits_out, b.logits_out, "logits_out");
  depth_test::require_same_bits(a.probs, b.probs, "probs");
  depth_test::require_same_bits(a.grad, b.grad, "grad");
  depth_test::require_same_bits(a.loss, b.loss, "loss");
}

template <class T>
void require_matches_reference(GammaOutput const& ref, GammaOutput const& got, GammaInput<T> const& in) {
  REQUIRE(got.status == ref.status);
  REQUIRE(got.selected == ref.selected);
  REQUIRE(got.counts == ref.counts);
  REQUIRE(got.keep == ref.keep);
  depth_test::require_same_bits(got.logits_out, ref.logits_out, "logits_out");
  auto const n = std::max(1.0, double(in.batch * in.length));
  std::vector<double> tol_p, tol_g, v, terms;
  for (std::size_t i = 0; i < got.keep.size(); ++i) {
    std::vector<float> const& l = in.from_x ? ref.logits_out : in.logits;
    double const d = double(l[2 * i + 1]) - double(l[2 * i]);
    tol_p.push_back(u32 * (5.0 + std::fabs(d) / 4.0));
    tol_g.push_back(u32 * (5.0 + std::fabs(d) / 4.0) / n);
    tol_g.push_back(u32 * (5.0 + std::fabs(d) / 4.0) / n);
    double const z = got.keep[i] ? -d : d;
    v.push_back(d);
    terms.push_back(std::max(z, 0.0) + std::log1p(std::exp(-std::fabs(z))));
  }
  depth_test::require_within(got.probs, ref.probs, tol_p, "p");
  depth_test::require_within(got.grad, ref.grad, tol_g, "dCE/dl");
  depth_test::require_within(got.loss, ref.loss, {loss_tolerance(v, terms, in.batch, ref.loss[0])}, "CE");
}

GammaInput<> worked_gamma(bool mask_last_two) {
  GammaInput<> in{1, 6};
  for (float r : worked_r()) {
    in.logits.push_back(0.f);
    in.logits.push_back(r);
  }
  if (mask_last_two) {
    in.masked = {0, 0, 0, 0, 1, 1};
  }
  return in;
}

}  // namespace

TEST_CASE("γ-MoD reproduces the worked example of ALGORITHMS.md 4.6", "[routing][depth][emu]") {
  std::vector<float> const p{0.622459331f, 0.450166003f, 0.785834983f, 0.622459331f, 0.710949503f, 0.331812228f};
  auto within_6 = [](std::vector<float> const& got, std::vector<float> const& want, char const* what) {
    std::vector<double> tol;
    for (float w : want) {
      tol.push_back(1e-6 * std::fabs(w));  // the example's 9 digits, fp32's 7
    }
    depth_test::require_within(got, want, tol, what);
  };
  routing::GammaMod const r{.routing_ratio = 0.5};
  for (Path path : {Path::host, Path::reference, Path::device}) {
    CAPTURE(name(path));
    // No mask: k = 3, the MoD selection, CE = L_aux of 4.5.
    GammaOutput const a = run_gamma(r, worked_gamma(false), path, 2);
    REQUIRE(a.status == Status::ok);
    within_6(a.probs, p, "p");
    CHECK(a.selected == std::vector<int>{0, 2, 4, 6, 6, 6});
    CHECK(a.counts == std::vector<int>{3});
    within_6(a.loss, {0.505273536f}, "CE");
    // Tokens 4, 5 masked: n_routable = 4, n_skip = 2, k = 4.
    GammaOutput const b = run_gamma(r, worked_gamma(true), path, 2);
    REQUIRE(b.status == Status::ok);
    CHECK(b.selected == std::vector<int>{0, 2, 4, 5, 6, 6});
    CHECK(b.keep == std::vector<std::uint8_t>{1, 0, 1, 0, 1, 1});
    within_6(b.loss, {0.621940203f}, "CE masked");
    std::vector<float> const g1{-0.062923445f, 0.075027667f, -0.035694169f, 0.103743222f, -0.048175083f, -0.111364629f};
    std::vector<float> grad0, grad1, minus_g1;
    for (std::size_t i = 0; i < 6; ++i) {
      grad0.push_back(b.grad[2 * i]);
      grad1.push_back(b.grad[2 * i + 1]);
      minus_g1.push_back(-g1[i]);
    }
    within_6(grad1, g1, "dCE/dl1");
    within_6(grad0, minus_g1, "dCE/dl0");
  }
  // Inference: prefill (S > 1) processes p > 0.005: all six.
  routing::GammaMod const infer{.mode = routing::ModInference::threshold};
  for (Path path : {Path::host, Path::reference, Path::device}) {
    CAPTURE(name(path));
    GammaOutput const o = run_gamma(infer, worked_gamma(false), path, 4);
    REQUIRE(o.status == Status::ok);
    CHECK(o.keep == std::vector<std::uint8_t>(6, 1));
    CHECK(o.counts == std::vector<int>{6});
    // Decode: each token alone (S = 1) skips the layer iff p < 0.5: tokens 1 and 5.
    for (int i = 0; i < 6; ++i) {
      GammaInput<> one{1, 1, 0, {0.f, worked_r()[static_cast<std::size_t>(i)]}};
      GammaOutput const d = run_gamma(infer, one, path, 4);
      REQUIRE(d.status == Status::ok);
      CHECK(d.keep[0] == (i == 1 || i == 5 ? 0 : 1));
      CHECK(d.selected[0] == (i == 1 || i == 5 ? 1 : 0));  // padding S = 1 when skipped
    }
  }
  // p > 0.005 ⇔ r > −5.293304825: just above processes, just below is skipped.
  GammaInput<> edge{1, 2, 0, {0.f, -5.29f, 0.f, -5.30f}};
  for (Path path : {Path::host, Path::reference, Path::device}) {
    CHECK(run_gamma(infer, edge, path, 1).keep == std::vector<std::uint8_t>{1, 0});
  }
}

TEST_CASE("γ-MoD: masked tokens are never skipped, even with p = 0 or saturated p = 1", "[routing][depth][emu]") {
  // Unmasked p = σ(40) rounds to 1 in fp32; masked tokens have p = σ(-200) = 0. p + [masked]
  // would tie them; moekit keeps every masked token (k >= n_masked by construction).
  GammaInput<> in{1, 4, 0, {0.f, 40.f, 0.f, -200.f, 0.f, 40.f, 0.f, -200.f}, {}, {}, {0, 1, 0, 1}};
  routing::GammaMod const r{.routing_ratio = 1.0};  // skip every routable token: k = 2
  for (Path path : {Path::host, Path::reference, Path::device}) {
    CAPTURE(name(path));
    GammaOutput const o = run_gamma(r, in, path, 3);
    REQUIRE(o.status == Status::ok);
    CHECK(o.selected == std::vector<int>{1, 3, 4, 4});
  }
  // All masked (n_routable = 0): k = S, dense.
  GammaInput<> all = in;
  all.masked = {1, 1, 1, 1};
  CHECK(run_gamma(r, all, Path::device, 1).counts == std::vector<int>{4});
  CHECK(run_gamma(r, all, Path::host).counts == std::vector<int>{4});
}

TEST_CASE("select_mod_layers: lowest ARank, ties to the lower layer, ascending", "[routing][depth]") {
  std::vector<double> const arank{5.0, 2.0, 3.0, 2.0, 7.0, 3.0, 1.0, 9.0};
  std::vector<int> layers(4);
  REQUIRE(routing::select_mod_layers(arank, 4, layers) == Status::ok);
  CHECK(layers == std::vector<int>{1, 2, 3, 6});  // 1.0@6, 2.0@1, 2.0@3, then 3.0@2 beats 3.0@5
  std::vector<int> reference;
  REQUIRE(host::reference_select_mod_layers(arank, 4, reference) == Status::ok);
  CHECK(reference == layers);
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> level(0, 6);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<double> a(32);
    for (double& v : a) {
      v = level(rng) * 0.5;
    }
    int const m = trial % 33;
    std::vector<int> got(static_cast<std::size_t>(m)), want;
    REQUIRE(routing::select_mod_layers(a, m, got) == Status::ok);
    REQUIRE(host::reference_select_mod_layers(a, m, want) == Status::ok);
    REQUIRE(got == want);
  }
  clear_error_message();
  std::vector<int> wrong(9);
  CHECK(routing::select_mod_layers(arank, 9, wrong) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("m must be in [0, 8]"));
  std::vector<double> with_nan = arank;
  with_nan[3] = std::nan("");
  CHECK(routing::select_mod_layers(with_nan, 4, layers) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("layer 3"));
  CHECK(layers == std::vector<int>{1, 2, 3, 6});
}

// ---------------------------------------------------------------------------------------------
// Host path vs reference vs device

TEST_CASE("MoD: host path, reference and device agree on random and adversarial scores", "[routing][depth][emu]") {
  auto const length = GENERATE(std::int64_t{0}, std::int64_t{1}, std::int64_t{2}, std::int64_t{17}, std::int64_t{256},
                               std::int64_t{257}, std::int64_t{1000});
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::coarse, Pattern::neg_inf);
  auto const batch = GENERATE(std::int64_t{1}, std::int64_t{3});
  CAPTURE(length, name(pattern), batch);
  ModInput<> in{batch, length, 0, make_scores(batch * length, pattern, static_cast<std::uint32_t>(length * 7 + batch))};
  std::vector<routing::MixtureOfDepths> routers{{.capacity_fraction = 0.125}, {.capacity = 0}, {.capacity = length}};
  if (pattern == Pattern::neg_inf) {
    routers.push_back({.capacity = length * 2 / 3});  // -inf among the selected only when C is large
  }
  for (auto const& r : routers) {
    CAPTURE(r.capacity, r.capacity_fraction);
    ModOutput const ref = run_mod(r, in, Path::reference);
    REQUIRE(ref.status == Status::ok);
    ModOutput const host = run_mod(r, in, Path::host);
    require_matches_reference(ref, host, in);
    ModOutput const device = run_mod(r, in, Path::device, 0);
    require_identical(host, device);
    CHECK(device.diagnostics.nonfinite_rows == 0);
  }
}

TEST_CASE("MoD from x: r = w·x in lane order, exact on every path; bf16 inputs", "[routing][depth][emu]") {
  auto const hidden = GENERATE(1, 31, 33, 96, 200);
  auto const length = GENERATE(std::int64_t{5}, std::int64_t{40});
  CAPTURE(hidden, length);
  std::mt19937 rng(static_cast<std::uint32_t>(hidden * 100 + length));
  std::normal_distribution<float> normal(0.f, 1.f);
  ModInput<> in{2, length, hidden};
  in.from_x = true;
  for (std::int64_t i = 0; i < 2 * length * hidden; ++i) {
    in.x.push_back(normal(rng));
  }
  for (int k = 0; k < hidden; ++k) {
    in.w.push_back(normal(rng) / 4.f);
  }
  routing::MixtureOfDepths const r{.capacity_fraction = 0.25};
  ModOutput const ref = run_mod(r, in, Path::reference);
  REQUIRE(ref.status == Status::ok);
  ModOutput const host = run_mod(r, in, Path::host);
  require_matches_reference(ref, host, in);
  require_identical(host, run_mod(r, in, Path::device, 9, 1));
  // The lane-order fp32 sum against the exact dot product: within γ_m Σ|x w| with m = H/32 + 5
  // additions in the longest chain (32 lanes, a 5-level tree).
  for (std::int64_t s = 0; s < 2 * length; ++s) {
    double exact = 0.0, magnitude = 0.0;
    for (int k = 0; k < hidden; ++k) {
      double const t =
          double(in.x[static_cast<std::size_t>(s * hidden + k)]) * double(in.w[static_cast<std::size_t>(k)]);
      exact += t;
      magnitude += std::fabs(t);
    }
    double const m = std::ceil(hidden / 32.0) + 5.0;
    CHECK(std::fabs(double(ref.scores_out[static_cast<std::size_t>(s)]) - exact) <= 1.01 * m * u32 * magnitude);
  }
  // bf16 block inputs: the same lane order on the converted values.
  ModInput<bf16_t> b16{2, length, hidden};
  b16.from_x = true;
  for (float v : in.x) {
    b16.x.push_back(bf16_t(v));
  }
  for (float v : in.w) {
    b16.w.push_back(bf16_t(v));
  }
  ModOutput const ref16 = run_mod(r, b16, Path::reference);
  ModOutput const host16 = run_mod(r, b16, Path::host);
  require_matches_reference(ref16, host16, b16);
  require_identical(host16, run_mod(r, b16, Path::device, 2));
}

TEST_CASE("MoD device: S = 4096 (the bound), identical for every schedule and grid", "[routing][depth][emu]") {
  ModInput<> in{2, 4096, 0, make_scores(2 * 4096, Pattern::coarse, 77)};
  routing::MixtureOfDepths const r{.capacity_fraction = 0.125};
  ModOutput const host = run_mod(r, in, Path::host);
  REQUIRE(host.status == Status::ok);
  CHECK(host.selected.size() == 2 * 512);
  ModOutput const d0 = run_mod(r, in, Path::device, 0, 0);
  require_identical(host, d0);
  require_identical(d0, run_mod(r, in, Path::device, 7, 1));
  require_identical(d0, run_mod(r, in, Path::device, 11, 2));
  require_matches_reference(run_mod(r, in, Path::reference), host, in);
}

TEST_CASE("MoD device: NaN scores are counted, rank last, and change nothing else", "[routing][depth][emu]") {
  auto const capacity = GENERATE(std::int64_t{3}, std::int64_t{8}, std::int64_t{10});
  CAPTURE(capacity);
  ModInput<> in{2, 10, 0, make_scores(20, Pattern::random, 4)};
  in.scores[2] = nan_value;
  in.scores[5] = nan_value;
  in.scores[13] = nan_value;
  in.scores[14] = inf_value;  // +inf is counted too but ranks as a number
  routing::MixtureOfDepths const r{.capacity = capacity};
  ModOutput const device = run_mod(r, in, Path::device, 6);
  REQUIRE(device.status == Status::ok);
  CHECK(device.diagnostics.nonfinite_rows == 4);
  // The same selection as the host path with each NaN replaced by a number below every score
  // (NaN ranks after -inf, ties among NaN go to the lower position: so does -1e30 here).
  ModInput<> replaced = in;
  for (float& v : replaced.scores) {
    v = std::isnan(v) ? -1e30f : v;
  }
  replaced.scores[14] = 1e30f;
  ModOutput const host = run_mod(r, replaced, Path::host);
  REQUIRE(host.status == Status::ok);
  CHECK(device.selected == host.selected);
  CHECK(device.keep == host.keep);
  // NaN propagates into that token's gradient, as in PyTorch.
  CHECK(std::isnan(device.grad[2]));
  CHECK(std::isnan(device.loss[0]));
  // The host refuses in checked mode, naming sequence and position, and writes nothing.
  clear_error_message();
  ModOutput const refused = run_mod(r, in, Path::host);
  CHECK(refused.status == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()),
             Catch::Contains("non-finite routing score nan at sequence 0, position 2"));
  CHECK(refused.selected == std::vector<int>(static_cast<std::size_t>(2 * capacity), -7));
  CHECK(run_mod(r, in, Path::reference).status == Status::invalid_argument);
}

TEST_CASE("γ-MoD: host path, reference and device agree (top-k and threshold, masks)", "[routing][depth][emu]") {
  auto const length = GENERATE(std::int64_t{1}, std::int64_t{2}, std::int64_t{33}, std::int64_t{300});
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::coarse);
  auto const masks = GENERATE(0, 1, 2);  // none, a routable prefix then masked text, scattered
  auto const mode = GENERATE(routing::ModInference::topk, routing::ModInference::threshold);
  CAPTURE(length, name(pattern), masks, int(mode));
  std::int64_t const batch = 2;
  GammaInput<> in{batch, length};
  std::vector<float> const a = make_scores(2 * batch * length, pattern, static_cast<std::uint32_t>(length + masks));
  in.logits = a;
  if (masks != 0) {
    for (std::int64_t s = 0; s < batch; ++s) {
      for (std::int64_t i = 0; i < length; ++i) {
        bool const m = masks == 1 ? i >= (length * 3) / 4 + s : (i * 7 + s) % 5 == 0;
        in.masked.push_back(m ? 1 : 0);
      }
    }
  }
  for (double rho : {0.0, 0.5, 0.3, 1.0}) {
    CAPTURE(rho);
    routing::GammaMod const r{.routing_ratio = rho, .mode = mode};
    GammaOutput const ref = run_gamma(r, in, Path::reference);
    REQUIRE(ref.status == Status::ok);
    GammaOutput const host = run_gamma(r, in, Path::host);
    require_matches_reference(ref, host, in);
    GammaOutput const device = run_gamma(r, in, Path::device, rho == 0.5 ? 3 : 0, rho == 0.3 ? 1 : 0);
    require_identical(host, device);
    CHECK(device.diagnostics.nonfinite_rows == 0);
  }
}

TEST_CASE("γ-MoD from x = RMSNorm(h) with W_r [2, H]; determinism over seeds and grids", "[routing][depth][emu]") {
  std::int64_t const batch = 3, length = 70, hidden = 45;
  std::mt19937 rng(12);
  std::normal_distribution<float> normal(0.f, 1.f);
  GammaInput<> in{batch, length, hidden};
  in.from_x = true;
  for (std::int64_t i = 0; i < batch * length * hidden; ++i) {
    in.x.push_back(normal(rng));
  }
  for (std::int64_t i = 0; i < 2 * hidden; ++i) {
    in.w.push_back(normal(rng) / 5.f);
  }
  for (std::int64_t i = 0; i < batch * length; ++i) {
    in.masked.push_back(i % length >= 60 ? 1 : 0);
  }
  routing::GammaMod const r{.routing_ratio = 0.5};
  GammaOutput const ref = run_gamma(r, in, Path::reference);
  GammaOutput const host = run_gamma(r, in, Path::host);
  require_matches_reference(ref, host, in);
  GammaOutput const d0 = run_gamma(r, in, Path::device, 0, 0);
  require_identical(host, d0);
  for (auto [seed, grid] : {std::pair{5u, 1u}, std::pair{6u, 2u}, std::pair{7u, 3u}}) {
    require_identical(d0, run_gamma(r, in, Path::device, seed, grid));
  }
}

TEST_CASE("γ-MoD device: non-finite logit rows are counted; NaN p never selected while numbers remain",
          "[routing][depth][emu]") {
  GammaInput<> in{1, 8, 0, make_scores(16, Pattern::random, 8)};
  in.logits[2 * 1 + 1] = nan_value;  // token 1: p = NaN
  in.logits[2 * 4] = inf_value;      // token 4: l0 = +inf → p = 0, counted
  in.logits[2 * 6] = -inf_value;     // token 6: both -inf → p = NaN, counted
  in.logits[2 * 6 + 1] = -inf_value;
  routing::GammaMod const r{.routing_ratio = 0.5};
  GammaOutput const d = run_gamma(r, in, Path::device, 2);
  REQUIRE(d.status == Status::ok);
  CHECK(d.diagnostics.nonfinite_rows == 3);
  CHECK(d.counts == std::vector<int>{4});
  CHECK(d.keep[1] == 0);
  CHECK(d.keep[6] == 0);
  clear_error_message();
  GammaOutput const h = run_gamma(r, in, Path::host);
  CHECK(h.status == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()),
             Catch::Contains("non-finite router logit nan at sequence 0, position 1, logit 1"));
  CHECK(h.keep == std::vector<std::uint8_t>(8, 7));
  GammaInput<> both = worked_gamma(false);
  both.logits[0] = both.logits[1] = -inf_value;
  clear_error_message();
  CHECK(run_gamma(r, both, Path::host).status == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("both logits -inf at sequence 0, position 0"));
}

// ---------------------------------------------------------------------------------------------
// Gradients against central finite differences (fp64, step 1e-6)

TEST_CASE("MoD and γ-MoD loss gradients match central finite differences", "[routing][depth]") {
  std::mt19937 rng(21);
  std::normal_distribution<double> normal(0.0, 1.5);
  std::vector<double> r(12);
  for (double& v : r) {
    v = normal(rng);
  }
  std::vector<std::uint8_t> const y{1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1};
  std::vector<double> grad(r.size());
  (void)host::reference_mod_aux_loss(r, y, grad);
  std::vector<double> const fd = depth_test::central_differences(
      [&](std::vector<double> const& x) { return host::reference_mod_aux_loss(x, y); }, r);
  // Central differences: truncation h²|f'''|/6 < 1e-12 here, cancellation ~1e-16/h = 1e-10.
  for (std::size_t i = 0; i < r.size(); ++i) {
    CHECK(std::fabs(grad[i] - fd[i]) <= 1e-9);
  }
  // The worked example of 4.5 in double.
  std::vector<double> const wr{0.5, -0.2, 1.3, 0.5, 0.9, -0.7};
  std::vector<std::uint8_t> const wy{1, 0, 1, 0, 1, 0};
  std::vector<double> wg(6);
  CHECK(std::fabs(host::reference_mod_aux_loss(wr, wy, wg) - 0.505273536) <= 1e-9);
  CHECK(std::fabs(wg[3] - 0.103743222) <= 1e-9);

  std::vector<double> l(2 * y.size());
  for (double& v : l) {
    v = normal(rng);
  }
  std::vector<double> lg(l.size());
  (void)host::reference_gamma_mod_ce(l, y, lg);
  std::vector<double> const lfd = depth_test::central_differences(
      [&](std::vector<double> const& x) { return host::reference_gamma_mod_ce(x, y); }, l);
  for (std::size_t i = 0; i < l.size(); ++i) {
    CHECK(std::fabs(lg[i] - lfd[i]) <= 1e-9);
  }
  // 4.6 worked example, tokens 4 and 5 masked: CE = 0.621940203, ∂CE/∂l_{5,1} = -0.111364629.
  std::vector<double> wl;
  for (double v : wr) {
    wl.push_back(0.0);
    wl.push_back(v);
  }
  std::vector<std::uint8_t> const masked_y{1, 0, 1, 0, 1, 1};
  std::vector<double> wlg(12);
  CHECK(std::fabs(host::reference_gamma_mod_ce(wl, masked_y, wlg) - 0.621940203) <= 1e-9);
  CHECK(std::fabs(wlg[11] + 0.111364629) <= 1e-9);
  CHECK(std::fabs(wlg[10] - 0.111364629) <= 1e-9);
}

// ---------------------------------------------------------------------------------------------
// Bad inputs: a Status with a message, outputs untouched, on the host path, the reference and
// the device entry point alike.

TEST_CASE("MoD and γ-MoD: bad parameters and buffers are refused with a message", "[routing][depth][emu]") {
  ModInput<> const in{1, 6, 0, worked_r()};
  auto expect_mod = [&](routing::MixtureOfDepths const& r, Status code, char const* fragment) {
    CAPTURE(fragment);
    for (Path path : {Path::host, Path::reference, Path::device}) {
      clear_error_message();
      ModOutput const o = run_mod(r, in, path);
      CHECK(o.status == code);
      CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
      CHECK(o.keep == std::vector<std::uint8_t>(6, 7));
      CHECK(o.loss == std::vector<float>{-7.f});
    }
  };
  expect_mod({.capacity_fraction = 1.5}, Status::invalid_argument, "capacity fraction must be in [0,1] (got 1.5)");
  expect_mod({.capacity_fraction = -0.1}, Status::invalid_argument, "capacity fraction must be in [0,1]");
  expect_mod({.capacity_fraction = std::nan("")}, Status::invalid_argument, "capacity fraction must be in [0,1]");
  expect_mod({.capacity = 7}, Status::invalid_argument, "capacity exceeds sequence length (C=7, S=6)");
  expect_mod({.capacity = -2}, Status::invalid_argument, "capacity must be >= 0");

  // Capacity integers in double with the 1e-9 guard: 0.1*3 of 10 tokens is 3, not 4.
  std::int64_t c = 0;
  REQUIRE(routing::MixtureOfDepths{.capacity_fraction = 0.1 * 3}.capacity_for(10, c) == Status::ok);
  CHECK(c == 3);

  routing::MixtureOfDepths const r{.capacity_fraction = 0.5};
  auto expect_buffers = [&](auto mutate, Status code, char const* fragment) {
    CAPTURE(fragment);
    ModOutput out;
    auto hb = mod_buffers<MemorySpace::host>(in, out, 3);
    mutate(hb);
    clear_error_message();
    CHECK(routing::route(r, hb) == code);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    CHECK(out.selected == std::vector<int>(3, -7));
    ModOutput dout;
    auto db = mod_buffers<MemorySpace::device>(in, dout, 3);
    mutate(db);
    Diagnostics d{};
    depth_test::AlignedWorkspace ws(64);
    CHECK(routing::route(r, db, ws.data, ws.bytes, &d, nullptr) == code);
    CHECK(dout.selected == std::vector<int>(3, -7));
  };
  expect_buffers([](auto& b) { b.selected.extents[1] = 2; }, Status::invalid_argument,
                 "MixtureOfDepths: selected: expected [1, 3], got [1, 2]");
  expect_buffers([](auto& b) { b.scores.data = nullptr; }, Status::invalid_argument, "scores: null pointer");
  expect_buffers([](auto& b) { b.scores = {}; }, Status::invalid_argument, "give either scores");
  expect_buffers([](auto& b) { b.selected = {}, b.keep = {}; }, Status::invalid_argument, "want at least one of");
  expect_buffers(
      [](auto& b) { b.grad_scores.data = reinterpret_cast<float*>(reinterpret_cast<char*>(b.grad_scores.data) + 2); },
      Status::misaligned, "grad_scores: pointer not aligned");
  expect_buffers([](auto& b) { b.aux_loss.extents[0] = 2; }, Status::invalid_argument,
                 "aux_loss: expected [1], got [2]");

  // Device-only: no diagnostics, too small or misaligned workspace, S beyond the bound.
  ModOutput out;
  auto const db = mod_buffers<MemorySpace::device>(in, out, 3);
  depth_test::AlignedWorkspace ws(routing::workspace_size(r, 1));
  Diagnostics d{};
  clear_error_message();
  CHECK(routing::route(r, db, ws.data, ws.bytes, nullptr, nullptr) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("diagnostics must point to device memory"));
  CHECK(routing::route(r, db, ws.data, 0, &d, nullptr) == Status::workspace_too_small);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("per-sequence loss partials needs 4 bytes"));
  CHECK(routing::route(r, db, static_cast<char*>(ws.data) + 4, ws.bytes, &d, nullptr) == Status::misaligned);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("aligned to 256 bytes"));
  CHECK(out.selected == std::vector<int>(3, -7));
  ModInput<> const long_in{1, 4097, 0, std::vector<float>(4097, 0.f)};
  ModOutput long_out;
  auto const long_b = mod_buffers<MemorySpace::device>(long_in, long_out, 2049);
  clear_error_message();
  CHECK(routing::route(r, long_b, ws.data, ws.bytes, &d, nullptr) == Status::unsupported_config);
  CHECK_THAT(std::string(last_error_message()),
             Catch::Contains("sequence length 4097 exceeds the device kernel's bound 4096"));
  CHECK(run_mod(r, long_in, Path::host).status == Status::ok);  // the host has no bound

  // Non-finite block input x on the host (checked), named by sequence, position and feature.
  ModInput<> xin{1, 2, 3};
  xin.from_x = true;
  xin.x = {1, 2, 3, 4, -inf_value, 6};
  xin.w = {1, 1, 1};
  clear_error_message();
  ModOutput const xo = run_mod(r, xin, Path::host);
  CHECK(xo.status == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()),
             Catch::Contains("non-finite router input -inf at sequence 0, position 1, feature 1"));
  CHECK(xo.scores_out == std::vector<float>(2, -7.f));

  // γ-MoD parameters.
  auto expect_gamma = [&](routing::GammaMod const& g, char const* fragment) {
    CAPTURE(fragment);
    for (Path path : {Path::host, Path::reference, Path::device}) {
      clear_error_message();
      GammaOutput const o = run_gamma(g, worked_gamma(false), path);
      CHECK(o.status == Status::invalid_argument);
      CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
      CHECK(o.counts == std::vector<int>{-7});
    }
  };
  expect_gamma({.routing_ratio = 1.01}, "routing ratio must be in [0,1] (got 1.01)");
  expect_gamma({.routing_ratio = -0.5}, "routing ratio must be in [0,1]");
  expect_gamma({.prefill_threshold = -1.f}, "thresholds must be probabilities");
  GammaInput<> wrong_mask = worked_gamma(false);
  wrong_mask.masked = {1, 0, 1};
  GammaOutput go;
  auto gb = gamma_buffers<MemorySpace::host>(wrong_mask, go);
  gb.masked.extents = {1, 3};
  clear_error_message();
  CHECK(routing::route(routing::GammaMod{}, gb) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("GammaMod: masked: expected [1, 6], got [1, 3]"));
  CHECK(go.counts == std::vector<int>{-7});
}

TEST_CASE("MoD and γ-MoD with no tokens: S = 0 and B = 0 write an empty selection and a zero loss",
          "[routing][depth][emu]") {
  for (std::int64_t batch : {0, 2}) {
    ModInput<> in{batch, 0, 0, {}};
    for (Path path : {Path::host, Path::reference, Path::device}) {
      ModOutput const o = run_mod(routing::MixtureOfDepths{}, in, path, 1);
      REQUIRE(o.status == Status::ok);
      CHECK(o.loss == std::vector<float>{0.f});
      GammaOutput const g = run_gamma(routing::GammaMod{}, GammaInput<>{batch, 0}, path, 1);
      REQUIRE(g.status == Status::ok);
      CHECK(g.loss == std::vector<float>{0.f});
      CHECK(g.counts == std::vector<int>(static_cast<std::size_t>(batch), 0));
    }
  }
}
