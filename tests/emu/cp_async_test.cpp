// cp.async: 4-, 8- and 16-byte copies with zero-fill, commit_group / wait_group<N> (a group's
// data is not there before its wait: initcheck reports reading it), misaligned addresses, and
// the __syncthreads other threads still need before reading what one thread copied.

#include <array>
#include <cstdint>
#include <vector>

#include "emu_test_support.hpp"

using namespace moekit;
using emu_test::checked;

namespace {

constexpr unsigned threads = 32;

struct CpSmem {
  alignas(16) arch::SharedArray<std::uint8_t, threads * 16> bytes;
};

// Global source bytes, 16-byte aligned, none of them 0 or 0xff.
struct alignas(16) Source {
  std::array<std::uint8_t, threads * 16> bytes;
  Source() {
    for (unsigned i = 0; i < bytes.size(); ++i) {
      bytes[i] = static_cast<std::uint8_t>(1 + (i * 7) % 200);
    }
  }
};

// Thread t copies `Bytes` to its own 16-byte slot, of which `src_bytes` from global memory.
template <int Bytes>
void copy_kernel(std::uint8_t const* src, std::uint8_t* out, unsigned src_bytes) {
  auto& s = arch::shared_storage<CpSmem>();
  unsigned const t = arch::thread_rank();
  arch::cp_async<Bytes>(&s.bytes[t * 16], src + t * 16, src_bytes);
  arch::cp_async_commit();
  arch::cp_async_wait_group<0>();
  for (unsigned i = 0; i < static_cast<unsigned>(Bytes); ++i) {
    out[t * 16 + i] = s.bytes[t * 16 + i];
  }
}

template <int Bytes>
void check_copy(unsigned src_bytes, std::uint64_t seed) {
  Source const src;
  std::vector<std::uint8_t> out(threads * 16, 0xee);
  auto const r = emu::launch({.grid = 2, .block = threads, .dynamic_shared_bytes = sizeof(CpSmem)}, checked(seed, 2),
                             copy_kernel<Bytes>, src.bytes.data(), out.data(), src_bytes);
  INFO(r.summary());
  REQUIRE(r.ok());
  for (unsigned t = 0; t < threads; ++t) {
    for (unsigned i = 0; i < 16; ++i) {
      CAPTURE(t, i);
      std::uint8_t const want = i >= static_cast<unsigned>(Bytes) ? std::uint8_t{0xee}  // not copied, not read
                                : i < src_bytes                   ? src.bytes[t * 16 + i]
                                                                  : std::uint8_t{0};  // zero-filled
      CHECK(out[t * 16 + i] == want);
    }
  }
}

// One thread issues three groups of one 16-byte copy each, waits with wait_group<wait_n>, then
// reads group `probe`'s destination.
void groups_kernel(std::uint8_t const* src, std::uint8_t* out, int wait_n, unsigned probe, bool commit_last) {
  auto& s = arch::shared_storage<CpSmem>();
  for (unsigned g = 0; g < 3; ++g) {
    arch::cp_async<16>(&s.bytes[g * 16], src + g * 16);
    if (g < 2 || commit_last) {
      arch::cp_async_commit();
    }
  }
  switch (wait_n) {
    case 0: arch::cp_async_wait_group<0>(); break;
    case 1: arch::cp_async_wait_group<1>(); break;
    case 2: arch::cp_async_wait_group<2>(); break;
    default: arch::cp_async_wait_all(); break;
  }
  for (unsigned i = 0; i < 16; ++i) {
    out[i] = s.bytes[probe * 16 + i];
  }
}

}  // namespace

TEST_CASE("cp.async: 4, 8 and 16 bytes, zero-filled past src_bytes", "[emu][cp_async]") {
  auto const seed = GENERATE(0u, 3u);
  CAPTURE(seed);
  SECTION("4 bytes") {
    auto const src_bytes = GENERATE(0u, 1u, 2u, 3u, 4u);
    CAPTURE(src_bytes);
    check_copy<4>(src_bytes, seed);
  }
  SECTION("8 bytes") {
    auto const src_bytes = GENERATE(0u, 1u, 4u, 7u, 8u);
    CAPTURE(src_bytes);
    check_copy<8>(src_bytes, seed);
  }
  SECTION("16 bytes") {
    auto const src_bytes = GENERATE(0u, 1u, 8u, 15u, 16u);
    CAPTURE(src_bytes);
    check_copy<16>(src_bytes, seed);
  }
}

TEST_CASE("cp.async: src_bytes = 0 reads nothing from the source", "[emu][cp_async]") {
  // A predicated-off copy: the source address is never dereferenced, so it may be null.
  std::vector<std::uint8_t> out(16, 0xee);
  auto const r = emu::launch(
      {.grid = 1, .block = 1, .dynamic_shared_bytes = sizeof(CpSmem)}, checked(),
      [](std::uint8_t* o) {
        auto& s = arch::shared_storage<CpSmem>();
        arch::cp_async<16>(&s.bytes[0], nullptr, 0);
        arch::cp_async_wait_all();
        for (unsigned i = 0; i < 16; ++i) {
          o[i] = s.bytes[i];
        }
      },
      out.data());
  INFO(r.summary());
  REQUIRE(r.ok());
  CHECK(out == std::vector<std::uint8_t>(16, 0));
}

