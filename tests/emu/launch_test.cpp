// The launch API and the built-in indices: threadIdx/blockIdx/blockDim/gridDim over 3-D
// shapes, warp and lane numbers, the launch checks cudaLaunchKernel makes, nested launches,
// kernel arguments and lambda captures copied per thread, arch::launch, and seeded scheduling.

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <set>
#include <vector>

#include "emu_test_support.hpp"

using namespace moekit;
using emu_test::checked;
using emu_test::unchecked;

namespace {

struct Seen {
  emu::Dim3 thread, block, block_dim, grid_dim;
  unsigned rank = 0, lane = 0, warp = 0, block_rank = 0;
  int visits = 0;
};

MOEKIT_KERNEL void fill_kernel(int* out, int value) {
  unsigned const n = arch::block_dim().x;
  unsigned const i = arch::block_rank() * n + arch::thread_rank();
  out[i] = value + static_cast<int>(i);
}

MOEKIT_KERNEL void divergent_kernel(int* out) {
  if (arch::thread_rank() == 0) {
    arch::sync_threads();
  } else {
    arch::sync_threads();
  }
  *out = 1;
}

}  // namespace

TEST_CASE("launch: built-in indices over a 3-D grid of 3-D blocks", "[emu][launch]") {
  emu::Dim3 const grid(3, 2, 2);
  emu::Dim3 const block(5, 3, 4);  // 60 threads: warp 1 is partial (28 lanes)
  constexpr unsigned block_threads = 60, blocks = 12;
  auto const seed = GENERATE(0u, 1u, 7u);
  auto const resident = GENERATE(1, 3);
  CAPTURE(seed, resident);

  std::vector<Seen> seen(blocks * block_threads);
  auto kernel = [](Seen* out) {
    Seen& s = out[arch::block_rank() * block_threads + arch::thread_rank()];
    s.thread = arch::thread_idx();
    s.block = arch::block_idx();
    s.block_dim = arch::block_dim();
    s.grid_dim = arch::grid_dim();
    s.rank = arch::thread_rank();
    s.lane = arch::lane_id();
    s.warp = arch::warp_id();
    s.block_rank = arch::block_rank();
    ++s.visits;
  };
  auto const r = emu::launch({.grid = grid, .block = block}, checked(seed, resident), kernel, seen.data());
  INFO(r.summary());
  REQUIRE(r.ok());

  for (unsigned b = 0; b < blocks; ++b) {
    for (unsigned t = 0; t < block_threads; ++t) {
      CAPTURE(b, t);
      Seen const& s = seen[b * block_threads + t];
      REQUIRE(s.visits == 1);
      // CUDA numbers threads x fastest, then y, then z; blocks the same way.
      CHECK(s.thread.x == t % 5);
      CHECK(s.thread.y == (t / 5) % 3);
      CHECK(s.thread.z == t / 15);
      CHECK(s.block.x == b % 3);
      CHECK(s.block.y == (b / 3) % 2);
      CHECK(s.block.z == b / 6);
      CHECK((s.block_dim.x == 5 && s.block_dim.y == 3 && s.block_dim.z == 4));
      CHECK((s.grid_dim.x == 3 && s.grid_dim.y == 2 && s.grid_dim.z == 2));
      CHECK(s.rank == t);
      CHECK(s.lane == t % 32);
      CHECK(s.warp == t / 32);
      CHECK(s.block_rank == b);
    }
  }
}

TEST_CASE("launch: warp size", "[emu][launch]") {
  STATIC_REQUIRE(arch::warp_size == 32);
  STATIC_REQUIRE(emu::VirtualDevice{}.warp_size == 32);
  STATIC_REQUIRE(emu::VirtualDevice::h100().sm_count == 132);
}

TEST_CASE("launch: a grid of one block of one thread", "[emu][launch]") {
  struct Smem {
    arch::SharedArray<int, 1> v;
  };
  std::vector<std::int64_t> out(10, -1);
  auto kernel = [](std::int64_t* o) {
    auto& s = arch::shared_storage<Smem>();
    s.v[0] = 41;
    arch::sync_threads();
    o[0] = s.v[0] + 1;
    o[1] = arch::shfl_xor_sync(arch::full_warp_mask, 7, 1);  // no partner: its own value
    o[2] = arch::shfl_down_sync(arch::full_warp_mask, 8, 1);
    o[3] = arch::ballot_sync(arch::full_warp_mask, true);
    o[4] = arch::active_mask();
    o[5] = arch::reduce_add_sync(arch::full_warp_mask, 9u);
    o[6] = arch::sync_threads_count(true);
    o[7] = arch::all_sync(arch::full_warp_mask, true) ? 1 : 0;
    o[8] = arch::match_any_sync(arch::full_warp_mask, 5);
    o[9] = static_cast<std::int64_t>(arch::block_dim().x * arch::grid_dim().x);
  };
  auto const r =
      emu::launch({.grid = 1, .block = 1, .dynamic_shared_bytes = sizeof(Smem)}, checked(), kernel, out.data());
  INFO(r.summary());
  REQUIRE(r.ok());
  CHECK(out == std::vector<std::int64_t>{42, 7, 8, 1, 1, 9, 1, 1, 1, 1});
}

