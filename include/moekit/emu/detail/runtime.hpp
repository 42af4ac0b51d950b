#pragma once
// The emulator's engine: one fiber per CUDA thread, a cooperative scheduler over the resident
// blocks, and the rendezvous behind every block barrier, warp collective and grid sync.
//
// A thread runs until it reaches a synchronisation point (a barrier, a warp collective, an
// atomic, a fence) and then hands control back to the scheduler, which picks the next ready
// thread: in index order, or from a seeded random generator to expose ordering bugs. The last
// thread to arrive at a rendezvous computes every participant's result (warp collectives
// exchange lane payloads; mma and ldmatrix are warp collectives too) and wakes the others.
// Everything the runtime keeps lives on the heap, never on a fiber's stack, so an aborted
// launch can drop its threads' stacks without unwinding them.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <new>
#include <random>
#include <source_location>
#include <string>
#include <utility>
#include <vector>

#include <boost/context/fiber.hpp>

#include "moekit/config.hpp"
#include "moekit/emu/detail/overflow_guard.hpp"
#include "moekit/emu/detail/sanitizer.hpp"
#include "moekit/emu/detail/shadow_memory.hpp"
#include "moekit/emu/detail/stack_pool.hpp"
#include "moekit/emu/diagnostics.hpp"
#include "moekit/emu/launch_config.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace emu::detail {

struct Block;
struct Warp;
struct Runtime;

enum class WaitKind : std::uint8_t { none, block_barrier, warp_collective, grid_barrier };

// Per-lane operand and result bytes of a warp collective (an mma needs 40 in, 16 out).
struct alignas(16) LanePayload {
  std::byte bytes[64];
  template <class T>
  T& as() noexcept {
    static_assert(sizeof(T) <= sizeof(bytes));
    return *std::launder(reinterpret_cast<T*>(bytes));
  }
};

struct AsyncCopy {
  void* dst;
  void const* src;
  std::uint32_t bytes;
  std::uint32_t src_bytes;  // bytes read from src; the rest of `bytes` is zero-filled
};

// A fiber that can be dropped without unwinding: an aborted launch leaves threads suspended
// mid-kernel, and unwinding them would run through code that may be noexcept.
class FiberSlot {
 public:
  using fiber = boost::context::fiber;
  FiberSlot() = default;
  FiberSlot(FiberSlot const&) = delete;
  FiberSlot& operator=(FiberSlot const&) = delete;
  ~FiberSlot() {
    if (has_ && finished()) {
      get().~fiber();
    }
    // else: abandoned; Runtime gives its stack back to the pool.
  }
  void emplace(fiber&& f) {
    ::new (static_cast<void*>(storage_)) fiber(std::move(f));
    has_ = true;
  }
  void resume() { get() = std::move(get()).resume(); }
  [[nodiscard]] bool finished() noexcept { return !static_cast<bool>(get()); }

 private:
  fiber& get() noexcept { return *std::launder(reinterpret_cast<fiber*>(storage_)); }
  alignas(fiber) unsigned char storage_[sizeof(fiber)];
  bool has_ = false;
};

struct Thread {
  Dim3 index;
  std::uint32_t linear = 0;  // x + y*bx + z*bx*by, as CUDA numbers threads into warps
  std::uint32_t lane = 0;
  Warp* warp = nullptr;
  Block* block = nullptr;

  enum class State : std::uint8_t { ready, running, waiting, finished } state = State::ready;
  WaitKind waiting_on = WaitKind::none;
  char const* waiting_what = "";
  std::source_location waiting_where;

  FiberSlot fiber;
  boost::context::fiber scheduler;  // the scheduler's continuation, while this thread runs
  boost::context::stack_context stack{};

  LanePayload in, out;  // warp-collective operands and results
  std::int64_t barrier_result = 0;
  std::uint32_t shared_accesses = 0;               // SharedArray accesses since the thread last gave up the CPU
  std::vector<AsyncCopy> open_copies;              // cp.async issued since the last commit
  std::deque<std::vector<AsyncCopy>> copy_groups;  // committed, not yet waited for
};

using CollectiveFn = void (*)(Warp&, std::uint32_t mask);

// A warp collective in progress: the lanes that named `mask` and have arrived so far.
struct Collective {
  std::uint32_t arrived = 0;
  std::uint32_t mask = 0;
  char const* what = "";
  CollectiveFn fn = nullptr;
  std::source_location where;
};

