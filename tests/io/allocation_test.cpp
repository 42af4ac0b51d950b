// io/allocation.hpp: the MC# bit-allocation file. Round trips (file and text), the documented
// example, and each malformed file with its Status and message (output untouched).

#include "moekit/io/allocation.hpp"

#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "temp_dir.hpp"
#include <catch2/catch.hpp>

#include "moekit/core/error_message.hpp"

using namespace moekit;
namespace fs = std::filesystem;

namespace {

// A fresh directory per test case, removed afterwards.
struct TempDir : io_test::TempDir {
  TempDir() : io_test::TempDir("moekit_allocation_test_") {}
};

void write_text(fs::path const& p, std::string const& text) {
  std::ofstream f(p, std::ios::binary);
  f << text;
}

// The example of docs/quantized_experts.md (ALGORITHMS.md §3.5's worked example as layer 3).
constexpr char const* example = R"({
  "format": "moekit-mcsharp-allocation",
  "version": 1,
  "group_size": 128,
  "scheme": "asymmetric",
  "average_bits": 3.0,
  "objective": 0.28783677,
  "layers": {
    "3": [4, 3, 3, 2],
    "5": [2, 2, 4, 4]
  }
}
)";

// `example` with `from` replaced by `to` (once).
std::string edited(std::string const& from, std::string const& to) {
  std::string s = example;
  auto const at = s.find(from);
  REQUIRE(at != std::string::npos);
  s.replace(at, from.size(), to);
  return s;
}

io::BitAllocation sentinel() {
  io::BitAllocation a;
  a.group_size = 32;
  a.layers[99] = {8};
  return a;
}

}  // namespace

TEST_CASE("allocation: the documented example parses", "[allocation]") {
  io::BitAllocation a;
  REQUIRE(io::parse_allocation_text(example, a, "example", 4) == Status::ok);
  CHECK(a.group_size == 128);
  CHECK_FALSE(a.symmetric);
  REQUIRE(a.average_bits.has_value());
  CHECK(*a.average_bits == 3.0);
  REQUIRE(a.objective.has_value());
  CHECK(*a.objective == 0.28783677);
  REQUIRE(a.layers.size() == 2);
  CHECK(a.layers.at(3) == std::vector<int>{4, 3, 3, 2});
  CHECK(a.layers.at(5) == std::vector<int>{2, 2, 4, 4});
}

TEST_CASE("allocation: write then read gives the same allocation; layers in numeric order", "[allocation]") {
  TempDir dir;
  io::BitAllocation a;
  a.group_size = 64;
  a.symmetric = true;
  a.layers[10] = {1, 2, 3, 4, 5, 6, 7, 8};
  a.layers[2] = {8, 8, 8, 8, 8, 8, 8, 8};
  a.layers[0] = {2, 3, 2, 3, 2, 3, 2, 3};
  a.objective = 1.0 / 3.0;
  auto const path = dir / "alloc.json";
  REQUIRE(io::write_allocation(path, a) == Status::ok);
  io::BitAllocation b;
  REQUIRE(io::read_allocation(path, b, 8) == Status::ok);
  CHECK(b.group_size == 64);
  CHECK(b.symmetric);
  CHECK(b.layers == a.layers);
  CHECK_FALSE(b.average_bits.has_value());
  REQUIRE(b.objective.has_value());
  CHECK(*b.objective == 1.0 / 3.0);  // nlohmann-json writes doubles with round-trip precision
  std::string const text = io::allocation_to_json(b);
  CHECK(text.find("\"0\"") < text.find("\"2\""));
  CHECK(text.find("\"2\"") < text.find("\"10\""));
  // Overwriting replaces the file whole and leaves no temporary behind.
  a.layers.erase(10);
  a.layers.erase(2);
  a.average_bits = 2.5;  // layer 0 uses 20 bits = the budget floor(2.5·8)
  REQUIRE(io::write_allocation(path, a) == Status::ok);
  REQUIRE(io::read_allocation(path, b) == Status::ok);
  CHECK(b.layers == a.layers);
  CHECK(b.average_bits == 2.5);
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
}