TEST_CASE("launch: shapes out of CUDA's limits fail before any thread runs", "[emu][launch]") {
  struct Case {
    char const* what;
    emu::LaunchConfig config;
  };
  std::size_t const too_much_shared = emu::VirtualDevice::small().shared_memory_per_block + 1;
  Case const cases[] = {
      {"empty grid", {.grid = 0, .block = 32}},
      {"empty grid.y", {.grid = {4, 0, 1}, .block = 32}},
      {"empty block", {.grid = 1, .block = 0}},
      {"empty block.z", {.grid = 1, .block = {32, 1, 0}}},
      {"block of 1025 threads", {.grid = 1, .block = 1025}},
      {"2-D block of 2048 threads", {.grid = 1, .block = {64, 32}}},
      {"block.z = 65", {.grid = 1, .block = {1, 1, 65}}},
      {"grid.y = 65536", {.grid = {1, 65536}, .block = 1}},
      {"grid.z = 65536", {.grid = {1, 1, 65536}, .block = 1}},
      {"dynamic shared memory above the device limit",
       {.grid = 1, .block = 32, .dynamic_shared_bytes = too_much_shared}},
  };
  for (auto const& c : cases) {
    CAPTURE(c.what);
    int ran = 0;
    auto const r = emu::launch(
        c.config, checked(), [](int* n) { arch::atomic_add(n, 1); }, &ran);
    INFO(r.summary());
    CHECK(r.status == Status::launch_failed);
    CHECK(r.has(emu::Finding::invalid_launch));
    CHECK(r.diagnostics.size() == 1);
    CHECK(ran == 0);
  }
}

TEST_CASE("launch: shapes at CUDA's limits run every thread", "[emu][launch]") {
  struct Case {
    char const* what;
    emu::LaunchConfig config;
  };
  Case const cases[] = {
      {"block of 1024 threads", {.grid = 1, .block = 1024}},
      {"3-D block of 1024 threads", {.grid = 1, .block = {16, 1, 64}}},
      {"block.y = 1024", {.grid = 1, .block = {1, 1024, 1}}},
      {"3-D grid", {.grid = {2, 3, 4}, .block = {3, 1, 2}}},
  };
  for (auto const& c : cases) {
    CAPTURE(c.what);
    int ran = 0;
    auto const r = emu::launch(
        c.config, unchecked(), [](int* n) { arch::atomic_add(n, 1); }, &ran);
    INFO(r.summary());
    CHECK(r.ok());
    CHECK(static_cast<std::uint64_t>(ran) == c.config.grid.volume() * c.config.block.volume());
  }
}

TEST_CASE("launch: a kernel cannot launch another", "[emu][launch]") {
  int outcome = 0;
  auto const r = emu::launch(
      {.grid = 1, .block = 2}, checked(),
      [](int* o) {
        if (arch::thread_rank() == 0) {
          int inner_ran = 0;
          emu::LaunchResult const inner = emu::launch(
              {.grid = 1, .block = 1}, emu::LaunchOptions{}, [](int* n) { *n = 1; }, &inner_ran);
          bool const refused =
              inner.status == Status::launch_failed && inner.has(emu::Finding::invalid_launch) && inner_ran == 0;
          *o = refused ? 1 : -1;
        }
      },
      &outcome);
  INFO(r.summary());
  REQUIRE(r.ok());
  CHECK(outcome == 1);
}

TEST_CASE("launch: each thread gets its own copy of the arguments and of a lambda's captures", "[emu][launch]") {
  struct Params {
    int base;
    int scratch[4];
  };
  constexpr unsigned n = 64;

  SECTION("by-value parameters") {
    std::vector<int> out(n, -1);
    auto kernel = [](int* o, Params p, int x) {
      unsigned const t = arch::thread_rank();
      x += static_cast<int>(t);
      p.scratch[t % 4] += 1;
      arch::sync_threads();  // every thread has changed its copies before any reads them
      o[t] = x + 100 * p.base + p.scratch[t % 4];
    };
    auto const r = emu::launch({.grid = 1, .block = n}, checked(), kernel, out.data(), Params{3, {10, 20, 30, 40}}, 5);
    INFO(r.summary());
    REQUIRE(r.ok());
    for (unsigned t = 0; t < n; ++t) {
      CAPTURE(t);
      CHECK(out[t] == 5 + static_cast<int>(t) + 300 + 10 * static_cast<int>(t % 4 + 1) + 1);
    }
  }
  SECTION("captures of a mutable lambda") {
    // Under CUDA a kernel functor is a kernel parameter: each thread changes its own copy.
    std::vector<int> out(n, -1);
    auto kernel = [calls = 0](int* o) mutable {
      ++calls;
      arch::sync_threads();
      o[arch::block_rank() * (n / 2) + arch::thread_rank()] = calls;
    };
    auto const r = emu::launch({.grid = 2, .block = n / 2}, checked(), kernel, out.data());
    INFO(r.summary());
    REQUIRE(r.ok());
    CHECK(out == std::vector<int>(n, 1));
  }
}