struct Warp {
  std::uint32_t index = 0;
  std::uint32_t exists = 0;  // lanes that exist (the last warp of a block may be partial)
  std::uint32_t exited = 0;
  Thread* lanes[32] = {};
  // The collectives in progress: lanes in divergent branches may each run one over disjoint
  // masks (e.g. __shfl_sync(0x0000ffff, ...) and __shfl_sync(0xffff0000, ...)) at once.
  std::vector<Collective> open;
  std::uint32_t full_syncs = 0;  // collectives in which every live lane took part
};

struct Block {
  Dim3 index;
  std::uint32_t linear = 0;
  std::vector<Thread> threads;
  std::vector<Warp> warps;
  std::byte* shared = nullptr;
  std::size_t shared_bytes = 0;
  SharedShadow shadow;
  std::uint32_t epoch = 1;  // block barriers completed + 1 (racecheck's notion of "between barriers")
  std::uint32_t finished = 0;
  std::int64_t first_exited = -1;
  // The block barrier in progress.
  std::uint32_t arrived = 0;
  std::source_location barrier_where;
  char const* barrier_what = "";
  std::int64_t accumulator = 0;

  Block() = default;
  Block(Block const&) = delete;
  Block& operator=(Block const&) = delete;
  ~Block() { ::operator delete[](shared, std::align_val_t{1024}); }
};

inline thread_local Thread* current_thread = nullptr;
inline thread_local Runtime* current_runtime = nullptr;

inline bool same_place(std::source_location const& a, std::source_location const& b) noexcept {
  return a.line() == b.line() && a.column() == b.column() && std::strcmp(a.file_name(), b.file_name()) == 0;
}

// "file:line" in a message: `message + place(where)` appends it in place. A fatal finding never
// returns, so the temporaries of the expression that built its message are never destroyed: a
// string of its own here would leak (LeakSanitizer reports it); an append leaves nothing behind.
struct Place {
  std::source_location where;
};
inline Place place(std::source_location const& l) noexcept { return {l}; }
inline std::string operator+(std::string&& s, Place const& p) {
  s += p.where.file_name();
  s += ':';
  s += std::to_string(p.where.line());
  return std::move(s);
}

inline std::string format_dim(Dim3 d) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "(%u,%u,%u)", d.x, d.y, d.z);
  return buf;
}

struct Runtime {
  using KernelBody = void (*)(void*);

  LaunchConfig config;
  LaunchOptions options;
  LaunchResult result;
  KernelBody body = nullptr;
  void* body_context = nullptr;

  std::mt19937_64 rng;
  bool aborted = false;
  std::deque<Thread*> ready;
  std::vector<std::unique_ptr<Block>> resident;
  std::vector<std::uint32_t> pending_blocks;  // linear block indices not yet started
  std::uint64_t steps_since_progress = 0;
  StackBounds scheduler_stack;  // the OS thread's stack, as ASan must be told when switching to it
  // The grid barrier in progress (cooperative launches).
  std::uint64_t grid_arrived = 0;
  std::uint64_t grid_threads = 0;
  std::uint64_t grid_exited = 0;
  std::source_location grid_where;

  static constexpr std::uint64_t livelock_steps = 50'000'000;
  static constexpr std::uint32_t spin_accesses = 1u << 20;

  // ---- reporting ----------------------------------------------------------------------------
  void report(Finding kind, std::string message) {
    if (result.diagnostics.size() < options.max_diagnostics) {
      result.diagnostics.push_back({kind, std::move(message)});
    } else {
      ++result.suppressed;
    }
  }

  static std::string who(Thread const& t) {
    return "thread " + std::to_string(t.linear) + " " + format_dim(t.index) + " of block " + format_dim(t.block->index);
  }

  // A fatal finding: record it, stop the launch, never return to the calling thread.
  [[noreturn]] void fail(Thread& t, Finding kind, std::string message) {
    report(kind, std::move(message));
    aborted = true;
    t.state = Thread::State::waiting;
    suspend(t);
    std::fputs("moekit emulator: an aborted thread was resumed\n", stderr);
    std::abort();
  }

  // ---- switching (called on the emulated thread's fiber) ------------------------------------------
  void suspend(Thread& t) {
    t.shared_accesses = 0;
    FiberSwitch to_scheduler(scheduler_stack);
    t.scheduler = std::move(t.scheduler).resume();
    to_scheduler.arrived(&scheduler_stack);
  }

