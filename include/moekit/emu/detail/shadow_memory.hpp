#pragma once
// Shadow state of one block's shared memory, one cell per byte, for racecheck and initcheck.
//
// Two accesses to a byte by different threads are ordered when a block barrier separates them
// (the block's barrier epoch advanced) or, for two lanes of one warp, when a warp-wide
// collective both took part in came between (the warp's sync count advanced). Partial-mask
// collectives order nothing here: a conservative choice that can only add reports.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "moekit/config.hpp"
#include "moekit/emu/diagnostics.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace emu::detail {

// Who is accessing, and where the block and the accessor's warp stand.
struct Accessor {
  std::uint32_t thread;     // linear thread index in the block
  std::uint32_t warp;       // warp index in the block
  std::uint32_t epoch;      // block barriers completed so far + 1
  std::uint32_t warp_sync;  // warp-wide collectives the warp completed so far
};

struct Conflict {
  Finding kind;
  std::size_t offset;  // byte offset in the block's shared memory
  std::int64_t other;  // the other thread, or -1 when several threads are involved
};

class SharedShadow {
 public:
  void reset(std::size_t bytes, bool track_races, bool track_init) {
    races_ = track_races;
    init_ = track_init;
    cells_.assign((races_ || init_) ? bytes : 0, Cell{});
  }
  [[nodiscard]] bool active() const noexcept { return races_ || init_; }

  // Each returns the first problem it finds in [offset, offset + n), after recording the access.
  [[nodiscard]] bool on_read(std::size_t offset, std::size_t n, Accessor const& a, Conflict& out) {
    bool found = false;
    for (std::size_t i = offset; i < offset + n && i < cells_.size(); ++i) {
      Cell& c = cells_[i];
      if (init_ && !c.written && !found) {
        out = {Finding::uninitialized_read, i, -1};
        found = true;
      }
      if (!races_) {
        continue;
      }
      if (!found && c.write.epoch == a.epoch && !ordered(c.write, a)) {
        out = {Finding::race_read_after_write, i, c.write.thread};
        found = true;
      }
      if (!found) {
        found = atomic_conflict(c, a, i, Finding::race_read_after_write, out);
      }
      add_reader(c, a);
    }
    return found;
  }

  // `initializes` is false for the issue of an asynchronous copy: it races like a write from
  // then on, but the bytes hold their data only when the copy completes.
  [[nodiscard]] bool on_write(std::size_t offset, std::size_t n, Accessor const& a, Conflict& out,
                              bool initializes = true) {
    bool found = false;
    for (std::size_t i = offset; i < offset + n && i < cells_.size(); ++i) {
      Cell& c = cells_[i];
      c.written = c.written || initializes;
      if (!races_) {
        continue;
      }
      if (!found) {
        found = write_conflict(c, a, i, out) || atomic_conflict(c, a, i, Finding::race_write_after_write, out);
      }
      c.write = {a.epoch, a.warp_sync, a.thread, a.warp};
      c.read.epoch = 0;  // later writers are checked against this write, which the reads preceded
      c.others_epoch = 0;
      c.atomic.epoch = 0;
    }
    return found;
  }

  // An atomic read-modify-write: it initialises the bytes and races with plain reads and writes
  // of other threads (either order), never with other atomics.
  [[nodiscard]] bool on_atomic(std::size_t offset, std::size_t n, Accessor const& a, Conflict& out) {
    bool found = false;
    for (std::size_t i = offset; i < offset + n && i < cells_.size(); ++i) {
      Cell& c = cells_[i];
      c.written = true;
      if (!races_) {
        continue;
      }
      if (!found) {
        found = write_conflict(c, a, i, out);
      }
      add_atomic(c, a);
    }
    return found;
  }

  // True when every byte of [offset, offset + n) was written (or initcheck is off).
  [[nodiscard]] bool initialized(std::size_t offset, std::size_t n) const noexcept {
    for (std::size_t i = offset; init_ && i < offset + n && i < cells_.size(); ++i) {
      if (!cells_[i].written) {
        return false;
      }
    }
    return true;
  }

