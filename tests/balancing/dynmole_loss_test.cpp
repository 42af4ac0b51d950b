// DynMoLE router loss (ALGORITHMS.md §3.2): the worked example's numbers (Ĥ, mask, F, P, L_ent,
// L_bal, L_router and their gradient rows), gradients against central finite differences of an
// fp64 copy of the formula, the host reference and the emulated device path on random and
// adversarial logits, determinism across schedules and grid sizes, and every bad input.
//
// Tolerances: see adaptive_loss_test_support.hpp (require_matches): k = (2E + spread + 40) u
// times the magnitude of the summed terms. Against the worked example add 5e-7 relative: the
// numbers in ALGORITHMS.md carry 7 significant digits. Threshold decisions are compared only
// on inputs at least 1e-6 away from top_p and from τ (§3.2: fp32 and fp64 may decide
// differently closer than that); rows closer than that are redrawn.

#include "moekit/balancing/dynmole_loss.hpp"

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "adaptive_loss_test_support.hpp"
#include <catch2/catch.hpp>

#include "moekit/balancing/adaptive_loss_launch.hpp"
#include "moekit/routing/dynmole.hpp"

using namespace moekit;
using adaptive_test::Expected;
using adaptive_test::Logits;
using adaptive_test::LossRun;
using adaptive_test::Pattern;
using adaptive_test::u32;

namespace {

Logits example_logits() { return {2, 4, {1.5f, 0.8f, -0.2f, -1.0f, 0.2f, 0.1f, 0.0f, -0.1f}, {}}; }

balancing::DynMoLELoss with_coefficients(float dyn, float aux) {
  balancing::DynMoLELoss l;
  l.router_dyn_loss_coef = dyn;
  l.router_aux_loss_coef = aux;
  return l;
}

// The run against numbers printed with 7 significant digits: 5e-7 relative for the print, plus
// the fp32 budget of require_matches on the terms' scale.
void require_example(LossRun const& run, Expected const& x, double value, std::vector<double> const& grad) {
  REQUIRE(run.status == Status::ok);
  double const k = (2.0 * 4 + x.spread + 40.0) * u32;
  adaptive_test::require_close(run.value, value, 5e-7 * std::fabs(value) + k * x.value_scale, "value");
  for (std::size_t i = 0; i < grad.size(); ++i) {
    INFO("gradient entry " << i);
    adaptive_test::require_close(run.grad[i], grad[i], 5e-7 * std::fabs(grad[i]) + k * x.grad_scale[i], "gradient");
  }
}

// Redraws (then masks as padding) every row whose keep decision lies within 1e-6 of a threshold.
void keep_away_from_thresholds(Logits& l, Pattern pattern, balancing::DynMoLERouting const& r, std::uint32_t seed) {
  std::mt19937 rng(seed ^ 0x5eedu);
  for (std::int64_t t = 0; t < l.tokens; ++t) {
    int tries = 0;
    while (adaptive_test::dynmole_row(adaptive_test::row_of(l, t), r).min_threshold_gap < 1e-6) {
      if (++tries > 50) {
        if (l.valid.empty()) {
          l.valid.assign(static_cast<std::size_t>(l.tokens), 1);
        }
        l.valid[static_cast<std::size_t>(t)] = 0;
        break;
      }
      adaptive_test::fill_row(l, t, pattern == Pattern::ties ? Pattern::random : pattern, rng);
    }
  }
}

}  // namespace

TEST_CASE("DynMoLE: Tsallis entropy and keep mask of the worked example (ALGORITHMS.md 3.2)", "[balancing]") {
  Logits const l = example_logits();
  balancing::DynMoLERouting const r;
  double const want_h[2] = {0.7576237, 0.9951008};
  std::uint8_t const want_mask[2][4] = {{1, 1, 0, 0}, {1, 1, 1, 1}};
  for (int t = 0; t < 2; ++t) {
    float const* z = &l.values[static_cast<std::size_t>(t) * 4];
    auto const sm = balancing::detail::token_loss::softmax_of(z, 4);
    // Ĥ = (1 - Σ x^q) / 0.129: each x^q within (q |ln x| + 3) u <= 16 u, the sum within 4 u more,
    // over a normaliser of 0.129: 20 u * Σ x^q / 0.129 <= 160 u; plus the 7-digit print.
    adaptive_test::require_close(balancing::tsallis_entropy(z, 4, sm, r.entropy_index, r.entropy_eps), want_h[t],
                                 160 * u32 + 5e-8, "entropy");
    std::uint8_t mask[4];
    CHECK(balancing::dynmole_keep_mask(r, z, 4, mask) == (t == 0 ? 2 : 4));
    for (int e = 0; e < 4; ++e) {
      CHECK(mask[e] == want_mask[t][e]);
    }
  }
}

