#pragma once
// Workspace carving. The caller owns the workspace: workspace_size() asks how many bytes, run()
// carves them. Both walk the SAME carving routine, once with a counting Workspace and once with
// the caller's buffer, so the size query and the layout can never disagree (FlashInfer's
// AlignedAllocator idea). A buffer that does not fit names itself, the bytes it needed and the
// bytes left, and carving stops with Status::workspace_too_small; nothing is written.

#include <cstddef>
#include <cstdint>
#include <limits>

#include "moekit/config.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN

class Workspace {
 public:
  static constexpr std::size_t default_alignment = 256;  // cudaMalloc's alignment; enough for TMA/vector loads

  // Counting mode: take() returns nullptr and only adds up the bytes.
  MOEKIT_HOST_DEVICE constexpr Workspace() noexcept = default;
  // Carving mode over [base, base + bytes).
  MOEKIT_HOST_DEVICE Workspace(void* base, std::size_t bytes) noexcept
      : base_(static_cast<std::byte*>(base)), capacity_(bytes), carving_(true) {
    if (base == nullptr && bytes != 0) {
      status_ = Status::invalid_argument;
    }
  }

  // The next `count` elements of T, aligned to `alignment` bytes (a power of two) from the
  // workspace's start. Returns nullptr in counting mode, on error, and for count == 0.
  template <class T>
  MOEKIT_HOST_DEVICE T* take(std::int64_t count, char const* name, std::size_t alignment = default_alignment) noexcept {
    if (status_ != Status::ok) {
      return nullptr;
    }
    if (count < 0 || alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment < alignof(T)) {
      fail(Status::invalid_argument, name, 0);
      return nullptr;
    }
    if (carving_ && (reinterpret_cast<std::uintptr_t>(base_) & (alignment - 1)) != 0) {
      fail(Status::misaligned, name, 0);
      return nullptr;
    }
    auto const n = static_cast<std::uint64_t>(count);
    if (n > std::numeric_limits<std::uint64_t>::max() / sizeof(T)) {
      fail(Status::invalid_argument, name, std::numeric_limits<std::size_t>::max());
      return nullptr;
    }
    std::size_t const start = (used_ + alignment - 1) & ~(alignment - 1);
    std::size_t const bytes = static_cast<std::size_t>(n * sizeof(T));
    if (start < used_ || start + bytes < start) {
      fail(Status::invalid_argument, name, std::numeric_limits<std::size_t>::max());
      return nullptr;
    }
    if (carving_ && start + bytes > capacity_) {
      fail(Status::workspace_too_small, name, bytes);
      return nullptr;
    }
    used_ = start + bytes;
    if (!carving_ || count == 0) {
      return nullptr;
    }
    return reinterpret_cast<T*>(base_ + start);
  }

  // Bytes taken so far, alignment padding included: in counting mode, the workspace size.
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::size_t bytes_used() const noexcept { return used_; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::size_t capacity() const noexcept { return capacity_; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool counting() const noexcept { return !carving_; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr Status status() const noexcept { return status_; }

  // When status() is not ok: the buffer that failed, the bytes it asked for (0 when not about
  // size) and the bytes that were left.
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr char const* failed_buffer() const noexcept { return failed_name_; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::size_t failed_bytes() const noexcept { return failed_bytes_; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::size_t bytes_left_at_failure() const noexcept { return failed_left_; }

 private:
  MOEKIT_HOST_DEVICE constexpr void fail(Status s, char const* name, std::size_t bytes) noexcept {
    status_ = s;
    failed_name_ = name;
    failed_bytes_ = bytes;
    failed_left_ = capacity_ > used_ ? capacity_ - used_ : 0;
  }

  std::byte* base_ = nullptr;
  std::size_t capacity_ = 0;
  std::size_t used_ = 0;
  bool carving_ = false;
  Status status_ = Status::ok;
  char const* failed_name_ = "";
  std::size_t failed_bytes_ = 0;
  std::size_t failed_left_ = 0;
};

MOEKIT_NAMESPACE_END
