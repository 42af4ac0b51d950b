#pragma once
// A fixed set of std::threads for the CPU executor. parallel_for(n, f) hands out the indices
// [0, n) one at a time from an atomic counter (dynamic scheduling: items of uneven cost, such as
// the tiles of experts with different loads, balance themselves); the calling thread works too
// and the call returns when every f(i) has returned. Which thread runs which index varies from
// run to run, so callers make each index write its own outputs in a fixed order (the executor's
// results are bit-identical for any thread count). f must not throw.
//
// One parallel_for runs at a time per pool (concurrent callers queue); a parallel_for called
// from inside f runs inline on that thread.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

#include "moekit/config.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace cpu {

class ThreadPool {
 public:
  // 0: std::thread::hardware_concurrency() (at least 1); 1: no worker, f runs inline on the caller.
  explicit ThreadPool(unsigned threads = 0) {
    if (threads == 0) {
      threads = std::thread::hardware_concurrency();
    }
    size_ = threads < 1 ? 1 : threads;
    workers_.reserve(size_ - 1);
    for (unsigned i = 1; i < size_; ++i) {
      workers_.emplace_back([this] { worker_loop(); });
    }
  }
  ThreadPool(ThreadPool const&) = delete;
  ThreadPool& operator=(ThreadPool const&) = delete;
  ~ThreadPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (std::thread& t : workers_) {
      t.join();
    }
  }

  // Threads that work in a parallel_for, the caller included.
  [[nodiscard]] unsigned size() const noexcept { return size_; }

  template <class F>
  void parallel_for(std::int64_t n, F&& f) {
    if (n <= 0) {
      return;
    }
    if (workers_.empty() || n == 1 || inside_pool()) {
      for (std::int64_t i = 0; i < n; ++i) {
        f(i);
      }
      return;
    }
    using Fn = std::remove_reference_t<F>;
    run(
        n, [](void* context, std::int64_t i) { (*static_cast<Fn*>(context))(i); },
        const_cast<void*>(static_cast<void const*>(&f)));
  }

 private:
  using Thunk = void (*)(void*, std::int64_t);

  static bool& inside_pool() noexcept {
    thread_local bool inside = false;
    return inside;
  }

  void work() noexcept {
    inside_pool() = true;
    for (std::int64_t i = next_.fetch_add(1, std::memory_order_relaxed); i < count_;
         i = next_.fetch_add(1, std::memory_order_relaxed)) {
      thunk_(context_, i);
    }
    inside_pool() = false;
  }

  void run(std::int64_t n, Thunk thunk, void* context) {
    std::lock_guard<std::mutex> one_job(call_mutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      thunk_ = thunk;
      context_ = context;
      count_ = n;
      next_.store(0, std::memory_order_relaxed);
      busy_ = static_cast<unsigned>(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    work();
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return busy_ == 0; });
  }

  void worker_loop() {
    std::uint64_t seen = 0;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) {
          return;
        }
        seen = generation_;
      }
      work();
      std::lock_guard<std::mutex> lock(mutex_);
      if (--busy_ == 0) {
        done_.notify_one();
      }
    }
  }

  unsigned size_ = 1;
  std::vector<std::thread> workers_;
  std::mutex call_mutex_;  // one parallel_for at a time
  std::mutex mutex_;       // guards the job fields, generation_, busy_, stop_
  std::condition_variable wake_, done_;
  Thunk thunk_ = nullptr;
  void* context_ = nullptr;
  std::int64_t count_ = 0;
  std::atomic<std::int64_t> next_{0};
  unsigned busy_ = 0;
  std::uint64_t generation_ = 0;
  bool stop_ = false;
};

}  // namespace cpu
MOEKIT_NAMESPACE_END