TEST_CASE("DynMoLE: the loss keeps exactly the experts the DynMoLE router keeps (finite logits)", "[balancing]") {
  // The router (routing/dynmole.hpp) and the loss write the rule independently (layering keeps
  // balancing/ and routing/ apart); on finite logits they must agree bit for bit, ties included.
  auto const experts = GENERATE(2, 3, 6, 37, 64);
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::one_expert, Pattern::sharp);
  struct Params {
    float q, tau, top_p;
    int keep;
  };
  auto const prm = GENERATE(Params{1.1f, 0.9f, 0.75f, 2}, Params{1.f, 0.6f, 0.5f, 1}, Params{0.5f, 1.f, 1.f, 1},
                            Params{2.f, 0.95f, 0.3f, 2});
  CAPTURE(experts, adaptive_test::name(pattern), prm.q, prm.tau, prm.top_p, prm.keep);
  balancing::DynMoLERouting const mine{
      .entropy_index = prm.q, .entropy_threshold = prm.tau, .top_p = prm.top_p, .keep_top_k = prm.keep};
  routing::DynMoLERule const theirs{
      .entropy_index = prm.q, .entropy_threshold = prm.tau, .top_p = prm.top_p, .keep_top_k = prm.keep};
  Logits const l = adaptive_test::make_logits(50, experts, pattern, static_cast<std::uint32_t>(experts));
  std::vector<std::uint8_t> a(static_cast<std::size_t>(experts));
  std::vector<float> b(static_cast<std::size_t>(experts));
  for (std::int64_t t = 0; t < l.tokens; ++t) {
    float const* z = &l.values[static_cast<std::size_t>(t * experts)];
    int const kept_a = balancing::dynmole_keep_mask(mine, z, experts, a.data());
    int const kept_b = routing::dynmole_keep_mask(z, experts, theirs, b.data());
    REQUIRE(kept_a == kept_b);
    for (int e = 0; e < experts; ++e) {
      REQUIRE(float(a[e]) == b[e]);
    }
  }
}

TEST_CASE("DynMoLE: value and gradient of the worked example, host and device", "[balancing][emu]") {
  Logits const l = example_logits();
  auto const zd = adaptive_test::as_double(l);
  struct Case {
    float dyn, aux;
    double value;
    std::vector<double> grad;
  };
  auto const c = GENERATE(
      Case{0.01f,
           0.001f,
           0.009928068,
           {-8.121285e-4, 1.853073e-4, 3.494850e-4, 2.773361e-4, 5.392648e-5, -1.733941e-5, -4.882864e-5, 1.224157e-5}},
      Case{1.f,
           0.f,
           0.8763623,
           {-0.1039022, 0.0249284, 0.0461171, 0.0328568, -0.0147280, -0.0035752, 0.0055005, 0.0128026}},
      Case{0.f,
           1.f,
           1.1644450,
           {0.2268939, -0.0639764, -0.1116858, -0.0512317, 0.2012061, 0.0184122, -0.1038340, -0.1157843}});
  CAPTURE(c.dyn, c.aux);
  auto const loss = with_coefficients(c.dyn, c.aux);
  Expected const x = adaptive_test::dynmole_expected(loss, l, zd);
  for (auto const& run : {adaptive_test::host_reference(loss, l), adaptive_test::device_loss(loss, l, 0),
                          adaptive_test::device_loss(loss, l, 9, 1)}) {
    require_example(run, x, c.value, c.grad);
    CHECK(run.counts == std::vector<long long>{2, 2, 1, 1});
    double const F[4] = {0.4281983, 0.2715582, 0.1181639, 0.1069191};
    double const P[4] = {0.4281983, 0.2715582, 0.1700227, 0.1302208};
    for (int e = 0; e < 4; ++e) {
      // F and P: means of fp32 probabilities, within (spread + E + 3) u = 10 u; 7-digit print.
      adaptive_test::require_close(run.f[e], F[e], 5e-7 * F[e] + 10 * u32 * F[e], "F");
      adaptive_test::require_close(run.P[e], P[e], 5e-7 * P[e] + 10 * u32 * P[e], "P");
    }
  }
}

