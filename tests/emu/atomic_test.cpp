// Atomics: add and exchange for int, unsigned, long long, unsigned long long, float and
// double; min, max and compare-and-swap for the integers; on global and shared memory,
// contended by every thread of several interleaved blocks, checked exactly.

#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "emu_test_support.hpp"

using namespace moekit;
using emu_test::checked;

namespace {

constexpr unsigned blocks = 4, threads = 96, n = blocks * threads;

template <class T>
concept has_atomic_min = requires(T* p, T v) {
  arch::atomic_min(p, v);
};
template <class T>
concept has_atomic_cas = requires(T* p, T v) {
  arch::atomic_cas(p, v, v);
};

// Addends whose sums are exact in T in any order (unsigned ones wrap, as they may).
template <class T>
T addend(unsigned g) {
  if constexpr (std::is_same_v<T, int>) {
    return static_cast<int>(g % 7) - 3;
  } else if constexpr (std::is_same_v<T, unsigned>) {
    return 0x9E3779B9u * (g + 1);
  } else if constexpr (std::is_same_v<T, long long>) {
    return (static_cast<long long>(g % 7) - 3) * 1'000'000'000'000LL;
  } else if constexpr (std::is_same_v<T, unsigned long long>) {
    return 0x9E3779B97F4A7C15ull * (g + 1);
  } else if constexpr (std::is_same_v<T, float>) {
    return static_cast<float>(g % 7) * 0.5f - 1.5f;
  } else {
    return static_cast<double>(g % 7) * 0.25 - 0.75 + 1099511627776.0;  // + 2^40
  }
}

// Distinct values to exchange, and keys for min/max spread over the whole range of T.
template <class T>
T distinct(unsigned g) {
  if constexpr (std::is_floating_point_v<T>) {
    return static_cast<T>(g) * T(0.5) - T(100);
  } else {
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(g + 1) * static_cast<U>(0x9E3779B97F4A7C15ull));
  }
}

// What thread g tries to store when it claims a slot: high bits set where T has them.
template <class T>
T claim_value(unsigned g) {
  return static_cast<T>(static_cast<T>(g) + (T(1) << (sizeof(T) == 8 ? 40 : 20)));
}

template <class T>
struct AtomicSmem {
  arch::SharedArray<T, 2> acc;
};

template <class T>
void add_exch_kernel(T* sums, T* counter, T* counter_old, T* slot, T* slot_old, T* block_sums) {
  auto& s = arch::shared_storage<AtomicSmem<T>>();
  unsigned const t = arch::thread_rank();
  unsigned const g = arch::block_rank() * threads + t;
  if (t == 0) {
    s.acc[0] = T(0);
  }
  arch::sync_threads();
  counter_old[g] = arch::atomic_add(counter, T(1));
  arch::atomic_add(sums, addend<T>(g));
  arch::atomic_add(&s.acc[0], addend<T>(g));
  slot_old[g] = arch::atomic_exch(slot, distinct<T>(g));
  arch::sync_threads();
  if (t == 0) {
    block_sums[arch::block_rank()] = s.acc[0];
  }
}

template <class T>
void check_add_exch(std::uint64_t seed) {
  T sum = T(0), counter = T(0), slot = T(42);
  std::vector<T> counter_old(n), slot_old(n), block_sums(blocks);
  auto const r =
      emu::launch({.grid = blocks, .block = threads, .dynamic_shared_bytes = sizeof(AtomicSmem<T>)}, checked(seed, 4),
                  add_exch_kernel<T>, &sum, &counter, counter_old.data(), &slot, slot_old.data(), block_sums.data());
  INFO(r.summary());
  REQUIRE(r.ok());

  T want = T(0);
  for (unsigned b = 0; b < blocks; ++b) {
    T block = T(0);
    for (unsigned t = 0; t < threads; ++t) {
      block += addend<T>(b * threads + t);
    }
    CAPTURE(b);
    CHECK(block_sums[b] == block);
    want += block;
  }
  CHECK(sum == want);
  // Adding 1 n times returns each count 0 .. n-1 once, in some order.
  CHECK(counter == T(n));
  std::sort(counter_old.begin(), counter_old.end());
  for (unsigned i = 0; i < n; ++i) {
    CAPTURE(i);
    REQUIRE(counter_old[i] == T(i));
  }
  // Each value exchanged in, and the initial one, comes out exactly once.
  std::vector<T> out = slot_old;
  out.push_back(slot);
  std::vector<T> in{T(42)};
  for (unsigned g = 0; g < n; ++g) {
    in.push_back(distinct<T>(g));
  }
  std::sort(out.begin(), out.end());
  std::sort(in.begin(), in.end());
  CHECK(out == in);
}

