// Run by ctest, expected to die: a kernel whose locals do not fit in the emulated thread's
// stack must be reported by name (thread, block, stack size, the option to raise), not as a
// bare SIGSEGV. The test passes when the output holds that message.
#include <cstdio>

#include "moekit/arch/arch.hpp"
#include "moekit/emu/emu.hpp"

namespace {
// Not inlined, so the array really lives in this frame.
[[gnu::noinline]] int touch_big_frame(int seed) {
  volatile char big[192 * 1024];
  for (int i = 0; i < static_cast<int>(sizeof big); i += 4096) {
    big[i] = static_cast<char>(seed + i);
  }
  return big[0];
}
}  // namespace

int main() {
  moekit::emu::LaunchOptions options;
  options.stack_bytes = 64 * 1024;
  auto const r = moekit::emu::launch({.grid = 1, .block = 32}, options,
                                     [] { (void)touch_big_frame(static_cast<int>(moekit::arch::thread_rank())); });
  std::printf("no overflow happened: %s\n", r.summary().c_str());
  return 0;
}
