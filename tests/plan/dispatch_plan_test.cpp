// The dispatch plan: a hand-checked example, then the host reference vs the CPU builder vs the
// device kernels under the emulator (several schedule seeds and grid sizes, identical results),
// on uniform, skewed, sparse and invalid routing, T = 0 and 1, E beyond one scan round, and
// every bad input. All integer results: compared exactly.

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "moekit/core/error_message.hpp"
#include "moekit/cpu/plan.hpp"
#include "moekit/emu/launch_config.hpp"
#include "moekit/host/plan_reference.hpp"
#include "moekit/plan/build_plan.hpp"

using namespace moekit;

namespace {

struct PlanResult {
  Status status = Status::internal_error;
  std::vector<std::int64_t> counts, offsets, num_rows{-5}, num_tiles{-5};
  std::vector<std::int64_t> row_assignment, assignment_row, tile_row;
  std::vector<int> tile_expert;
  Diagnostics diagnostics{};

  // Sized for the problem (0 where a bad problem gives a negative size).
  static std::size_t size(std::int64_t n) { return static_cast<std::size_t>(n > 0 ? n : 0); }
  explicit PlanResult(plan::PlanProblem const& p)
      : counts(size(p.experts), -5), offsets(size(p.experts + 1), -5), row_assignment(size(plan::max_rows(p)), -5),
        assignment_row(size(plan::assignments(p)), -5), tile_row(size(plan::max_tiles(p)), -5),
        tile_expert(size(plan::max_tiles(p)), -5) {}

  template <MemorySpace Space>
  plan::DispatchPlan<Space> view() {
    return {counts.data(),      offsets.data(),  row_assignment.data(), assignment_row.data(),
            tile_expert.data(), tile_row.data(), num_rows.data(),       num_tiles.data()};
  }
  // What a consumer may read: the used rows and tiles.
  void require_same(PlanResult const& o) const {
    REQUIRE(status == o.status);
    REQUIRE(counts == o.counts);
    REQUIRE(offsets == o.offsets);
    REQUIRE(num_rows == o.num_rows);
    REQUIRE(num_tiles == o.num_tiles);
    REQUIRE(assignment_row == o.assignment_row);
    auto const rows = static_cast<std::size_t>(num_rows[0]);
    auto const tiles = static_cast<std::size_t>(num_tiles[0]);
    REQUIRE(std::vector(row_assignment.begin(), row_assignment.begin() + rows) ==
            std::vector(o.row_assignment.begin(), o.row_assignment.begin() + rows));
    REQUIRE(std::vector(tile_row.begin(), tile_row.begin() + tiles) ==
            std::vector(o.tile_row.begin(), o.tile_row.begin() + tiles));
    REQUIRE(std::vector(tile_expert.begin(), tile_expert.begin() + tiles) ==
            std::vector(o.tile_expert.begin(), o.tile_expert.begin() + tiles));
    REQUIRE(diagnostics.dropped_assignments == o.diagnostics.dropped_assignments);
    REQUIRE(diagnostics.invalid_ids == o.diagnostics.invalid_ids);
    REQUIRE(diagnostics.empty_slots == o.diagnostics.empty_slots);
    REQUIRE(diagnostics.empty_experts == o.diagnostics.empty_experts);
    REQUIRE(diagnostics.max_load == o.diagnostics.max_load);
  }
};

HostTensor<int const, 2> host_ids(std::vector<int> const& ids, plan::PlanProblem const& p) {
  return HostTensor<int const, 2>::row_major(ids.data(), {p.tokens, p.slots});
}

PlanResult reference(plan::PlanProblem const& p, std::vector<int> const& ids) {
  PlanResult r(p);
  r.status = host::reference_plan(p, host_ids(ids, p), r.view<MemorySpace::host>(), r.diagnostics);
  return r;
}

PlanResult on_cpu(plan::PlanProblem const& p, std::vector<int> const& ids) {
  PlanResult r(p);
  r.status = cpu::build_plan(p, host_ids(ids, p), r.view<MemorySpace::host>(), r.diagnostics);
  return r;
}

PlanResult on_device(plan::PlanProblem const& p, std::vector<int> const& ids, std::uint64_t seed,
                     unsigned max_blocks = 0) {
  emu::LaunchOptions o;
  o.schedule_seed = seed;
  o.racecheck = true;
  o.initcheck = true;
  o.max_resident_blocks = 2;
  emu::ScopedLaunchOptions const guard(o);
  PlanResult r(p);
  std::vector<std::byte> bytes(plan::plan_workspace_size(p) + 256);
  void* base = bytes.data() + (256 - reinterpret_cast<std::uintptr_t>(bytes.data()) % 256) % 256;
  Workspace w(base, plan::plan_workspace_size(p));
  r.status = plan::build_plan(p, DeviceTensor<int const, 2>::row_major(ids.data(), {p.tokens, p.slots}),
                              r.view<MemorySpace::device>(), &r.diagnostics, w, nullptr, max_blocks);
  return r;
}

}  // namespace

