// FTP token skip (ALGORITHMS.md §4.4, moekit's definitions): the worked example (keep/skip, ŝ,
// L_s, ∂L_s/∂u, the rank and position features), host path vs independent reference vs the
// emulated device kernel on random and adversarial inputs (rank ties, u ties, block 0's uniform
// attention, L = 1, L not a multiple of 256, L = 4096, NaN and +inf counted on the device),
// decode, determinism over schedule seeds and grid sizes, ∂L_s/∂u against central finite
// differences, and every bad input.
//
// Tolerances (u = 2^-24). Features, keep scores u, selections and decode decisions: exact on
// every path (the same fp32 operations in the same order). Host path vs emulated device: every
// output bit for bit. Against the double reference (rounded once, 0.5u):
//  - ŝ = (Σ σ(−u_i)) / L: each σ within 2u, the chunked sum a chain of at most 16 + 256
//    additions (u of the running sum each), the division u: |Δ| <= (16 + 256 + 4) u ŝ.
//  - ∂L_s/∂u = σ(u)σ(−u)/(B·L): two σ (2u each), a product and a division: |Δ| <= 7u |g|.
//  - L_s = mean_b max(s − ŝ_b, 0): each gap carries ŝ_b's error plus its rounding (u gap_b);
//    the batch sum a chain of at most ceil(B/256) + 256 additions, then the division:
//    |Δ| <= (Σ_b (tol(ŝ_b) + u gap_b) + (ceil(B/256) + 257) u Σ_b gap_b)/B + 0.5u L_s.

#include "moekit/routing/token_skip.hpp"

#include <array>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "depth_test_support.hpp"
#include <catch2/catch.hpp>

#include "moekit/core/error_message.hpp"
#include "moekit/host/reference.hpp"

using namespace moekit;
using depth_test::inf_value;
using depth_test::nan_value;
using depth_test::u32;

