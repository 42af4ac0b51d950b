// Grid-wide sync of cooperative launches: a multi-phase kernel whose blocks read each other's
// results, the co-residency rule (cudaOccupancyMaxActiveBlocksPerMultiprocessor) that bounds a
// cooperative grid, and grid syncs the emulator must refuse or report.

#include <cstdint>
#include <vector>

#include "emu_test_support.hpp"

using namespace moekit;
using emu_test::checked;
using emu_test::unchecked;

namespace {

constexpr unsigned blocks = 8, threads = 64, n = blocks * threads;

struct Smem {
  arch::SharedArray<int, threads> v;
};

// Phase 1: each block sums its slice into partial[block]. Phase 2: every thread needs all
// partials (the grand total and the sum of the blocks before its own). Phase 3: every thread
// reads a phase-2 result of the next block. Shared memory is rewritten after a grid sync with
// no block barrier in between, so racecheck also sees that a grid sync orders it.
void three_phases(int const* in, int* partial, int* mid, int* out, bool grid_sync) {
  auto& s = arch::shared_storage<Smem>();
  unsigned const t = arch::thread_rank();
  unsigned const b = arch::block_rank();
  unsigned const g = b * threads + t;
  s.v[t] = in[g];
  arch::sync_threads();
  if (t == 0) {
    int sum = 0;
    for (unsigned i = 0; i < threads; ++i) {
      sum += s.v[i];
    }
    partial[b] = sum;
  }
  if (grid_sync) {
    arch::grid_sync();
  }
  int total = 0, before = 0;
  for (unsigned i = 0; i < blocks; ++i) {
    total += partial[i];
    before += i < b ? partial[i] : 0;
  }
  s.v[t] = in[g] * total + before;
  mid[g] = s.v[t];
  if (grid_sync) {
    arch::grid_sync();
  }
  out[g] = mid[(g + threads) % n] - s.v[t];
}

struct Expected {
  std::vector<int> in, out;
};

Expected expected() {
  Expected e;
  e.in.resize(n);
  for (unsigned i = 0; i < n; ++i) {
    e.in[i] = static_cast<int>((i * 7u) % 13u) - 6;
  }
  std::vector<int> partial(blocks, 0), mid(n);
  for (unsigned i = 0; i < n; ++i) {
    partial[i / threads] += e.in[i];
  }
  int total = 0;
  for (int p : partial) {
    total += p;
  }
  for (unsigned i = 0; i < n; ++i) {
    int before = 0;
    for (unsigned b = 0; b < i / threads; ++b) {
      before += partial[b];
    }
    mid[i] = e.in[i] * total + before;
  }
  e.out.resize(n);
  for (unsigned i = 0; i < n; ++i) {
    e.out[i] = mid[(i + threads) % n] - mid[i];
  }
  return e;
}

}  // namespace

TEST_CASE("grid sync: a multi-phase cooperative kernel", "[emu][grid_sync]") {
  Expected const e = expected();
  auto const seed = GENERATE(0u, 1u, 2u, 3u, 4u);
  CAPTURE(seed);
  std::vector<int> partial(blocks, 0), mid(n, 0), out(n, 0);
  auto const r =
      emu::launch({.grid = blocks, .block = threads, .dynamic_shared_bytes = sizeof(Smem), .cooperative = true},
                  checked(seed), three_phases, e.in.data(), partial.data(), mid.data(), out.data(), true);
  INFO(r.summary());
  REQUIRE(r.ok());
  CHECK(out == e.out);
}

TEST_CASE("grid sync: the multi-phase kernel is wrong without it", "[emu][grid_sync]") {
  // Control: the test above could not pass by luck. Without the grid syncs, in index order,
  // block 0 finishes before block 1 has written its partial sum.
  Expected const e = expected();
  std::vector<int> partial(blocks, 0), mid(n, 0), out(n, 0);
  auto const r =
      emu::launch({.grid = blocks, .block = threads, .dynamic_shared_bytes = sizeof(Smem), .cooperative = true},
                  unchecked(0), three_phases, e.in.data(), partial.data(), mid.data(), out.data(), false);
  INFO(r.summary());
  REQUIRE(r.ok());
  CHECK(out != e.out);
}