TEST_CASE("plan of a small routing, checked by hand", "[plan][emu]") {
  // T = 5, K = 2, E = 3, capacity 2, tiles of 2 rows. Token 3's second slot is empty (id 3).
  plan::PlanProblem const p{.tokens = 5, .slots = 2, .experts = 3, .capacity = 2, .tile_rows = 2};
  std::vector<int> const ids = {0, 1, /**/ 0, 2, /**/ 1, 0, /**/ 1, 3, /**/ 2, 1};
  // expert 0: assignments 0, 2, 5 -> keeps 0, 2 (token order), drops 5
  // expert 1: assignments 1, 4, 6, 9 -> keeps 1, 4, drops 6, 9
  // expert 2: assignments 3, 8 -> keeps both
  for (PlanResult const& r : {reference(p, ids), on_cpu(p, ids), on_device(p, ids, 3)}) {
    REQUIRE(r.status == Status::ok);
    CHECK(r.counts == std::vector<std::int64_t>{3, 4, 2});
    CHECK(r.offsets == std::vector<std::int64_t>{0, 2, 4, 6});
    CHECK(r.num_rows[0] == 6);
    CHECK(r.num_tiles[0] == 3);
    CHECK(std::vector(r.row_assignment.begin(), r.row_assignment.begin() + 6) ==
          std::vector<std::int64_t>{0, 2, 1, 4, 3, 8});
    CHECK(r.assignment_row == std::vector<std::int64_t>{0, 2, 1, 4, 3, -1, -1, -1, 5, -1});
    CHECK(std::vector(r.tile_expert.begin(), r.tile_expert.begin() + 3) == std::vector<int>{0, 1, 2});
    CHECK(std::vector(r.tile_row.begin(), r.tile_row.begin() + 3) == std::vector<std::int64_t>{0, 2, 4});
    CHECK(r.diagnostics.dropped_assignments == 3);
    CHECK(r.diagnostics.empty_slots == 1);
    CHECK(r.diagnostics.empty_experts == 0);
    CHECK(r.diagnostics.max_load == 4);
  }
  // Unlimited capacity, tiles of 4: expert blocks padded with -1 rows.
  plan::PlanProblem const q{.tokens = 5, .slots = 2, .experts = 3, .tile_rows = 4};
  PlanResult const r = on_device(q, ids, 1);
  REQUIRE(r.status == Status::ok);
  CHECK(r.offsets == std::vector<std::int64_t>{0, 4, 8, 12});
  CHECK(std::vector(r.row_assignment.begin(), r.row_assignment.begin() + 12) ==
        std::vector<std::int64_t>{0, 2, 5, -1, 1, 4, 6, 9, 3, 8, -1, -1});
  r.require_same(reference(q, ids));
}

