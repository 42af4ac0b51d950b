#pragma once
// Atomics on global or shared memory: add, min, max, compare-and-swap, exchange, for 32/64-bit
// integers, float and double (min/max: integers only, as in CUDA). Relaxed, device scope, and
// under emulation a scheduling point so that atomics interleave across threads.

#include <type_traits>

#include "moekit/arch/config.hpp"

#if MOEKIT_EMULATION
#include <atomic>
#endif

MOEKIT_NAMESPACE_BEGIN
namespace arch {
MOEKIT_ARCH_NAMESPACE_BEGIN

namespace detail {
// The types CUDA's atomics take: 32/64-bit integers, and for add/exchange float and double.
template <class T>
concept AtomicInteger = std::is_same_v<T, int> || std::is_same_v<T, unsigned> || std::is_same_v<T, long long> ||
    std::is_same_v<T, unsigned long long>;
template <class T>
concept AtomicArithmetic = AtomicInteger<T> || std::is_same_v<T, float> || std::is_same_v<T, double>;
}  // namespace detail

#if MOEKIT_EMULATION
namespace detail {
// Runs `op` on an atomic_ref to *p, tells initcheck, then lets another thread run.
template <class T, class Op>
T atomic_apply(T* p, char const* what, Op op) {
  auto& t = me(what);
  runtime().shared_atomic(t, p, sizeof(T));
  T const old = op(std::atomic_ref<T>(*p));
  runtime().yield(t);
  return old;
}
}  // namespace detail

template <detail::AtomicArithmetic T>
T atomic_add(T* p, T v) {
  return detail::atomic_apply(p, "atomicAdd",
                              [v](std::atomic_ref<T> a) { return a.fetch_add(v, std::memory_order_relaxed); });
}
template <detail::AtomicInteger T>
T atomic_min(T* p, T v) {
  return detail::atomic_apply(p, "atomicMin", [v](std::atomic_ref<T> a) {
    T old = a.load(std::memory_order_relaxed);
    while (v < old && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {}
    return old;
  });
}
template <detail::AtomicInteger T>
T atomic_max(T* p, T v) {
  return detail::atomic_apply(p, "atomicMax", [v](std::atomic_ref<T> a) {
    T old = a.load(std::memory_order_relaxed);
    while (v > old && !a.compare_exchange_weak(old, v, std::memory_order_relaxed)) {}
    return old;
  });
}
// Returns the old value; stores `desired` only if the old value equals `expected` (bitwise).
template <detail::AtomicInteger T>
T atomic_cas(T* p, T expected, T desired) {
  return detail::atomic_apply(p, "atomicCAS", [expected, desired](std::atomic_ref<T> a) {
    T old = expected;
    a.compare_exchange_strong(old, desired, std::memory_order_relaxed);
    return old;
  });
}
template <detail::AtomicArithmetic T>
T atomic_exch(T* p, T v) {
  return detail::atomic_apply(p, "atomicExch",
                              [v](std::atomic_ref<T> a) { return a.exchange(v, std::memory_order_relaxed); });
}
#else
template <detail::AtomicArithmetic T>
MOEKIT_DEVICE MOEKIT_FORCEINLINE T atomic_add(T* p, T v) {
  if constexpr (std::is_same_v<T, long long>) {  // CUDA has no signed 64-bit atomicAdd: two's complement
    return static_cast<long long>(
        atomicAdd(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v)));
  } else {
    return atomicAdd(p, v);
  }
}
template <detail::AtomicInteger T>
MOEKIT_DEVICE MOEKIT_FORCEINLINE T atomic_min(T* p, T v) {
  return atomicMin(p, v);
}
template <detail::AtomicInteger T>
MOEKIT_DEVICE MOEKIT_FORCEINLINE T atomic_max(T* p, T v) {
  return atomicMax(p, v);
}
template <detail::AtomicInteger T>
MOEKIT_DEVICE MOEKIT_FORCEINLINE T atomic_cas(T* p, T expected, T desired) {
  if constexpr (std::is_same_v<T, long long>) {
    auto r = atomicCAS(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(expected),
                       static_cast<unsigned long long>(desired));
    return static_cast<long long>(r);
  } else {
    return atomicCAS(p, expected, desired);
  }
}
template <detail::AtomicArithmetic T>
MOEKIT_DEVICE MOEKIT_FORCEINLINE T atomic_exch(T* p, T v) {
  if constexpr (std::is_same_v<T, double>) {
    return __longlong_as_double(static_cast<long long>(atomicExch(
        reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(__double_as_longlong(v)))));
  } else if constexpr (std::is_same_v<T, long long>) {
    return static_cast<long long>(
        atomicExch(reinterpret_cast<unsigned long long*>(p), static_cast<unsigned long long>(v)));
  } else {
    return atomicExch(p, v);
  }
}
#endif

MOEKIT_ARCH_NAMESPACE_END
}  // namespace arch
MOEKIT_NAMESPACE_END