TEST_CASE("DynMoLE: gradients match central finite differences in fp64", "[balancing]") {
  struct Case {
    float q, tau, top_p;
    int keep;
    std::int64_t tokens;
    int experts;
  };
  auto const c =
      GENERATE(Case{1.1f, 0.9f, 0.75f, 2, 2, 4}, Case{1.1f, 0.9f, 0.75f, 2, 7, 6}, Case{1.f, 0.8f, 0.6f, 1, 7, 6},
               Case{0.6f, 0.95f, 0.9f, 3, 5, 9}, Case{2.f, 1.f, 0.5f, 2, 6, 5});
  CAPTURE(c.q, c.tau, c.top_p, c.keep, c.tokens, c.experts);
  balancing::DynMoLELoss loss = with_coefficients(0.7f, 0.3f);
  loss.router = {.entropy_index = c.q, .entropy_threshold = c.tau, .top_p = c.top_p, .keep_top_k = c.keep};
  Logits l = c.tokens == 2 ? example_logits() : adaptive_test::make_logits(c.tokens, c.experts, Pattern::random, 17);
  keep_away_from_thresholds(l, Pattern::random, loss.router, 17);
  auto zd = adaptive_test::as_double(l);
  Expected const x = adaptive_test::dynmole_expected(loss, l, zd);
  LossRun const reference = adaptive_test::host_reference(loss, l);
  REQUIRE(reference.status == Status::ok);
  double max_grad = 0.0;
  for (double g : x.grad) {
    max_grad = std::max(max_grad, std::fabs(g));
  }
  double const h = 1e-6;
  for (std::size_t i = 0; i < zd.size(); ++i) {
    double const z0 = zd[i];
    zd[i] = z0 + h;
    double const up = adaptive_test::dynmole_expected(loss, l, zd).value;
    zd[i] = z0 - h;
    double const down = adaptive_test::dynmole_expected(loss, l, zd).value;
    zd[i] = z0;
    double const fd = (up - down) / (2 * h);
    INFO("entry " << i);
    // Central differences: truncation h^2 |L'''| / 6 ~ 1e-12, rounding 1e-16 |L| / h ~ 1e-10.
    adaptive_test::require_close(fd, x.grad[i], 1e-8 * max_grad + 1e-9, "finite difference");
    // The reference is fp64 rounded once to fp32.
    adaptive_test::require_close(reference.grad[i], x.grad[i], u32 * std::fabs(x.grad[i]) + 1e-30, "reference");
  }
}

TEST_CASE("DynMoLE: host reference and device agree on random and adversarial logits", "[balancing][emu]") {
  struct Shape {
    std::int64_t tokens;
    int experts;
  };
  auto const shape =
      GENERATE(Shape{1, 2}, Shape{5, 3}, Shape{127, 4}, Shape{129, 6}, Shape{130, 8}, Shape{40, 37}, Shape{20, 256});
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::one_expert, Pattern::masked, Pattern::sharp);
  struct Params {
    float q, tau, top_p;
    int keep;
    bool padding;
  };
  auto const prm = GENERATE(Params{1.1f, 0.9f, 0.75f, 2, false}, Params{1.f, 0.7f, 1.f, 1, true},
                            Params{0.5f, 1.f, 0.3f, 1, false}, Params{2.f, 0.95f, 0.9f, 3, true});
  int const keep = std::min(prm.keep, shape.experts);
  CAPTURE(shape.tokens, shape.experts, adaptive_test::name(pattern), prm.q, prm.tau, prm.top_p, keep, prm.padding);
  balancing::DynMoLELoss loss = with_coefficients(0.5f, 2.f);
  loss.router = {.entropy_index = prm.q, .entropy_threshold = prm.tau, .top_p = prm.top_p, .keep_top_k = keep};
  auto const seed = static_cast<std::uint32_t>(shape.tokens * 31 + shape.experts);
  Logits l = adaptive_test::make_logits(shape.tokens, shape.experts, pattern, seed, prm.padding);
  keep_away_from_thresholds(l, pattern, loss.router, seed);
  Expected const x = adaptive_test::dynmole_expected(loss, l, adaptive_test::as_double(l));
  adaptive_test::require_matches(adaptive_test::host_reference(loss, l), x, shape.experts);
  LossRun const device = adaptive_test::device_loss(loss, l, 0);
  adaptive_test::require_matches(device, x, shape.experts);
  CHECK(device.diagnostics.nonfinite_rows == 0);
  // Determinism: other schedules and grid sizes give the same bits.
  adaptive_test::require_identical(device, adaptive_test::device_loss(loss, l, 5, 1));
  adaptive_test::require_identical(device, adaptive_test::device_loss(loss, l, 6, 2));
}