TEST_CASE("grid sync: occupancy follows CUDA's rule", "[emu][grid_sync]") {
  constexpr emu::VirtualDevice d = emu::VirtualDevice::small();
  STATIC_REQUIRE(emu::max_active_blocks_per_sm(d, 256, 0) == 8);              // 2048 threads per SM
  STATIC_REQUIRE(emu::max_active_blocks_per_sm(d, 32, 0) == 32);              // 32 blocks per SM
  STATIC_REQUIRE(emu::max_active_blocks_per_sm(d, 1024, 0, 64) == 1);         // 64 K registers per SM
  STATIC_REQUIRE(emu::max_active_blocks_per_sm(d, 96, 0, 40) == 17);          // 1280 registers per warp
  STATIC_REQUIRE(emu::max_active_blocks_per_sm(d, 64, 100 * 1024) == 2);      // 228 KiB, 1 KiB reserved per block
  STATIC_REQUIRE(emu::max_active_blocks_per_sm(d, 64, 227 * 1024 + 1) == 0);  // over the per-block limit
  STATIC_REQUIRE(emu::max_active_blocks_per_sm(d, 1025, 0) == 0);
}

TEST_CASE("grid sync: a cooperative grid larger than co-residency is rejected", "[emu][grid_sync][planted]") {
  // 100 KiB of shared memory per block: two blocks per SM, eight on four SMs.
  std::size_t const smem = 100 * 1024;
  auto kernel = [](int* ran) {
    arch::atomic_add(ran, 1);
    arch::grid_sync();
    arch::atomic_add(ran + 1, 1);
  };
  int ran[2] = {0, 0};
  auto const too_big = emu::launch({.grid = 9, .block = 64, .dynamic_shared_bytes = smem, .cooperative = true},
                                   unchecked(), kernel, ran);
  INFO(too_big.summary());
  CHECK(too_big.status == Status::launch_failed);
  CHECK(emu_test::has_message(too_big, emu::Finding::invalid_launch, "9 blocks", "8 that can be co-resident"));
  CHECK(ran[0] == 0);

  auto const fits = emu::launch({.grid = 8, .block = 64, .dynamic_shared_bytes = smem, .cooperative = true},
                                unchecked(3), kernel, ran);
  INFO(fits.summary());
  CHECK(fits.ok());
  CHECK(ran[0] == 8 * 64);
  CHECK(ran[1] == 8 * 64);

  // The same grid without `cooperative` is a plain launch: blocks need not be co-resident.
  int plain = 0;
  auto const not_cooperative = emu::launch(
      {.grid = 9, .block = 64, .dynamic_shared_bytes = smem}, unchecked(), [](int* p) { arch::atomic_add(p, 1); },
      &plain);
  CHECK(not_cooperative.ok());
  CHECK(plain == 9 * 64);
}

TEST_CASE("grid sync: in a launch that is not cooperative it is reported", "[emu][grid_sync][planted]") {
  auto const seed = GENERATE(0u, 1u);
  CAPTURE(seed);
  int after = 0;
  auto const r = emu::launch(
      {.grid = 2, .block = 32}, checked(seed),
      [](int* a) {
        arch::grid_sync();
        arch::atomic_add(a, 1);
      },
      &after);
  INFO(r.summary());
  CHECK(r.status == Status::emulation_error);
  CHECK(emu_test::has_message(r, emu::Finding::invalid_operation, "grid sync", "not cooperative"));
  CHECK(after == 0);
}

TEST_CASE("grid sync: divergent or missed grid syncs are reported", "[emu][grid_sync][planted]") {
  auto const seed = GENERATE(0u, 1u, 2u);
  CAPTURE(seed);
  int after = 0;
  SECTION("two call sites") {
    auto const r = emu::launch(
        {.grid = 4, .block = 32, .cooperative = true}, checked(seed),
        [](int* a) {
          if (arch::block_rank() == 2) {
            arch::grid_sync();
          } else {
            arch::grid_sync();
          }
          arch::atomic_add(a, 1);
        },
        &after);
    INFO(r.summary());
    CHECK(r.has(emu::Finding::barrier_divergence));
    CHECK(after == 0);
  }
  SECTION("a block exits without it") {
    auto const r = emu::launch(
        {.grid = 4, .block = 32, .cooperative = true}, checked(seed),
        [](int* a) {
          if (arch::block_rank() == 1) {
            return;
          }
          arch::grid_sync();
          arch::atomic_add(a, 1);
        },
        &after);
    INFO(r.summary());
    CHECK(r.has(emu::Finding::exited_at_barrier));
    CHECK(after == 0);
  }
}
