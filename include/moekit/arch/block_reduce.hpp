#pragma once
// Block-wide reduction of one value per thread: cub::BlockReduce under nvcc, a shared-memory
// reduction under emulation. As in CUB, the result is valid in thread 0 only, and TempStorage
// may be reused only after a sync_threads().

#include "moekit/arch/barrier.hpp"
#include "moekit/arch/block_scan.hpp"
#include "moekit/arch/config.hpp"
#include "moekit/arch/shared_memory.hpp"
#include "moekit/arch/thread_index.hpp"

#if MOEKIT_CUDA_COMPILER
#include <cub/block/block_reduce.cuh>
#endif

MOEKIT_NAMESPACE_BEGIN
namespace arch {
MOEKIT_ARCH_NAMESPACE_BEGIN

#if MOEKIT_EMULATION
template <class T, int BlockThreads>
class BlockReduce {
 public:
  struct TempStorage {
    SharedArray<T, BlockThreads> values;
  };
  explicit BlockReduce(TempStorage& storage) : s_(storage) {
    detail::require_block_threads<BlockThreads>("BlockReduce");
  }

  template <class Op>
  T reduce(T input, Op op) {
    unsigned const r = thread_rank();
    s_.values[r] = input;
    sync_threads();
    if (r != 0) {
      return input;  // CUB leaves other threads' results undefined
    }
    T acc = s_.values[0];
    for (unsigned i = 1; i < static_cast<unsigned>(BlockThreads); ++i) {
      acc = op(acc, static_cast<T>(s_.values[i]));
    }
    return acc;
  }
  T sum(T input) {
    return reduce(input, [](T a, T b) { return a + b; });
  }

 private:
  TempStorage& s_;
};
#else
template <class T, int BlockThreads>
class BlockReduce {
  using Cub = cub::BlockReduce<T, BlockThreads>;

 public:
  struct TempStorage {
    typename Cub::TempStorage cub;
  };
  MOEKIT_DEVICE explicit BlockReduce(TempStorage& storage) : cub_(storage.cub) {}
  template <class Op>
  MOEKIT_DEVICE T reduce(T input, Op op) {
    return cub_.Reduce(input, op);
  }
  MOEKIT_DEVICE T sum(T input) { return cub_.Sum(input); }

 private:
  Cub cub_;
};
#endif

MOEKIT_ARCH_NAMESPACE_END
}  // namespace arch
MOEKIT_NAMESPACE_END
