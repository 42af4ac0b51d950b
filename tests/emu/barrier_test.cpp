// Block barriers: __syncthreads and its _count/_and/_or forms, __threadfence as a scheduling
// point, and the planted barrier bugs the emulator must report instead of hanging: divergent
// barriers, a thread exiting while others wait, and a barrier/shuffle deadlock.

#include <cstdint>
#include <vector>

#include "emu_test_support.hpp"

using namespace moekit;
using emu_test::checked;
using emu_test::unchecked;

namespace {
struct Smem {
  arch::SharedArray<int, 1024> v;
};
}  // namespace

TEST_CASE("barrier: __syncthreads orders shared memory within a block", "[emu][barrier]") {
  auto const seed = GENERATE(0u, 1u, 2u, 3u);
  auto const threads = GENERATE(1u, 33u, 256u, 1024u);
  CAPTURE(seed, threads);
  std::vector<int> out(2 * threads, -1);
  // Reverse the block through shared memory, then rotate it: the second round rewrites the
  // array the first round read, so it needs the barrier in between as much as the first.
  auto kernel = [](int* o) {
    auto& s = arch::shared_storage<Smem>();
    unsigned const t = arch::thread_rank();
    unsigned const n = arch::block_dim().x;
    unsigned const b = arch::block_rank();
    s.v[t] = static_cast<int>(3 * t + 1 + 10000 * b);
    arch::sync_threads();
    int const a = s.v[n - 1 - t];
    arch::sync_threads();
    s.v[t] = 2 * a;
    arch::sync_threads();
    o[b * n + t] = s.v[(t + 1) % n];
  };
  auto const r = emu::launch({.grid = 2, .block = threads, .dynamic_shared_bytes = sizeof(Smem)}, checked(seed, 2),
                             kernel, out.data());
  INFO(r.summary());
  REQUIRE(r.ok());
  for (unsigned b = 0; b < 2; ++b) {
    for (unsigned t = 0; t < threads; ++t) {
      unsigned const src = (t + 1) % threads;
      CAPTURE(b, t);
      CHECK(out[b * threads + t] == 2 * static_cast<int>(3 * (threads - 1 - src) + 1 + 10000 * b));
    }
  }
}

TEST_CASE("barrier: __syncthreads_count, _and and _or combine one predicate per thread", "[emu][barrier]") {
  auto const seed = GENERATE(0u, 5u);
  auto const block = GENERATE(emu::Dim3(1), emu::Dim3(37), emu::Dim3(4, 5, 3), emu::Dim3(256));
  unsigned const n = static_cast<unsigned>(block.volume());
  constexpr unsigned blocks = 3, results = 7;
  CAPTURE(seed, n);
  std::vector<int> out(blocks * n * results, -1);
  auto kernel = [](int* o) {
    unsigned const t = arch::thread_rank();
    unsigned const b = arch::block_rank();
    emu::Dim3 const d = arch::block_dim();
    unsigned const nt = d.x * d.y * d.z;
    int* mine = o + (b * nt + t) * results;
    mine[0] = arch::sync_threads_count(t % 3 == b % 3);
    mine[1] = arch::sync_threads_count(false);
    mine[2] = arch::sync_threads_and(t < nt) ? 1 : 0;
    mine[3] = arch::sync_threads_and(t != nt / 2) ? 1 : 0;
    mine[4] = arch::sync_threads_or(t == nt - 1) ? 1 : 0;
    mine[5] = arch::sync_threads_or(false) ? 1 : 0;
    mine[6] = arch::sync_threads_count(true);
  };
  auto const r = emu::launch({.grid = blocks, .block = block}, checked(seed, 3), kernel, out.data());
  INFO(r.summary());
  REQUIRE(r.ok());
  for (unsigned b = 0; b < blocks; ++b) {
    int count = 0;
    for (unsigned t = 0; t < n; ++t) {
      count += t % 3 == b % 3 ? 1 : 0;
    }
    for (unsigned t = 0; t < n; ++t) {
      CAPTURE(b, t);
      int const* mine = &out[(b * n + t) * results];
      CHECK(mine[0] == count);
      CHECK(mine[1] == 0);
      CHECK(mine[2] == 1);
      CHECK(mine[3] == 0);
      CHECK(mine[4] == 1);
      CHECK(mine[5] == 0);
      CHECK(mine[6] == static_cast<int>(n));
    }
  }
}

TEST_CASE("barrier: __threadfence lets a spinning block see another block's release", "[emu][barrier]") {
  auto const seed = GENERATE(0u, 1u, 2u, 3u, 4u);
  CAPTURE(seed);
  int data = 0, flag = 0, seen = -1;
  auto kernel = [](int* d, int* f, int* s) {
    if (arch::block_rank() == 0) {
      *d = 42;
      arch::thread_fence();
      arch::atomic_exch(f, 1);
    } else {
      while (arch::atomic_add(f, 0) == 0) {
        arch::thread_fence();
      }
      arch::thread_fence();
      *s = *d;
    }
  };
  auto const r = emu::launch({.grid = 2, .block = 1}, unchecked(seed, 2), kernel, &data, &flag, &seen);
  INFO(r.summary());
  REQUIRE(r.ok());
  CHECK(seen == 42);
}

