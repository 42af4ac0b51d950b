#include "moekit/core/status.hpp"

#include <cstring>
#include <set>
#include <string>

#include <catch2/catch.hpp>

using moekit::Status;

TEST_CASE("every Status has its own readable name", "[core]") {
  std::set<std::string> names;
  for (int i = 0; i <= static_cast<int>(Status::internal_error); ++i) {
    char const* s = moekit::to_string(static_cast<Status>(i));
    REQUIRE(std::strlen(s) > 0);
    REQUIRE(std::string(s) != "unknown status");
    names.insert(s);
  }
  REQUIRE(names.size() == static_cast<std::size_t>(Status::internal_error) + 1);
  REQUIRE(std::string(moekit::to_string(static_cast<Status>(999))) == "unknown status");
}

TEST_CASE("!status reads as failure", "[core]") {
  STATIC_REQUIRE(!Status::workspace_too_small);
  STATIC_REQUIRE_FALSE(!Status::ok);
  STATIC_REQUIRE(moekit::is_ok(Status::ok));
}
