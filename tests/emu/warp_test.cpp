// Warp collectives: __shfl_sync/_up/_down/_xor for every width and for int, float, double and
// a 16-byte struct, __ballot_sync/__any_sync/__all_sync, __match_any_sync, __reduce_add_sync,
// __activemask and __syncwarp, on full, partial-mask and partial (last) warps, checked against
// the CUDA Programming Guide's rules; and the misuses the emulator must report.

#include <cstdint>
#include <vector>

#include "emu_test_support.hpp"

using namespace moekit;
using emu_test::checked;

namespace {

constexpr unsigned full = arch::full_warp_mask;

// ---- shuffles -----------------------------------------------------------------------------------
enum class Mode { idx, up, down, bfly };
struct ShflCase {
  Mode mode;
  int width;
  int arg;  // idx: lane l asks for lane arg + 5 l; up/down: delta; bfly: lane mask
};

std::vector<ShflCase> shfl_cases() {
  std::vector<ShflCase> cases;
  for (int w : {1, 2, 4, 8, 16, 32}) {
    for (int a : {0, 3, -1}) {
      cases.push_back({Mode::idx, w, a});
    }
    for (int a : {0, 1, 3, 16}) {
      cases.push_back({Mode::up, w, a});
    }
    for (int a : {1, 2, 5, 31}) {
      cases.push_back({Mode::down, w, a});
    }
    for (int a : {1, 3, 8, 16, 31}) {
      cases.push_back({Mode::bfly, w, a});
    }
  }
  return cases;
}

// The lane whose value `lane` receives, by the Programming Guide: lanes form segments of
// `width`; idx takes its source modulo width inside the segment; up/down/xor sources outside
// the segment (above it, for xor: earlier segments may be read) give the caller's own value.
int source_lane(ShflCase const& c, int lane) {
  int const start = lane / c.width * c.width;
  switch (c.mode) {
    case Mode::idx: return start + ((c.arg + 5 * lane) % c.width + c.width) % c.width;
    case Mode::up: return lane - c.arg >= start ? lane - c.arg : lane;
    case Mode::down: return lane + c.arg < start + c.width ? lane + c.arg : lane;
    case Mode::bfly: return (lane ^ c.arg) < start + c.width ? (lane ^ c.arg) : lane;
  }
  return -1;
}

struct V16 {
  std::int32_t i;
  float f;
  double d;
  bool operator==(V16 const&) const = default;
};
static_assert(sizeof(V16) == 16);

template <class T>
T value_of(unsigned g) {
  if constexpr (std::is_same_v<T, int>) {
    return static_cast<int>(g * 2654435761u);  // odd multiplier: distinct for distinct g
  } else if constexpr (std::is_same_v<T, float>) {
    return static_cast<float>(g) * 0.5f - 17.25f;
  } else if constexpr (std::is_same_v<T, double>) {
    return static_cast<double>(g) * 1e10 + 0.125;
  } else {
    return V16{static_cast<std::int32_t>(3 * g + 1), static_cast<float>(g) * 0.25f, -static_cast<double>(g) * 1e-3};
  }
}

template <class T>
void shuffle_kernel(T const* in, T* out, ShflCase const* cases, unsigned ncases, unsigned total) {
  unsigned const g = arch::block_rank() * arch::block_dim().x + arch::thread_rank();
  int const lane = static_cast<int>(arch::lane_id());
  T const v = in[g];
  for (unsigned k = 0; k < ncases; ++k) {
    ShflCase const c = cases[k];
    T r{};
    switch (c.mode) {
      case Mode::idx: r = arch::shfl_sync(full, v, c.arg + 5 * lane, c.width); break;
      case Mode::up: r = arch::shfl_up_sync(full, v, static_cast<unsigned>(c.arg), c.width); break;
      case Mode::down: r = arch::shfl_down_sync(full, v, static_cast<unsigned>(c.arg), c.width); break;
      case Mode::bfly: r = arch::shfl_xor_sync(full, v, c.arg, c.width); break;
    }
    out[k * total + g] = r;
  }
}

template <class T>
void check_shuffles(std::uint64_t seed) {
  constexpr unsigned blocks = 2, threads = 64, total = blocks * threads;
  std::vector<ShflCase> const cases = shfl_cases();
  std::vector<T> in(total);
  for (unsigned g = 0; g < total; ++g) {
    in[g] = value_of<T>(g);
  }
  std::vector<T> out(cases.size() * total, T{});
  auto const r = emu::launch({.grid = blocks, .block = threads}, checked(seed, 2), shuffle_kernel<T>, in.data(),
                             out.data(), cases.data(), static_cast<unsigned>(cases.size()), total);
  INFO(r.summary());
  REQUIRE(r.ok());
  for (std::size_t k = 0; k < cases.size(); ++k) {
    ShflCase const& c = cases[k];
    for (unsigned g = 0; g < total; ++g) {
      int const lane = static_cast<int>(g % 32);
      unsigned const src = g - static_cast<unsigned>(lane) + static_cast<unsigned>(source_lane(c, lane));
      CAPTURE(static_cast<int>(c.mode), c.width, c.arg, g);
      CHECK(out[k * total + g] == in[src]);
    }
  }
}

// ---- votes, match, reduce -----------------------------------------------------------------------
bool in_mask(unsigned mask, unsigned lane) { return (mask >> lane & 1u) != 0; }

bool vote_predicate(unsigned lane, unsigned warp) { return (lane * 7 + warp) % 3 == 0; }

}  // namespace

