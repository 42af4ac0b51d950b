#pragma once
// Fiber stacks for emulated threads: mmap'd with a guard region below each (an overflow faults
// instead of corrupting a neighbour) and reused across launches, because a block of 256
// threads would otherwise cost 256 mmap/munmap pairs per launch.

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <mutex>
#include <new>
#include <vector>

#include <boost/context/stack_context.hpp>

#include "moekit/config.hpp"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#endif

MOEKIT_NAMESPACE_BEGIN
namespace emu::detail {

class StackPool {
 public:
  static StackPool& instance() {
    static StackPool pool;
    return pool;
  }

  // A stack of at least `bytes` usable bytes (rounded up to whole pages).
  boost::context::stack_context acquire(std::size_t bytes) {
    std::size_t const size = round_to_page(bytes);
    {
      std::lock_guard lock(mutex_);
      for (std::size_t i = 0; i < free_.size(); ++i) {
        if (free_[i].size == size) {
          auto s = free_[i];
          free_[i] = free_.back();
          free_.pop_back();
          return s;
        }
      }
    }
    std::size_t const guard = guard_bytes(size);
    void* base = ::mmap(nullptr, size + guard, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (base == MAP_FAILED) {
      throw std::bad_alloc();  // host-side emulator setup, never on a device path
    }
    ::mprotect(base, guard, PROT_NONE);
    boost::context::stack_context s;
    s.size = size;
    s.sp = static_cast<char*>(base) + guard + size;  // stacks grow down from sp
    return s;
  }

  // Gives a stack back for reuse. `abandoned` stacks belonged to a thread that never finished
  // (its launch was aborted); their frames are dropped without running, so under ASan the
  // shadow poisoning those frames left behind is cleared before the stack is reused.
  void release(boost::context::stack_context s, bool abandoned = false) {
    if (abandoned) {
#if defined(__SANITIZE_ADDRESS__)
      ASAN_UNPOISON_MEMORY_REGION(static_cast<char*>(s.sp) - s.size, s.size);
#endif
    }
    std::lock_guard lock(mutex_);
    free_.push_back(s);
  }

  StackPool(StackPool const&) = delete;
  StackPool& operator=(StackPool const&) = delete;
  ~StackPool() {
    for (auto const& s : free_) {
      std::size_t const guard = guard_bytes(s.size);
      ::munmap(static_cast<char*>(s.sp) - s.size - guard, s.size + guard);
    }
  }

  // The inaccessible region below a stack, at least 1 MiB: a kernel's big local array that
  // overflows the stack lands in it rather than in another mapping. It costs address space only.
  static std::size_t guard_bytes(std::size_t stack_bytes) noexcept {
    return stack_bytes > (std::size_t{1} << 20) ? stack_bytes : (std::size_t{1} << 20);
  }

 private:
  StackPool() = default;
  static std::size_t page_size() noexcept { return static_cast<std::size_t>(::sysconf(_SC_PAGESIZE)); }
  static std::size_t round_to_page(std::size_t bytes) noexcept {
    std::size_t const p = page_size();
    return (bytes + p - 1) / p * p;
  }

  std::mutex mutex_;
  std::vector<boost::context::stack_context> free_;
};

// The StackAllocator handed to boost::context::fiber. It records the stack it hands out in
// `*owner`, and clears it when the fiber finishes and boost gives the stack back, so the
// runtime knows which stacks an aborted launch abandoned.
struct PooledStack {
  boost::context::stack_context* owner;
  std::size_t bytes;

  boost::context::stack_context allocate() {
    *owner = StackPool::instance().acquire(bytes);
    return *owner;
  }
  void deallocate(boost::context::stack_context& s) noexcept {
    StackPool::instance().release(s);
    owner->sp = nullptr;
    owner->size = 0;
  }
};

}  // namespace emu::detail
MOEKIT_NAMESPACE_END