  void wait(Thread& t, WaitKind kind, char const* what, std::source_location where) {
    t.state = Thread::State::waiting;
    t.waiting_on = kind;
    t.waiting_what = what;
    t.waiting_where = where;
    suspend(t);
  }

  void yield(Thread& t) {
    t.state = Thread::State::ready;
    ready.push_back(&t);
    suspend(t);
  }

  // A thread that reads or writes shared memory this often with no scheduling point between may
  // be spinning on a word another thread is to set: let the others run (hardware schedules
  // threads independently), and count it towards the livelock guard, so that a spin nothing
  // ends is reported instead of hanging the process. Only for the running thread.
  void count_shared_access(Thread& t) {
    if (++t.shared_accesses >= spin_accesses) {
      steps_since_progress += livelock_steps / 64;
      yield(t);
    }
  }

  void wake(Thread& t) {
    t.state = Thread::State::ready;
    t.waiting_on = WaitKind::none;
    ready.push_back(&t);
  }

  // ---- block barrier (__syncthreads and its _count/_and/_or forms) ----------------------------------
  enum class BarrierOp { sync, count, all, any };

  std::int64_t block_barrier(Thread& t, BarrierOp op, bool predicate, char const* what, std::source_location where) {
    Block& b = *t.block;
    if (b.first_exited >= 0) {
      fail(t, Finding::exited_at_barrier,
           who(t) + " waits at " + what + " (" + place(where) + ") but thread " + std::to_string(b.first_exited) +
               " of its block has exited and can never arrive");
    }
    if (b.arrived == 0) {
      b.barrier_where = where;
      b.barrier_what = what;
      b.accumulator = op == BarrierOp::all ? 1 : 0;
    } else if (!same_place(b.barrier_where, where) || std::strcmp(b.barrier_what, what) != 0) {
      fail(t, Finding::barrier_divergence,
           who(t) + " arrives at " + what + " (" + place(where) + ") while other threads of its block wait at " +
               b.barrier_what + " (" + place(b.barrier_where) + ")");
    }
    switch (op) {
      case BarrierOp::sync: break;
      case BarrierOp::count: b.accumulator += predicate ? 1 : 0; break;
      case BarrierOp::all: b.accumulator &= predicate ? 1 : 0; break;
      case BarrierOp::any: b.accumulator |= predicate ? 1 : 0; break;
    }
    if (++b.arrived == b.threads.size()) {
      std::int64_t const r = b.accumulator;
      b.arrived = 0;
      ++b.epoch;
      progress();
      for (auto& other : b.threads) {
        other.barrier_result = r;
        if (&other != &t) {
          wake(other);
        }
      }
      return r;
    }
    wait(t, WaitKind::block_barrier, what, where);
    return t.barrier_result;
  }

  // ---- warp collectives --------------------------------------------------------------------------
  // The caller has filled t.in; on return t.out holds this lane's result.
  void warp_collective(Thread& t, std::uint32_t mask, CollectiveFn fn, char const* what, std::source_location where) {
    Warp& w = *t.warp;
    std::uint32_t const bit = 1u << t.lane;
    if ((mask & bit) == 0) {
      fail(t, Finding::invalid_mask,
           who(t) + " (lane " + std::to_string(t.lane) + ") calls " + what + " (" + place(where) + ") with mask " +
               hex(mask) + ", which does not name the calling lane");
    }
    std::uint32_t const needed = mask & w.exists;
    if ((needed & w.exited) != 0) {
      fail(t, Finding::exited_at_barrier,
           who(t) + " calls " + what + " (" + place(where) + ") with mask " + hex(mask) + " naming lanes " +
               hex(needed & w.exited) + " that have exited");
    }
    // A collective whose mask overlaps ours must be the same one, with the same mask.
    auto c = std::find_if(w.open.begin(), w.open.end(), [&](Collective const& o) { return (o.mask & needed) != 0; });
    if (c == w.open.end()) {
      c = w.open.insert(w.open.end(), Collective{0, needed, what, fn, where});
    } else if (c->mask != needed || c->fn != fn) {
      fail(t, Finding::warp_divergence,
           who(t) + " calls " + what + " (" + place(where) + ") with mask " + hex(needed) + " while lanes " +
               hex(c->arrived) + " of warp " + std::to_string(w.index) + " wait in " + c->what + " (" +
               place(c->where) + ") with mask " + hex(c->mask));
    }
    c->arrived |= bit;
    if (c->arrived == needed) {
      w.open.erase(c);
      fn(w, needed);
      if (needed == (w.exists & ~w.exited)) {
        ++w.full_syncs;
      }
      progress();
      for (std::uint32_t lane = 0; lane < 32; ++lane) {
        if ((needed >> lane & 1u) != 0 && lane != t.lane) {
          wake(*w.lanes[lane]);
        }
      }
      return;
    }
    wait(t, WaitKind::warp_collective, what, where);
  }