namespace {

enum class Path { host, reference, device };
char const* name(Path p) { return p == Path::host ? "host" : p == Path::reference ? "reference" : "device"; }

// The router's MLP weights, owned here (host memory doubles as device memory under the emulator).
struct Mlp {
  std::vector<float> w1 = std::vector<float>(256), b1 = std::vector<float>(64), w2 = std::vector<float>(128),
                     b2 = std::vector<float>(2);
  routing::TokenSkipRouter router(double sparsity) const {
    return {.sparsity = sparsity, .w1 = w1.data(), .b1 = b1.data(), .w2 = w2.data(), .b2 = b2.data()};
  }
};

// u = f2 exactly: h0 = ReLU(f2), h1 = ReLU(−f2), z_keep = h0 − h1, z_skip = 0 (one of h0, h1
// is 0, so every fmaf is exact). Lets a test choose u through the attention input.
Mlp identity_on_attention() {
  Mlp m;
  m.w1[0 * 4 + 1] = 1.f;
  m.w1[1 * 4 + 1] = -1.f;
  m.w2[64 + 0] = 1.f;
  m.w2[64 + 1] = -1.f;
  return m;
}

Mlp random_mlp(std::uint32_t seed) {
  Mlp m;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (float& v : m.w1) {
    v = normal(rng);
  }
  for (float& v : m.b1) {
    v = normal(rng) / 4.f;
  }
  for (float& v : m.w2) {
    v = normal(rng) / 8.f;
  }
  for (float& v : m.b2) {
    v = normal(rng) / 4.f;
  }
  return m;
}

struct Output {
  Status status = Status::internal_error;
  std::vector<float> u, features, skip_rate, grad, loss;
  std::vector<int> selected;
  std::vector<std::uint8_t> keep;
  Diagnostics diagnostics{};
};

template <MemorySpace Space>
routing::TokenSkipBuffers<Space> buffers(routing::TokenSkipRouter const& r, std::vector<float> const& attention,
                                         std::int64_t batch, std::int64_t length, Output& out) {
  auto const n = static_cast<std::size_t>(batch * length);
  std::int64_t const kept = length - r.skipped(length);
  out.u.assign(n, -7.f);
  out.features.assign(4 * n, -7.f);
  out.skip_rate.assign(static_cast<std::size_t>(batch), -7.f);
  out.grad.assign(n, -7.f);
  out.loss.assign(1, -7.f);
  out.selected.assign(static_cast<std::size_t>(batch * kept), -7);
  out.keep.assign(n, 7);
  routing::TokenSkipBuffers<Space> b;
  if (!attention.empty()) {
    b.attention = TensorView<float const, 2, Space>::row_major(attention.data(), {batch, length});
  }
  b.scores = TensorView<float, 2, Space>::row_major(out.u.data(), {batch, length});
  b.features = TensorView<float, 3, Space>::row_major(out.features.data(), {batch, length, 4});
  b.selected = TensorView<int, 2, Space>::row_major(out.selected.data(), {batch, kept});
  b.keep = TensorView<std::uint8_t, 2, Space>::row_major(out.keep.data(), {batch, length});
  b.skip_rate = TensorView<float, 1, Space>::row_major(out.skip_rate.data(), {batch});
  b.grad_scores = TensorView<float, 2, Space>::row_major(out.grad.data(), {batch, length});
  b.loss = TensorView<float, 1, Space>::row_major(out.loss.data(), {1});
  return b;
}

// attention empty: block 0 (uniform attention).
Output run(routing::TokenSkipRouter const& r, std::vector<float> const& attention, std::int64_t batch,
           std::int64_t length, Path path, std::uint64_t seed = 0, unsigned max_blocks = 0) {
  Output out;
  if (path == Path::device) {
    auto const b = buffers<MemorySpace::device>(r, attention, batch, length, out);
    depth_test::AlignedWorkspace ws(routing::workspace_size(r, batch));
    out.status = depth_test::with_schedule(
        seed, [&] { return routing::route(r, b, ws.data, ws.bytes, &out.diagnostics, nullptr, max_blocks); });
  } else {
    auto const b = buffers<MemorySpace::host>(r, attention, batch, length, out);
    out.status = path == Path::host ? routing::route(r, b) : host::reference_token_skip(r, b);
  }
  return out;
}

void require_identical(Output const& a, Output const& b) {
  REQUIRE(a.status == b.status);
  REQUIRE(a.selected == b.selected);
  REQUIRE(a.keep == b.keep);
  depth_test::require_same_bits(a.u, b.u, "u");
  depth_test::require_same_bits(a.features, b.features, "features");
  depth_test::require_same_bits(a.skip_rate, b.skip_rate, "skip rate");
  depth_test::require_same_bits(a.grad, b.grad, "grad");
  depth_test::require_same_bits(a.loss, b.loss, "loss");
}

void require_matches_reference(Output const& ref, Output const& got, double sparsity, std::int64_t batch) {
  REQUIRE(got.status == ref.status);
  REQUIRE(got.selected == ref.selected);
  REQUIRE(got.keep == ref.keep);
  depth_test::require_same_bits(got.u, ref.u, "u");
  depth_test::require_same_bits(got.features, ref.features, "features");
  std::vector<double> tol_shat, tol_grad;
  double gap_tol = 0.0, gaps = 0.0;
  for (float shat : ref.skip_rate) {
    double const t = (16.0 + 256.0 + 4.0) * u32 * shat;
    tol_shat.push_back(t);
    double const gap = std::max(sparsity - double(shat), 0.0);
    gap_tol += gap > 0.0 ? t + u32 * gap : 0.0;
    gaps += gap;
  }
  for (float g : ref.grad) {
    tol_grad.push_back(7.0 * u32 * std::fabs(g));
  }
  depth_test::require_within(got.skip_rate, ref.skip_rate, tol_shat, "skip rate");
  depth_test::require_within(got.grad, ref.grad, tol_grad, "dL_s/du");
  double const b = std::max(1.0, double(batch));
  double const chain = std::ceil(b / 256.0) + 257.0;
  depth_test::require_within(got.loss, ref.loss,
                             {(gap_tol + chain * u32 * gaps) / b + 0.5 * u32 * std::fabs(ref.loss[0])}, "L_s");
}

std::vector<float> make_attention(std::int64_t count, int pattern, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> uniform(0.f, 1.f);
  std::uniform_int_distribution<int> level(0, 4);
  std::vector<float> a(static_cast<std::size_t>(count));
  for (float& v : a) {
    v = pattern == 0 ? uniform(rng) : float(level(rng)) / 8.f;  // 1: coarse, many rank ties
  }
  return a;
}

}  // namespace

