#pragma once
// Decoding and dequantising the packed codes of experts/quantized_weights.hpp, in registers:
// the same functions run in kernels (MOEKIT_HOST_DEVICE) and on the CPU, so both give the same
// bits. One fma per element: w = fma(step, q, offset) with (step, offset) made once per group:
//   b >= 2: step = scale, offset = −(scale·z)       (z the stored zero point, or 2^(b−1))
//   b == 1: step = 2·scale, offset = −scale          (code 1 → +scale, code 0 → −scale, exactly)
// offset = −(scale·z) is rounded once, so for b >= 2 the result can differ from the exact
// scale·(q − z) by up to half an ulp of scale·z plus half an ulp of the result (docs/quantized_experts.md).
//
// Eight codes of b bits are exactly b bytes: runs are dequantised eight at a time from one
// 64-bit word (dequantize8), so no code straddles a load.

#include <cmath>
#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/experts/quantized_weights.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace experts {

// The implicit zero point of symmetric quantisation (b >= 2).
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr int symmetric_zero(int bits) noexcept { return 1 << (bits - 1); }

// w = fma(step, q, offset) for every code q of one group.
struct GroupAffine {
  float step;
  float offset;
};

[[nodiscard]] MOEKIT_HOST_DEVICE inline GroupAffine group_affine(float scale, int zero, int bits) noexcept {
  if (bits == 1) {
    return {2.0f * scale, -scale};
  }
  return {scale, -(scale * static_cast<float>(zero))};
}
// Group `g` of a row: its scale, and its zero point (row_zeros null: symmetric).
[[nodiscard]] MOEKIT_HOST_DEVICE inline GroupAffine group_affine(float const* row_scales, std::uint8_t const* row_zeros,
                                                                 std::int64_t g, int bits) noexcept {
  int const zero = row_zeros != nullptr ? static_cast<int>(row_zeros[g]) : symmetric_zero(bits);
  return group_affine(row_scales[g], zero, bits);
}

// Code i of a packed row of `bits`-bit codes (bits in [1, 8]). Reads only bytes of code i.
[[nodiscard]] MOEKIT_HOST_DEVICE inline unsigned decode(std::uint8_t const* row, int bits, std::int64_t i) noexcept {
  std::int64_t const bit = i * bits;
  std::uint8_t const* p = row + (bit >> 3);
  unsigned const shift = static_cast<unsigned>(bit & 7);
  unsigned v = p[0];
  if (shift + static_cast<unsigned>(bits) > 8u) {
    v |= static_cast<unsigned>(p[1]) << 8;
  }
  return (v >> shift) & ((1u << bits) - 1u);
}

// The B bytes holding codes 8c .. 8c+7 (p = row + c·B), as a little-endian word. Byte loads: a
// chunk starts on any byte for odd B; kernels that vector-load whole groups call dequantize8.
template <int B>
[[nodiscard]] MOEKIT_HOST_DEVICE inline std::uint64_t load_chunk(std::uint8_t const* p) noexcept {
  std::uint64_t v = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int k = 0; k < B; ++k) {
    v |= static_cast<std::uint64_t>(p[k]) << (8 * k);
  }
  return v;
}

// Eight B-bit codes (the low 8·B bits of `packed`, code j in bits [jB, (j+1)B)) dequantised to out[0..7].
template <int B, class Out>
MOEKIT_HOST_DEVICE inline void dequantize8(std::uint64_t packed, GroupAffine a, Out* out) noexcept {
  static_assert(B >= quant_min_bits && B <= quant_max_bits, "bit width must be in [1, 8]");
  constexpr std::uint64_t mask = (std::uint64_t{1} << B) - 1u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int j = 0; j < 8; ++j) {
    auto const q = static_cast<float>(static_cast<unsigned>((packed >> (B * j)) & mask));
    out[j] = Out(::fmaf(a.step, q, a.offset));
  }
}

namespace detail {
template <int B, class Out>
MOEKIT_HOST_DEVICE inline void dequantize_run_bits(std::uint8_t const* row, std::int64_t first, std::int64_t count,
                                                   float const* row_scales, std::uint8_t const* row_zeros,
                                                   std::int64_t group, Out* out) noexcept {
  std::int64_t const end = first + count;
  std::int64_t i = first;
  while (i < end) {
    std::int64_t const g = i / group;
    std::int64_t const group_end = (g + 1) * group < end ? (g + 1) * group : end;
    GroupAffine const a = group_affine(row_scales, row_zeros, g, B);
    for (; i < group_end; i += 8) {
      dequantize8<B>(load_chunk<B>(row + i / 8 * B), a, out + (i - first));
    }
  }
}
}  // namespace detail

