#pragma once
// cp.async (sm_80+): asynchronous global -> shared copies of 4, 8 or 16 bytes, grouped by
// commit and waited for by wait_group<N> (all but the N most recent groups complete).
// The emulator defers each copy until its group is waited for, as hardware may: a kernel that
// reads the destination before waiting sees stale data (and initcheck reports it), while
// racecheck treats the destination as written from the moment the copy is issued.

#include <cstdint>

#include "moekit/arch/config.hpp"

#if MOEKIT_EMULATION
#include <cstring>
#include <string>
#endif

MOEKIT_NAMESPACE_BEGIN
namespace arch {
MOEKIT_ARCH_NAMESPACE_BEGIN

#if MOEKIT_EMULATION
// Copies `Bytes` to shared `dst`: `src_bytes` (<= Bytes) from global `src`, zeros after them.
template <int Bytes>
void cp_async(void* dst, void const* src, unsigned src_bytes = Bytes) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
  auto& t = detail::me("cp.async");
  auto& rt = detail::runtime();
  std::size_t offset = 0;
  if (!emu::detail::Runtime::in_shared(*t.block, dst, offset) || offset + Bytes > t.block->shared_bytes) {
    rt.fail(t, emu::Finding::invalid_operation, rt.who(t) + " gives cp.async a destination outside shared memory");
  }
  if (reinterpret_cast<std::uintptr_t>(dst) % Bytes != 0 || reinterpret_cast<std::uintptr_t>(src) % Bytes != 0) {
    rt.fail(t, emu::Finding::misaligned_address,
            rt.who(t) + " gives cp.async addresses not aligned to its " + std::to_string(Bytes) + "-byte size");
  }
  if (src_bytes > Bytes) {
    rt.fail(t, emu::Finding::invalid_operation, rt.who(t) + " asks cp.async to read more bytes than it copies");
  }
  // The copy may land any time between now and its wait: racecheck sees a write from now on.
  rt.shared_access(t, dst, Bytes, /*is_write=*/true, /*initializes=*/false);
  t.open_copies.push_back({dst, src, static_cast<std::uint32_t>(Bytes), src_bytes});
}
inline void cp_async_commit() {
  auto& t = detail::me("cp.async.commit_group");
  t.copy_groups.push_back(std::move(t.open_copies));
  t.open_copies.clear();
}
template <int N>
void cp_async_wait_group() {
  auto& t = detail::me("cp.async.wait_group");
  detail::runtime().wait_copy_groups(t, N);
}
inline void cp_async_wait_all() {
  cp_async_commit();
  cp_async_wait_group<0>();
}
#else
template <int Bytes>
MOEKIT_DEVICE MOEKIT_FORCEINLINE void cp_async(void* dst, void const* src, unsigned src_bytes = Bytes) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async copies 4, 8 or 16 bytes");
  auto const s = static_cast<std::uint32_t>(__cvta_generic_to_shared(dst));
  if constexpr (Bytes == 16) {  // .cg bypasses L1: the 16-byte form is the streaming one
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(src), "r"(src_bytes));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(s), "l"(src), "n"(Bytes), "r"(src_bytes));
  }
}
MOEKIT_DEVICE MOEKIT_FORCEINLINE void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
MOEKIT_DEVICE MOEKIT_FORCEINLINE void cp_async_wait_group() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}
MOEKIT_DEVICE MOEKIT_FORCEINLINE void cp_async_wait_all() { asm volatile("cp.async.wait_all;\n" ::); }
#endif

MOEKIT_ARCH_NAMESPACE_END
}  // namespace arch
MOEKIT_NAMESPACE_END
