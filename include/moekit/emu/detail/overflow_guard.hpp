#pragma once
// Turns an emulated thread's stack overflow into a readable message. Each fiber stack has a
// guard region below it (stack_pool.hpp); a kernel whose locals do not fit faults there, and
// without this the process would die of a bare SIGSEGV. While any launch runs, a SIGSEGV
// handler on an alternate signal stack checks whether the fault hit the running emulated
// thread's guard region: if so it names the thread and the stack size and how to raise it,
// then lets the fault kill the process as before. Any other fault goes to the handler that was
// installed before. Not installed under ASan, which reports stack overflows itself.

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <mutex>

#include "moekit/config.hpp"
#include "moekit/emu/detail/stack_pool.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace emu::detail {

// The running emulated thread's stack, read by the signal handler (set by the scheduler).
struct RunningStack {
  char const* top = nullptr;  // sp: stacks grow down from here
  std::size_t size = 0;
  unsigned thread = 0;
  unsigned block_x = 0, block_y = 0, block_z = 0;
};
inline thread_local RunningStack running_stack;

class OverflowGuard {
 public:
  OverflowGuard() {
#if !defined(__SANITIZE_ADDRESS__)
    static thread_local char alt_stack[64 * 1024];
    stack_t ss{};
    ss.ss_sp = alt_stack;
    ss.ss_size = sizeof alt_stack;
    ::sigaltstack(&ss, nullptr);
    std::lock_guard lock(state().mutex);
    if (state().users++ == 0) {
      struct sigaction sa {};
      sa.sa_sigaction = &on_fault;
      sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
      sigemptyset(&sa.sa_mask);
      ::sigaction(SIGSEGV, &sa, &state().previous);
    }
#endif
  }
  ~OverflowGuard() {
#if !defined(__SANITIZE_ADDRESS__)
    std::lock_guard lock(state().mutex);
    if (--state().users == 0) {
      ::sigaction(SIGSEGV, &state().previous, nullptr);
    }
#endif
  }
  OverflowGuard(OverflowGuard const&) = delete;
  OverflowGuard& operator=(OverflowGuard const&) = delete;

 private:
  struct State {
    std::mutex mutex;
    int users = 0;
    struct sigaction previous {};
  };
  static State& state() {
    static State s;
    return s;
  }

  static void on_fault(int, siginfo_t* info, void*) {
    RunningStack const& r = running_stack;
    auto const* addr = static_cast<char const*>(info->si_addr);
    char const* const bottom = r.top - r.size;
    if (r.top != nullptr && addr < bottom && addr >= bottom - StackPool::guard_bytes(r.size)) {
      char msg[320];
      int const n = std::snprintf(msg, sizeof msg,
                                  "moekit emulator: thread %u of block (%u,%u,%u) overflowed its %zu KiB stack "
                                  "(kernel locals too large for LaunchOptions::stack_bytes; raise it)\n",
                                  r.thread, r.block_x, r.block_y, r.block_z, r.size / 1024);
      if (n > 0) {
        (void)::write(2, msg, static_cast<std::size_t>(n < static_cast<int>(sizeof msg) ? n : sizeof msg - 1));
      }
    }
    // Not ours, or reported: the previous disposition takes the re-executed fault.
    ::sigaction(SIGSEGV, &state().previous, nullptr);
  }
};

}  // namespace emu::detail
MOEKIT_NAMESPACE_END