template <class T>
void min_max_cas_kernel(T* lo, T* hi, T* lo_old, T* hi_old, T* counter, T* owner, T* owner_old, T* block_lo,
                        T* block_hi) {
  auto& s = arch::shared_storage<AtomicSmem<T>>();
  unsigned const t = arch::thread_rank();
  unsigned const g = arch::block_rank() * threads + t;
  if (t == 0) {
    s.acc[0] = std::numeric_limits<T>::max();
    s.acc[1] = std::numeric_limits<T>::min();
  }
  arch::sync_threads();
  T const key = distinct<T>(g);
  lo_old[g] = arch::atomic_min(lo, key);
  hi_old[g] = arch::atomic_max(hi, key);
  arch::atomic_min(&s.acc[0], key);
  arch::atomic_max(&s.acc[1], key);
  // An increment built from compare-and-swap retries while other threads get in between.
  T old = arch::atomic_add(counter, T(0));
  for (;;) {
    T const assumed = old;
    old = arch::atomic_cas(counter, assumed, static_cast<T>(assumed + 1));
    if (old == assumed) {
      break;
    }
  }
  // Every thread tries to claim `owner` once: exactly one finds it free.
  owner_old[g] = arch::atomic_cas(owner, std::numeric_limits<T>::max(), claim_value<T>(g));
  arch::sync_threads();
  if (t == 0) {
    block_lo[arch::block_rank()] = s.acc[0];
    block_hi[arch::block_rank()] = s.acc[1];
  }
}

template <class T>
void check_min_max_cas(std::uint64_t seed) {
  T lo = std::numeric_limits<T>::max(), hi = std::numeric_limits<T>::min(), counter = T(0);
  T owner = std::numeric_limits<T>::max();
  std::vector<T> lo_old(n), hi_old(n), owner_old(n), block_lo(blocks), block_hi(blocks);
  auto const r = emu::launch({.grid = blocks, .block = threads, .dynamic_shared_bytes = sizeof(AtomicSmem<T>)},
                             checked(seed, 4), min_max_cas_kernel<T>, &lo, &hi, lo_old.data(), hi_old.data(), &counter,
                             &owner, owner_old.data(), block_lo.data(), block_hi.data());
  INFO(r.summary());
  REQUIRE(r.ok());
  std::vector<T> keys(n);
  for (unsigned g = 0; g < n; ++g) {
    keys[g] = distinct<T>(g);
  }
  CHECK(lo == *std::min_element(keys.begin(), keys.end()));
  CHECK(hi == *std::max_element(keys.begin(), keys.end()));
  for (unsigned b = 0; b < blocks; ++b) {
    CAPTURE(b);
    CHECK(block_lo[b] == *std::min_element(keys.begin() + b * threads, keys.begin() + (b + 1) * threads));
    CHECK(block_hi[b] == *std::max_element(keys.begin() + b * threads, keys.begin() + (b + 1) * threads));
  }
  // min returns the old value: never below the final minimum, and either the initial value or
  // a key some thread stored.
  for (unsigned g = 0; g < n; ++g) {
    CAPTURE(g);
    CHECK(lo_old[g] >= lo);
    CHECK(hi_old[g] <= hi);
    CHECK((lo_old[g] == std::numeric_limits<T>::max() || std::find(keys.begin(), keys.end(), lo_old[g]) != keys.end()));
    CHECK((hi_old[g] == std::numeric_limits<T>::min() || std::find(keys.begin(), keys.end(), hi_old[g]) != keys.end()));
  }
  CHECK(std::count(lo_old.begin(), lo_old.end(), std::numeric_limits<T>::max()) >= 1);
  CHECK(counter == T(n));
  // One claim found the slot free; every other one found the winner's value.
  auto const winner = std::find(owner_old.begin(), owner_old.end(), std::numeric_limits<T>::max());
  REQUIRE(winner != owner_old.end());
  CHECK(owner == claim_value<T>(static_cast<unsigned>(winner - owner_old.begin())));
  CHECK(std::count(owner_old.begin(), owner_old.end(), owner) == static_cast<long>(n - 1));
}

}  // namespace

TEST_CASE("atomic: min, max and CAS exist for integers only, as in CUDA", "[emu][atomic]") {
  STATIC_REQUIRE(has_atomic_min<int>);
  STATIC_REQUIRE(has_atomic_min<unsigned long long>);
  STATIC_REQUIRE_FALSE(has_atomic_min<float>);
  STATIC_REQUIRE_FALSE(has_atomic_min<double>);
  STATIC_REQUIRE(has_atomic_cas<long long>);
  STATIC_REQUIRE_FALSE(has_atomic_cas<float>);
}

TEST_CASE("atomic: add and exchange under contention", "[emu][atomic]") {
  auto const seed = GENERATE(0u, 1u, 2u);
  CAPTURE(seed);
  SECTION("int") { check_add_exch<int>(seed); }
  SECTION("unsigned") { check_add_exch<unsigned>(seed); }
  SECTION("long long") { check_add_exch<long long>(seed); }
  SECTION("unsigned long long") { check_add_exch<unsigned long long>(seed); }
  SECTION("float") { check_add_exch<float>(seed); }
  SECTION("double") { check_add_exch<double>(seed); }
}

TEST_CASE("atomic: min, max and compare-and-swap under contention", "[emu][atomic]") {
  auto const seed = GENERATE(0u, 1u, 2u);
  CAPTURE(seed);
  SECTION("int") { check_min_max_cas<int>(seed); }
  SECTION("unsigned") { check_min_max_cas<unsigned>(seed); }
  SECTION("long long") { check_min_max_cas<long long>(seed); }
  SECTION("unsigned long long") { check_min_max_cas<unsigned long long>(seed); }
}
