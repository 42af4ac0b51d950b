#pragma once
// Shared by the emulator's tests: launch options with the checks on, and readable output of
// the emulator's enums when an assertion fails.

#include <cstdint>
#include <string>

#include <catch2/catch.hpp>

#include "moekit/arch/arch.hpp"
#include "moekit/emu/emu.hpp"

namespace Catch {
template <>
struct StringMaker<moekit::emu::Finding> {
  static std::string convert(moekit::emu::Finding f) { return moekit::emu::to_string(f); }
};
template <>
struct StringMaker<moekit::Status> {
  static std::string convert(moekit::Status s) { return moekit::to_string(s); }
};
}  // namespace Catch

namespace emu_test {

// Racecheck and initcheck on, with the given schedule seed (0: index order).
inline moekit::emu::LaunchOptions checked(std::uint64_t seed = 0, int resident_blocks = 1) {
  moekit::emu::LaunchOptions o;
  o.schedule_seed = seed;
  o.racecheck = true;
  o.initcheck = true;
  o.max_resident_blocks = resident_blocks;
  return o;
}

inline moekit::emu::LaunchOptions unchecked(std::uint64_t seed = 0, int resident_blocks = 1) {
  moekit::emu::LaunchOptions o;
  o.schedule_seed = seed;
  o.max_resident_blocks = resident_blocks;
  return o;
}

inline bool contains(std::string const& s, std::string const& part) { return s.find(part) != std::string::npos; }

// True when some finding of kind `f` has a message containing every one of `parts`.
template <class... Parts>
bool has_message(moekit::emu::LaunchResult const& r, moekit::emu::Finding f, Parts const&... parts) {
  for (auto const& d : r.diagnostics) {
    if (d.kind == f && (contains(d.message, parts) && ...)) {
      return true;
    }
  }
  return false;
}

}  // namespace emu_test