TEST_CASE("FTP token skip reproduces the worked example of ALGORITHMS.md 4.4", "[routing][token_skip][emu]") {
  Mlp const m = identity_on_attention();
  routing::TokenSkipRouter const r = m.router(0.5);
  CHECK(r.skipped(6) == 3);
  std::vector<float> const u{-0.5f, 1.0f, -1.2f, 0.3f, -0.1f, 2.0f};  // through a = u
  std::vector<float> const grad{0.039167285f, 0.032768656f, 0.029649073f, 0.040743052f, 0.041562673f, 0.017498931f};
  for (Path path : {Path::host, Path::reference, Path::device}) {
    CAPTURE(name(path));
    Output const o = run(r, u, 1, 6, path, 3);
    REQUIRE(o.status == Status::ok);
    CHECK(o.u == u);
    CHECK(o.selected == std::vector<int>{0, 1, 5});  // token 0 forced, then 2.0 and 1.0
    CHECK(o.keep == std::vector<std::uint8_t>{1, 1, 0, 0, 0, 1});
    // The example's 9 digits: within 1e-6 relative (fp32 carries 7).
    depth_test::require_within(o.skip_rate, {0.454944188f}, {1e-6 * 0.454944188}, "s_hat");
    depth_test::require_within(o.loss, {0.045055812f}, {1e-6 * 0.045055812 + 1e-8}, "L_s");
    std::vector<double> tol;
    for (float g : grad) {
      tol.push_back(1e-6 * g);
    }
    depth_test::require_within(o.grad, grad, tol, "dL_s/du");
  }
  // Rank and position features for a = [0.40, 0.05, 0.10, 0.05, 0.20, 0.20]: rank [0, 4, 3, 5, 1, 2].
  std::vector<float> const a{0.40f, 0.05f, 0.10f, 0.05f, 0.20f, 0.20f};
  std::vector<float> const f1{0.f, 0.2f, 0.4f, 0.6f, 0.8f, 1.f}, f3{0.f, 0.8f, 0.6f, 1.f, 0.2f, 0.4f};
  for (Path path : {Path::host, Path::reference, Path::device}) {
    CAPTURE(name(path));
    Output const o = run(r, a, 1, 6, path, 5);
    REQUIRE(o.status == Status::ok);
    for (std::size_t i = 0; i < 6; ++i) {
      CHECK(o.features[4 * i + 0] == f1[i]);  // i/5 and rank/5 are correctly rounded divisions
      CHECK(o.features[4 * i + 1] == a[i]);
      CHECK(o.features[4 * i + 2] == f3[i]);
      CHECK(o.features[4 * i + 3] == 0.5f);
    }
  }
}

TEST_CASE("FTP: host path, reference and device agree (random MLP, rank ties, block 0)", "[routing][token_skip][emu]") {
  auto const length = GENERATE(std::int64_t{1}, std::int64_t{2}, std::int64_t{7}, std::int64_t{256}, std::int64_t{257},
                               std::int64_t{700});
  auto const pattern = GENERATE(0, 1, 2);  // random attention, coarse attention, block 0 (absent)
  auto const sparsity = GENERATE(0.0, 0.3, 0.5, 0.9);
  std::int64_t const batch = 3;
  CAPTURE(length, pattern, sparsity);
  Mlp const m = random_mlp(static_cast<std::uint32_t>(length + pattern));
  routing::TokenSkipRouter const r = m.router(sparsity);
  std::vector<float> const a =
      pattern == 2 ? std::vector<float>{} : make_attention(batch * length, pattern, static_cast<std::uint32_t>(length));
  Output const ref = run(r, a, batch, length, Path::reference);
  REQUIRE(ref.status == Status::ok);
  Output const host = run(r, a, batch, length, Path::host);
  require_matches_reference(ref, host, sparsity, batch);
  Output const device = run(r, a, batch, length, Path::device, sparsity == 0.5 ? 4 : 0, sparsity == 0.3 ? 1 : 0);
  require_identical(host, device);
  CHECK(device.diagnostics.nonfinite_rows == 0);
  if (pattern == 2 && length > 1) {  // block 0: uniform attention decreases, so rank_i = i
    for (std::int64_t i = 0; i < length; ++i) {
      CHECK(host.features[static_cast<std::size_t>(4 * i + 2)] == host.features[static_cast<std::size_t>(4 * i)]);
    }
  }
}