namespace {

enum class Routing { uniform, skewed, sparse, with_empty_and_invalid };

std::vector<int> make_ids(plan::PlanProblem const& p, Routing routing, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> expert(0, p.experts - 1);
  std::uniform_int_distribution<int> percent(0, 99);
  std::vector<int> ids(static_cast<std::size_t>(plan::assignments(p)));
  for (int& id : ids) {
    switch (routing) {
      case Routing::uniform: id = expert(rng); break;
      case Routing::skewed: id = percent(rng) < 60 ? 0 : expert(rng); break;  // expert 0 takes most
      case Routing::sparse: id = (expert(rng) / 2) * 2; break;                // odd experts stay empty
      case Routing::with_empty_and_invalid: {
        int const r = percent(rng);
        id = r < 10 ? p.experts : (r < 13 ? (r % 2 == 0 ? -3 : p.experts + 2) : expert(rng));
        break;
      }
    }
  }
  return ids;
}

}  // namespace

TEST_CASE("plan: host reference, CPU builder and device kernels agree", "[plan][emu]") {
  auto const shape = GENERATE(std::tuple{1, 1, 1}, std::tuple{37, 2, 7}, std::tuple{300, 8, 64},
                              std::tuple{1000, 8, 256}, std::tuple{130, 2, 300}, std::tuple{0, 4, 8});
  auto const tile = GENERATE(1, 16, 64);
  auto const capacity_factor = GENERATE(0.0, 1.0, 0.3);
  auto const routing = GENERATE(Routing::uniform, Routing::skewed, Routing::sparse, Routing::with_empty_and_invalid);
  auto const [tokens, slots, experts] = shape;
  plan::PlanProblem p{.tokens = tokens, .slots = slots, .experts = experts, .tile_rows = tile};
  if (capacity_factor > 0) {
    REQUIRE(plan::capacity_from_factor(capacity_factor, tokens, slots, experts, p.capacity) == Status::ok);
  }
  CAPTURE(tokens, slots, experts, tile, p.capacity, int(routing));
  std::vector<int> const ids = make_ids(p, routing, static_cast<std::uint32_t>(tokens * 31 + experts));
  PlanResult const expected = reference(p, ids);
  REQUIRE(expected.status == Status::ok);
  on_cpu(p, ids).require_same(expected);
  on_device(p, ids, 0).require_same(expected);
  on_device(p, ids, 17, 1).require_same(expected);  // one block: every chunk on the same warps
  on_device(p, ids, 29, 3).require_same(expected);
}

TEST_CASE("plan rows keep token order inside each expert and cover every kept assignment once", "[plan]") {
  plan::PlanProblem p{.tokens = 500, .slots = 4, .experts = 13, .tile_rows = 8};
  REQUIRE(plan::capacity_from_factor(0.8, p.tokens, p.slots, p.experts, p.capacity) == Status::ok);
  std::vector<int> const ids = make_ids(p, Routing::skewed, 5);
  PlanResult const r = on_cpu(p, ids);
  REQUIRE(r.status == Status::ok);
  std::vector<int> seen(ids.size(), 0);
  for (int e = 0; e < p.experts; ++e) {
    std::int64_t previous = -1;
    long long kept = 0;
    for (long long row = r.offsets[e]; row < r.offsets[e + 1]; ++row) {
      std::int64_t const a = r.row_assignment[static_cast<std::size_t>(row)];
      if (a < 0) {
        continue;
      }
      REQUIRE(ids[static_cast<std::size_t>(a)] == e);
      REQUIRE(a > previous);
      REQUIRE(r.assignment_row[static_cast<std::size_t>(a)] == row);
      previous = a;
      ++seen[static_cast<std::size_t>(a)];
      ++kept;
    }
    REQUIRE(kept == std::min<std::int64_t>(r.counts[e], p.capacity));
    REQUIRE((r.offsets[e + 1] - r.offsets[e]) % p.tile_rows == 0);
  }
  unsigned long long dropped = 0;
  for (std::size_t a = 0; a < ids.size(); ++a) {
    REQUIRE(seen[a] == (r.assignment_row[a] >= 0 ? 1 : 0));
    dropped += r.assignment_row[a] < 0 ? 1 : 0;
  }
  CHECK(dropped == r.diagnostics.dropped_assignments);
}

