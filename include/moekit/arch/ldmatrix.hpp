#pragma once
// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16: the warp loads 1, 2 or 4 8x8
// matrices of 16-bit elements from shared memory. Lanes 8m..8m+7 give the 16-byte-aligned
// addresses of the rows of matrix m; lane l receives, in register m, the elements (l/4, 2(l%4))
// and (l/4, 2(l%4)+1) of matrix m, or of its transpose with .trans.

#include <cstdint>
#include <cstring>
#include <string>

#include "moekit/arch/config.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace arch {
MOEKIT_ARCH_NAMESPACE_BEGIN

#if MOEKIT_EMULATION
namespace detail {
struct LdmatrixIn {
  void const* row;
};

template <int Matrices, bool Trans>
void ldmatrix_fn(emu::detail::Warp& w, std::uint32_t) {
  auto& rt = runtime();
  // The last lane to arrive runs this on its own fiber: a fatal finding about another lane's
  // address must still suspend this one (the others are suspended already).
  emu::detail::Thread& running = me("ldmatrix");
  std::uint16_t m[4][8][8];
  for (int mat = 0; mat < Matrices; ++mat) {
    for (int r = 0; r < 8; ++r) {
      emu::detail::Thread& src = *w.lanes[8 * mat + r];
      void const* row = src.in.as<LdmatrixIn>().row;
      std::size_t offset = 0;
      if (!emu::detail::Runtime::in_shared(*src.block, row, offset) || offset + 16 > src.block->shared_bytes) {
        rt.fail(running, emu::Finding::invalid_operation,
                emu::detail::Runtime::who(src) + " gives ldmatrix a row address outside the block's shared memory");
      }
      if (reinterpret_cast<std::uintptr_t>(row) % 16 != 0) {
        rt.fail(running, emu::Finding::misaligned_address,
                emu::detail::Runtime::who(src) + " gives ldmatrix a row address that is not 16-byte aligned");
      }
      rt.shared_access(src, row, 16, false);
      std::memcpy(m[mat][r], row, 16);
    }
  }
  for (int l = 0; l < 32; ++l) {
    auto* d = &w.lanes[l]->out.as<std::uint32_t>();
    int const g = l / 4, t = l % 4;
    for (int mat = 0; mat < Matrices; ++mat) {
      std::uint16_t const lo = Trans ? m[mat][2 * t][g] : m[mat][g][2 * t];
      std::uint16_t const hi = Trans ? m[mat][2 * t + 1][g] : m[mat][g][2 * t + 1];
      d[mat] = static_cast<std::uint32_t>(lo) | static_cast<std::uint32_t>(hi) << 16;
    }
  }
}

template <int Matrices, bool Trans>
void ldmatrix(std::uint32_t* d, void const* row, char const* what, std::source_location where) {
  auto& t = me(what);
  if (t.warp->exists != 0xffffffffu) {
    runtime().fail(t, emu::Finding::invalid_operation,
                   std::string(what) + " (" + emu::detail::place(where) + ") needs a full warp of 32 threads");
  }
  t.in.as<LdmatrixIn>().row = row;
  runtime().warp_collective(t, 0xffffffffu, &ldmatrix_fn<Matrices, Trans>, what, where);
  for (int i = 0; i < Matrices; ++i) {
    d[i] = (&t.out.as<std::uint32_t>())[i];
  }
}
}  // namespace detail

inline void ldmatrix_x1(std::uint32_t (&d)[1], void const* row,
                        std::source_location w = std::source_location::current()) {
  detail::ldmatrix<1, false>(d, row, "ldmatrix.x1", w);
}
inline void ldmatrix_x2(std::uint32_t (&d)[2], void const* row,
                        std::source_location w = std::source_location::current()) {
  detail::ldmatrix<2, false>(d, row, "ldmatrix.x2", w);
}
inline void ldmatrix_x4(std::uint32_t (&d)[4], void const* row,
                        std::source_location w = std::source_location::current()) {
  detail::ldmatrix<4, false>(d, row, "ldmatrix.x4", w);
}
inline void ldmatrix_x1_trans(std::uint32_t (&d)[1], void const* row,
                              std::source_location w = std::source_location::current()) {
  detail::ldmatrix<1, true>(d, row, "ldmatrix.x1.trans", w);
}
inline void ldmatrix_x2_trans(std::uint32_t (&d)[2], void const* row,
                              std::source_location w = std::source_location::current()) {
  detail::ldmatrix<2, true>(d, row, "ldmatrix.x2.trans", w);
}
inline void ldmatrix_x4_trans(std::uint32_t (&d)[4], void const* row,
                              std::source_location w = std::source_location::current()) {
  detail::ldmatrix<4, true>(d, row, "ldmatrix.x4.trans", w);
}
#else
namespace detail {
MOEKIT_DEVICE MOEKIT_FORCEINLINE std::uint32_t shared_address(void const* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}
}  // namespace detail

MOEKIT_DEVICE MOEKIT_FORCEINLINE void ldmatrix_x1(std::uint32_t (&d)[1], void const* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n"
               : "=r"(d[0])
               : "r"(detail::shared_address(row)));
}
MOEKIT_DEVICE MOEKIT_FORCEINLINE void ldmatrix_x2(std::uint32_t (&d)[2], void const* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(d[0]), "=r"(d[1])
               : "r"(detail::shared_address(row)));
}
MOEKIT_DEVICE MOEKIT_FORCEINLINE void ldmatrix_x4(std::uint32_t (&d)[4], void const* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
               : "r"(detail::shared_address(row)));
}
MOEKIT_DEVICE MOEKIT_FORCEINLINE void ldmatrix_x1_trans(std::uint32_t (&d)[1], void const* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(d[0])
               : "r"(detail::shared_address(row)));
}
MOEKIT_DEVICE MOEKIT_FORCEINLINE void ldmatrix_x2_trans(std::uint32_t (&d)[2], void const* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(d[0]), "=r"(d[1])
               : "r"(detail::shared_address(row)));
}
MOEKIT_DEVICE MOEKIT_FORCEINLINE void ldmatrix_x4_trans(std::uint32_t (&d)[4], void const* row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
               : "r"(detail::shared_address(row)));
}
#endif

MOEKIT_ARCH_NAMESPACE_END
}  // namespace arch
MOEKIT_NAMESPACE_END