TEST_CASE("warp: shuffles of int, float, double and a 16-byte struct at every width", "[emu][warp]") {
  auto const seed = GENERATE(0u, 5u);
  CAPTURE(seed);
  SECTION("int") { check_shuffles<int>(seed); }
  SECTION("float") { check_shuffles<float>(seed); }
  SECTION("double") { check_shuffles<double>(seed); }
  SECTION("16-byte struct") { check_shuffles<V16>(seed); }
}

TEST_CASE("warp: ballot, any and all over full and partial masks", "[emu][warp]") {
  auto const seed = GENERATE(0u, 3u);
  auto const mask = GENERATE(0xffffffffu, 0x0f0f0f0fu, 0x80000001u, 1u << 7);
  CAPTURE(seed, mask);
  constexpr unsigned threads = 64, results = 6;
  std::vector<unsigned> out(threads * results, 0xdeadbeefu);
  auto kernel = [](unsigned* o, unsigned m) {
    unsigned const lane = arch::lane_id(), warp = arch::warp_id(), t = arch::thread_rank();
    if (!in_mask(m, lane)) {
      return;  // lanes outside the mask take no part
    }
    bool const p = vote_predicate(lane, warp);
    unsigned* mine = o + t * results;
    mine[0] = arch::ballot_sync(m, p);
    mine[1] = arch::any_sync(m, p) ? 1 : 0;
    mine[2] = arch::all_sync(m, p) ? 1 : 0;
    mine[3] = arch::all_sync(m, true) ? 1 : 0;
    mine[4] = arch::any_sync(m, false) ? 1 : 0;
    mine[5] = arch::ballot_sync(m, lane % 2 == 1);
  };
  auto const r = emu::launch({.grid = 1, .block = threads}, checked(seed), kernel, out.data(), mask);
  INFO(r.summary());
  REQUIRE(r.ok());
  for (unsigned t = 0; t < threads; ++t) {
    unsigned const lane = t % 32, warp = t / 32;
    CAPTURE(t);
    unsigned const* mine = &out[t * results];
    if (!in_mask(mask, lane)) {
      CHECK(mine[0] == 0xdeadbeefu);
      continue;
    }
    unsigned ballot = 0;
    for (unsigned l = 0; l < 32; ++l) {
      if (in_mask(mask, l) && vote_predicate(l, warp)) {
        ballot |= 1u << l;
      }
    }
    CHECK(mine[0] == ballot);
    CHECK(mine[1] == (ballot != 0 ? 1u : 0u));
    CHECK(mine[2] == (ballot == mask ? 1u : 0u));
    CHECK(mine[3] == 1u);
    CHECK(mine[4] == 0u);
    CHECK(mine[5] == (mask & 0xaaaaaaaau));
  }
}