TEST_CASE("capacity from a factor", "[plan]") {
  std::int64_t c = 0;
  REQUIRE(plan::capacity_from_factor(1.25, 8, 1, 10, c) == Status::ok);
  CHECK(c == 1);  // 1.25 * 8 / 10 = 1 exactly, not 2
  REQUIRE(plan::capacity_from_factor(1.0, 4096, 8, 64, c) == Status::ok);
  CHECK(c == 512);
  REQUIRE(plan::capacity_from_factor(0.01, 3, 1, 8, c) == Status::ok);
  CHECK(c == 1);  // never 0
  CHECK(plan::capacity_from_factor(0.0, 3, 1, 8, c) == Status::invalid_argument);
  CHECK(plan::capacity_from_factor(-1.0, 3, 1, 8, c) == Status::invalid_argument);
}

TEST_CASE("plan: bad input gets a Status and a message, outputs untouched", "[plan][emu]") {
  plan::PlanProblem const good{.tokens = 3, .slots = 2, .experts = 4, .tile_rows = 2};
  std::vector<int> const ids = {0, 1, 2, 3, 1, 0};
  auto rejected = [&](plan::PlanProblem const& p, char const* fragment, Status code = Status::invalid_argument) {
    clear_error_message();
    PlanResult const r = on_cpu(p, ids);
    CHECK(r.status == code);
    CHECK_THAT(std::string(last_error_message()), Catch::Contains(fragment));
    CHECK(r.counts == std::vector<std::int64_t>(PlanResult::size(p.experts), -5));
    CHECK(reference(p, ids).status == code);
    CHECK(on_device(p, ids, 0).status == code);
  };
  rejected({.tokens = 3, .slots = 2, .experts = 4, .capacity = 0}, "capacity 0");
  rejected({.tokens = 3, .slots = 2, .experts = 4, .tile_rows = 0}, "tile_rows");
  rejected({.tokens = -1, .slots = 2, .experts = 4}, "negative token count");
  rejected({.tokens = 3, .slots = 0, .experts = 4}, "slots per token");
  rejected({.tokens = 3, .slots = 2, .experts = 0}, "experts must be");

  PlanResult r(good);
  auto v = r.view<MemorySpace::host>();
  v.tile_row = nullptr;
  clear_error_message();
  CHECK(cpu::build_plan(good, host_ids(ids, good), v, r.diagnostics) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("tile_row is null"));
  v = r.view<MemorySpace::host>();
  v.row_assignment = reinterpret_cast<std::int64_t*>(reinterpret_cast<char*>(r.row_assignment.data()) + 4);
  CHECK(cpu::build_plan(good, host_ids(ids, good), v, r.diagnostics) == Status::misaligned);
  CHECK(cpu::build_plan({.tokens = 2, .slots = 2, .experts = 4}, host_ids(ids, good), r.view<MemorySpace::host>(),
                        r.diagnostics) == Status::invalid_argument);

  // A workspace smaller than plan_workspace_size names the buffer that did not fit.
  PlanResult d(good);
  alignas(256) static long long small[4];
  Workspace w(small, 8);
  clear_error_message();
  CHECK(plan::build_plan(good, DeviceTensor<int const, 2>::row_major(ids.data(), {3, 2}), d.view<MemorySpace::device>(),
                         &d.diagnostics, w, nullptr) == Status::workspace_too_small);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("plan chunk"));
  CHECK(d.counts == std::vector<std::int64_t>(4, -5));
}
