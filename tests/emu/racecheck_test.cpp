// racecheck and initcheck on planted bugs, each next to its fixed twin that must be clean:
// a block reduction missing its __syncthreads, two threads writing one word, a warp exchange
// with and without __syncwarp, BlockScan's TempStorage reused without a barrier, and reads of
// shared memory nothing wrote.

#include <charconv>
#include <cstdint>
#include <string>
#include <vector>

#include "emu_test_support.hpp"

using namespace moekit;
using emu_test::checked;

namespace {

constexpr unsigned threads = 128;

struct Smem {
  arch::SharedArray<int, threads> v;
};

bool is_race(emu::Finding f) {
  return f == emu::Finding::race_read_after_write || f == emu::Finding::race_write_after_read ||
         f == emu::Finding::race_write_after_write;
}

// The number that follows `key` in `s` at or after `from`, or -1.
long number_after(std::string const& s, std::string const& key, std::size_t from = 0) {
  std::size_t const at = s.find(key, from);
  if (at == std::string::npos) {
    return -1;
  }
  long v = -1;
  char const* first = s.data() + at + key.size();
  auto const [end, ec] = std::from_chars(first, s.data() + s.size(), v);
  return ec == std::errc{} && end != first ? v : -1;
}

// A race report names the accessing thread, the shared-memory offset and the other thread:
// "thread 1 (1,0,0) of block (0,0,0) writes 4 byte(s) ... at offset 4 ... by thread 0 with no barrier".
bool race_names_both_threads_and_address(emu::LaunchResult const& r) {
  for (auto const& d : r.diagnostics) {
    if (!is_race(d.kind) || d.message.rfind("thread ", 0) != 0) {
      continue;
    }
    long const accessor = number_after(d.message, "thread ");
    long const offset = number_after(d.message, " at offset ");
    std::size_t const by = d.message.find(" by thread ");
    long const other = number_after(d.message, " by thread ");
    bool const no_barrier = by != std::string::npos && d.message.find(" with no barrier", by) != std::string::npos;
    if (accessor >= 0 && offset >= 0 && other >= 0 && other != accessor && no_barrier) {
      return true;
    }
  }
  return false;
}

std::size_t race_count(emu::LaunchResult const& r) {
  std::size_t n = 0;
  for (auto const& d : r.diagnostics) {
    n += is_race(d.kind) ? 1 : 0;
  }
  return n;
}

// Tree reduction in shared memory: each step writes s[t] from its neighbour s[t + stride].
template <bool Barriers>
void tree_sum(int const* in, int* out) {
  auto& s = arch::shared_storage<Smem>();
  unsigned const t = arch::thread_rank();
  s.v[t] = in[t];
  if constexpr (Barriers) {
    arch::sync_threads();
  }
  for (unsigned stride = 1; stride < threads; stride *= 2) {
    if (t % (2 * stride) == 0) {
      s.v[t] = s.v[t] + s.v[t + stride];
    }
    if constexpr (Barriers) {
      arch::sync_threads();
    }
  }
  if (t == 0) {
    *out = s.v[0];
  }
}

}  // namespace

TEST_CASE("racecheck: a block reduction missing its __syncthreads", "[emu][racecheck][planted]") {
  auto const seed = GENERATE(0u, 1u, 2u, 3u);
  CAPTURE(seed);
  std::vector<int> in(threads);
  int want = 0;
  for (unsigned i = 0; i < threads; ++i) {
    in[i] = static_cast<int>(i * i % 17) - 8;
    want += in[i];
  }
  int sum = 0;
  SECTION("with the barriers it is clean and right") {
    auto const r = emu::launch({.grid = 1, .block = threads, .dynamic_shared_bytes = sizeof(Smem)}, checked(seed),
                               tree_sum<true>, in.data(), &sum);
    INFO(r.summary());
    REQUIRE(r.ok());
    CHECK(sum == want);
  }
  SECTION("without them racecheck names both threads and the address") {
    emu::LaunchOptions o = checked(seed);
    o.initcheck = false;  // only racecheck: the report must not depend on initcheck
    auto const r = emu::launch({.grid = 1, .block = threads, .dynamic_shared_bytes = sizeof(Smem)}, o, tree_sum<false>,
                               in.data(), &sum);
    INFO(r.summary());
    CHECK(r.status == Status::emulation_error);
    CHECK(race_count(r) > 0);
    CHECK(race_names_both_threads_and_address(r));
  }
}

