#pragma once
// TensorView: a non-owning pointer + 64-bit extents and strides (in elements), tagged at
// compile time with the memory space it lives in, so a host buffer cannot be handed to a
// kernel by mistake. Offsets are computed in 64 bits: products of MoE sizes pass 2^31.

#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "moekit/config.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN

enum class MemorySpace { host, device };

template <class T, int Rank, MemorySpace Space>
struct TensorView {
  static_assert(Rank >= 1 && Rank <= 8, "TensorView rank must be in [1, 8]");
  using element_type = T;
  using index_type = std::int64_t;
  static constexpr int rank = Rank;
  static constexpr MemorySpace space = Space;

  T* data = nullptr;
  std::array<index_type, Rank> extents{};
  std::array<index_type, Rank> strides{};  // in elements; may be 0 (broadcast), never negative

  // A dense view with the last dimension contiguous.
  [[nodiscard]] MOEKIT_HOST_DEVICE static constexpr TensorView row_major(T* p,
                                                                         std::array<index_type, Rank> e) noexcept {
    TensorView v;
    v.data = p;
    v.extents = e;
    index_type s = 1;
    for (int d = Rank - 1; d >= 0; --d) {
      v.strides[d] = s;
      s *= e[d];
    }
    return v;
  }

  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr index_type extent(int d) const noexcept { return extents[d]; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr index_type stride(int d) const noexcept { return strides[d]; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr index_type size() const noexcept {
    index_type n = 1;
    for (int d = 0; d < Rank; ++d) {
      n *= extents[d];
    }
    return n;
  }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool empty() const noexcept { return size() == 0; }

  template <class... I>
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr index_type offset(I... index) const noexcept {
    static_assert(sizeof...(I) == Rank, "give one index per dimension");
    index_type const idx[Rank] = {static_cast<index_type>(index)...};
    index_type o = 0;
    for (int d = 0; d < Rank; ++d) {
      o += idx[d] * strides[d];
    }
    return o;
  }
  template <class... I>
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr T& operator()(I... index) const noexcept {
    return data[offset(index...)];
  }
  // The address of an element, without forming a reference (valid for an empty view too).
  template <class... I>
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr T* pointer(I... index) const noexcept {
    return data + offset(index...);
  }

  // Dense with the last dimension contiguous (what most kernels require).
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_row_major() const noexcept {
    index_type s = 1;
    for (int d = Rank - 1; d >= 0; --d) {
      if (extents[d] != 1 && strides[d] != s) {
        return false;
      }
      s *= extents[d];
    }
    return true;
  }

  // Is `data` aligned to `bytes` (a power of two)?
  [[nodiscard]] MOEKIT_HOST_DEVICE bool is_aligned(std::size_t bytes) const noexcept {
    return (reinterpret_cast<std::uintptr_t>(data) & (bytes - 1)) == 0;
  }

  // invalid_argument for negative extents or strides, or a null pointer with elements to
  // address; otherwise ok. Kernels call this from can_implement-style checks.
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr Status validate() const noexcept {
    for (int d = 0; d < Rank; ++d) {
      if (extents[d] < 0 || strides[d] < 0) {
        return Status::invalid_argument;
      }
    }
    if (data == nullptr && size() != 0) {
      return Status::invalid_argument;
    }
    return Status::ok;
  }

  // The same memory with const elements.
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr TensorView<T const, Rank, Space> as_const() const noexcept {
    return {data, extents, strides};
  }
};

template <class T, int Rank>
using HostTensor = TensorView<T, Rank, MemorySpace::host>;
template <class T, int Rank>
using DeviceTensor = TensorView<T, Rank, MemorySpace::device>;

MOEKIT_NAMESPACE_END