TEST_CASE("warp: __match_any_sync groups lanes holding equal 32- and 64-bit values", "[emu][warp]") {
  auto const seed = GENERATE(0u, 2u);
  auto const mask = GENERATE(0xffffffffu, 0x0000ffffu, 0x12345678u);
  CAPTURE(seed, mask);
  constexpr unsigned threads = 64, results = 3;
  std::vector<unsigned> out(threads * results, 0);
  auto int_value = [](unsigned lane, unsigned warp) {
    return static_cast<int>(lane % 5) - 2 + 10 * static_cast<int>(warp);
  };
  // Equal low 32 bits, different high bits: only a 64-bit comparison tells them apart.
  auto long_value = [](unsigned lane) { return static_cast<long long>(lane % 3) << 40 | 7; };
  auto unsigned_value = [](unsigned lane) { return lane / 8 * 0x40000001u; };
  auto kernel = [=](unsigned* o, unsigned m) {
    unsigned const lane = arch::lane_id(), warp = arch::warp_id(), t = arch::thread_rank();
    if (!in_mask(m, lane)) {
      return;
    }
    o[t * results + 0] = arch::match_any_sync(m, int_value(lane, warp));
    o[t * results + 1] = arch::match_any_sync(m, long_value(lane));
    o[t * results + 2] = arch::match_any_sync(m, unsigned_value(lane));
  };
  auto const r = emu::launch({.grid = 1, .block = threads}, checked(seed), kernel, out.data(), mask);
  INFO(r.summary());
  REQUIRE(r.ok());
  for (unsigned t = 0; t < threads; ++t) {
    unsigned const lane = t % 32, warp = t / 32;
    if (!in_mask(mask, lane)) {
      continue;
    }
    unsigned want[results] = {0, 0, 0};
    for (unsigned l = 0; l < 32; ++l) {
      if (in_mask(mask, l)) {
        want[0] |= (int_value(l, warp) == int_value(lane, warp) ? 1u : 0u) << l;
        want[1] |= (long_value(l) == long_value(lane) ? 1u : 0u) << l;
        want[2] |= (unsigned_value(l) == unsigned_value(lane) ? 1u : 0u) << l;
      }
    }
    CAPTURE(t);
    CHECK(out[t * results + 0] == want[0]);
    CHECK(out[t * results + 1] == want[1]);
    CHECK(out[t * results + 2] == want[2]);
  }
}

TEST_CASE("warp: __reduce_add_sync sums modulo 2^32 over the mask", "[emu][warp]") {
  auto const mask = GENERATE(0xffffffffu, 0xaaaaaaaau, 1u);
  CAPTURE(mask);
  constexpr unsigned threads = 64;
  auto value = [](unsigned lane, unsigned warp) { return 0x90000000u + lane * lane + 1000 * warp; };
  std::vector<unsigned> out(threads, 0);
  auto kernel = [=](unsigned* o, unsigned m) {
    unsigned const lane = arch::lane_id();
    if (in_mask(m, lane)) {
      o[arch::thread_rank()] = arch::reduce_add_sync(m, value(lane, arch::warp_id()));
    }
  };
  auto const r = emu::launch({.grid = 1, .block = threads}, checked(1), kernel, out.data(), mask);
  INFO(r.summary());
  REQUIRE(r.ok());
  for (unsigned t = 0; t < threads; ++t) {
    if (!in_mask(mask, t % 32)) {
      continue;
    }
    unsigned sum = 0;
    for (unsigned l = 0; l < 32; ++l) {
      sum += in_mask(mask, l) ? value(l, t / 32) : 0u;
    }
    CAPTURE(t);
    CHECK(out[t] == sum);
  }
}