TEST_CASE("barrier: a thread spinning on a shared-memory word lets the others run, never hangs",
          "[emu][barrier][planted]") {
  // Thread 0 waits for the word thread 40 sets, reading it with no scheduling point: hardware
  // schedules threads independently; the emulator must not run thread 0 forever.
  struct Flag {
    arch::SharedArray<int, 1> word;
  };
  auto kernel = [](int* o, bool set) {
    auto& s = arch::shared_storage<Flag>();
    unsigned const t = arch::thread_rank();
    if (t == 0) {
      while (s.word[0] != 1) {}
      *o = 1;
    } else if (t == 40 && set) {
      s.word[0] = 1;
    }
  };
  int out = 0;
  SECTION("the spin ends when the other thread sets the word") {
    auto const r =
        emu::launch({.grid = 1, .block = 64, .dynamic_shared_bytes = sizeof(Flag)}, unchecked(), kernel, &out, true);
    INFO(r.summary());
    REQUIRE(r.ok());
    CHECK(out == 1);
  }
  SECTION("a spin nothing ends is reported") {
    auto const r =
        emu::launch({.grid = 1, .block = 64, .dynamic_shared_bytes = sizeof(Flag)}, unchecked(), kernel, &out, false);
    INFO(r.summary());
    CHECK(r.status == Status::emulation_error);
    CHECK(emu_test::has_message(r, emu::Finding::deadlock, "spin"));
  }
}

TEST_CASE("barrier: threads at two different __syncthreads are reported, never hang", "[emu][barrier][planted]") {
  auto const seed = GENERATE(0u, 1u, 2u, 3u);
  CAPTURE(seed);
  int passed = 0;

  SECTION("if/else with a barrier in each branch") {
    auto kernel = [](int* p) {
      if (arch::thread_rank() < 64) {
        arch::sync_threads();
      } else {
        arch::sync_threads();
      }
      arch::atomic_add(p, 1);
    };
    auto const r = emu::launch({.grid = 1, .block = 128}, checked(seed), kernel, &passed);
    INFO(r.summary());
    CHECK(r.status == Status::emulation_error);
    CHECK(emu_test::has_message(r, emu::Finding::barrier_divergence, "__syncthreads", "barrier_test.cpp:"));
    CHECK(passed == 0);  // nobody was released by a barrier the rest of the block never reached
  }
  SECTION("one warp takes an extra barrier") {
    auto kernel = [](int* p) {
      if (arch::warp_id() == 0) {
        arch::sync_threads();
      }
      arch::sync_threads();
      arch::atomic_add(p, 1);
    };
    auto const r = emu::launch({.grid = 1, .block = 96}, checked(seed), kernel, &passed);
    INFO(r.summary());
    CHECK(r.status == Status::emulation_error);
    CHECK(r.has(emu::Finding::barrier_divergence));
    CHECK(passed == 0);
  }
  SECTION("__syncthreads against __syncthreads_or") {
    auto kernel = [](int* p) {
      if (arch::thread_rank() % 2 == 0) {
        arch::sync_threads();
      } else {
        (void)arch::sync_threads_or(true);
      }
      arch::atomic_add(p, 1);
    };
    auto const r = emu::launch({.grid = 1, .block = 64}, checked(seed), kernel, &passed);
    INFO(r.summary());
    CHECK(r.has(emu::Finding::barrier_divergence));
    CHECK(passed == 0);
  }
}

TEST_CASE("barrier: a thread that exits while others wait at __syncthreads is reported", "[emu][barrier][planted]") {
  auto const seed = GENERATE(0u, 1u, 2u, 3u);
  // Thread 0 exits before anyone waits (index order); thread 63 after all the others wait.
  auto const early = GENERATE(0u, 63u);
  CAPTURE(seed, early);
  int passed = 0;
  auto kernel = [](unsigned leaver, int* p) {
    if (arch::thread_rank() == leaver) {
      return;
    }
    arch::sync_threads();
    arch::atomic_add(p, 1);
  };
  auto const r = emu::launch({.grid = 1, .block = 64}, checked(seed), kernel, early, &passed);
  INFO(r.summary());
  CHECK(r.status == Status::emulation_error);
  CHECK(emu_test::has_message(r, emu::Finding::exited_at_barrier, "__syncthreads", "thread " + std::to_string(early)));
  CHECK(passed == 0);
}

TEST_CASE("barrier: half a warp at __syncthreads, half in __shfl_sync is reported, never hangs",
          "[emu][barrier][planted]") {
  auto const seed = GENERATE(0u, 1u, 2u, 3u);
  CAPTURE(seed);
  auto kernel = [](int* o) {
    if (arch::lane_id() < 16) {
      arch::sync_threads();
    } else {
      o[arch::thread_rank()] = arch::shfl_sync(arch::full_warp_mask, 1, 0);
    }
  };
  std::vector<int> out(32, 0);
  auto const r = emu::launch({.grid = 1, .block = 32}, checked(seed), kernel, out.data());
  INFO(r.summary());
  CHECK(r.status == Status::emulation_error);
  CHECK((r.has(emu::Finding::deadlock) || r.has(emu::Finding::barrier_divergence)));
  if (r.has(emu::Finding::deadlock)) {  // it says where each thread waits
    CHECK(emu_test::has_message(r, emu::Finding::deadlock, "threads 0-15 wait at __syncthreads",
                                "threads 16-31 wait at __shfl_sync"));
  }
  CHECK(out == std::vector<int>(32, 0));
}