TEST_CASE("FTP: u ties go to the lower position; token 0 is always kept", "[routing][token_skip][emu]") {
  Mlp const m = identity_on_attention();
  std::int64_t const length = 300, batch = 2;
  std::vector<float> a = make_attention(batch * length, 1, 9);  // u = a in {0, 1/8, ..., 4/8}
  a[0] = -1.f;                                                  // token 0 ranks last by u, kept anyway
  a[static_cast<std::size_t>(length)] = -1.f;
  for (double s : {0.5, 0.99}) {
    routing::TokenSkipRouter const r = m.router(s);
    Output const ref = run(r, a, batch, length, Path::reference);
    Output const host = run(r, a, batch, length, Path::host);
    require_matches_reference(ref, host, s, batch);
    require_identical(host, run(r, a, batch, length, Path::device, 8, 1));
    CHECK(host.keep[0] == 1);
    CHECK(host.selected[0] == 0);
    // Among the equal u at the cut, the lower positions are kept.
    std::int64_t const kept = length - r.skipped(length);
    float cut = 1e9f;
    for (std::int64_t i = 1; i < length; ++i) {
      if (host.keep[static_cast<std::size_t>(i)] != 0) {
        cut = std::min(cut, a[static_cast<std::size_t>(i)]);
      }
    }
    bool skipped_at_cut = false;
    for (std::int64_t i = 1; i < length; ++i) {
      if (a[static_cast<std::size_t>(i)] == cut) {
        CHECK((host.keep[static_cast<std::size_t>(i)] == 0 || !skipped_at_cut));
        skipped_at_cut = skipped_at_cut || host.keep[static_cast<std::size_t>(i)] == 0;
      }
    }
    CHECK(host.selected.size() == static_cast<std::size_t>(batch * kept));
  }
}

TEST_CASE("FTP device: L = 4096 (the bound), identical for every schedule and grid", "[routing][token_skip][emu]") {
  Mlp const m = random_mlp(31);
  routing::TokenSkipRouter const r = m.router(0.6);
  std::vector<float> const a = make_attention(2 * 4096, 1, 32);
  Output const host = run(r, a, 2, 4096, Path::host);
  REQUIRE(host.status == Status::ok);
  Output const d0 = run(r, a, 2, 4096, Path::device, 0, 0);
  require_identical(host, d0);
  require_identical(d0, run(r, a, 2, 4096, Path::device, 13, 1));
  require_identical(d0, run(r, a, 2, 4096, Path::device, 14, 2));
  require_matches_reference(run(r, a, 2, 4096, Path::reference), host, 0.6, 2);
}

TEST_CASE("FTP n_skip: floor(s·L + 1e-9) in double, capped at L − 1", "[routing][token_skip]") {
  Mlp const m = identity_on_attention();
  CHECK(m.router(0.3).skipped(10) == 3);
  CHECK(m.router(0.7).skipped(10) == 7);  // 0.7·10 = 7.000000000000001 or 6.999...: the guard decides
  CHECK(m.router(0.9).skipped(1) == 0);
  CHECK(m.router(0.99).skipped(2) == 1);
  CHECK(m.router(1.0 - 1e-12).skipped(10) == 9);  // floor gives 10 = L: capped, token 0 stays
  CHECK(m.router(0.0).skipped(0) == 0);
  Output const o = run(m.router(1.0 - 1e-12), std::vector<float>(10, 0.25f), 1, 10, Path::device, 1);
  REQUIRE(o.status == Status::ok);
  CHECK(o.selected == std::vector<int>{0});
}