TEST_CASE("racecheck: in index order the first race is thread 1 overwriting what thread 0 read",
          "[emu][racecheck][planted]") {
  // Thread 0 runs alone up to its exit: it reads s[1] before thread 1 ever writes it.
  std::vector<int> in(threads, 1);
  int sum = 0;
  emu::LaunchOptions o = checked(0);
  o.initcheck = false;
  auto const r = emu::launch({.grid = 1, .block = threads, .dynamic_shared_bytes = sizeof(Smem)}, o, tree_sum<false>,
                             in.data(), &sum);
  INFO(r.summary());
  REQUIRE_FALSE(r.diagnostics.empty());
  CHECK(r.diagnostics[0].kind == emu::Finding::race_write_after_read);
  CHECK(emu_test::contains(r.diagnostics[0].message, "thread 1 "));
  CHECK(emu_test::contains(r.diagnostics[0].message, "at offset 4 "));
  CHECK(emu_test::contains(r.diagnostics[0].message, "by thread 0 "));
}

TEST_CASE("racecheck: two threads writing one word with no barrier between", "[emu][racecheck][planted]") {
  auto const seed = GENERATE(0u, 1u, 2u, 3u);
  CAPTURE(seed);
  int out = 0;
  SECTION("write after write is reported") {
    auto const r = emu::launch(
        {.grid = 1, .block = 32, .dynamic_shared_bytes = sizeof(Smem)}, checked(seed),
        [](int* o) {
          auto& s = arch::shared_storage<Smem>();
          unsigned const t = arch::thread_rank();
          if (t == 3 || t == 7) {
            s.v[5] = static_cast<int>(t);
          }
          arch::sync_threads();
          if (t == 0) {
            *o = s.v[5];
          }
        },
        &out);
    INFO(r.summary());
    CHECK(r.status == Status::emulation_error);
    CHECK(r.diagnostics.size() == 1);
    CHECK(emu_test::has_message(r, emu::Finding::race_write_after_write, "offset 20"));
    CHECK(race_names_both_threads_and_address(r));
  }
  SECTION("a barrier between the writes makes it clean") {
    auto const r = emu::launch(
        {.grid = 1, .block = 32, .dynamic_shared_bytes = sizeof(Smem)}, checked(seed),
        [](int* o) {
          auto& s = arch::shared_storage<Smem>();
          unsigned const t = arch::thread_rank();
          if (t == 3) {
            s.v[5] = 3;
          }
          arch::sync_threads();
          if (t == 7) {
            s.v[5] = 7;
          }
          arch::sync_threads();
          if (t == 0) {
            *o = s.v[5];
          }
        },
        &out);
    INFO(r.summary());
    REQUIRE(r.ok());
    CHECK(out == 7);
  }
  SECTION("one thread writing twice, and every thread reading, are not races") {
    auto const r = emu::launch(
        {.grid = 1, .block = 64, .dynamic_shared_bytes = sizeof(Smem)}, checked(seed),
        [](int* o) {
          auto& s = arch::shared_storage<Smem>();
          unsigned const t = arch::thread_rank();
          if (t == 9) {
            s.v[0] = 1;
            s.v[0] = s.v[0] + 1;
          }
          arch::sync_threads();
          arch::atomic_add(o, static_cast<int>(s.v[0]));
        },
        &out);
    INFO(r.summary());
    REQUIRE(r.ok());
    CHECK(out == 2 * 64);
  }
  SECTION("blocks have separate shared memory: the same word in four resident blocks is no race") {
    auto const r = emu::launch(
        {.grid = 4, .block = 32, .dynamic_shared_bytes = sizeof(Smem)}, checked(seed, 4),
        [](int* o) {
          auto& s = arch::shared_storage<Smem>();
          if (arch::thread_rank() == 0) {
            s.v[0] = static_cast<int>(arch::block_rank());
            arch::thread_fence();
            arch::atomic_add(o, static_cast<int>(s.v[0]));
          }
        },
        &out);
    INFO(r.summary());
    REQUIRE(r.ok());
    CHECK(out == 0 + 1 + 2 + 3);
  }
}

