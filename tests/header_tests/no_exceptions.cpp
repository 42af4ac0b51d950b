// moekit's core headers in a program built with -fno-exceptions (STYLE.md §4: no exceptions in
// device code, arch/, kernels/ or run(); after {fmt}'s noexception-test). Compiling is most of
// the test; main() then checks that Status works without them.
#include <cstdio>
#include <cstring>

#include "core_headers.hpp"  // generated: every moekit/core/*.hpp

#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#error "no_exceptions.cpp must be compiled with -fno-exceptions"
#endif

namespace {

using moekit::Status;

int passed = 0;
int failed = 0;

void check(bool ok, char const* what) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    std::printf("FAILED: %s\n", what);
  }
}

// Status and its helpers are usable in constant expressions and never throw.
static_assert(noexcept(moekit::to_string(Status::ok)));
static_assert(noexcept(moekit::is_ok(Status::ok)));
static_assert(moekit::is_ok(Status::ok));
static_assert(!moekit::is_ok(Status::invalid_problem));
static_assert(!Status::workspace_too_small);

// What a layer's run() looks like without exceptions: a Status out, the caller decides.
Status validate(long tokens, long experts) noexcept {
  if (tokens < 0) return Status::invalid_argument;
  if (experts <= 0) return Status::invalid_problem;
  return Status::ok;
}

}  // namespace

int main() {
  check(moekit::is_ok(validate(16, 8)), "validate(16, 8) is ok");
  check(validate(-1, 8) == Status::invalid_argument, "validate(-1, 8) is invalid_argument");
  check(!validate(16, 0), "!validate(16, 0)");
  check(std::strcmp(moekit::to_string(Status::ok), "ok") == 0, "to_string(ok) == \"ok\"");

  // Every Status from ok to internal_error has a name of its own.
  int const last = static_cast<int>(Status::internal_error);
  for (int i = 0; i <= last; ++i) {
    char const* name = moekit::to_string(static_cast<Status>(i));
    bool unique = name != nullptr && name[0] != '\0';
    for (int j = 0; unique && j < i; ++j) unique = std::strcmp(name, moekit::to_string(static_cast<Status>(j))) != 0;
    check(unique, "to_string gives each Status a distinct, non-empty name");
  }

  std::printf("no_exceptions: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