TEST_CASE("launch: arch::launch runs a kernel function and returns a Status", "[emu][launch]") {
  std::vector<int> out(128, -1);
  Status const s = arch::launch(&fill_kernel, {.grid = 2, .block = 64}, nullptr, out.data(), 7);
  REQUIRE(s == Status::ok);
  for (int i = 0; i < 128; ++i) {
    CAPTURE(i);
    CHECK(out[static_cast<std::size_t>(i)] == 7 + i);
  }
  CHECK(arch::launch(&fill_kernel, {.grid = 1, .block = 2048}, nullptr, out.data(), 7) == Status::launch_failed);
  int flag = 0;
  CHECK(arch::launch(&divergent_kernel, {.grid = 1, .block = 64}, nullptr, &flag) == Status::emulation_error);
  CHECK(flag == 0);
}

TEST_CASE("launch: a deterministic kernel gives the same result under every schedule", "[emu][launch][schedule]") {
  constexpr unsigned blocks = 3, threads = 128;
  struct Smem {
    arch::SharedArray<int, threads> v;
    arch::SharedArray<int, 1> total;
  };
  std::vector<int> in(blocks * threads);
  for (unsigned i = 0; i < in.size(); ++i) {
    in[i] = static_cast<int>((i * 2654435761u) % 1000u) - 500;
  }
  auto kernel = [](int const* x, int* out, int* block_totals, int* grand_total) {
    auto& s = arch::shared_storage<Smem>();
    unsigned const t = arch::thread_rank();
    unsigned const g = arch::block_rank() * threads + t;
    if (t == 0) {
      s.total[0] = 0;
    }
    s.v[t] = x[g];
    arch::sync_threads();
    int v = s.v[(t * 37 + 11) % threads];  // 37 is odd: a permutation of the block
    v += arch::shfl_xor_sync(arch::full_warp_mask, v, 5);
    arch::atomic_add(&s.total[0], v);
    arch::atomic_add(grand_total, v);
    arch::sync_threads();
    out[g] = v;
    if (t == 0) {
      block_totals[arch::block_rank()] = s.total[0];
    }
  };
  // The host's answer.
  std::vector<int> want(in.size());
  std::vector<int> want_blocks(blocks, 0);
  int want_total = 0;
  for (unsigned b = 0; b < blocks; ++b) {
    auto own = [&](unsigned t) { return in[b * threads + (t * 37 + 11) % threads]; };
    for (unsigned t = 0; t < threads; ++t) {
      int const v = own(t) + own(t ^ 5u);
      want[b * threads + t] = v;
      want_blocks[b] += v;
      want_total += v;
    }
  }
  // Every seed agrees with the host, hence with every other seed.
  auto const seed = GENERATE(range(1u, 9u));
  CAPTURE(seed);
  std::vector<int> out(in.size(), 0);
  std::vector<int> block_totals(blocks, 0);
  int total = 0;
  auto const r = emu::launch({.grid = blocks, .block = threads, .dynamic_shared_bytes = sizeof(Smem)}, checked(seed, 2),
                             kernel, in.data(), out.data(), block_totals.data(), &total);
  INFO(r.summary());
  REQUIRE(r.ok());
  CHECK(out == want);
  CHECK(block_totals == want_blocks);
  CHECK(total == want_total);
}

TEST_CASE("launch: the schedule seed changes the order threads run in", "[emu][launch][schedule]") {
  constexpr unsigned blocks = 2, threads = 64, n = blocks * threads;
  // Each thread swaps its id into one slot: the old values it gets back spell out the order.
  auto kernel = [](int* slot, int* prev) {
    int const g = static_cast<int>(arch::block_rank() * threads + arch::thread_rank());
    prev[g] = arch::atomic_exch(slot, g);
  };
  auto run = [&](std::uint64_t seed) {
    int slot = -1;
    std::vector<int> prev(n + 1, -2);
    auto const r = emu::launch({.grid = blocks, .block = threads}, unchecked(seed, 2), kernel, &slot, prev.data());
    INFO(r.summary());
    REQUIRE(r.ok());
    prev[n] = slot;
    // Whatever the order, each old value is returned exactly once.
    std::vector<int> sorted = prev;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int> expected(n + 1);
    std::iota(expected.begin(), expected.end(), -1);
    REQUIRE(sorted == expected);
    return prev;
  };

  // Seed 0: threads in index order, blocks in grid order.
  std::vector<int> const ordered = run(0);
  for (unsigned g = 0; g < n; ++g) {
    CAPTURE(g);
    CHECK(ordered[g] == static_cast<int>(g) - 1);
  }
  std::set<std::vector<int>> distinct;
  for (std::uint64_t seed = 1; seed <= 8; ++seed) {
    CAPTURE(seed);
    std::vector<int> const order = run(seed);
    CHECK(order != ordered);
    distinct.insert(order);
    CHECK(run(seed) == order);  // the same seed replays the same schedule
  }
  CHECK(distinct.size() == 8);
}