TEST_CASE("FTP device: NaN and +inf keep scores are counted; NaN never kept while numbers remain",
          "[routing][token_skip][emu]") {
  Mlp const m = identity_on_attention();
  routing::TokenSkipRouter const r = m.router(0.5);
  std::vector<float> a{nan_value, 0.3f, nan_value, inf_value, -0.2f, 0.1f, 0.4f, 0.0f};
  Output const d = run(r, a, 1, 8, Path::device, 3);
  REQUIRE(d.status == Status::ok);
  CHECK(d.diagnostics.nonfinite_rows == 3);
  // +inf attention makes u NaN too (0·inf in the MLP's unused units): u = [NaN, 0.3, NaN, NaN,
  // -0.2, 0.1, 0.4, 0]. Token 0 is kept even as NaN; the other NaN never while numbers remain.
  CHECK(d.selected == std::vector<int>{0, 1, 5, 6});
  CHECK(std::isnan(d.skip_rate[0]));
  clear_error_message();
  Output const h = run(r, a, 1, 8, Path::host);
  CHECK(h.status == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()),
             Catch::Contains("non-finite attention score nan at sequence 0, position 0"));
  CHECK(h.u == std::vector<float>(8, -7.f));
  CHECK(run(r, a, 1, 8, Path::reference).status == Status::invalid_argument);
}

TEST_CASE("FTP decode: the new token's u equals its prefill u; processed iff σ(u) >= 0.5",
          "[routing][token_skip][emu]") {
  auto const length = GENERATE(std::int64_t{1}, std::int64_t{2}, std::int64_t{9}, std::int64_t{600});
  auto const pattern = GENERATE(0, 1, 2);
  CAPTURE(length, pattern);
  std::int64_t const batch = 4;
  Mlp const m = random_mlp(static_cast<std::uint32_t>(7 * length + pattern));
  routing::TokenSkipRouter const r = m.router(0.4);
  std::vector<float> const a =
      pattern == 2 ? std::vector<float>{} : make_attention(batch * length, pattern, static_cast<std::uint32_t>(length));
  Output const prefill = run(r, a, batch, length, Path::host);
  REQUIRE(prefill.status == Status::ok);
  for (Path path : {Path::host, Path::reference, Path::device}) {
    CAPTURE(name(path));
    std::vector<float> u(static_cast<std::size_t>(batch), -7.f);
    std::vector<std::uint8_t> keep(static_cast<std::size_t>(batch), 7);
    Diagnostics d{};
    Status s;
    if (path == Path::device) {
      routing::TokenSkipDecodeBuffers<MemorySpace::device> b;
      if (!a.empty()) {
        b.attention = DeviceTensor<float const, 2>::row_major(a.data(), {batch, length});
      }
      b.length = length;
      b.scores = DeviceTensor<float, 1>::row_major(u.data(), {batch});
      b.keep = DeviceTensor<std::uint8_t, 1>::row_major(keep.data(), {batch});
      s = depth_test::with_schedule(6, [&] { return routing::route_decode(r, b, &d, nullptr, 2); });
    } else {
      routing::TokenSkipDecodeBuffers<MemorySpace::host> b;
      if (!a.empty()) {
        b.attention = HostTensor<float const, 2>::row_major(a.data(), {batch, length});
      }
      b.length = length;
      b.scores = HostTensor<float, 1>::row_major(u.data(), {batch});
      b.keep = HostTensor<std::uint8_t, 1>::row_major(keep.data(), {batch});
      s = path == Path::host ? routing::route_decode(r, b) : host::reference_token_skip_decode(r, b);
    }
    REQUIRE(s == Status::ok);
    CHECK(d.nonfinite_rows == 0);
    for (std::int64_t b = 0; b < batch; ++b) {
      float const expected = prefill.u[static_cast<std::size_t>(b * length + length - 1)];
      CHECK(depth_test::bits(u[static_cast<std::size_t>(b)]) == depth_test::bits(expected));
      bool const process = length == 1 || fp32::sigmoid(expected) >= 0.5f;
      CHECK(keep[static_cast<std::size_t>(b)] == (process ? 1 : 0));
    }
  }
}

