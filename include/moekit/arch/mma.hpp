#pragma once
// Warp-level tensor-core MMA (mma.sync, sm_80+), D = A * B + C:
//   m16n8k16 bf16 x bf16 -> fp32 and fp16 x fp16 -> fp32: A 4 regs, B 2 regs, C/D 4 floats;
//   m16n8k32 s8 x s8 -> s32: A 4 regs, B 2 regs, C/D 4 ints.
// A is row-major, B column-major (".row.col"); fragment layouts in emu/tensor_core.hpp.

#include <cstdint>

#include "moekit/arch/config.hpp"

#if MOEKIT_EMULATION
#include "moekit/core/float16.hpp"
#include "moekit/emu/tensor_core.hpp"
#endif

MOEKIT_NAMESPACE_BEGIN
namespace arch {
MOEKIT_ARCH_NAMESPACE_BEGIN

enum class MmaInput { bf16, f16, s8 };

#if MOEKIT_EMULATION
namespace detail {
template <MmaInput In>
double mma_element(std::uint32_t const* regs, int i) {
  if constexpr (In == MmaInput::s8) {
    return static_cast<double>(static_cast<std::int8_t>(regs[i / 4] >> (8 * (i % 4)) & 0xffu));
  } else {
    auto const bits = static_cast<std::uint16_t>(regs[i / 2] >> (16 * (i % 2)) & 0xffffu);
    if constexpr (In == MmaInput::bf16) {
      return static_cast<double>(bf16_t::from_bits(bits).to_float());
    } else {
      return static_cast<double>(fp16_t::from_bits(bits).to_float());
    }
  }
}

// The last lane to arrive multiplies the whole warp's fragments.
template <MmaInput In, class Acc>
void mma_fn(emu::detail::Warp& w, std::uint32_t) {
  namespace f = emu::fragment;
  constexpr bool k32 = In == MmaInput::s8;
  constexpr int K = k32 ? 32 : 16;
  double A[16][32] = {};
  double B[32][8] = {};
  double C[16][8] = {};
  for (int l = 0; l < 32; ++l) {
    auto const& op = w.lanes[l]->in.as<emu::MmaOperands<Acc>>();
    for (int i = 0; i < (k32 ? 16 : 8); ++i) {
      auto const rc = k32 ? f::a_m16n8k32(l, i) : f::a_m16n8k16(l, i);
      A[rc.row][rc.col] = mma_element<In>(op.a, i);
    }
    for (int i = 0; i < (k32 ? 8 : 4); ++i) {
      auto const rc = k32 ? f::b_m16n8k32(l, i) : f::b_m16n8k16(l, i);
      B[rc.row][rc.col] = mma_element<In>(op.b, i);
    }
    for (int i = 0; i < 4; ++i) {
      auto const rc = f::c_m16n8(l, i);
      C[rc.row][rc.col] = static_cast<double>(op.c[i]);
    }
  }
  for (int l = 0; l < 32; ++l) {
    auto* d = &w.lanes[l]->out.as<Acc>();
    for (int i = 0; i < 4; ++i) {
      auto const rc = f::c_m16n8(l, i);
      double acc = C[rc.row][rc.col];
      for (int k = 0; k < K; ++k) {
        acc += A[rc.row][k] * B[k][rc.col];
      }
      if constexpr (k32) {
        d[i] = static_cast<Acc>(static_cast<std::uint32_t>(static_cast<std::int64_t>(acc)));  // s32 wraps
      } else {
        d[i] = static_cast<Acc>(acc);
      }
    }
  }
}

template <MmaInput In, class Acc>
void mma(Acc (&d)[4], std::uint32_t const (&a)[4], std::uint32_t const (&b)[2], Acc const (&c)[4], char const* what,
         std::source_location where) {
  auto& t = me(what);
  if (t.warp->exists != 0xffffffffu) {
    runtime().fail(t, emu::Finding::invalid_operation,
                   std::string(what) + " (" + emu::detail::place(where) + ") needs a full warp of 32 threads");
  }
  auto& op = t.in.as<emu::MmaOperands<Acc>>();
  for (int i = 0; i < 4; ++i) {
    op.a[i] = a[i];
    op.c[i] = c[i];
  }
  op.b[0] = b[0];
  op.b[1] = b[1];
  runtime().warp_collective(t, 0xffffffffu, &mma_fn<In, Acc>, what, where);
  auto const* r = &t.out.as<Acc>();
  for (int i = 0; i < 4; ++i) {
    d[i] = r[i];
  }
}
}  // namespace detail

inline void mma_m16n8k16_bf16(float (&d)[4], std::uint32_t const (&a)[4], std::uint32_t const (&b)[2],
                              float const (&c)[4], std::source_location where = std::source_location::current()) {
  detail::mma<MmaInput::bf16>(d, a, b, c, "mma.sync.m16n8k16.bf16", where);
}
inline void mma_m16n8k16_f16(float (&d)[4], std::uint32_t const (&a)[4], std::uint32_t const (&b)[2],
                             float const (&c)[4], std::source_location where = std::source_location::current()) {
  detail::mma<MmaInput::f16>(d, a, b, c, "mma.sync.m16n8k16.f16", where);
}
inline void mma_m16n8k32_s8(std::int32_t (&d)[4], std::uint32_t const (&a)[4], std::uint32_t const (&b)[2],
                            std::int32_t const (&c)[4], std::source_location where = std::source_location::current()) {
  detail::mma<MmaInput::s8>(d, a, b, c, "mma.sync.m16n8k32.s8", where);
}
#else
MOEKIT_DEVICE MOEKIT_FORCEINLINE void mma_m16n8k16_bf16(float (&d)[4], std::uint32_t const (&a)[4],
                                                        std::uint32_t const (&b)[2], float const (&c)[4]) {
#if defined(__CUDA_ARCH__)
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%10,%11,%12,%13};\n"
               : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
                 "f"(c[3]));
#endif
}
MOEKIT_DEVICE MOEKIT_FORCEINLINE void mma_m16n8k16_f16(float (&d)[4], std::uint32_t const (&a)[4],
                                                       std::uint32_t const (&b)[2], float const (&c)[4]) {
#if defined(__CUDA_ARCH__)
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%10,%11,%12,%13};\n"
               : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
                 "f"(c[3]));
#endif
}
MOEKIT_DEVICE MOEKIT_FORCEINLINE void mma_m16n8k32_s8(std::int32_t (&d)[4], std::uint32_t const (&a)[4],
                                                      std::uint32_t const (&b)[2], std::int32_t const (&c)[4]) {
#if defined(__CUDA_ARCH__)
  asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
               "{%10,%11,%12,%13};\n"
               : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(c[0]), "r"(c[1]), "r"(c[2]),
                 "r"(c[3]));
#endif
}
#endif

MOEKIT_ARCH_NAMESPACE_END
}  // namespace arch
MOEKIT_NAMESPACE_END