  // ---- grid barrier (cooperative launches) ---------------------------------------------------------
  void grid_barrier(Thread& t, std::source_location where) {
    if (!config.cooperative) {
      fail(t, Finding::invalid_operation,
           who(t) + " calls grid sync (" + place(where) + ") in a launch that is not cooperative");
    }
    if (grid_exited != 0) {
      fail(t, Finding::exited_at_barrier,
           who(t) + " waits at grid sync (" + place(where) + ") but some threads of the grid have exited");
    }
    if (grid_arrived == 0) {
      grid_where = where;
    } else if (!same_place(grid_where, where)) {
      fail(t, Finding::barrier_divergence,
           who(t) + " arrives at grid sync (" + place(where) + ") while others wait at grid sync (" +
               place(grid_where) + ")");
    }
    if (++grid_arrived == grid_threads) {
      grid_arrived = 0;
      progress();
      for (auto& b : resident) {
        ++b->epoch;  // a grid sync orders shared memory like a block barrier
        for (auto& other : b->threads) {
          if (&other != &t) {
            wake(other);
          }
        }
      }
      return;
    }
    wait(t, WaitKind::grid_barrier, "grid sync", where);
  }

  // ---- shared memory checks -----------------------------------------------------------------------
  [[nodiscard]] static bool in_shared(Block const& b, void const* p, std::size_t& offset) noexcept {
    auto const* c = static_cast<std::byte const*>(p);
    if (b.shared == nullptr || c < b.shared || c >= b.shared + b.shared_bytes) {
      return false;
    }
    offset = static_cast<std::size_t>(c - b.shared);
    return true;
  }

  void shared_access(Thread& t, void const* p, std::size_t n, bool is_write, bool initializes = true) {
    Block& b = *t.block;
    std::size_t offset = 0;
    if (!b.shadow.active() || !in_shared(b, p, offset)) {
      return;
    }
    Accessor const a{t.linear, t.warp->index, b.epoch, t.warp->full_syncs};
    Conflict c{};
    bool const found = is_write ? b.shadow.on_write(offset, n, a, c, initializes) : b.shadow.on_read(offset, n, a, c);
    if (found) {
      std::string msg = who(t) + (is_write ? " writes " : " reads ") + std::to_string(n) +
                        " byte(s) of shared memory at offset " + std::to_string(offset) + " (conflict at byte " +
                        std::to_string(c.offset) + ")";
      if (c.kind == Finding::uninitialized_read) {
        msg += " that nothing wrote since the block started";
      } else {
        msg += c.kind == Finding::race_read_after_write ? ", written by " : ", accessed by ";
        msg += c.other >= 0 ? "thread " + std::to_string(c.other) : std::string("several threads");
        msg += " with no barrier between (after barrier #" + std::to_string(b.epoch - 1) + ")";
      }
      report(c.kind, std::move(msg));
    }
  }

  // An atomic on shared memory reads it (initcheck applies) and races with plain reads and writes
  // of other threads, but never with another atomic.
  void shared_atomic(Thread& t, void const* p, std::size_t n) {
    Block& b = *t.block;
    std::size_t offset = 0;
    if (!b.shadow.active() || !in_shared(b, p, offset)) {
      return;
    }
    if (!b.shadow.initialized(offset, n)) {
      report(Finding::uninitialized_read, who(t) + " applies an atomic to " + std::to_string(n) +
                                              " byte(s) of shared memory at offset " + std::to_string(offset) +
                                              " that nothing wrote since the block started");
    }
    Conflict c{};
    if (b.shadow.on_atomic(offset, n, Accessor{t.linear, t.warp->index, b.epoch, t.warp->full_syncs}, c)) {
      report(c.kind, who(t) + " applies an atomic to " + std::to_string(n) + " byte(s) of shared memory at offset " +
                         std::to_string(offset) + " (conflict at byte " + std::to_string(c.offset) + "), accessed by " +
                         (c.other >= 0 ? "thread " + std::to_string(c.other) : std::string("several threads")) +
                         " with no barrier between (after barrier #" + std::to_string(b.epoch - 1) + ")");
    }
  }