TEST_CASE("warp: a partial last warp works over the lanes that exist", "[emu][warp]") {
  // 48 threads: warp 0 is full, warp 1 has lanes 0-15 only.
  constexpr unsigned threads = 48, results = 10;
  auto const seed = GENERATE(0u, 1u, 2u);
  CAPTURE(seed);
  std::vector<unsigned> out(threads * results, 0);
  auto kernel = [](unsigned* o) {
    unsigned const lane = arch::lane_id(), t = arch::thread_rank();
    unsigned* mine = o + t * results;
    mine[0] = arch::active_mask();
    mine[1] = arch::ballot_sync(full, lane % 2 == 0);
    mine[2] = arch::all_sync(full, lane < 16) ? 1 : 0;
    mine[3] = arch::any_sync(full, lane >= 16) ? 1 : 0;
    mine[4] = arch::reduce_add_sync(full, 1u);
    mine[5] = arch::match_any_sync(full, 0);
    mine[6] = arch::shfl_sync(full, t, 0);
    mine[7] = arch::shfl_xor_sync(full, t, 1, 16);
    arch::sync_warp(full);
    mine[8] = arch::shfl_down_sync(full, t, 4, 8);
    mine[9] = arch::shfl_up_sync(full, t, 1, 16);
  };
  auto const r = emu::launch({.grid = 1, .block = threads}, checked(seed), kernel, out.data());
  INFO(r.summary());
  REQUIRE(r.ok());
  for (unsigned t = 0; t < threads; ++t) {
    unsigned const lane = t % 32, warp = t / 32;
    bool const partial = warp == 1;
    unsigned const lanes = partial ? 0x0000ffffu : full;
    CAPTURE(t);
    unsigned const* mine = &out[t * results];
    CHECK(mine[0] == lanes);
    CHECK(mine[1] == (lanes & 0x55555555u));
    CHECK(mine[2] == (partial ? 1u : 0u));
    CHECK(mine[3] == (partial ? 0u : 1u));
    CHECK(mine[4] == (partial ? 16u : 32u));
    CHECK(mine[5] == lanes);
    CHECK(mine[6] == warp * 32);
    CHECK(mine[7] == (t ^ 1u));
    CHECK(mine[8] == (lane % 8 < 4 ? t + 4 : t));
    CHECK(mine[9] == (lane % 16 == 0 ? t : t - 1));
  }
}

TEST_CASE("warp: __activemask of a full block", "[emu][warp]") {
  // The emulator reports the lanes that have not exited. CUDA does not promise that straight-line
  // code stays converged, so a lane may see others gone; here no lane can exit before every lane
  // of its warp has asked, as the __syncwarp after the question holds them all.
  auto const seed = GENERATE(0u, 1u, 2u);
  CAPTURE(seed);
  std::vector<unsigned> out(96, 0);
  auto const r = emu::launch(
      {.grid = 1, .block = 96}, checked(seed),
      [](unsigned* o) {
        unsigned const m = arch::active_mask();
        arch::sync_warp();
        o[arch::thread_rank()] = m;
      },
      out.data());
  INFO(r.summary());
  REQUIRE(r.ok());
  CHECK(out == std::vector<unsigned>(96, full));
}

