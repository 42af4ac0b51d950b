// CUB-style block primitives under emulation against the host: BlockScan (exclusive, inclusive,
// aggregate), BlockReduce (sum, custom operator, block sizes not a multiple of 32) and
// BlockRadixSort (keys, keys + values, stable, signed integers, floats including -0.0, inf).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "emu_test_support.hpp"

using namespace moekit;
using emu_test::checked;

namespace {

constexpr unsigned blocks = 3;

template <class T, int Threads>
void scan_kernel(T const* in, T* exclusive, T* inclusive, T* aggregate) {
  using Scan = arch::BlockScan<T, Threads>;
  auto& storage = arch::shared_storage<typename Scan::TempStorage>();
  unsigned const g = arch::block_rank() * Threads + arch::thread_rank();
  T agg{};
  Scan(storage).exclusive_sum(in[g], exclusive[g], agg);
  aggregate[g] = agg;
  arch::sync_threads();  // TempStorage is reused
  Scan(storage).inclusive_sum(in[g], inclusive[g]);
}

template <class T, int Threads>
void check_scan(std::vector<T> const& in, std::uint64_t seed) {
  std::size_t const n = in.size();
  std::vector<T> exclusive(n), inclusive(n), aggregate(n);
  auto const r = emu::launch({.grid = blocks,
                              .block = Threads,
                              .dynamic_shared_bytes = sizeof(typename arch::BlockScan<T, Threads>::TempStorage)},
                             checked(seed, 2), scan_kernel<T, Threads>, in.data(), exclusive.data(), inclusive.data(),
                             aggregate.data());
  INFO(r.summary());
  REQUIRE(r.ok());
  for (unsigned b = 0; b < blocks; ++b) {
    T run{};
    T total{};
    for (unsigned t = 0; t < static_cast<unsigned>(Threads); ++t) {
      total += in[b * Threads + t];
    }
    for (unsigned t = 0; t < static_cast<unsigned>(Threads); ++t) {
      unsigned const g = b * Threads + t;
      CAPTURE(b, t);
      CHECK(exclusive[g] == run);
      run += in[g];
      CHECK(inclusive[g] == run);
      CHECK(aggregate[g] == total);
    }
  }
}

template <class T, int Threads>
void reduce_kernel(T const* in, T* sum, T* max) {
  using Reduce = arch::BlockReduce<T, Threads>;
  auto& storage = arch::shared_storage<typename Reduce::TempStorage>();
  unsigned const t = arch::thread_rank();
  unsigned const g = arch::block_rank() * Threads + t;
  T const s = Reduce(storage).sum(in[g]);
  arch::sync_threads();
  T const m = Reduce(storage).reduce(in[g], [](T a, T b) { return a < b ? b : a; });
  if (t == 0) {  // valid in thread 0 only, as in CUB
    sum[arch::block_rank()] = s;
    max[arch::block_rank()] = m;
  }
}

template <class T, int Threads>
void check_reduce(std::vector<T> const& in, std::uint64_t seed) {
  std::vector<T> sum(blocks), max(blocks);
  auto const r = emu::launch({.grid = blocks,
                              .block = Threads,
                              .dynamic_shared_bytes = sizeof(typename arch::BlockReduce<T, Threads>::TempStorage)},
                             checked(seed, 2), reduce_kernel<T, Threads>, in.data(), sum.data(), max.data());
  INFO(r.summary());
  REQUIRE(r.ok());
  for (unsigned b = 0; b < blocks; ++b) {
    auto const first = in.begin() + b * Threads, last = first + Threads;
    CAPTURE(b);
    CHECK(sum[b] == std::accumulate(first, last, T{}));
    CHECK(max[b] == *std::max_element(first, last));
  }
}

// CUB's radix order: numeric order, with -0.0 before +0.0 (no NaNs here).
template <class Key>
bool radix_less(Key a, Key b) {
  if constexpr (std::is_floating_point_v<Key>) {
    if (a == b) {
      return std::signbit(a) && !std::signbit(b);
    }
  }
  return a < b;
}

template <class Key, int Threads, int Items, class Value>
void sort_kernel(Key* keys, Value* values) {
  using Sort = arch::BlockRadixSort<Key, Threads, Items, Value>;
  auto& storage = arch::shared_storage<typename Sort::TempStorage>();
  unsigned const base = (arch::block_rank() * Threads + arch::thread_rank()) * Items;
  Key k[Items];
  for (int i = 0; i < Items; ++i) {
    k[i] = keys[base + static_cast<unsigned>(i)];
  }
  if constexpr (std::is_void_v<Value>) {
    Sort(storage).sort(k);
  } else {
    Value v[Items];
    for (int i = 0; i < Items; ++i) {
      v[i] = values[base + static_cast<unsigned>(i)];
    }
    Sort(storage).sort(k, v);
    for (int i = 0; i < Items; ++i) {
      values[base + static_cast<unsigned>(i)] = v[i];
    }
  }
  for (int i = 0; i < Items; ++i) {
    keys[base + static_cast<unsigned>(i)] = k[i];
  }
}

// Sorts each block's slice of `keys` (blocked arrangement) on the emulator and on the host.
template <class Key, int Threads, int Items, bool WithValues>
void check_sort(std::vector<Key> keys, std::uint64_t seed) {
  using Value = std::conditional_t<WithValues, std::int32_t, void>;
  using Sort = arch::BlockRadixSort<Key, Threads, Items, Value>;
  constexpr unsigned per_block = Threads * Items;
  REQUIRE(keys.size() == blocks * per_block);
  std::vector<std::int32_t> values(keys.size());
  std::iota(values.begin(), values.end(), 0);  // each item's original position
  std::vector<Key> const original = keys;

  auto const r = [&] {
    emu::LaunchConfig const c{
        .grid = blocks, .block = Threads, .dynamic_shared_bytes = sizeof(typename Sort::TempStorage)};
    if constexpr (WithValues) {
      return emu::launch(c, checked(seed, 2), sort_kernel<Key, Threads, Items, Value>, keys.data(), values.data());
    } else {
      return emu::launch(c, checked(seed, 2), sort_kernel<Key, Threads, Items, Value>, keys.data(),
                         static_cast<Value*>(nullptr));
    }
  }();
  INFO(r.summary());
  REQUIRE(r.ok());

  for (unsigned b = 0; b < blocks; ++b) {
    std::vector<std::int32_t> order(per_block);
    std::iota(order.begin(), order.end(), static_cast<std::int32_t>(b * per_block));
    std::stable_sort(order.begin(), order.end(), [&](std::int32_t x, std::int32_t y) {
      return radix_less(original[static_cast<unsigned>(x)], original[static_cast<unsigned>(y)]);
    });
    for (unsigned i = 0; i < per_block; ++i) {
      unsigned const at = b * per_block + i;
      Key const want = original[static_cast<unsigned>(order[i])];
      Key const got = keys[at];
      CAPTURE(b, i, want, got);
      // Bitwise: tells -0.0 from +0.0.
      REQUIRE(std::memcmp(&got, &want, sizeof(Key)) == 0);
      if constexpr (WithValues) {
        REQUIRE(values[at] == order[i]);  // stable: equal keys keep their order
      }
    }
  }
}

template <class T>
std::vector<T> random_values(std::size_t n, std::uint32_t seed, T lo, T hi) {
  std::mt19937 rng(seed);
  std::vector<T> v(n);
  if constexpr (std::is_floating_point_v<T>) {
    std::uniform_real_distribution<T> d(lo, hi);
    for (auto& x : v) {
      x = d(rng);
    }
  } else {
    std::uniform_int_distribution<T> d(lo, hi);
    for (auto& x : v) {
      x = d(rng);
    }
  }
  return v;
}

}  // namespace

