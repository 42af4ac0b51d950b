#pragma once
// Telling AddressSanitizer about fiber switches. Debian's Boost.Context is built on fcontext,
// whose fibers do not annotate their switches (only the ucontext back end does, and that needs
// a library built for it), so the runtime annotates each switch itself: ASan then knows which
// stack is live and does not report the scheduler's frames as overflows of a fiber's stack.
// Without ASan every call here compiles to nothing.

#include <cstddef>

#include "moekit/config.hpp"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

MOEKIT_NAMESPACE_BEGIN
namespace emu::detail {

struct StackBounds {
  void const* bottom = nullptr;
  std::size_t size = 0;
};

// One switch: construct just before resuming another context with the bounds of the stack it
// runs on, call arrived() just after control comes back.
class FiberSwitch {
 public:
#if defined(__SANITIZE_ADDRESS__)
  explicit FiberSwitch(StackBounds target) noexcept {
    __sanitizer_start_switch_fiber(&fake_stack_, target.bottom, target.size);
  }
  // Back on our stack; `from` receives the bounds of the stack we came from, if wanted.
  void arrived(StackBounds* from) noexcept {
    __sanitizer_finish_switch_fiber(fake_stack_, from ? &from->bottom : nullptr, from ? &from->size : nullptr);
  }
  // First instructions of a new fiber: record the stack that started it.
  static void entered(StackBounds* from) noexcept {
    __sanitizer_finish_switch_fiber(nullptr, &from->bottom, &from->size);
  }
  // A fiber's last switch: its fake stack is released.
  static void leave_for_good(StackBounds target) noexcept {
    __sanitizer_start_switch_fiber(nullptr, target.bottom, target.size);
  }

 private:
  void* fake_stack_ = nullptr;
#else
  explicit FiberSwitch(StackBounds) noexcept {}
  void arrived(StackBounds*) noexcept {}
  static void entered(StackBounds*) noexcept {}
  static void leave_for_good(StackBounds) noexcept {}
#endif
};

}  // namespace emu::detail
MOEKIT_NAMESPACE_END