TEST_CASE("racecheck: a warp-synchronous exchange needs __syncwarp", "[emu][racecheck][planted]") {
  auto const seed = GENERATE(0u, 1u, 2u, 3u);
  CAPTURE(seed);
  std::vector<int> out(64, -1);
  // Each lane publishes a value and reads its neighbour's, twice (the second round rewrites
  // what the first one read).
  auto kernel = [](int* o, bool syncwarp, bool across_warps) {
    auto& s = arch::shared_storage<Smem>();
    unsigned const t = arch::thread_rank();
    unsigned const partner = across_warps ? (t + 32) % 64 : t ^ 1u;
    s.v[t] = static_cast<int>(t);
    if (syncwarp) {
      arch::sync_warp();
    }
    int const a = s.v[partner];
    if (syncwarp) {
      arch::sync_warp();
    }
    s.v[t] = 100 * a;
    if (syncwarp) {
      arch::sync_warp();
    }
    o[t] = s.v[partner];
  };
  auto const launch = [&](bool syncwarp, bool across_warps) {
    emu::LaunchOptions o = checked(seed);
    // Without the syncs lanes also read words not yet written; keep the report to races.
    o.initcheck = syncwarp && !across_warps;
    return emu::launch({.grid = 1, .block = 64, .dynamic_shared_bytes = sizeof(Smem)}, o, kernel, out.data(), syncwarp,
                       across_warps);
  };
  SECTION("with __syncwarp between the steps it is clean") {
    auto const r = launch(true, false);
    INFO(r.summary());
    REQUIRE(r.ok());
    for (unsigned t = 0; t < 64; ++t) {
      CAPTURE(t);
      CHECK(out[t] == 100 * static_cast<int>(t));
    }
  }
  SECTION("without it the race is reported") {
    auto const r = launch(false, false);
    INFO(r.summary());
    CHECK(r.status == Status::emulation_error);
    CHECK(race_names_both_threads_and_address(r));
  }
  SECTION("__syncwarp does not order lanes of different warps") {
    auto const r = launch(true, true);
    INFO(r.summary());
    CHECK(r.status == Status::emulation_error);
    CHECK(race_names_both_threads_and_address(r));
  }
}

TEST_CASE("racecheck: BlockScan's TempStorage reused without a barrier", "[emu][racecheck][planted]") {
  using Scan = arch::BlockScan<int, threads>;
  auto const seed = GENERATE(0u, 1u, 2u);
  CAPTURE(seed);
  std::vector<int> out(2 * threads, -1);
  auto kernel = [](int* o, bool barrier) {
    auto& storage = arch::shared_storage<Scan::TempStorage>();
    unsigned const t = arch::thread_rank();
    int first = 0, second = 0;
    Scan(storage).exclusive_sum(static_cast<int>(t), first);
    if (barrier) {
      arch::sync_threads();
    }
    Scan(storage).inclusive_sum(1, second);
    o[t] = first;
    o[threads + t] = second;
  };
  SECTION("with the barrier: clean and right") {
    auto const r = emu::launch({.grid = 1, .block = threads, .dynamic_shared_bytes = sizeof(Scan::TempStorage)},
                               checked(seed), kernel, out.data(), true);
    INFO(r.summary());
    REQUIRE(r.ok());
    for (unsigned t = 0; t < threads; ++t) {
      CAPTURE(t);
      CHECK(out[t] == static_cast<int>(t * (t - 1) / 2));
      CHECK(out[threads + t] == static_cast<int>(t + 1));
    }
  }
  SECTION("without it: reported") {
    auto const r = emu::launch({.grid = 1, .block = threads, .dynamic_shared_bytes = sizeof(Scan::TempStorage)},
                               checked(seed), kernel, out.data(), false);
    INFO(r.summary());
    CHECK(r.status == Status::emulation_error);
    CHECK(race_names_both_threads_and_address(r));
  }
}

TEST_CASE("initcheck: reads of shared memory nothing wrote", "[emu][initcheck][planted]") {
  auto const seed = GENERATE(0u, 1u);
  CAPTURE(seed);
  int out = 0;
  // Threads 0..62 write their word; everyone reads word `probe`.
  auto kernel = [](int* o, unsigned probe) {
    auto& s = arch::shared_storage<Smem>();
    unsigned const t = arch::thread_rank();
    if (t < 63) {
      s.v[t] = 1;
    }
    arch::sync_threads();
    if (t == 0) {
      *o = s.v[probe];
    }
  };
  SECTION("a written word is fine") {
    auto const r =
        emu::launch({.grid = 1, .block = 64, .dynamic_shared_bytes = sizeof(Smem)}, checked(seed), kernel, &out, 62u);
    INFO(r.summary());
    REQUIRE(r.ok());
    CHECK(out == 1);
  }
  SECTION("the word nobody wrote is reported") {
    auto const r =
        emu::launch({.grid = 1, .block = 64, .dynamic_shared_bytes = sizeof(Smem)}, checked(seed), kernel, &out, 63u);
    INFO(r.summary());
    CHECK(r.status == Status::emulation_error);
    CHECK(emu_test::has_message(r, emu::Finding::uninitialized_read, "offset 252", "nothing wrote"));
  }
  SECTION("with initcheck off it is not") {
    emu::LaunchOptions o = checked(seed);
    o.initcheck = false;
    auto const r = emu::launch({.grid = 1, .block = 64, .dynamic_shared_bytes = sizeof(Smem)}, o, kernel, &out, 63u);
    INFO(r.summary());
    CHECK(r.ok());
  }
  SECTION("an atomic on a word nobody wrote is reported") {
    auto const r = emu::launch(
        {.grid = 1, .block = 32, .dynamic_shared_bytes = sizeof(Smem)}, checked(seed),
        [](int* o) {
          auto& s = arch::shared_storage<Smem>();
          *o = arch::atomic_add(&s.v[3], 1);
        },
        &out);
    INFO(r.summary());
    CHECK(emu_test::has_message(r, emu::Finding::uninitialized_read, "atomic", "offset 12"));
  }
  SECTION("each block starts uninitialised: what block 0 wrote does not count for block 1") {
    auto const r = emu::launch(
        {.grid = 2, .block = 32, .dynamic_shared_bytes = sizeof(Smem)}, checked(seed),
        [](int* o) {
          auto& s = arch::shared_storage<Smem>();
          if (arch::block_rank() == 0 && arch::thread_rank() == 0) {
            s.v[0] = 5;
          }
          arch::sync_threads();
          if (arch::thread_rank() == 0) {
            *o += s.v[0];
          }
        },
        &out);
    INFO(r.summary());
    CHECK(emu_test::has_message(r, emu::Finding::uninitialized_read, "block (1,0,0)", "offset 0"));
  }
}

