// The foundation's two sample kernels under the emulator, against host computations, with
// racecheck and initcheck on and several schedule seeds.

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "block_scan_kernel.hpp"
#include "mma_gemm_kernel.hpp"
#include <catch2/catch.hpp>

#include "moekit/emu/emu.hpp"

namespace emu = moekit::emu;
using moekit::bf16_t;

namespace {

emu::LaunchOptions checked(std::uint64_t seed) {
  emu::LaunchOptions o;
  o.schedule_seed = seed;
  o.racecheck = true;
  o.initcheck = true;
  o.max_resident_blocks = 2;  // interleave blocks too
  return o;
}

}  // namespace

TEST_CASE("block scan kernel matches a host prefix sum", "[emu][kernels]") {
  auto const n = GENERATE(std::int64_t{1}, std::int64_t{255}, std::int64_t{256}, std::int64_t{1000});
  auto const seed = GENERATE(std::uint64_t{0}, std::uint64_t{1}, std::uint64_t{7});
  CAPTURE(n, seed);
  std::mt19937 rng(static_cast<unsigned>(n));
  std::uniform_int_distribution<int> dist(-1000, 1000);
  std::vector<int> in(static_cast<std::size_t>(n));
  for (auto& x : in) {
    x = dist(rng);
  }
  auto const blocks =
      static_cast<unsigned>((n + moekit_samples::scan_block_threads - 1) / moekit_samples::scan_block_threads);
  std::vector<int> prefix(in.size(), 12345), totals(blocks, 12345);

  auto const r =
      emu::launch({.grid = blocks,
                   .block = moekit_samples::scan_block_threads,
                   .dynamic_shared_bytes = sizeof(moekit_samples::BlockScanStorage)},
                  checked(seed), moekit_samples::block_scan_kernel, in.data(), prefix.data(), totals.data(), n);
  INFO(r.summary());
  REQUIRE(r.ok());
  for (unsigned b = 0; b < blocks; ++b) {
    int running = 0;
    for (std::int64_t i = std::int64_t{b} * 256; i < std::min<std::int64_t>(n, (b + 1) * 256); ++i) {
      REQUIRE(prefix[static_cast<std::size_t>(i)] == running);
      running += in[static_cast<std::size_t>(i)];
    }
    REQUIRE(totals[b] == running);
  }
}

TEST_CASE("mma GEMM kernel matches a host GEMM and is schedule-independent", "[emu][kernels]") {
  struct Shape {
    std::int64_t m, n, k;
  };
  auto const shape = GENERATE(Shape{64, 64, 64}, Shape{128, 64, 96});
  CAPTURE(shape.m, shape.n, shape.k);
  REQUIRE(moekit_samples::mma_gemm_can_implement(shape.m, shape.n, shape.k));
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> dist(-2.f, 2.f);
  auto const mk = static_cast<std::size_t>(shape.m * shape.k), nk = static_cast<std::size_t>(shape.n * shape.k);
  std::vector<bf16_t> a(mk), bt(nk);
  for (auto& x : a) {
    x = bf16_t(dist(rng));
  }
  for (auto& x : bt) {
    x = bf16_t(dist(rng));
  }
  // Exact reference in double from the bf16 values the kernel sees.
  std::vector<double> ref(static_cast<std::size_t>(shape.m * shape.n)), mag(ref.size());
  for (std::int64_t i = 0; i < shape.m; ++i) {
    for (std::int64_t j = 0; j < shape.n; ++j) {
      double s = 0, sa = 0;
      for (std::int64_t p = 0; p < shape.k; ++p) {
        double const prod = a[static_cast<std::size_t>(i * shape.k + p)].to_double() *
                            bt[static_cast<std::size_t>(j * shape.k + p)].to_double();
        s += prod;
        sa += std::abs(prod);
      }
      ref[static_cast<std::size_t>(i * shape.n + j)] = s;
      mag[static_cast<std::size_t>(i * shape.n + j)] = sa;
    }
  }
  using S = moekit_samples::MmaGemmShape;
  emu::LaunchConfig const cfg{
      .grid = emu::Dim3(static_cast<unsigned>(shape.n / S::block_n), static_cast<unsigned>(shape.m / S::block_m)),
      .block = S::threads,
      .dynamic_shared_bytes = sizeof(moekit_samples::MmaGemmStorage)};
  std::vector<float> first;
  for (std::uint64_t seed : {0u, 3u, 11u}) {
    CAPTURE(seed);
    std::vector<float> c(ref.size(), -1.f);
    auto const r = emu::launch(cfg, checked(seed), moekit_samples::mma_gemm_kernel<>, a.data(), bt.data(), c.data(),
                               shape.m, shape.n, shape.k);
    INFO(r.summary());
    REQUIRE(r.ok());
    // Each mma rounds its exact 16-term dot product once to fp32, then fp32 adds accumulate
    // K/16 partial sums: the error is below (K/16 + 1) fp32 ulps of sum |a*b|.
    for (std::size_t i = 0; i < c.size(); ++i) {
      double const tol = (static_cast<double>(shape.k) / 16 + 1) * std::ldexp(1.0, -24) * mag[i];
      REQUIRE(std::abs(c[i] - ref[i]) <= tol);
    }
    if (first.empty()) {
      first = c;
    } else {
      REQUIRE(c == first);  // bit-identical for every schedule
    }
  }
}

TEST_CASE("racecheck catches the GEMM pipeline refilling a stage that is still being read", "[emu][kernels]") {
  // Three k-tiles: the third refills stage 0 while, without the barrier, other warps may still
  // be reading stage 0 for the first tile.
  std::int64_t const m = 64, n = 64, k = 96;
  std::vector<bf16_t> a(static_cast<std::size_t>(m * k), bf16_t(1.f)), bt(static_cast<std::size_t>(n * k), bf16_t(1.f));
  std::vector<float> c(static_cast<std::size_t>(m * n));
  using S = moekit_samples::MmaGemmShape;
  auto const r =
      emu::launch({.grid = 1, .block = S::threads, .dynamic_shared_bytes = sizeof(moekit_samples::MmaGemmStorage)},
                  checked(0), moekit_samples::mma_gemm_kernel<true>, a.data(), bt.data(), c.data(), m, n, k);
  INFO(r.summary());
  REQUIRE(r.status == moekit::Status::emulation_error);
  REQUIRE(r.has(emu::Finding::race_write_after_read));
}