TEST_CASE("DynMoLE: padding rows are left out exactly as if the caller had dropped them", "[balancing][emu]") {
  balancing::DynMoLELoss const loss = with_coefficients(0.4f, 1.5f);
  Logits padded = adaptive_test::make_logits(150, 6, Pattern::random, 4, true);
  keep_away_from_thresholds(padded, Pattern::random, loss.router, 4);
  Logits compact{0, 6, {}, {}};
  for (std::int64_t t = 0; t < padded.tokens; ++t) {
    if (padded.is_valid(t)) {
      for (int e = 0; e < 6; ++e) {
        compact.values.push_back(padded.at(t, e));
      }
      ++compact.tokens;
    }
  }
  LossRun const a = adaptive_test::device_loss(loss, padded, 3);
  LossRun const b = adaptive_test::device_loss(loss, compact, 3);
  REQUIRE(a.status == Status::ok);
  REQUIRE(b.status == Status::ok);
  // The same fp32 per-token terms, summed in the same order within chunks and in fp64 across:
  // only the chunk boundaries move, a few fp64 roundings (1e-15) before the fp32 rounding.
  adaptive_test::require_close(a.value, b.value, 2 * u32 * std::fabs(b.value), "value");
  CHECK(a.counts == b.counts);
  std::int64_t row = 0;
  for (std::int64_t t = 0; t < padded.tokens; ++t) {
    for (int e = 0; e < 6; ++e) {
      float const g = a.grad[static_cast<std::size_t>(t * 6 + e)];
      if (!padded.is_valid(t)) {
        CHECK(g == 0.f);
      } else {
        float const want = b.grad[static_cast<std::size_t>(row * 6 + e)];
        adaptive_test::require_close(g, want, 2 * u32 * std::fabs(want) + 1e-30, "gradient");
      }
    }
    row += padded.is_valid(t) ? 1 : 0;
  }
}

TEST_CASE("DynMoLE: T = 0 and all-padding give zeros", "[balancing][emu]") {
  balancing::DynMoLELoss const loss;
  Logits const empty{0, 4, {}, {}};
  Logits padding = adaptive_test::make_logits(3, 4, Pattern::random, 1);
  padding.valid.assign(3, 0);
  padding.at(1, 2) = adaptive_test::nan;  // padding content is never read in checked mode
  for (Logits const* l : {&empty, static_cast<Logits const*>(&padding)}) {
    for (auto const& run : {adaptive_test::host_reference(loss, *l), adaptive_test::device_loss(loss, *l, 2)}) {
      REQUIRE(run.status == Status::ok);
      CHECK(run.value == 0.f);
      CHECK(run.counts == std::vector<long long>(4, 0));
      CHECK(run.f == std::vector<float>(4, 0.f));
      CHECK(run.P == std::vector<float>(4, 0.f));
      for (float g : run.grad) {
        CHECK(g == 0.f);
      }
    }
  }
}

TEST_CASE("DynMoLE: bad parameters get a Status with a message and leave outputs untouched", "[balancing][emu]") {
  Logits const l = adaptive_test::make_logits(3, 4, Pattern::random, 1);
  auto expect_rejected = [&](balancing::DynMoLELoss const& loss, Logits const& in, Status code, char const* fragment) {
    clear_error_message();
    LossRun const host = adaptive_test::host_reference(loss, in);
    CHECK(host.status == code);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    CHECK(host.value == -7.f);
    CHECK(host.grad == std::vector<float>(host.grad.size(), -7.f));
    CHECK(host.counts == std::vector<long long>(host.counts.size(), -7));
    clear_error_message();
    LossRun const device = adaptive_test::device_loss(loss, in, 1);
    CHECK(device.status == code);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    CHECK(device.value == -7.f);
    CHECK(device.grad == std::vector<float>(device.grad.size(), -7.f));
  };
  auto with = [](auto edit) {
    balancing::DynMoLELoss loss;
    edit(loss);
    return loss;
  };
  expect_rejected(with([](auto&) {}), adaptive_test::make_logits(3, 1, Pattern::random, 1), Status::invalid_argument,
                  "E must be >= 2");
  expect_rejected(with([](auto& x) { x.router.entropy_index = 0.f; }), l, Status::invalid_argument,
                  "entropy_index must be in (0, 2]");
  expect_rejected(with([](auto& x) { x.router.entropy_index = 2.5f; }), l, Status::invalid_argument,
                  "entropy_index must be in (0, 2]");
  expect_rejected(with([](auto& x) { x.router.top_p = 0.f; }), l, Status::invalid_argument, "top_p");
  expect_rejected(with([](auto& x) { x.router.top_p = 1.5f; }), l, Status::invalid_argument, "top_p");
  expect_rejected(with([](auto& x) { x.router.keep_top_k = 0; }), l, Status::invalid_argument, "keep_top_k");
  expect_rejected(with([](auto& x) { x.router.keep_top_k = 5; }), l, Status::invalid_argument,
                  "keep_top_k must be in [1, E] (got keep_top_k=5, E=4)");
  expect_rejected(with([](auto& x) { x.router.entropy_threshold = 0.f; }), l, Status::invalid_argument,
                  "entropy_threshold");
  expect_rejected(with([](auto& x) { x.router.entropy_eps = 0.f; }), l, Status::invalid_argument, "entropy_eps");
  expect_rejected(with([](auto& x) { x.router_aux_loss_coef = adaptive_test::inf; }), l, Status::invalid_argument,
                  "router_aux_loss_coef");
}