TEST_CASE("FTP skip-rate loss gradient matches central finite differences", "[routing][token_skip]") {
  std::mt19937 rng(3);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::int64_t const batch = 3, length = 5;
  std::vector<double> u(static_cast<std::size_t>(batch * length));
  for (double& v : u) {
    v = normal(rng) + 0.5;  // ŝ near 0.4 < s = 0.6: the hinge is active for every sequence
  }
  std::vector<double> grad(u.size()), skip_rate(static_cast<std::size_t>(batch));
  (void)host::reference_skip_rate_loss(u, batch, length, 0.6, grad, skip_rate);
  for (double shat : skip_rate) {
    REQUIRE(std::fabs(shat - 0.6) > 1e-3);  // away from the kink
  }
  std::vector<double> const fd = depth_test::central_differences(
      [&](std::vector<double> const& x) { return host::reference_skip_rate_loss(x, batch, length, 0.6); }, u);
  // Truncation h²|f'''|/6 and cancellation 1e-16/h stay below 1e-9.
  for (std::size_t i = 0; i < u.size(); ++i) {
    CHECK(std::fabs(grad[i] - fd[i]) <= 1e-9);
  }
  // The worked example in double: ŝ = 0.454944188, L_s = 0.045055812, ∂L_s/∂u_0 = 0.039167285.
  std::vector<double> const w{-0.5, 1.0, -1.2, 0.3, -0.1, 2.0};
  std::vector<double> wg(6), ws(1);
  CHECK(std::fabs(host::reference_skip_rate_loss(w, 1, 6, 0.5, wg, ws) - 0.045055812) <= 1e-9);
  CHECK(std::fabs(ws[0] - 0.454944188) <= 1e-9);
  CHECK(std::fabs(wg[0] - 0.039167285) <= 1e-9);
  // Over-pruning (ŝ >= s) costs nothing and passes no gradient.
  CHECK(host::reference_skip_rate_loss(w, 1, 6, 0.4, wg) == 0.0);
  CHECK(wg == std::vector<double>(6, 0.0));
}