TEST_CASE("allocation: each malformed file is rejected with a message naming file and problem", "[allocation]") {
  TempDir dir;
  struct Case {
    char const* name;
    std::string text;
    int experts;
    char const* message;
  };
  Case const cases[] = {
      {"malformed JSON", "{\"format\": ", 0, "malformed JSON"},
      {"not an object", "[1, 2]", 0, "the top level is not a JSON object"},
      {"unknown format", edited("moekit-mcsharp-allocation", "hqq"), 0, "unknown format 'hqq'"},
      {"missing format", edited("\"format\": \"moekit-mcsharp-allocation\",", ""), 0, "'format' is missing"},
      {"unknown version", edited("\"version\": 1", "\"version\": 2"), 0, "unsupported version 2"},
      {"version not integer", edited("\"version\": 1", "\"version\": \"1\""), 0, "'version' is missing or not"},
      {"bad group size", edited("128", "96"), 0, "group_size 96, expected 32, 64 or 128"},
      {"bad scheme", edited("\"asymmetric\"", "\"nf4\""), 0, "scheme 'nf4'"},
      {"unknown key", edited("\"objective\"", "\"objectiv\""), 0, "unknown key 'objectiv'"},
      {"duplicate layer key", edited("\"5\": [2, 2, 4, 4]", "\"3\": [2, 2, 4, 4]"), 0, "duplicate key '3'"},
      {"duplicate layer index", edited("\"5\": [2, 2, 4, 4]", "\"03\": [2, 2, 4, 4]"), 0, "duplicate layer 3"},
      {"duplicate top-level key", edited("\"version\": 1,", "\"version\": 1, \"version\": 1,"), 0,
       "duplicate key 'version'"},
      {"bits 0", edited("[4, 3, 3, 2]", "[4, 3, 0, 2]"), 0,
       "layer 3 expert 2: bit width 0 is not an integer in [1, 8]"},
      {"bits 9", edited("[2, 2, 4, 4]", "[2, 9, 4, 4]"), 0, "layer 5 expert 1: bit width 9"},
      {"bits not integer", edited("[4, 3, 3, 2]", "[4, 3.5, 3, 2]"), 0, "layer 3 expert 1: bit width 3.5"},
      {"expert count", example, 8, "layer 3 lists 4 experts, expected 8"},
      {"empty layer", edited("[4, 3, 3, 2]", "[]"), 0, "layer 3 is not a non-empty array"},
      {"bad layer key", edited("\"5\"", "\"-5\""), 0, "layer key '-5' is not a non-negative decimal integer"},
      {"no layers", edited("\"layers\"", "\"layer\""), 0, "unknown key 'layer'"},
      {"empty layers", R"({"format": "moekit-mcsharp-allocation", "version": 1, "group_size": 32,
                           "scheme": "symmetric", "layers": {}})",
       0, "'layers' is missing, not an object, or empty"},
      {"over budget", edited("\"average_bits\": 3.0", "\"average_bits\": 2.9"), 0,
       "layer 3 uses 12 bits, over the budget 11 of average_bits 2.9"},
      {"objective not finite", edited("0.28783677", "\"x\""), 0, "'objective' is not a finite number"},
  };
  for (auto const& c : cases) {
    auto const path = dir / "bad.json";
    write_text(path, c.text);
    io::BitAllocation a = sentinel();
    clear_error_message();
    CAPTURE(c.name);
    CHECK(io::read_allocation(path, a, c.experts) == Status::invalid_argument);
    std::string const message = last_error_message();
    CHECK_THAT(message, Catch::Contains(c.message));
    CHECK_THAT(message, Catch::Contains(path.string()));
    CHECK(a.group_size == 32);  // untouched
    CHECK(a.layers.count(99) == 1);
  }
}

TEST_CASE("allocation: unreadable files and invalid allocations to write", "[allocation]") {
  TempDir dir;
  io::BitAllocation a = sentinel();
  CHECK(io::read_allocation(dir / "missing.json", a) == Status::io_error);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("no such file"));
  CHECK(io::read_allocation(dir.path, a) == Status::io_error);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("it is a directory"));

  io::BitAllocation bad;
  bad.layers[1] = {4, 12};
  auto const path = dir / "out.json";
  CHECK(io::write_allocation(path, bad) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("layer 1 expert 1: bit width 12"));
  bad.layers.clear();
  CHECK(io::write_allocation(path, bad) == Status::invalid_argument);
  CHECK_THAT(std::string(last_error_message()), Catch::Contains("'layers' is missing"));
  bad.layers[0] = {4};
  bad.group_size = 100;
  CHECK(io::write_allocation(path, bad) == Status::invalid_argument);
  CHECK_FALSE(fs::exists(path));  // nothing written
}
