// A consumer of moekit::moekit: what a project that only links the target gets.
// The umbrella header must need nothing beyond moekit::moekit (no Boost.Context).
#include <cstdio>
#include <cstring>

#include "moekit/moekit.hpp"

static_assert(__cplusplus >= 202002L, "moekit::moekit must bring C++20 (target_compile_features cxx_std_20)");

#define MOEKIT_CONSUMER_STR2(x) #x
#define MOEKIT_CONSUMER_STR(x) MOEKIT_CONSUMER_STR2(x)

int main() {
  char const* version = MOEKIT_CONSUMER_STR(MOEKIT_VERSION_MAJOR) "." MOEKIT_CONSUMER_STR(
      MOEKIT_VERSION_MINOR) "." MOEKIT_CONSUMER_STR(MOEKIT_VERSION_PATCH);
  std::printf("moekit %s (MOEKIT_VERSION %d): to_string(Status::ok) = \"%s\"\n", version, MOEKIT_VERSION,
              moekit::to_string(moekit::Status::ok));
#if defined(MOEKIT_CONSUMER_EXPECTED_VERSION)
  // The version CMake's package (or project()) reports must be the one the headers carry.
  if (std::strcmp(version, MOEKIT_CONSUMER_EXPECTED_VERSION) != 0) {
    std::printf("FAIL: headers say %s, CMake says %s\n", version, MOEKIT_CONSUMER_EXPECTED_VERSION);
    return 1;
  }
#endif
  moekit::bf16_t const one(1.0f);
  if (std::strcmp(moekit::to_string(moekit::Status::ok), "ok") != 0 || !moekit::is_ok(moekit::Status::ok) ||
      one.bits != 0x3F80u) {
    std::printf("FAIL: Status::ok\n");
    return 1;
  }
  return 0;
}
