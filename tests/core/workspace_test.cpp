#include "moekit/core/workspace.hpp"

#include <cstdint>
#include <cstring>
#include <vector>

#include <catch2/catch.hpp>

using moekit::Status;
using moekit::Workspace;

namespace {
// A layer's carving routine: the same code sizes and carves.
struct Buffers {
  int* counts = nullptr;
  float* scores = nullptr;
  std::int64_t* offsets = nullptr;
};
Buffers carve(Workspace& ws, std::int64_t tokens, std::int64_t experts) {
  Buffers b;
  b.counts = ws.take<int>(experts, "expert counts");
  b.scores = ws.take<float>(tokens * experts, "scores", 128);
  b.offsets = ws.take<std::int64_t>(experts + 1, "expert offsets");
  return b;
}
}  // namespace

TEST_CASE("counting and carving agree on size and layout", "[core]") {
  auto const tokens = GENERATE(std::int64_t{0}, std::int64_t{1}, std::int64_t{7}, std::int64_t{1000});
  CAPTURE(tokens);
  Workspace counter;
  (void)carve(counter, tokens, 8);
  REQUIRE(counter.status() == Status::ok);
  REQUIRE(counter.counting());
  std::size_t const need = counter.bytes_used();

  std::vector<std::byte> storage(need + 256);
  void* base = storage.data() + (256 - reinterpret_cast<std::uintptr_t>(storage.data()) % 256) % 256;
  Workspace ws(base, need);
  Buffers b = carve(ws, tokens, 8);
  REQUIRE(ws.status() == Status::ok);
  REQUIRE(ws.bytes_used() == need);
  REQUIRE(reinterpret_cast<std::uintptr_t>(b.counts) % 256 == 0);
  REQUIRE(reinterpret_cast<std::uintptr_t>(b.offsets) % 256 == 0);
  REQUIRE(static_cast<void*>(b.counts) == base);
  if (tokens > 0) {
    REQUIRE(reinterpret_cast<std::uintptr_t>(b.scores) % 128 == 0);
    REQUIRE(reinterpret_cast<std::byte*>(b.scores) >= reinterpret_cast<std::byte*>(b.counts + 8));
    REQUIRE(reinterpret_cast<std::byte*>(b.offsets) >= reinterpret_cast<std::byte*>(b.scores + tokens * 8));
  } else {
    REQUIRE(b.scores == nullptr);  // nothing to hand out
  }
}

TEST_CASE("a workspace that is too small names the buffer and the bytes", "[core]") {
  Workspace counter;
  (void)carve(counter, 100, 8);
  std::vector<std::byte> storage(counter.bytes_used() + 512);
  void* base = storage.data() + (256 - reinterpret_cast<std::uintptr_t>(storage.data()) % 256) % 256;
  Workspace ws(base, counter.bytes_used() - 1);
  Buffers b = carve(ws, 100, 8);
  REQUIRE(ws.status() == Status::workspace_too_small);
  REQUIRE(std::strcmp(ws.failed_buffer(), "expert offsets") == 0);
  REQUIRE(ws.failed_bytes() == 9 * sizeof(std::int64_t));
  REQUIRE(b.offsets == nullptr);
  REQUIRE(b.counts != nullptr);  // the buffers before it were carved
}

TEST_CASE("carving refuses bad requests", "[core]") {
  alignas(256) static std::byte storage[1024];
  SECTION("misaligned base") {
    Workspace ws(storage + 4, 512);
    REQUIRE(ws.take<float>(4, "x") == nullptr);
    REQUIRE(ws.status() == Status::misaligned);
  }
  SECTION("negative count") {
    Workspace ws(storage, 1024);
    REQUIRE(ws.take<float>(-1, "x") == nullptr);
    REQUIRE(ws.status() == Status::invalid_argument);
  }
  SECTION("alignment not a power of two") {
    Workspace ws(storage, 1024);
    REQUIRE(ws.take<float>(1, "x", 48) == nullptr);
    REQUIRE(ws.status() == Status::invalid_argument);
  }
  SECTION("size overflow") {
    Workspace ws;
    REQUIRE(ws.take<double>(INT64_MAX, "huge") == nullptr);
    REQUIRE(ws.status() == Status::invalid_argument);
  }
  SECTION("null base with bytes") {
    Workspace ws(nullptr, 64);
    REQUIRE(ws.status() == Status::invalid_argument);
    REQUIRE(ws.take<int>(1, "x") == nullptr);
  }
  SECTION("after a failure nothing more is carved") {
    Workspace ws(storage, 64);
    REQUIRE(ws.take<int>(100, "big") == nullptr);
    REQUIRE(ws.take<int>(1, "small") == nullptr);
    REQUIRE(std::strcmp(ws.failed_buffer(), "big") == 0);
  }
}