// Elements first .. first+count−1 of one row, dequantised into out[0 .. count−1] (float, bf16_t
// or fp16_t; the fma is in fp32, then one rounding to Out). `first` and `count` are multiples of
// 8, the group size G a multiple of 8, bits in [1, 8]; row_scales/row_zeros are the row's in/G
// scales and zero points (null: symmetric). Not checked: kernels call it in their inner loop.
template <class Out>
MOEKIT_HOST_DEVICE inline void dequantize_run(std::uint8_t const* row, int bits, std::int64_t first, std::int64_t count,
                                              float const* row_scales, std::uint8_t const* row_zeros,
                                              std::int64_t group, Out* out) noexcept {
  switch (bits) {
    case 1: detail::dequantize_run_bits<1>(row, first, count, row_scales, row_zeros, group, out); break;
    case 2: detail::dequantize_run_bits<2>(row, first, count, row_scales, row_zeros, group, out); break;
    case 3: detail::dequantize_run_bits<3>(row, first, count, row_scales, row_zeros, group, out); break;
    case 4: detail::dequantize_run_bits<4>(row, first, count, row_scales, row_zeros, group, out); break;
    case 5: detail::dequantize_run_bits<5>(row, first, count, row_scales, row_zeros, group, out); break;
    case 6: detail::dequantize_run_bits<6>(row, first, count, row_scales, row_zeros, group, out); break;
    case 7: detail::dequantize_run_bits<7>(row, first, count, row_scales, row_zeros, group, out); break;
    case 8: detail::dequantize_run_bits<8>(row, first, count, row_scales, row_zeros, group, out); break;
    default: break;
  }
}

// Element (r, i) of expert e, dequantised (the one-element form of dequantize_run, same bits).
template <MemorySpace S>
[[nodiscard]] MOEKIT_HOST_DEVICE inline float dequantize_element(QuantizedWeights<S> const& w, std::int64_t e,
                                                                 std::int64_t r, std::int64_t i) noexcept {
  int const b = w.bits[e];
  GroupAffine const a = group_affine(w.row_scales(e, r), w.row_zeros(e, r), i / w.group, b);
  return ::fmaf(a.step, static_cast<float>(decode(w.row(e, r), b, i)), a.offset);
}

// Expert e of a host projection as a dense float [out, in] matrix (the reference path and the
// tests). `w` is assumed to pass check_quantized_weights; `out` must be [w.out, w.in] with
// contiguous rows (untouched otherwise).
[[nodiscard]] inline Status dequantize_matrix(QuantizedWeights<MemorySpace::host> const& w, std::int64_t e,
                                              HostTensor<float, 2> const& out) {
  if (e < 0 || e >= w.experts) {
    return error(Status::invalid_argument, "dequantize_matrix: expert %lld is outside [0, %lld)",
                 static_cast<long long>(e), static_cast<long long>(w.experts));
  }
  if (!out.validate() || out.extent(0) != w.out || out.extent(1) != w.in || (w.in > 1 && out.stride(1) != 1)) {
    return error(Status::invalid_argument,
                 "dequantize_matrix: the output is [%lld, %lld], expected a [%lld, %lld] matrix with contiguous rows",
                 static_cast<long long>(out.extent(0)), static_cast<long long>(out.extent(1)),
                 static_cast<long long>(w.out), static_cast<long long>(w.in));
  }
  if (!is_quant_bits(w.bits[e]) || !is_quant_group_size(w.group) || w.in % w.group != 0) {
    return error(Status::invalid_argument, "dequantize_matrix: expert %lld has %d bits or group size %lld (check it)",
                 static_cast<long long>(e), int{w.bits[e]}, static_cast<long long>(w.group));
  }
  for (std::int64_t r = 0; r < w.out; ++r) {
    dequantize_run(w.row(e, r), w.bits[e], 0, w.in, w.row_scales(e, r), w.row_zeros(e, r), w.group, out.pointer(r, 0));
  }
  return Status::ok;
}

}  // namespace experts
MOEKIT_NAMESPACE_END