TEST_CASE("FTP: bad parameters and buffers are refused with a message, outputs untouched",
          "[routing][token_skip][emu]") {
  Mlp const m = identity_on_attention();
  std::vector<float> const a{0.1f, 0.2f, 0.3f, 0.4f};
  auto expect = [&](routing::TokenSkipRouter const& r, Status code, char const* fragment) {
    CAPTURE(fragment);
    for (Path path : {Path::host, Path::reference, Path::device}) {
      clear_error_message();
      Output const o = run(r, a, 1, 4, path);
      CHECK(o.status == code);
      CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
      CHECK(o.u == std::vector<float>(4, -7.f));
      CHECK(o.loss == std::vector<float>{-7.f});
    }
  };
  expect(m.router(1.0), Status::invalid_argument, "block sparsity must be in [0,1) (got 1)");
  expect(m.router(-0.1), Status::invalid_argument, "block sparsity must be in [0,1)");
  expect(m.router(std::nan("")), Status::invalid_argument, "block sparsity must be in [0,1)");
  routing::TokenSkipRouter no_w2 = m.router(0.5);
  no_w2.w2 = nullptr;
  expect(no_w2, Status::invalid_argument, "w1, b1, w2 and b2 must all be given");
  routing::TokenSkipRouter bad_threshold = m.router(0.5);
  bad_threshold.decode_threshold = 1.5f;
  expect(bad_threshold, Status::invalid_argument, "decode threshold must be in [0,1]");

  routing::TokenSkipRouter const r = m.router(0.5);
  auto expect_buffers = [&](auto mutate, Status code, char const* fragment) {
    CAPTURE(fragment);
    Output out;
    auto hb = buffers<MemorySpace::host>(r, a, 1, 4, out);
    mutate(hb);
    clear_error_message();
    CHECK(routing::route(r, hb) == code);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    Output dout;
    auto db = buffers<MemorySpace::device>(r, a, 1, 4, dout);
    mutate(db);
    Diagnostics d{};
    depth_test::AlignedWorkspace ws(256);
    CHECK(routing::route(r, db, ws.data, ws.bytes, &d, nullptr) == code);
    CHECK(out.u == std::vector<float>(4, -7.f));
    CHECK(dout.u == std::vector<float>(4, -7.f));
  };
  expect_buffers([](auto& b) { b.selected.extents[1] = 3; }, Status::invalid_argument,
                 "TokenSkipRouter: selected: expected [1, 2], got [1, 3]");
  expect_buffers([](auto& b) { b.attention.extents[1] = 5; }, Status::invalid_argument,
                 "attention: expected [1, 4], got [1, 5]");
  expect_buffers([](auto& b) { b.features.extents[2] = 3; }, Status::invalid_argument,
                 "features: expected [1, 4, 4], got [1, 4, 3]");
  expect_buffers([](auto& b) { b.skip_rate.data = nullptr; }, Status::invalid_argument, "skip_rate: null pointer");

  // Non-finite MLP weights (host, checked).
  Mlp bad = m;
  bad.b1[7] = inf_value;
  clear_error_message();
  Output const o = run(bad.router(0.5), a, 1, 4, Path::host);
  CHECK(o.status == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("non-finite MLP bias b1 inf at index 7"));
  CHECK(o.keep == std::vector<std::uint8_t>(4, 7));

  // Device-only checks.
  Output out;
  auto const db = buffers<MemorySpace::device>(r, a, 1, 4, out);
  depth_test::AlignedWorkspace ws(routing::workspace_size(r, 1));
  clear_error_message();
  CHECK(routing::route(r, db, ws.data, ws.bytes, nullptr, nullptr) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("diagnostics must point to device memory"));
  Diagnostics d{};
  CHECK(routing::route(r, db, nullptr, 0, &d, nullptr) == Status::workspace_too_small);
  std::vector<float> const long_a(4097, 0.5f);
  Output long_out;
  auto const long_b = buffers<MemorySpace::device>(r, long_a, 1, 4097, long_out);
  clear_error_message();
  CHECK(routing::route(r, long_b, ws.data, ws.bytes, &d, nullptr) == Status::unsupported_config);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("sequence length 4097 exceeds"));
  CHECK(out.u == std::vector<float>(4, -7.f));

  // Decode: an empty sequence, and a length that disagrees with the attention.
  std::vector<float> u(1, -7.f);
  std::vector<std::uint8_t> keep(1, 7);
  routing::TokenSkipDecodeBuffers<MemorySpace::host> hb;
  hb.scores = HostTensor<float, 1>::row_major(u.data(), {1});
  hb.keep = HostTensor<std::uint8_t, 1>::row_major(keep.data(), {1});
  clear_error_message();
  CHECK(routing::route_decode(r, hb) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("empty sequence (L = 0)"));
  hb.attention = HostTensor<float const, 2>::row_major(a.data(), {1, 4});
  hb.length = 5;
  clear_error_message();
  CHECK(routing::route_decode(r, hb) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("length 5 disagrees with attention [B, 4]"));
  CHECK(u == std::vector<float>{-7.f});
  CHECK(keep == std::vector<std::uint8_t>{7});
}

TEST_CASE("FTP with no tokens: L = 0 and B = 0", "[routing][token_skip][emu]") {
  Mlp const m = identity_on_attention();
  for (std::int64_t batch : {0, 2}) {
    for (Path path : {Path::host, Path::reference, Path::device}) {
      CAPTURE(batch, name(path));
      Output const o = run(m.router(0.5), {}, batch, 0, path, 1);
      REQUIRE(o.status == Status::ok);
      CHECK(o.loss == std::vector<float>{0.f});
      CHECK(o.skip_rate == std::vector<float>(static_cast<std::size_t>(batch), 0.f));
    }
  }
}