 private:
  static constexpr std::int32_t many = -2;
  static constexpr std::uint32_t many_u = 0xffffffffu;  // a Record's thread or warp: several

  struct Record {
    std::uint32_t epoch = 0;  // 0: no access recorded
    std::uint32_t warp_sync = 0;
    std::uint32_t thread = 0;
    std::uint32_t warp = 0;
  };
  struct Cell {
    Record write;
    Record read;                         // the first reader in the current epoch
    Record atomic;                       // atomics of that epoch since the last plain write,
                                         // summarised: thread/warp `many_u` if several, latest sync
    std::uint32_t others_epoch = 0;      // further readers of that epoch, summarised:
    std::uint32_t others_warp_sync = 0;  // the latest warp-sync count any of them had
    std::int32_t others_thread = -1;     // their thread if only one, else `many`
    std::int32_t others_warp = -1;       // their warp if all in one warp, else `many`
    bool written = false;
  };

  static bool ordered(Record const& r, Accessor const& a) noexcept {
    return r.epoch < a.epoch || r.thread == a.thread || (r.warp == a.warp && r.warp_sync < a.warp_sync);
  }

  static void add_reader(Cell& c, Accessor const& a) noexcept {
    if (c.read.epoch != a.epoch || c.read.thread == a.thread) {
      c.read = {a.epoch, a.warp_sync, a.thread, a.warp};
      return;
    }
    auto const t = static_cast<std::int32_t>(a.thread);
    auto const w = static_cast<std::int32_t>(a.warp);
    if (c.others_epoch != a.epoch) {
      c.others_epoch = a.epoch;
      c.others_thread = t;
      c.others_warp = w;
      c.others_warp_sync = a.warp_sync;
      return;
    }
    if (c.others_thread != t) {
      c.others_thread = many;
    }
    if (c.others_warp != w) {
      c.others_warp = many;
    }
    c.others_warp_sync = a.warp_sync > c.others_warp_sync ? a.warp_sync : c.others_warp_sync;
  }

  static void add_atomic(Cell& c, Accessor const& a) noexcept {
    if (c.atomic.epoch != a.epoch) {
      c.atomic = {a.epoch, a.warp_sync, a.thread, a.warp};
      return;
    }
    c.atomic.thread = c.atomic.thread == a.thread ? a.thread : many_u;
    c.atomic.warp = c.atomic.warp == a.warp ? a.warp : many_u;
    c.atomic.warp_sync = a.warp_sync > c.atomic.warp_sync ? a.warp_sync : c.atomic.warp_sync;
  }

  // A plain access after atomics of another thread with no barrier between.
  static bool atomic_conflict(Cell const& c, Accessor const& a, std::size_t i, Finding kind, Conflict& out) noexcept {
    if (c.atomic.epoch == a.epoch && !ordered(c.atomic, a)) {
      out = {kind, i, c.atomic.thread == many_u ? -1 : static_cast<std::int64_t>(c.atomic.thread)};
      return true;
    }
    return false;
  }

  static bool write_conflict(Cell const& c, Accessor const& a, std::size_t i, Conflict& out) noexcept {
    if (c.write.epoch == a.epoch && !ordered(c.write, a)) {
      out = {Finding::race_write_after_write, i, c.write.thread};
      return true;
    }
    if (c.read.epoch == a.epoch && !ordered(c.read, a)) {
      out = {Finding::race_write_after_read, i, c.read.thread};
      return true;
    }
    if (c.others_epoch == a.epoch && c.others_thread != static_cast<std::int32_t>(a.thread)) {
      bool const same_warp_and_synced =
          c.others_warp == static_cast<std::int32_t>(a.warp) && c.others_warp_sync < a.warp_sync;
      if (!same_warp_and_synced) {
        out = {Finding::race_write_after_read, i, c.others_thread == many ? -1 : c.others_thread};
        return true;
      }
    }
    return false;
  }

  bool races_ = false;
  bool init_ = false;
  std::vector<Cell> cells_;
};

}  // namespace emu::detail
MOEKIT_NAMESPACE_END
