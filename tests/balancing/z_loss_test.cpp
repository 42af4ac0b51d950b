// The router z-loss (ALGORITHMS.md §2.5): the worked example on the host reference and the
// emulated device path, host vs device on random and adversarial logits, the gradient against
// fp64 central differences, determinism over schedules and grid sizes, bad input.
//
// Tolerances: the example's numbers carry 7 significant digits (5e-7 relative); the host rounds
// a double result once (6e-8): rtol 6e-7 for the host. Device vs host: the §2.0 rule (rtol 1e-5,
// atol 1e-7); the device's error is a few ulp: compensated sums over experts and over each
// chunk's tokens, double across chunks, 1-ulp exp and log, and l_t = m + log(S) losing
// |m| u to the final add.

#include "moekit/balancing/z_loss.hpp"

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "fp_loss_test_support.hpp"
#include <catch2/catch.hpp>

#include "moekit/balancing/z_loss_kernels.hpp"
#include "moekit/host/balance_loss_reference.hpp"

using namespace moekit;
using loss_test::Logits;
using loss_test::Pattern;
using loss_test::Run;

namespace {

// z-loss writes only value and gradient.
void require_only_value_and_grad(loss_test::Result const& r) {
  for (long long c : r.counts) {
    REQUIRE(c == -7);
  }
  for (std::size_t i = 0; i < r.f.size(); ++i) {
    REQUIRE(loss_test::same_bits(r.f[i], loss_test::sentinel));
    REQUIRE(loss_test::same_bits(r.P[i], loss_test::sentinel));
  }
}

}  // namespace

TEST_CASE("z-loss reproduces ALGORITHMS.md 2.5", "[balancing][emu]") {
  std::vector<double> const grad = {0.5334914, 0.3235789, 0.119038,  0.2397132, 0.2601618, 0.6398947,
                                    0.2130024, 0.1291925, 0.4860683, 0.1617981, 0.3600883, 0.1976206};
  balancing::ZLoss const p{.z_loss_coef = 1.f};
  Logits const z = loss_test::z_example();
  auto const host = loss_test::host_loss(p, z);
  REQUIRE(host.status == Status::ok);
  loss_test::require_close(host.value, 3.356117, 6e-7, 0, "value");
  loss_test::require_close(host.grad, grad, 6e-7, 0, "gradient");
  require_only_value_and_grad(host);
  for (auto [seed, blocks] : {std::pair{0u, 0u}, std::pair{4u, 1u}}) {
    auto const device = loss_test::device_loss(p, z, seed, blocks);
    REQUIRE(device.status == Status::ok);
    loss_test::require_close(device.value, 3.356117, 1e-5, 1e-7, "value");
    loss_test::require_close(device.grad, grad, 1e-5, 1e-7, "gradient");
    require_only_value_and_grad(device);
  }
  // The default coefficient 1e-3 scales both.
  auto const small = loss_test::host_loss(balancing::ZLoss{}, z);
  loss_test::require_close(small.value, 3.356117e-3, 6e-7, 0, "value");
  // Padding: the mean runs over valid tokens only.
  std::vector<std::uint8_t> const mask = {1, 0, 1};
  auto const masked = loss_test::host_loss(p, z, Run{.mask = &mask});
  double const l0 = 1.823732, l2 = 1.808363;
  loss_test::require_close(masked.value, (l0 * l0 + l2 * l2) / 2, 2e-6, 0, "masked value");
  for (int e = 0; e < 4; ++e) {
    CHECK(masked.grad[4 + e] == 0.f);
    loss_test::require_close(masked.grad[e], grad[e] * 3 / 2, 2e-6, 0, "masked gradient");
  }
  loss_test::require_same_loss(masked, loss_test::device_loss(p, z, 2, 0, Run{.mask = &mask}), 1e-5, 1e-7);
}

TEST_CASE("z-loss: host and device agree, deterministically", "[balancing][emu]") {
  auto const shape = GENERATE(std::pair<std::int64_t, int>{1, 1}, std::pair<std::int64_t, int>{0, 3},
                              std::pair<std::int64_t, int>{37, 7}, std::pair<std::int64_t, int>{600, 60},
                              std::pair<std::int64_t, int>{257, 256});
  auto const pattern = GENERATE(Pattern::random, Pattern::ties, Pattern::masked, Pattern::large);
  auto const padded = GENERATE(0, 40, 100);
  CAPTURE(shape.first, shape.second, loss_test::name(pattern), padded);
  Logits const l = loss_test::make_logits(shape.first, shape.second, pattern, 9u);
  std::vector<std::uint8_t> const mask = loss_test::make_mask(shape.first, padded, 6u);
  Run const run{.mask = padded != 0 ? &mask : nullptr};
  balancing::ZLoss const p{.z_loss_coef = 0.3f};
  auto const host = loss_test::host_loss(p, l, run);
  REQUIRE(host.status == Status::ok);
  auto const device = loss_test::device_loss(p, l, 0, 0, run);
  REQUIRE(device.status == Status::ok);
  loss_test::require_close(device.value, host.value, 1e-5, 1e-7, "value");
  loss_test::require_close(device.grad, loss_test::widen(host.grad), 1e-5, 1e-7, "gradient");
  for (auto [seed, blocks] : {std::pair{3u, 1u}, std::pair{8u, 2u}, std::pair{9u, 4096u}}) {
    loss_test::require_identical(device, loss_test::device_loss(p, l, seed, blocks, run));
  }
  if (padded == 100 || shape.first == 0) {
    CHECK(host.value == 0.f);
  }
}

