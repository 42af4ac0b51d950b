#pragma once
// A readable reason beside a failing Status. Host functions that reject their input return
// `moekit::error(Status::invalid_argument, "router logits: non-finite value at token %lld, expert %d", t, e)`:
// the Status goes back to the caller as usual and the formatted message is kept per thread,
// like errno, until the next error on that thread. `last_error_message()` reads it.
// Device code never formats: kernels count what went wrong in device memory instead.

#include <cstdarg>
#include <cstdio>

#include "moekit/config.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN

namespace detail {
struct ErrorMessageBuffer {
  char text[512] = "";
};
inline ErrorMessageBuffer& error_message_buffer() noexcept {
  thread_local ErrorMessageBuffer buffer;
  return buffer;
}
}  // namespace detail

// Records the message (printf format) and returns `s`, so that `return error(...)` reads naturally.
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
inline Status
error(Status s, char const* format, ...) noexcept {
  auto& b = detail::error_message_buffer();
  std::va_list args;
  va_start(args, format);
  std::vsnprintf(b.text, sizeof b.text, format, args);
  va_end(args);
  return s;
}

// The message of the last error() on this thread ("" if none).
[[nodiscard]] inline char const* last_error_message() noexcept { return detail::error_message_buffer().text; }

// Forget the last message (tests and tools call this before a call whose message they read).
inline void clear_error_message() noexcept { detail::error_message_buffer().text[0] = '\0'; }

MOEKIT_NAMESPACE_END
