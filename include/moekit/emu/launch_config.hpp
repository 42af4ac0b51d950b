#pragma once
// The shape of an emulated launch (grid, block, dynamic shared memory, cooperative) and the
// options that turn the emulator into a verification tool (schedule seed, racecheck, initcheck).

#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "moekit/config.hpp"
#include "moekit/emu/device.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace emu {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr Dim3() = default;
  constexpr Dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) noexcept : x(x_), y(y_), z(z_) {}  // NOLINT: as dim3
  [[nodiscard]] constexpr std::uint64_t volume() const noexcept { return std::uint64_t{x} * y * z; }
};

struct LaunchConfig {
  Dim3 grid;
  Dim3 block;
  std::size_t dynamic_shared_bytes = 0;
  bool cooperative = false;       // all blocks co-resident; grid-wide sync allowed
  int registers_per_thread = 32;  // for the co-residency check of cooperative launches
};

namespace detail {
#if defined(__SANITIZE_ADDRESS__)
inline constexpr std::size_t default_stack_bytes = 512 * 1024;  // ASan frames are large
#else
inline constexpr std::size_t default_stack_bytes = 64 * 1024;
#endif
}  // namespace detail

struct LaunchOptions {
  // 0 runs threads in index order and blocks in grid order; any other value shuffles both the
  // block order and, at every scheduling point, which ready thread runs next.
  std::uint64_t schedule_seed = 0;
  bool racecheck = false;  // report conflicting shared-memory accesses with no barrier between
  bool initcheck = false;  // report reads of shared memory never written since the block began
  // Blocks of a non-cooperative grid resident at once (interleaved by the scheduler).
  int max_resident_blocks = 1;
  VirtualDevice device = VirtualDevice::small();
  std::size_t stack_bytes = detail::default_stack_bytes;  // per emulated thread
  std::size_t max_diagnostics = 16;

  // Options from the environment, so any test binary can be rerun under a check:
  // MOEKIT_EMU_SEED=<n>, MOEKIT_EMU_RACECHECK=1, MOEKIT_EMU_INITCHECK=1.
  [[nodiscard]] static LaunchOptions from_environment() noexcept {
    LaunchOptions o;
    if (char const* s = std::getenv("MOEKIT_EMU_SEED")) {
      o.schedule_seed = std::strtoull(s, nullptr, 10);
    }
    if (char const* s = std::getenv("MOEKIT_EMU_RACECHECK")) {
      o.racecheck = s[0] == '1';
    }
    if (char const* s = std::getenv("MOEKIT_EMU_INITCHECK")) {
      o.initcheck = s[0] == '1';
    }
    return o;
  }
};

// Options for launches that do not pass their own (arch::launch, and through it every library
// entry point), set for the current thread while the guard lives. Tests use it to run a
// library call under several schedule seeds with racecheck on; outside a guard the options
// come from the environment.
namespace detail {
inline LaunchOptions const*& launch_options_override() noexcept {
  thread_local LaunchOptions const* options = nullptr;
  return options;
}
}  // namespace detail

class ScopedLaunchOptions {
 public:
  explicit ScopedLaunchOptions(LaunchOptions const& options) noexcept
      : options_(options), previous_(detail::launch_options_override()) {
    detail::launch_options_override() = &options_;
  }
  ~ScopedLaunchOptions() { detail::launch_options_override() = previous_; }
  ScopedLaunchOptions(ScopedLaunchOptions const&) = delete;
  ScopedLaunchOptions& operator=(ScopedLaunchOptions const&) = delete;

 private:
  LaunchOptions options_;
  LaunchOptions const* previous_;
};

[[nodiscard]] inline LaunchOptions default_launch_options() noexcept {
  LaunchOptions const* o = detail::launch_options_override();
  return o != nullptr ? *o : LaunchOptions::from_environment();
}

}  // namespace emu
MOEKIT_NAMESPACE_END