TEST_CASE("DynMoLE: non-finite logits are refused on the host and counted on the device", "[balancing][emu]") {
  balancing::DynMoLELoss const loss;
  struct Case {
    float value;
    bool whole_row;
    char const* fragment;
  };
  auto const c = GENERATE(Case{adaptive_test::nan, false, "non-finite value nan at token 1, expert 2"},
                          Case{adaptive_test::inf, false, "non-finite value inf at token 1, expert 2"},
                          Case{-adaptive_test::inf, true, "all experts masked (-inf) at token 1"});
  Logits l = adaptive_test::make_logits(3, 4, Pattern::random, 2);
  for (int e = 0; e < 4; ++e) {
    if (c.whole_row || e == 2) {
      l.at(1, e) = c.value;
    }
  }
  clear_error_message();
  LossRun const host = adaptive_test::host_reference(loss, l);
  CHECK(host.status == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains(c.fragment));
  CHECK(host.value == -7.f);
  LossRun const device = adaptive_test::device_loss(loss, l, 4);
  REQUIRE(device.status == Status::ok);
  CHECK(device.diagnostics.nonfinite_rows == 1);
  for (long long count : device.counts) {
    CHECK((count >= 0 && count <= 3));
  }
}

TEST_CASE("DynMoLE: bad buffers and a short workspace are refused before any launch", "[balancing][emu]") {
  balancing::DynMoLELoss const loss;
  Logits const l = adaptive_test::make_logits(200, 8, Pattern::random, 3);
  std::size_t const need = balancing::loss_workspace_size(loss, l.tokens, l.experts);
  CHECK(need >= balancing::loss_workspace_size(loss, 100, 8));  // never shrinks as T grows
  clear_error_message();
  LossRun const short_ws = adaptive_test::device_loss(loss, l, 0, 0, need - 1);
  CHECK(short_ws.status == Status::workspace_too_small);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("loss_workspace_size"));
  CHECK(short_ws.value == -7.f);
  CHECK(short_ws.counts == std::vector<long long>(8, -7));

  LossRun run;
  auto [in, out] = adaptive_test::buffers<MemorySpace::device>(l, run);
  std::vector<unsigned char> storage(need + 256);
  auto aligned = [&] {
    return Workspace(storage.data() + (256 - reinterpret_cast<std::uintptr_t>(storage.data()) % 256) % 256, need);
  };
  auto w = aligned();
  auto null_value = out;
  null_value.value = nullptr;
  CHECK(balancing::loss(loss, in, null_value, w, nullptr) == Status::invalid_argument);
  w = aligned();
  auto wrong_grad = out;
  wrong_grad.grad.extents[1] = 7;
  CHECK(balancing::loss(loss, in, wrong_grad, w, nullptr) == Status::invalid_argument);
  w = aligned();
  auto misaligned = out;
  misaligned.grad.data = reinterpret_cast<float*>(reinterpret_cast<char*>(run.grad.data()) + 2);
  CHECK(balancing::loss(loss, in, misaligned, w, nullptr) == Status::misaligned);
  w = aligned();
  auto null_logits = in;
  null_logits.logits.data = nullptr;
  CHECK(balancing::loss(loss, null_logits, out, w, nullptr) == Status::invalid_argument);
  w = aligned();
  std::vector<std::uint8_t> mask(200, 1);
  auto short_mask = in;
  short_mask.valid = mask.data();
  short_mask.valid_entries = 199;
  clear_error_message();
  CHECK(balancing::loss(loss, short_mask, out, w, nullptr) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("valid mask has 199 entries"));
  Workspace counting;
  CHECK(balancing::loss(loss, in, out, counting, nullptr) == Status::invalid_argument);
  CHECK(run.value == -7.f);
  CHECK(run.grad == std::vector<float>(run.grad.size(), -7.f));
}
