#pragma once
// Tensor-core instructions as the emulator computes them: fragment layouts of mma.sync
// m16n8k16 (16-bit A/B) and m16n8k32 (8-bit A/B), and of ldmatrix, exactly as the PTX ISA's
// "Matrix Fragments for mma.m16n8k16 / mma.m16n8k32" and "ldmatrix" sections document them.
//
// Lane l has groupID g = l / 4 and threadID_in_group t = l % 4. Each 32-bit register packs two
// 16-bit (or four 8-bit) elements, the lower-indexed element in the lower bits.
//
// Numerics: products of bf16/fp16/int8 are exact; the emulator adds them in double and rounds
// once to fp32. Hardware accumulates in its own order and precision, so results agree to a few
// fp32 ulps, not bit for bit (integer mma agrees exactly).

#include <cstdint>

#include "moekit/config.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace emu {

struct RowCol {
  int row, col;
};

namespace fragment {
// m16n8k16, A (16x16, row-major), element i in [0, 8) of lane l's four registers.
constexpr RowCol a_m16n8k16(int l, int i) noexcept {
  return {l / 4 + 8 * ((i >> 1) & 1), 2 * (l % 4) + (i & 1) + 8 * (i >> 2)};
}
// m16n8k16, B (16x8, K x N), element i in [0, 4) of lane l's two registers: {row = k, col = n}.
constexpr RowCol b_m16n8k16(int l, int i) noexcept { return {2 * (l % 4) + (i & 1) + 8 * (i >> 1), l / 4}; }
// C and D (16x8) of both shapes, element i in [0, 4).
constexpr RowCol c_m16n8(int l, int i) noexcept { return {l / 4 + 8 * (i >> 1), 2 * (l % 4) + (i & 1)}; }
// m16n8k32, A (16x32, row-major, 8-bit), element i in [0, 16).
constexpr RowCol a_m16n8k32(int l, int i) noexcept {
  return {l / 4 + 8 * ((i >> 2) & 1), 4 * (l % 4) + (i & 3) + 16 * (i >> 3)};
}
// m16n8k32, B (32x8, 8-bit), element i in [0, 8).
constexpr RowCol b_m16n8k32(int l, int i) noexcept { return {4 * (l % 4) + (i & 3) + 16 * (i >> 2), l / 4}; }
}  // namespace fragment

// One lane's operands of an mma.sync.
template <class Acc>
struct MmaOperands {
  std::uint32_t a[4];
  std::uint32_t b[2];
  Acc c[4];
};

}  // namespace emu
MOEKIT_NAMESPACE_END