  // ---- cp.async ----------------------------------------------------------------------------------
  void complete_copies(Thread& t, std::vector<AsyncCopy> const& group) {
    for (auto const& c : group) {
      if (c.src_bytes != 0) {  // src-size 0 reads nothing: a predicated-off copy may pass a null source
        std::memcpy(c.dst, c.src, c.src_bytes);
      }
      std::memset(static_cast<std::byte*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
      shared_access(t, c.dst, c.bytes, true);
    }
  }

  void wait_copy_groups(Thread& t, std::size_t keep) {
    while (t.copy_groups.size() > keep) {
      complete_copies(t, t.copy_groups.front());
      t.copy_groups.pop_front();
    }
  }

  // ---- threads and blocks ----------------------------------------------------------------------------
  void progress() noexcept { steps_since_progress = 0; }

  void on_exit(Thread& t) {
    // Real hardware completes outstanding cp.async copies; so do we.
    if (!t.open_copies.empty()) {
      t.copy_groups.push_back(std::move(t.open_copies));
      t.open_copies.clear();
    }
    wait_copy_groups(t, 0);
    Block& b = *t.block;
    Warp& w = *t.warp;
    w.exited |= 1u << t.lane;
    if (b.first_exited < 0) {
      b.first_exited = t.linear;
    }
    ++b.finished;
    ++grid_exited;
    progress();
    if (b.arrived != 0) {
      fail(t, Finding::exited_at_barrier,
           who(t) + " exited while " + std::to_string(b.arrived) + " thread(s) of its block wait at " + b.barrier_what +
               " (" + place(b.barrier_where) + ")");
    }
    for (Collective const& c : w.open) {
      if ((c.mask >> t.lane & 1u) != 0) {
        fail(t, Finding::exited_at_barrier,
             who(t) + " exited while lanes " + hex(c.arrived) + " of its warp wait for it in " + c.what + " (" +
                 place(c.where) + ")");
      }
    }
    if (grid_arrived != 0) {
      fail(t, Finding::exited_at_barrier,
           who(t) + " exited while " + std::to_string(grid_arrived) + " thread(s) wait at grid sync (" +
               place(grid_where) + ")");
    }
    t.state = Thread::State::finished;
  }

  void start_block(std::uint32_t linear) {
    auto block = std::make_unique<Block>();
    Block& b = *block;
    Dim3 const g = config.grid;
    b.linear = linear;
    b.index = Dim3(linear % g.x, (linear / g.x) % g.y, linear / (g.x * g.y));
    auto const n = static_cast<std::uint32_t>(config.block.volume());
    b.shared_bytes = config.dynamic_shared_bytes;
    if (b.shared_bytes != 0) {
      b.shared = static_cast<std::byte*>(::operator new[](b.shared_bytes, std::align_val_t{1024}));
      std::memset(b.shared, 0xff, b.shared_bytes);  // stale contents: NaN as float, -1 as int
    }
    b.shadow.reset(b.shared_bytes, options.racecheck, options.initcheck);
    b.threads = std::vector<Thread>(n);
    b.warps = std::vector<Warp>((n + 31) / 32);
    Dim3 const bd = config.block;
    for (std::uint32_t i = 0; i < n; ++i) {
      Thread& t = b.threads[i];
      t.linear = i;
      t.index = Dim3(i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y));
      t.lane = i % 32;
      t.block = &b;
      t.warp = &b.warps[i / 32];
      t.warp->index = i / 32;
      t.warp->exists |= 1u << t.lane;
      t.warp->lanes[t.lane] = &t;
      Runtime* rt = this;
      t.fiber.emplace(boost::context::fiber(std::allocator_arg, PooledStack{&t.stack, options.stack_bytes},
                                            [rt, &t](boost::context::fiber&& scheduler) {
                                              FiberSwitch::entered(&rt->scheduler_stack);
                                              t.scheduler = std::move(scheduler);
                                              rt->body(rt->body_context);
                                              rt->on_exit(t);
                                              FiberSwitch::leave_for_good(rt->scheduler_stack);
                                              return std::move(t.scheduler);
                                            }));
      ready.push_back(&t);
    }
    resident.push_back(std::move(block));
  }