TEST_CASE("block primitives: BlockScan", "[emu][block_primitives]") {
  auto const seed = GENERATE(0u, 1u, 2u);
  CAPTURE(seed);
  SECTION("int, 128 threads") { check_scan<int, 128>(random_values<int>(blocks * 128, 1, -1000, 1000), seed); }
  SECTION("long long, 96 threads") {
    check_scan<long long, 96>(random_values<long long>(blocks * 96, 2, -(1LL << 50), 1LL << 50), seed);
  }
  SECTION("float in quarters (sums exact in any order), 64 threads") {
    std::vector<float> in = random_values<float>(blocks * 64, 3, -100.0f, 100.0f);
    for (auto& x : in) {
      x = std::round(x * 4.0f) / 4.0f;
    }
    check_scan<float, 64>(in, seed);
  }
}

TEST_CASE("block primitives: BlockReduce", "[emu][block_primitives]") {
  auto const seed = GENERATE(0u, 1u, 2u);
  CAPTURE(seed);
  SECTION("int, 256 threads") { check_reduce<int, 256>(random_values<int>(blocks * 256, 4, -100000, 100000), seed); }
  SECTION("unsigned, 100 threads") {
    check_reduce<unsigned, 100>(random_values<unsigned>(blocks * 100, 5, 0u, 0xffffffffu), seed);
  }
  SECTION("double in halves, 33 threads") {
    std::vector<double> in = random_values<double>(blocks * 33, 6, -1e6, 1e6);
    for (auto& x : in) {
      x = std::round(x * 2.0) / 2.0;
    }
    check_reduce<double, 33>(in, seed);
  }
}