TEST_CASE("warp: disjoint masks in divergent branches are separate collectives", "[emu][warp]") {
  // Legal CUDA: each half of the warp shuffles and syncs among itself, the halves unordered
  // with respect to each other.
  auto const seed = GENERATE(0u, 1u, 2u, 3u, 4u, 5u, 6u, 7u, 8u);
  CAPTURE(seed);
  std::vector<int> out(64, -1);
  auto kernel = [](int* o) {
    unsigned const lane = arch::lane_id(), t = arch::thread_rank();
    int v = static_cast<int>(t);
    if (lane < 16) {
      v = arch::shfl_xor_sync(0x0000ffffu, v, 1);
      arch::sync_warp(0x0000ffffu);
      v += 1000 * static_cast<int>(arch::ballot_sync(0x0000ffffu, true) == 0x0000ffffu);
    } else {
      v = arch::shfl_xor_sync(0xffff0000u, v, 2);
      arch::sync_warp(0xffff0000u);
      v += 1000 * static_cast<int>(arch::ballot_sync(0xffff0000u, true) == 0xffff0000u);
    }
    o[t] = v;
  };
  auto const r = emu::launch({.grid = 1, .block = 64}, checked(seed), kernel, out.data());
  INFO(r.summary());
  REQUIRE(r.ok());
  for (unsigned t = 0; t < 64; ++t) {
    CAPTURE(t);
    CHECK(out[t] == static_cast<int>(t % 32 < 16 ? t ^ 1u : t ^ 2u) + 1000);
  }
}

TEST_CASE("warp: misused collectives are reported", "[emu][warp][planted]") {
  auto const seed = GENERATE(0u, 1u, 2u, 3u);
  CAPTURE(seed);
  int passed = 0;
  SECTION("one lane names a different mask") {
    auto const r = emu::launch(
        {.grid = 1, .block = 32}, checked(seed),
        [](int* p) {
          unsigned const mask = arch::lane_id() == 5 ? 0x0000ffffu : full;
          (void)arch::shfl_sync(mask, 1, 0);
          arch::atomic_add(p, 1);
        },
        &passed);
    INFO(r.summary());
    CHECK(r.status == Status::emulation_error);
    CHECK(emu_test::has_message(r, emu::Finding::warp_divergence, "__shfl_sync", "0x0000ffff", "0xffffffff"));
    CHECK(passed == 0);
  }
  SECTION("lanes call different collectives") {
    auto const r = emu::launch(
        {.grid = 1, .block = 32}, checked(seed),
        [](int* p) {
          if (arch::lane_id() % 2 == 0) {
            (void)arch::shfl_sync(full, 1, 0);
          } else {
            (void)arch::ballot_sync(full, true);
          }
          arch::atomic_add(p, 1);
        },
        &passed);
    INFO(r.summary());
    CHECK(emu_test::has_message(r, emu::Finding::warp_divergence, "__shfl_sync", "__ballot_sync"));
    CHECK(passed == 0);
  }
  SECTION("a mask that does not name the calling lane") {
    auto const r = emu::launch(
        {.grid = 1, .block = 32}, checked(seed),
        [](int* p) {
          unsigned const mask = arch::lane_id() == 0 ? 0xfffffffeu : full;
          (void)arch::ballot_sync(mask, true);
          arch::atomic_add(p, 1);
        },
        &passed);
    INFO(r.summary());
    CHECK(emu_test::has_message(r, emu::Finding::invalid_mask, "lane 0", "0xfffffffe"));
    CHECK(passed == 0);
  }
  SECTION("a lane named in the mask has exited") {
    auto const r = emu::launch(
        {.grid = 1, .block = 32}, checked(seed),
        [](int* p) {
          if (arch::lane_id() == 7) {
            return;
          }
          (void)arch::any_sync(full, true);
          arch::atomic_add(p, 1);
        },
        &passed);
    INFO(r.summary());
    CHECK(r.has(emu::Finding::exited_at_barrier));
    CHECK(passed == 0);
  }
  SECTION("a shuffle width that is not a power of two") {
    auto const width = GENERATE(0, 3, 64);
    CAPTURE(width);
    auto const r = emu::launch(
        {.grid = 1, .block = 32}, checked(seed),
        [](int* p, int w) {
          (void)arch::shfl_sync(full, 1, 0, w);
          arch::atomic_add(p, 1);
        },
        &passed, width);
    INFO(r.summary());
    CHECK(emu_test::has_message(r, emu::Finding::invalid_operation, "width " + std::to_string(width)));
    CHECK(passed == 0);
  }
}
