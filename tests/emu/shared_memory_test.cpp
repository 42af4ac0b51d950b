// Dynamic shared memory: each block gets its own, SharedStorage is checked against the bytes
// launched, and the device's per-block limit is enforced before any thread runs.

#include <cstdint>
#include <set>
#include <vector>

#include "emu_test_support.hpp"

using namespace moekit;
using emu_test::checked;
using emu_test::unchecked;

TEST_CASE("shared memory: each block gets its own", "[emu][shared_memory]") {
  constexpr unsigned blocks = 8, threads = 64;
  struct Smem {
    arch::SharedArray<int, threads> v;
  };
  auto const seed = GENERATE(0u, 1u, 2u, 3u);
  CAPTURE(seed);
  std::vector<int> out(blocks * threads, -1);
  std::vector<std::uintptr_t> base(blocks, 0);
  auto kernel = [](int* o, std::uintptr_t* b) {
    auto& s = arch::shared_storage<Smem>();
    unsigned const t = arch::thread_rank();
    unsigned const br = arch::block_rank();
    if (t == 0) {
      b[br] = reinterpret_cast<std::uintptr_t>(&s);
    }
    s.v[t] = static_cast<int>(1000 * br + t);
    arch::thread_fence();  // a scheduling point: the four resident blocks interleave here
    arch::sync_threads();
    o[br * threads + t] = s.v[(t + 1) % threads];
  };
  // Four blocks resident at once, so their shared memory is live at the same time.
  auto const r = emu::launch({.grid = blocks, .block = threads, .dynamic_shared_bytes = sizeof(Smem)}, checked(seed, 4),
                             kernel, out.data(), base.data());
  INFO(r.summary());
  REQUIRE(r.ok());
  for (unsigned b = 0; b < blocks; ++b) {
    for (unsigned t = 0; t < threads; ++t) {
      CAPTURE(b, t);
      CHECK(out[b * threads + t] == static_cast<int>(1000 * b + (t + 1) % threads));
    }
    CHECK(base[b] % 16 == 0);
  }
}

TEST_CASE("shared memory: SharedStorage keeps its alignment", "[emu][shared_memory]") {
  struct alignas(128) Smem {
    arch::SharedArray<char, 3> pad;
    arch::SharedArray<double, 4> d;
  };
  std::uintptr_t where = 1;
  auto const r = emu::launch(
      {.grid = 1, .block = 1, .dynamic_shared_bytes = sizeof(Smem)}, checked(),
      [](std::uintptr_t* w) {
        auto& s = arch::shared_storage<Smem>();
        *w = reinterpret_cast<std::uintptr_t>(&s);
      },
      &where);
  INFO(r.summary());
  REQUIRE(r.ok());
  CHECK(where % 128 == 0);
}

TEST_CASE("shared memory: SharedStorage larger than the launch's dynamic shared memory",
          "[emu][shared_memory][planted]") {
  struct Smem {
    arch::SharedArray<int, 256> v;  // 1024 bytes
  };
  auto const launched = GENERATE(std::size_t{0}, std::size_t{4}, std::size_t{1020});
  CAPTURE(launched);
  int passed = 0;
  auto kernel = [](int* p) {
    auto& s = arch::shared_storage<Smem>();
    s.v[arch::thread_rank()] = 1;
    arch::atomic_add(p, 1);
  };
  auto const r = emu::launch({.grid = 2, .block = 64, .dynamic_shared_bytes = launched}, checked(), kernel, &passed);
  INFO(r.summary());
  CHECK(r.status == Status::emulation_error);
  CHECK(emu_test::has_message(r, emu::Finding::shared_memory_overflow, "1024", std::to_string(launched) + " bytes"));
  CHECK(passed == 0);

  // The same kernel with enough shared memory runs.
  auto const ok =
      emu::launch({.grid = 2, .block = 64, .dynamic_shared_bytes = sizeof(Smem)}, checked(), kernel, &passed);
  INFO(ok.summary());
  CHECK(ok.ok());
  CHECK(passed == 128);
}

TEST_CASE("shared memory: more than the device allows per block fails the launch, no thread runs",
          "[emu][shared_memory][planted]") {
  auto const device = GENERATE(emu::VirtualDevice::small(), emu::VirtualDevice::a100(), emu::VirtualDevice::h100());
  CAPTURE(device.name);
  std::size_t const limit = device.shared_memory_per_block;
  emu::LaunchOptions options = unchecked();
  options.device = device;
  int ran = 0;
  // Touches the first and the last byte of what it was given.
  auto kernel = [](std::size_t bytes, int* n) {
    std::byte* s = arch::dynamic_shared_memory();
    s[0] = std::byte{1};
    s[bytes - 1] = std::byte{2};
    arch::atomic_add(n, 1);
  };

  auto const too_much =
      emu::launch({.grid = 2, .block = 32, .dynamic_shared_bytes = limit + 1}, options, kernel, limit + 1, &ran);
  INFO(too_much.summary());
  CHECK(too_much.status == Status::launch_failed);
  CHECK(emu_test::has_message(too_much, emu::Finding::invalid_launch, std::to_string(limit)));
  CHECK(ran == 0);

  auto const at_limit =
      emu::launch({.grid = 2, .block = 32, .dynamic_shared_bytes = limit}, options, kernel, limit, &ran);
  INFO(at_limit.summary());
  CHECK(at_limit.ok());
  CHECK(ran == 64);
}
