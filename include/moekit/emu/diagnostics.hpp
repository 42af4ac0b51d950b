#pragma once
// What an emulated launch found: each finding names its kind, the block and threads involved
// and, where known, the source location and shared-memory address, in one readable line.

#include <cstdint>
#include <string>
#include <vector>

#include "moekit/config.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace emu {

enum class Finding {
  race_read_after_write,   // racecheck: a read of a byte another thread wrote with no barrier between
  race_write_after_read,   // racecheck: a write of a byte another thread read with no barrier between
  race_write_after_write,  // racecheck: two threads wrote one byte with no barrier between
  uninitialized_read,      // initcheck: a read of shared memory nothing wrote since the block started
  barrier_divergence,      // threads of one block wait at different barriers
  exited_at_barrier,       // a thread exited while others wait for it at a barrier or collective
  warp_divergence,         // lanes named in one mask call different warp collectives or masks
  invalid_mask,            // a lane calls a warp collective with a mask that excludes itself
  deadlock,                // no thread can run, some have not finished
  shared_memory_overflow,  // SharedStorage larger than the dynamic shared memory launched
  misaligned_address,      // ldmatrix / cp.async address breaks the instruction's alignment
  invalid_launch,          // grid or block shape, shared memory or co-residency out of limits
  invalid_operation,       // e.g. a grid sync in a launch that is not cooperative
};

[[nodiscard]] constexpr char const* to_string(Finding f) noexcept {
  switch (f) {
    case Finding::race_read_after_write: return "race (read after write)";
    case Finding::race_write_after_read: return "race (write after read)";
    case Finding::race_write_after_write: return "race (write after write)";
    case Finding::uninitialized_read: return "uninitialized shared-memory read";
    case Finding::barrier_divergence: return "barrier divergence";
    case Finding::exited_at_barrier: return "thread exited before a barrier";
    case Finding::warp_divergence: return "divergent warp collective";
    case Finding::invalid_mask: return "invalid warp mask";
    case Finding::deadlock: return "deadlock";
    case Finding::shared_memory_overflow: return "shared memory overflow";
    case Finding::misaligned_address: return "misaligned address";
    case Finding::invalid_launch: return "invalid launch";
    case Finding::invalid_operation: return "invalid operation";
  }
  return "unknown finding";
}

struct Diagnostic {
  Finding kind;
  std::string message;
};

// The outcome of one emulated launch.
struct LaunchResult {
  Status status = Status::ok;
  std::vector<Diagnostic> diagnostics;
  std::size_t suppressed = 0;          // findings beyond LaunchOptions::max_diagnostics
  std::uint64_t context_switches = 0;  // fiber switches the launch took (a cost measure)

  [[nodiscard]] bool ok() const noexcept { return status == Status::ok; }
  [[nodiscard]] bool has(Finding f) const noexcept {
    for (auto const& d : diagnostics) {
      if (d.kind == f) {
        return true;
      }
    }
    return false;
  }
  [[nodiscard]] std::string summary() const {
    std::string s = to_string(status);
    for (auto const& d : diagnostics) {
      s += "\n  ";
      s += to_string(d.kind);
      s += ": ";
      s += d.message;
    }
    if (suppressed != 0) {
      s += "\n  ... and " + std::to_string(suppressed) + " more";
    }
    return s;
  }
};

}  // namespace emu
MOEKIT_NAMESPACE_END