TEST_CASE("cp.async: wait_group<N> completes all but the N most recent groups", "[emu][cp_async]") {
  Source const src;
  auto const wait_n = GENERATE(0, 1, 2);
  auto const probe = GENERATE(0u, 1u, 2u);
  CAPTURE(wait_n, probe);
  std::vector<std::uint8_t> out(16, 0);
  std::vector<std::uint8_t> const want(src.bytes.begin() + probe * 16, src.bytes.begin() + probe * 16 + 16);
  auto const r = emu::launch({.grid = 1, .block = 1, .dynamic_shared_bytes = sizeof(CpSmem)}, checked(), groups_kernel,
                             src.bytes.data(), out.data(), wait_n, probe, true);
  INFO(r.summary());
  if (static_cast<int>(probe) < 3 - wait_n) {
    REQUIRE(r.ok());
    CHECK(out == want);
  } else {
    // Not waited for: the data is not there yet, and reading it is reported.
    CHECK(r.status == Status::emulation_error);
    CHECK(emu_test::has_message(r, emu::Finding::uninitialized_read, "offset " + std::to_string(probe * 16)));
    CHECK(out != want);
  }
}

TEST_CASE("cp.async: wait_group waits for committed groups only; wait_all commits first", "[emu][cp_async]") {
  Source const src;
  std::vector<std::uint8_t> out(16, 0);
  std::vector<std::uint8_t> const want(src.bytes.begin() + 32, src.bytes.begin() + 48);
  SECTION("the uncommitted copy is not complete after wait_group<0>") {
    auto const r = emu::launch({.grid = 1, .block = 1, .dynamic_shared_bytes = sizeof(CpSmem)}, checked(),
                               groups_kernel, src.bytes.data(), out.data(), 0, 2u, false);
    INFO(r.summary());
    CHECK(r.has(emu::Finding::uninitialized_read));
    CHECK(out != want);
  }
  SECTION("wait_all completes it") {
    auto const r = emu::launch({.grid = 1, .block = 1, .dynamic_shared_bytes = sizeof(CpSmem)}, checked(),
                               groups_kernel, src.bytes.data(), out.data(), 3, 2u, false);
    INFO(r.summary());
    REQUIRE(r.ok());
    CHECK(out == want);
  }
}

TEST_CASE("cp.async: other threads read the copies only after a __syncthreads", "[emu][cp_async][racecheck]") {
  Source const src;
  auto const seed = GENERATE(0u, 1u, 2u);
  CAPTURE(seed);
  std::vector<std::uint8_t> out(threads * 16, 0);
  auto kernel = [](std::uint8_t const* s_in, std::uint8_t* o, bool barrier) {
    auto& s = arch::shared_storage<CpSmem>();
    unsigned const t = arch::thread_rank();
    arch::cp_async<16>(&s.bytes[t * 16], s_in + t * 16);
    arch::cp_async_wait_all();
    if (barrier) {
      arch::sync_threads();
    }
    unsigned const from = (t + 1) % threads;
    for (unsigned i = 0; i < 16; ++i) {
      o[t * 16 + i] = s.bytes[from * 16 + i];
    }
  };
  emu::LaunchOptions o = checked(seed);
  o.initcheck = false;
  SECTION("with it: clean") {
    auto const r = emu::launch({.grid = 1, .block = threads, .dynamic_shared_bytes = sizeof(CpSmem)}, o, kernel,
                               src.bytes.data(), out.data(), true);
    INFO(r.summary());
    REQUIRE(r.ok());
    for (unsigned t = 0; t < threads; ++t) {
      CAPTURE(t);
      CHECK(out[t * 16 + 5] == src.bytes[((t + 1) % threads) * 16 + 5]);
    }
  }
  SECTION("without it: a race") {
    auto const r = emu::launch({.grid = 1, .block = threads, .dynamic_shared_bytes = sizeof(CpSmem)}, o, kernel,
                               src.bytes.data(), out.data(), false);
    INFO(r.summary());
    CHECK((r.has(emu::Finding::race_read_after_write) || r.has(emu::Finding::race_write_after_read)));
  }
}

TEST_CASE("cp.async: misaligned addresses are reported", "[emu][cp_async][planted]") {
  Source const src;
  struct Case {
    char const* what;
    int bytes;
    unsigned dst_offset, src_offset;
  };
  Case const cases[] = {
      {"16 bytes, destination 4 bytes off", 16, 4, 0}, {"16 bytes, source 8 bytes off", 16, 0, 8},
      {"8 bytes, destination 4 bytes off", 8, 4, 0},   {"8 bytes, source 2 bytes off", 8, 0, 2},
      {"4 bytes, destination 2 bytes off", 4, 2, 0},   {"4 bytes, source 1 byte off", 4, 0, 1},
  };
  for (auto const& c : cases) {
    CAPTURE(c.what);
    int copied = 0;
    auto const r = emu::launch(
        {.grid = 1, .block = 1, .dynamic_shared_bytes = sizeof(CpSmem)}, checked(),
        [](std::uint8_t const* s_in, Case k, int* done) {
          auto& s = arch::shared_storage<CpSmem>();
          std::uint8_t* dst = &s.bytes[32 + k.dst_offset];
          std::uint8_t const* from = s_in + 32 + k.src_offset;
          switch (k.bytes) {
            case 16: arch::cp_async<16>(dst, from); break;
            case 8: arch::cp_async<8>(dst, from); break;
            default: arch::cp_async<4>(dst, from); break;
          }
          *done = 1;
        },
        src.bytes.data(), c, &copied);
    INFO(r.summary());
    CHECK(r.status == Status::emulation_error);
    CHECK(emu_test::has_message(r, emu::Finding::misaligned_address, "cp.async", std::to_string(c.bytes) + "-byte"));
    CHECK(copied == 0);
  }
}
