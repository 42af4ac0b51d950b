#pragma once
// Shared memory is declared only as a SharedStorage struct carved from dynamic shared memory
// (CUTLASS style), so the emulator gives each block its own and checks its size. Arrays in it
// are SharedArray<T, N>: plain T[N] under nvcc; under emulation each element access is seen
// by racecheck and initcheck.

#include <cstddef>
#include <new>
#include <string>
#include <type_traits>

#include "moekit/arch/config.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace arch {
MOEKIT_ARCH_NAMESPACE_BEGIN

#if MOEKIT_EMULATION
namespace detail {
inline void shared_read(void const* p, std::size_t n) {
  auto& t = me("shared memory read");
  runtime().count_shared_access(t);
  runtime().shared_access(t, p, n, false);
}
inline void shared_write(void const* p, std::size_t n) {
  auto& t = me("shared memory write");
  runtime().count_shared_access(t);
  runtime().shared_access(t, p, n, true);
}
}  // namespace detail

// One element of a SharedArray: reading converts, writing assigns, both are recorded.
template <class T>
class SharedRef {
 public:
  explicit SharedRef(T* p) noexcept : p_(p) {}
  operator T() const {  // NOLINT: reads like the T& it stands for
    detail::shared_read(p_, sizeof(T));
    return *p_;
  }
  SharedRef& operator=(T const& v) {
    detail::shared_write(p_, sizeof(T));
    *p_ = v;
    return *this;
  }
  SharedRef& operator=(SharedRef const& o) { return *this = static_cast<T>(o); }
  SharedRef& operator+=(T const& v) { return *this = static_cast<T>(*this) + v; }
  SharedRef& operator-=(T const& v) { return *this = static_cast<T>(*this) - v; }
  SharedRef& operator*=(T const& v) { return *this = static_cast<T>(*this) * v; }
  SharedRef& operator|=(T const& v) { return *this = static_cast<T>(*this) | v; }
  SharedRef& operator&=(T const& v) { return *this = static_cast<T>(*this) & v; }
  T* operator&() const noexcept { return p_; }  // NOLINT: the address, for arch wrappers and atomics

 private:
  T* p_;
};

template <class T, std::size_t N>
struct SharedArray {
  static_assert(std::is_trivially_copyable_v<T>, "SharedArray holds trivially copyable elements");
  T elements[N];

  SharedRef<T> operator[](std::size_t i) { return SharedRef<T>(&elements[i]); }
  T operator[](std::size_t i) const {
    detail::shared_read(&elements[i], sizeof(T));
    return elements[i];
  }
  T load(std::size_t i) const { return (*this)[i]; }
  void store(std::size_t i, T const& v) { (*this)[i] = v; }
  T* data() noexcept { return elements; }
  T const* data() const noexcept { return elements; }
  static constexpr std::size_t size() noexcept { return N; }
};

inline std::byte* dynamic_shared_memory() { return detail::me("dynamic shared memory").block->shared; }

// The block's SharedStorage, checked against the dynamic shared memory of the launch.
template <class Storage>
Storage& shared_storage() {
  static_assert(std::is_trivially_default_constructible_v<Storage> && std::is_trivially_destructible_v<Storage>,
                "SharedStorage must be trivial: CUDA never constructs or destroys shared memory");
  static_assert(alignof(Storage) <= 1024, "SharedStorage alignment above 1024 bytes is not supported");
  auto& t = detail::me("shared_storage");
  auto const launched = detail::runtime().config.dynamic_shared_bytes;
  if (sizeof(Storage) > launched) {
    detail::runtime().fail(t, emu::Finding::shared_memory_overflow,
                           "the kernel's SharedStorage needs " + std::to_string(sizeof(Storage)) +
                               " bytes but the launch gave " + std::to_string(launched) +
                               " bytes of dynamic shared memory");
  }
  return *std::launder(reinterpret_cast<Storage*>(t.block->shared));
}
#else
template <class T, std::size_t N>
struct SharedArray {
  T elements[N];
  MOEKIT_DEVICE MOEKIT_FORCEINLINE T& operator[](std::size_t i) { return elements[i]; }
  MOEKIT_DEVICE MOEKIT_FORCEINLINE T const& operator[](std::size_t i) const { return elements[i]; }
  MOEKIT_DEVICE MOEKIT_FORCEINLINE T load(std::size_t i) const { return elements[i]; }
  MOEKIT_DEVICE MOEKIT_FORCEINLINE void store(std::size_t i, T const& v) { elements[i] = v; }
  MOEKIT_DEVICE MOEKIT_FORCEINLINE T* data() { return elements; }
  MOEKIT_DEVICE MOEKIT_FORCEINLINE T const* data() const { return elements; }
  static constexpr std::size_t size() noexcept { return N; }
};

MOEKIT_DEVICE MOEKIT_FORCEINLINE std::byte* dynamic_shared_memory() {
  extern __shared__ __align__(1024) std::byte moekit_dynamic_shared_memory[];
  return moekit_dynamic_shared_memory;
}

template <class Storage>
MOEKIT_DEVICE MOEKIT_FORCEINLINE Storage& shared_storage() {
  static_assert(std::is_trivially_default_constructible_v<Storage> && std::is_trivially_destructible_v<Storage>,
                "SharedStorage must be trivial: CUDA never constructs or destroys shared memory");
  return *reinterpret_cast<Storage*>(dynamic_shared_memory());
}
#endif

MOEKIT_ARCH_NAMESPACE_END
}  // namespace arch
MOEKIT_NAMESPACE_END