TEST_CASE("block primitives: BlockRadixSort", "[emu][block_primitives]") {
  auto const seed = GENERATE(0u, 1u);
  CAPTURE(seed);
  SECTION("int keys over the whole range") {
    std::vector<int> keys =
        random_values<int>(blocks * 128 * 4, 7, std::numeric_limits<int>::min(), std::numeric_limits<int>::max());
    keys[0] = std::numeric_limits<int>::min();
    keys[1] = std::numeric_limits<int>::max();
    keys[2] = 0;
    keys[3] = -1;
    check_sort<int, 128, 4, false>(keys, seed);
  }
  SECTION("int keys with many duplicates, with values: stable") {
    check_sort<int, 128, 4, true>(random_values<int>(blocks * 128 * 4, 8, -8, 8), seed);
  }
  SECTION("float keys with -0.0, +0.0 and infinities, with values") {
    std::vector<float> keys = random_values<float>(blocks * 64 * 3, 9, -1e3f, 1e3f);
    for (std::size_t i = 0; i < keys.size(); i += 5) {
      keys[i] = std::round(keys[i] / 100.0f);  // duplicates, including -0.0 and +0.0
    }
    keys[1] = -0.0f;
    keys[2] = 0.0f;
    keys[3] = -0.0f;
    keys[4] = std::numeric_limits<float>::infinity();
    keys[6] = -std::numeric_limits<float>::infinity();
    keys[7] = std::numeric_limits<float>::denorm_min();
    keys[8] = -std::numeric_limits<float>::denorm_min();
    check_sort<float, 64, 3, true>(keys, seed);
  }
  SECTION("long long keys, 64 threads x 2") {
    check_sort<long long, 64, 2, true>(random_values<long long>(blocks * 64 * 2, 10,
                                                                std::numeric_limits<long long>::min(),
                                                                std::numeric_limits<long long>::max()),
                                       seed);
  }
  SECTION("double keys") {
    std::vector<double> keys = random_values<double>(blocks * 32 * 4, 11, -1e300, 1e300);
    keys[5] = -0.0;
    keys[6] = 0.0;
    check_sort<double, 32, 4, false>(keys, seed);
  }
  SECTION("8192 long long keys with values: more than an emulated thread's stack holds") {
    // 8192 items of 8-byte keys, 4-byte values and 4-byte indices are 128 KiB, twice the 64 KiB
    // stack of an emulated thread: the sort must not keep its scratch on the stack.
    check_sort<long long, 512, 16, true>(random_values<long long>(blocks * 512 * 16, 12, -1000, 1000), seed);
  }
}

TEST_CASE("block primitives: a block size other than the one instantiated is reported",
          "[emu][block_primitives][planted]") {
  using Scan = arch::BlockScan<int, 128>;
  int out = 0;
  auto const r = emu::launch(
      {.grid = 1, .block = 64, .dynamic_shared_bytes = sizeof(Scan::TempStorage)}, checked(),
      [](int* o) {
        int x = 0;
        Scan(arch::shared_storage<Scan::TempStorage>()).exclusive_sum(1, x);
        *o = x;
      },
      &out);
  INFO(r.summary());
  CHECK(emu_test::has_message(r, emu::Finding::invalid_operation, "BlockScan", "128", "64"));
}
