#pragma once
// Block-wide prefix sums over one value per thread: cub::BlockScan under nvcc; under
// emulation a plain shared-memory scan with the same contract, including CUB's rule that
// TempStorage may be reused only after a sync_threads() (racecheck reports a missing one).

#include "moekit/arch/barrier.hpp"
#include "moekit/arch/config.hpp"
#include "moekit/arch/shared_memory.hpp"
#include "moekit/arch/thread_index.hpp"

#if MOEKIT_CUDA_COMPILER
#include <cub/block/block_scan.cuh>
#endif

MOEKIT_NAMESPACE_BEGIN
namespace arch {
MOEKIT_ARCH_NAMESPACE_BEGIN

#if MOEKIT_EMULATION
namespace detail {
template <int BlockThreads>
void require_block_threads(char const* what) {
  auto& t = me(what);
  if (runtime().config.block.volume() != static_cast<std::uint64_t>(BlockThreads)) {
    runtime().fail(t, emu::Finding::invalid_operation,
                   std::string(what) + " was instantiated for " + std::to_string(BlockThreads) +
                       " threads but the block has " + std::to_string(runtime().config.block.volume()));
  }
}
}  // namespace detail

template <class T, int BlockThreads>
class BlockScan {
 public:
  struct TempStorage {
    SharedArray<T, BlockThreads> values;
  };
  explicit BlockScan(TempStorage& storage) : s_(storage) { detail::require_block_threads<BlockThreads>("BlockScan"); }

  void exclusive_sum(T input, T& output) {
    T aggregate;
    exclusive_sum(input, output, aggregate);
  }
  // `aggregate` receives the sum over the whole block, in every thread.
  void exclusive_sum(T input, T& output, T& aggregate) {
    unsigned const r = thread_rank();
    s_.values[r] = input;
    sync_threads();
    T acc{};
    for (unsigned i = 0; i < r; ++i) {
      acc = acc + static_cast<T>(s_.values[i]);
    }
    output = acc;
    for (unsigned i = r; i < static_cast<unsigned>(BlockThreads); ++i) {
      acc = acc + static_cast<T>(s_.values[i]);
    }
    aggregate = acc;
  }
  void inclusive_sum(T input, T& output) {
    T aggregate;
    exclusive_sum(input, output, aggregate);
    output = output + input;
  }

 private:
  TempStorage& s_;
};
#else
template <class T, int BlockThreads>
class BlockScan {
  using Cub = cub::BlockScan<T, BlockThreads>;

 public:
  struct TempStorage {
    typename Cub::TempStorage cub;
  };
  MOEKIT_DEVICE explicit BlockScan(TempStorage& storage) : cub_(storage.cub) {}
  MOEKIT_DEVICE void exclusive_sum(T input, T& output) { cub_.ExclusiveSum(input, output); }
  MOEKIT_DEVICE void exclusive_sum(T input, T& output, T& aggregate) { cub_.ExclusiveSum(input, output, aggregate); }
  MOEKIT_DEVICE void inclusive_sum(T input, T& output) { cub_.InclusiveSum(input, output); }

 private:
  Cub cub_;
};
#endif

MOEKIT_ARCH_NAMESPACE_END
}  // namespace arch
MOEKIT_NAMESPACE_END