TEST_CASE("z-loss gradient matches central finite differences in fp64", "[balancing]") {
  // L(z) in double; h = 1e-6: truncation < 1e-11, rounding ~1e-16 |L| / h; the host gradient is a
  // double rounded to fp32 (6e-8 relative). Hence |fd - g| <= 1e-7 |g| + 1e-9 max(1, |L|).
  Logits const l = loss_test::make_logits(9, 6, Pattern::random, 21);
  std::vector<std::uint8_t> const mask = loss_test::make_mask(9, 30, 2u);
  double const c = 0.7;
  auto value = [&](std::vector<double> const& z) {
    double sum = 0, n = 0;
    for (std::int64_t t = 0; t < 9; ++t) {
      if (mask[t] == 0) {
        continue;
      }
      double m = -INFINITY, s = 0;
      for (int e = 0; e < 6; ++e) {
        m = std::max(m, z[t * 6 + e]);
      }
      for (int e = 0; e < 6; ++e) {
        s += std::exp(z[t * 6 + e] - m);
      }
      double const lse = m + std::log(s);
      sum += lse * lse;
      n += 1;
    }
    return c * sum / n;
  };
  auto const host = loss_test::host_loss(balancing::ZLoss{.z_loss_coef = float(c)}, l, Run{.mask = &mask});
  REQUIRE(host.status == Status::ok);
  std::vector<double> z(l.values.begin(), l.values.end());
  double const v = value(z);
  loss_test::require_close(host.value, v, 1e-7, 0, "value");
  for (std::size_t i = 0; i < z.size(); ++i) {
    double const keep = z[i];
    z[i] = keep + 1e-6;
    double const up = value(z);
    z[i] = keep - 1e-6;
    double const down = value(z);
    z[i] = keep;
    loss_test::require_close(host.grad[i], (up - down) / 2e-6, 1e-7, 1e-9 * std::max(1.0, v),
                             "gradient entry " + std::to_string(i));
  }
}

TEST_CASE("z-loss: bad input gets a Status and a message, outputs untouched", "[balancing][emu]") {
  Logits const z = loss_test::z_example();
  auto expect = [&](balancing::ZLoss const& p, Logits const& l, Run const& run, Status code, char const* fragment,
                    bool device = true) {
    clear_error_message();
    auto const h = loss_test::host_loss(p, l, run);
    CHECK(h.status == code);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    loss_test::require_untouched(h);
    if (device) {
      clear_error_message();
      auto const d = loss_test::device_loss(p, l, 1, 0, run);
      CHECK(d.status == code);
      CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
      loss_test::require_untouched(d);
    }
  };
  expect(balancing::ZLoss{.z_loss_coef = -0.5f}, z, {}, Status::invalid_argument,
         "router z-loss: z_loss_coef must be finite and >= 0 (got -0.5)");
  Logits bad = z;
  bad.at(2, 1) = std::numeric_limits<float>::infinity();
  expect(balancing::ZLoss{}, bad, {}, Status::invalid_argument,
         "router z-loss: non-finite router logit inf at token 2, expert 1", false);
  for (int e = 0; e < 4; ++e) {
    bad.at(0, e) = -std::numeric_limits<float>::infinity();
  }
  expect(balancing::ZLoss{}, bad, {}, Status::invalid_argument, "all experts masked (-inf) at token 0", false);
  std::vector<std::uint8_t> const ok = {1, 1, 1};
  expect(balancing::ZLoss{}, z, Run{.mask = &ok, .valid_entries = 4}, Status::invalid_argument,
         "router z-loss: valid mask has 4 entries, expected T=3");
  // Workspace one byte short.
  loss_test::Result r;
  auto b = loss_test::buffers<MemorySpace::device>(z, {}, r);
  std::size_t const need = balancing::loss_workspace_size(balancing::ZLoss{}, 3, 4);
  loss_test::WorkspaceBuffer buffer(need);
  Workspace small(buffer.base, need - 1);
  clear_error_message();
  CHECK(balancing::loss(balancing::ZLoss{}, b.in, b.out, small, nullptr) == Status::workspace_too_small);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("router z-loss: workspace:"));
  loss_test::require_untouched(r);
}