TEST_CASE("racecheck: findings beyond max_diagnostics are counted, not listed", "[emu][racecheck]") {
  emu::LaunchOptions o = checked();
  o.max_diagnostics = 3;
  int sum = 0;
  std::vector<int> in(threads, 1);
  auto const r = emu::launch({.grid = 1, .block = threads, .dynamic_shared_bytes = sizeof(Smem)}, o, tree_sum<false>,
                             in.data(), &sum);
  CHECK(r.status == Status::emulation_error);
  CHECK(r.diagnostics.size() == 3);
  CHECK(r.suppressed > 0);
  CHECK(emu_test::contains(r.summary(), "more"));
}

TEST_CASE("racecheck: atomics on shared memory race with plain accesses, not with each other",
          "[emu][racecheck][planted]") {
  auto const seed = GENERATE(0u, 1u, 2u);
  CAPTURE(seed);
  // A shared histogram of 8 bins over 64 threads: thread t adds 1 to bin t % 8. `missing`
  // names the barrier left out: 1 the one between zeroing and the atomics, 2 the one between
  // the atomics and the read; 3 keeps both but lets thread 33 reset bin 5 right after its add;
  // 4 has warp 0 only, ordered by __syncwarp instead of barriers.
  auto kernel = [](int* o, int missing) {
    auto& s = arch::shared_storage<Smem>();
    unsigned const t = arch::thread_rank();
    if (t < 8) {
      s.v[t] = 0;
    }
    if (missing == 4) {
      arch::sync_warp();
    } else if (missing != 1) {
      arch::sync_threads();
    }
    arch::atomic_add(&s.v[t % 8], 1);
    if (missing == 3 && t == 33) {
      s.v[5] = 0;
    }
    if (missing == 4) {
      arch::sync_warp();
    } else if (missing != 2) {
      arch::sync_threads();
    }
    if (t < 8) {
      o[t] = s.v[t];
    }
  };
  std::vector<int> out(8, -1);
  auto const launch = [&](int missing) {
    return emu::launch({.grid = 1, .block = missing == 4 ? 32u : 64u, .dynamic_shared_bytes = sizeof(Smem)},
                       checked(seed), kernel, out.data(), missing);
  };
  SECTION("with the barriers: clean and right") {
    auto const r = launch(0);
    INFO(r.summary());
    REQUIRE(r.ok());
    CHECK(out == std::vector<int>(8, 8));
  }
  SECTION("within one warp, __syncwarp orders them: clean and right") {
    auto const r = launch(4);
    INFO(r.summary());
    REQUIRE(r.ok());
    CHECK(out == std::vector<int>(8, 4));
  }
  SECTION("zeroing with no barrier before the atomics is reported") {
    auto const r = launch(1);
    INFO(r.summary());
    CHECK(r.status == Status::emulation_error);
    CHECK(race_names_both_threads_and_address(r));
  }
  SECTION("reading the bins with no barrier after the atomics is reported") {
    auto const r = launch(2);
    INFO(r.summary());
    CHECK(r.status == Status::emulation_error);
    CHECK(emu_test::has_message(r, emu::Finding::race_read_after_write, "reads 4 byte(s)"));
  }
  SECTION("a plain write over other threads' atomics is reported") {
    auto const r = launch(3);
    INFO(r.summary());
    CHECK(r.status == Status::emulation_error);
    CHECK(emu_test::has_message(r, emu::Finding::race_write_after_write, "thread 33 ", "offset 20"));
  }
}
