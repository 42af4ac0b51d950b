#pragma once
// Block-wide stable radix sort of ItemsPerThread keys (and optional values) per thread, in a
// blocked arrangement (thread r holds items r*ItemsPerThread ...): cub::BlockRadixSort under
// nvcc; under emulation a stable sort on the same bit ordering CUB uses (signed integers with
// the sign bit flipped, floats with negative values' bits inverted).

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "moekit/arch/barrier.hpp"
#include "moekit/arch/block_scan.hpp"
#include "moekit/arch/config.hpp"
#include "moekit/arch/shared_memory.hpp"
#include "moekit/arch/thread_index.hpp"

#if MOEKIT_CUDA_COMPILER
#include <cub/block/block_radix_sort.cuh>
#endif

MOEKIT_NAMESPACE_BEGIN
namespace arch {
MOEKIT_ARCH_NAMESPACE_BEGIN

#if MOEKIT_EMULATION
namespace detail {
// The unsigned integer whose order is CUB's radix order of `key`.
template <class Key>
auto radix_bits(Key key) {
  static_assert(std::is_arithmetic_v<Key> && (sizeof(Key) == 4 || sizeof(Key) == 8), "32/64-bit keys");
  using U = std::conditional_t<sizeof(Key) == 4, std::uint32_t, std::uint64_t>;
  U u;
  std::memcpy(&u, &key, sizeof(Key));
  constexpr U sign = U{1} << (8 * sizeof(Key) - 1);
  if constexpr (std::is_floating_point_v<Key>) {
    return (u & sign) != 0 ? static_cast<U>(~u) : static_cast<U>(u | sign);
  } else if constexpr (std::is_signed_v<Key>) {
    return static_cast<U>(u ^ sign);
  } else {
    return u;
  }
}
}  // namespace detail

template <class Key, int BlockThreads, int ItemsPerThread, class Value = void>
class BlockRadixSort {
  static constexpr int items = BlockThreads * ItemsPerThread;
  static constexpr bool has_values = !std::is_void_v<Value>;
  using StoredValue = std::conditional_t<has_values, Value, char>;

 public:
  struct TempStorage {
    SharedArray<Key, items> keys;
    SharedArray<StoredValue, has_values ? items : 1> values;
  };
  explicit BlockRadixSort(TempStorage& storage) : s_(storage) {
    detail::require_block_threads<BlockThreads>("BlockRadixSort");
  }

  void sort(Key (&keys)[ItemsPerThread]) { sort_impl(keys, nullptr); }
  template <class V = Value>
    requires(!std::is_void_v<V>)
  void sort(Key (&keys)[ItemsPerThread], V (&values)[ItemsPerThread]) { sort_impl(keys, values); }

 private:
  void sort_impl(Key (&keys)[ItemsPerThread], StoredValue* values) {
    unsigned const base = thread_rank() * ItemsPerThread;
    for (int i = 0; i < ItemsPerThread; ++i) {
      s_.keys[base + i] = keys[i];
      if constexpr (has_values) {
        s_.values[base + i] = values[i];
      }
    }
    sync_threads();
    if (thread_rank() == 0) {
      // On the heap: a block's worth of items can exceed an emulated thread's stack (64 KiB).
      std::vector<int> order(items);
      for (int i = 0; i < items; ++i) {
        order[i] = i;
      }
      std::stable_sort(order.begin(), order.end(), [this](int a, int b) {
        return detail::radix_bits(static_cast<Key>(s_.keys[a])) < detail::radix_bits(static_cast<Key>(s_.keys[b]));
      });
      std::vector<Key> sorted_keys(items);
      std::vector<StoredValue> sorted_values(has_values ? items : 1);
      for (int i = 0; i < items; ++i) {
        sorted_keys[i] = s_.keys[order[i]];
        if constexpr (has_values) {
          sorted_values[i] = s_.values[order[i]];
        }
      }
      for (int i = 0; i < items; ++i) {
        s_.keys[i] = sorted_keys[i];
        if constexpr (has_values) {
          s_.values[i] = sorted_values[i];
        }
      }
    }
    sync_threads();
    for (int i = 0; i < ItemsPerThread; ++i) {
      keys[i] = s_.keys[base + i];
      if constexpr (has_values) {
        values[i] = s_.values[base + i];
      }
    }
  }

  TempStorage& s_;
};
#else
template <class Key, int BlockThreads, int ItemsPerThread, class Value = void>
class BlockRadixSort {
  using CubValue = std::conditional_t<std::is_void_v<Value>, cub::NullType, Value>;
  using Cub = cub::BlockRadixSort<Key, BlockThreads, ItemsPerThread, CubValue>;

 public:
  struct TempStorage {
    typename Cub::TempStorage cub;
  };
  MOEKIT_DEVICE explicit BlockRadixSort(TempStorage& storage) : cub_(storage.cub) {}
  MOEKIT_DEVICE void sort(Key (&keys)[ItemsPerThread]) { cub_.Sort(keys); }
  template <class V = Value>
    requires(!std::is_void_v<V>)
  MOEKIT_DEVICE void sort(Key (&keys)[ItemsPerThread], V (&values)[ItemsPerThread]) { cub_.Sort(keys, values); }

 private:
  Cub cub_;
};
#endif

MOEKIT_ARCH_NAMESPACE_END
}  // namespace arch
MOEKIT_NAMESPACE_END