  void retire_finished_blocks() {
    for (std::size_t i = 0; i < resident.size();) {
      if (resident[i]->finished == resident[i]->threads.size()) {
        resident.erase(resident.begin() + static_cast<std::ptrdiff_t>(i));
      } else {
        ++i;
      }
    }
  }

  Thread* pick() {
    std::size_t i = 0;
    if (options.schedule_seed != 0 && ready.size() > 1) {
      i = std::uniform_int_distribution<std::size_t>(0, ready.size() - 1)(rng);
      std::swap(ready[0], ready[i]);
    }
    Thread* t = ready.front();
    ready.pop_front();
    return t;
  }

  void run() {
    std::uint64_t const blocks = config.grid.volume();
    pending_blocks.resize(blocks);
    for (std::uint32_t i = 0; i < blocks; ++i) {
      pending_blocks[i] = i;
    }
    if (options.schedule_seed != 0) {
      rng.seed(options.schedule_seed);
      std::shuffle(pending_blocks.begin(), pending_blocks.end(), rng);
    }
    std::size_t const max_resident =
        config.cooperative ? blocks : static_cast<std::size_t>(std::max(options.max_resident_blocks, 1));
    grid_threads = config.cooperative ? blocks * config.block.volume() : 0;
    std::size_t next = 0;
    while (!aborted) {
      while (resident.size() < max_resident && next < pending_blocks.size()) {
        start_block(pending_blocks[next++]);
      }
      if (ready.empty()) {
        break;
      }
      Thread* t = pick();
      Block* b = t->block;
      t->state = Thread::State::running;
      current_thread = t;
      {
        running_stack = {
            static_cast<char const*>(t->stack.sp), t->stack.size, t->linear, b->index.x, b->index.y, b->index.z};
        FiberSwitch to_thread(StackBounds{static_cast<char*>(t->stack.sp) - t->stack.size, t->stack.size});
        t->fiber.resume();
        to_thread.arrived(nullptr);
        running_stack = {};
      }
      current_thread = nullptr;
      ++result.context_switches;
      if (++steps_since_progress > livelock_steps) {
        report(Finding::deadlock, "no barrier, collective or thread exit in " + std::to_string(livelock_steps) +
                                      " scheduling steps: threads appear to spin forever");
        aborted = true;
      }
      if (b->finished == b->threads.size()) {
        retire_finished_blocks();
      }
    }
    if (!aborted && !resident.empty()) {
      diagnose_deadlock();
      aborted = true;
    }
    // Threads of an aborted launch are abandoned mid-kernel; their stacks go back to the pool.
    for (auto& b : resident) {
      for (auto& t : b->threads) {
        if (t.stack.sp != nullptr) {
          StackPool::instance().release(t.stack, /*abandoned=*/true);
        }
      }
    }
    resident.clear();
    if (!result.diagnostics.empty() || result.suppressed != 0) {
      result.status = Status::emulation_error;
    }
  }

  void diagnose_deadlock() {
    for (auto& b : resident) {
      std::string msg = "block " + format_dim(b->index) + ": no thread can run;";
      // Group consecutive threads waiting at the same place.
      std::size_t i = 0;
      auto const n = b->threads.size();
      while (i < n) {
        Thread const& t = b->threads[i];
        std::size_t j = i + 1;
        auto same = [&](Thread const& u) {
          return u.state == t.state && u.waiting_on == t.waiting_on &&
                 (t.state != Thread::State::waiting || same_place(u.waiting_where, t.waiting_where));
        };
        while (j < n && same(b->threads[j])) {
          ++j;
        }
        msg += " threads " + std::to_string(i) + "-" + std::to_string(j - 1);
        if (t.state == Thread::State::finished) {
          msg += " exited;";
        } else {
          msg += std::string(" wait at ") + t.waiting_what + " (" + place(t.waiting_where) + ");";
        }
        i = j;
      }
      report(Finding::deadlock, std::move(msg));
    }
  }

  static std::string hex(std::uint32_t v) {
    char buf[16];
    std::snprintf(buf, sizeof buf, "0x%08x", v);
    return buf;
  }
};

// The emulated thread running now; arch/ wrappers call this. Calling a device-side primitive
// from plain host code (outside emu::launch) is a programming error reported at once.
inline Thread& this_thread(char const* what) {
  if (current_thread == nullptr) {
    std::fprintf(stderr, "moekit emulator: %s called outside an emulated kernel\n", what);
    std::abort();
  }
  return *current_thread;
}

}  // namespace emu::detail
MOEKIT_NAMESPACE_END
