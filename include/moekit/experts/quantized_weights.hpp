#pragma once
// Group-wise quantised expert weights with a bit width per expert (docs/quantized_experts.md).
//
// One projection of E experts, logical [E, out, in], quantised along `in` in groups of G ∈ {32,
// 64, 128} (`in` a multiple of G). Expert e has its own bit width b_e ∈ [1, 8] (uniform int8 /
// int4 are all-8 / all-4). Codes are unsigned, q ∈ [0, 2^b − 1], packed as a little-endian bit
// stream per row: element i of a row occupies bits [i·b, (i+1)·b) of the row's bytes (bit k of
// the stream is bit k%8 of byte k/8). Rows are in·b/8 whole bytes (G ≥ 32, so a multiple of 4)
// and follow each other without padding; expert e's rows start at data + offsets[e]. Experts
// may be padded apart (offsets[e+1] − offsets[e] ≥ out·in·b_e/8, offsets multiples of 4, so
// every row starts 4-byte aligned); the quantiser packs them densely.
//
// Per (expert, row, group): a float scale, and either an explicit uint8 zero point (asymmetric;
// zeros != nullptr) or the implicit zero 2^(b−1) (symmetric). w = scale·(q − z), computed as one
// fma per element (experts/dequantize.hpp). b = 1 is always sign × scale: code 1 = +scale,
// code 0 = −scale, and a stored zero point of a 1-bit expert is not read.

#include <cstdint>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/experts/concept.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace experts {

inline constexpr int quant_min_bits = 1;
inline constexpr int quant_max_bits = 8;

[[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_quant_group_size(std::int64_t g) noexcept {
  return g == 32 || g == 64 || g == 128;
}
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_quant_bits(int b) noexcept {
  return b >= quant_min_bits && b <= quant_max_bits;
}
// Bytes of one packed row of `in` codes of `bits` bits (`in` a multiple of 8).
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::int64_t quantized_row_bytes(std::int64_t in, int bits) noexcept {
  return in / 8 * bits;
}

// One projection of E experts. Pointers are in memory space S; nothing is owned.
template <MemorySpace S>
struct QuantizedWeights {
  std::uint8_t const* bits = nullptr;     // [E], each in [1, 8]
  std::int64_t const* offsets = nullptr;  // [E + 1], byte offsets of each expert into data; offsets[0] = 0
  std::uint8_t const* data = nullptr;     // packed codes, `bytes` long
  float const* scales = nullptr;          // [E, out, in/G], dense
  std::uint8_t const* zeros = nullptr;    // [E, out, in/G] dense, or null (symmetric)
  std::int64_t bytes = 0;                 // size of data; offsets[E] <= bytes
  std::int64_t experts = 0;               // E
  std::int64_t out = 0;                   // rows per expert
  std::int64_t in = 0;                    // elements per row
  std::int64_t group = 0;                 // G

  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::int64_t groups() const noexcept { return in / group; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool symmetric() const noexcept { return zeros == nullptr; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr int bits_of(std::int64_t e) const noexcept { return bits[e]; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::int64_t row_bytes(std::int64_t e) const noexcept {
    return quantized_row_bytes(in, bits[e]);
  }
  // The packed codes of row r of expert e.
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::uint8_t const* row(std::int64_t e, std::int64_t r) const noexcept {
    return data + offsets[e] + r * row_bytes(e);
  }
  // The in/G scales (zero points: null when symmetric) of row r of expert e.
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr float const* row_scales(std::int64_t e, std::int64_t r) const noexcept {
    return scales + (e * out + r) * groups();
  }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::uint8_t const* row_zeros(std::int64_t e,
                                                                           std::int64_t r) const noexcept {
    return zeros == nullptr ? nullptr : zeros + (e * out + r) * groups();
  }
};

// The quantised counterpart of MlpWeights: gate/up/down, each its own bit widths, and optional
// float biases (the biases are not quantised).
template <MemorySpace S>
struct QuantizedMlpWeights {
  QuantizedWeights<S> gate;                 // [E, I, H]; not read by plain experts
  QuantizedWeights<S> up;                   // [E, I, H]
  QuantizedWeights<S> down;                 // [E, H, I]
  TensorView<float const, 2, S> gate_bias;  // [E, I] or null (absent)
  TensorView<float const, 2, S> up_bias;    // [E, I] or null
  TensorView<float const, 2, S> down_bias;  // [E, H] or null

  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::int64_t experts() const noexcept { return up.experts; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::int64_t intermediate() const noexcept { return up.out; }
  [[nodiscard]] MOEKIT_HOST_DEVICE constexpr std::int64_t hidden() const noexcept { return up.in; }
};

// Host copies of a device view's bits [E] and offsets [E+1]: the host cannot read device memory,
// so a device view is checked against them (they must be what was copied to the device).
struct QuantizedLayout {
  std::uint8_t const* bits = nullptr;
  std::int64_t const* offsets = nullptr;
};

namespace detail {

// Everything of one projection: sizes, group, pointers, alignment; bits and offsets from
// `layout` (host memory); zero points in range when `zeros_on_host`.
template <MemorySpace S>
[[nodiscard]] Status check_quantized_view(QuantizedWeights<S> const& w, char const* what, std::int64_t experts,
                                          std::int64_t out, std::int64_t in, QuantizedLayout layout,
                                          bool zeros_on_host) {
  if (experts < 0 || out < 1 || in < 1) {
    return error(Status::invalid_argument,
                 "quantized weights: %s: need E >= 0, out >= 1, in >= 1 (got %lld, %lld, %lld)", what,
                 static_cast<long long>(experts), static_cast<long long>(out), static_cast<long long>(in));
  }
  if (w.experts != experts || w.out != out || w.in != in) {
    return error(Status::invalid_argument, "quantized weights: %s is [%lld, %lld, %lld], expected [%lld, %lld, %lld]",
                 what, static_cast<long long>(w.experts), static_cast<long long>(w.out), static_cast<long long>(w.in),
                 static_cast<long long>(experts), static_cast<long long>(out), static_cast<long long>(in));
  }
  if (!is_quant_group_size(w.group)) {
    return error(Status::invalid_argument, "quantized weights: %s has group size %lld, expected 32, 64 or 128", what,
                 static_cast<long long>(w.group));
  }
  if (in % w.group != 0) {
    return error(Status::invalid_argument,
                 "quantized weights: %s: the input size %lld is not a multiple of the group size %lld", what,
                 static_cast<long long>(in), static_cast<long long>(w.group));
  }
  if (w.bits == nullptr || w.offsets == nullptr || w.data == nullptr || w.scales == nullptr) {
    return error(Status::invalid_argument, "quantized weights: %s has a null bits, offsets, data or scales pointer",
                 what);
  }
  if (layout.bits == nullptr || layout.offsets == nullptr) {
    return error(Status::invalid_argument,
                 "quantized weights: %s: a device view is checked against host copies of its bits and offsets "
                 "(QuantizedLayout), which are null",
                 what);
  }
  if (reinterpret_cast<std::uintptr_t>(w.data) % 4 != 0 || reinterpret_cast<std::uintptr_t>(w.scales) % 4 != 0 ||
      reinterpret_cast<std::uintptr_t>(w.offsets) % alignof(std::int64_t) != 0) {
    return error(Status::misaligned, "quantized weights: %s: data and scales must be 4-byte aligned, offsets 8-byte",
                 what);
  }
  if (layout.offsets[0] != 0) {
    return error(Status::invalid_argument, "quantized weights: %s: offsets[0] must be 0 (got %lld)", what,
                 static_cast<long long>(layout.offsets[0]));
  }
  for (std::int64_t e = 0; e < experts; ++e) {
    int const b = layout.bits[e];
    if (!is_quant_bits(b)) {
      return error(Status::invalid_argument, "quantized weights: %s: expert %lld has %d bits, expected 1 to 8", what,
                   static_cast<long long>(e), b);
    }
    std::int64_t const need = out * quantized_row_bytes(in, b);
    std::int64_t const lo = layout.offsets[e];
    std::int64_t const hi = layout.offsets[e + 1];
    if (lo % 4 != 0) {
      return error(Status::misaligned, "quantized weights: %s: offsets[%lld] = %lld is not a multiple of 4", what,
                   static_cast<long long>(e), static_cast<long long>(lo));
    }
    if (hi < lo || hi - lo < need) {
      return error(Status::invalid_argument,
                   "quantized weights: %s: expert %lld spans %lld bytes (offsets %lld..%lld), its %d-bit codes need "
                   "%lld = out·in·bits/8",
                   what, static_cast<long long>(e), static_cast<long long>(hi - lo), static_cast<long long>(lo),
                   static_cast<long long>(hi), b, static_cast<long long>(need));
    }
  }
  if (layout.offsets[experts] > w.bytes) {
    return error(Status::invalid_argument, "quantized weights: %s: offsets[E] = %lld is past the %lld data bytes", what,
                 static_cast<long long>(layout.offsets[experts]), static_cast<long long>(w.bytes));
  }
  if (zeros_on_host && w.zeros != nullptr) {
    std::int64_t const groups = in / w.group;
    for (std::int64_t e = 0; e < experts; ++e) {
      int const b = layout.bits[e];
      if (b == 1) {
        continue;  // 1 bit is sign × scale: its zero points are not read
      }
      int const qmax = (1 << b) - 1;
      for (std::int64_t k = e * out * groups; k < (e + 1) * out * groups; ++k) {
        if (w.zeros[k] > qmax) {
          return error(Status::invalid_argument,
                       "quantized weights: %s: expert %lld row %lld group %lld has zero point %d > %d (%d bits)", what,
                       static_cast<long long>(e), static_cast<long long>((k / groups) % out),
                       static_cast<long long>(k % groups), int{w.zeros[k]}, qmax, b);
        }
      }
    }
  }
  return Status::ok;
}

template <MemorySpace S>
[[nodiscard]] Status check_float_bias(TensorView<float const, 2, S> const& v, char const* what, std::int64_t rows,
                                      std::int64_t cols) {
  if (v.data == nullptr) {
    return Status::ok;  // absent
  }
  if (!v.validate() || v.extent(0) != rows || v.extent(1) != cols) {
    return error(Status::invalid_argument, "quantized weights: %s is [%lld, %lld], expected [%lld, %lld]", what,
                 static_cast<long long>(v.extent(0)), static_cast<long long>(v.extent(1)), static_cast<long long>(rows),
                 static_cast<long long>(cols));
  }
  if (!v.is_aligned(alignof(float))) {
    return error(Status::misaligned, "quantized weights: %s is not aligned to 4 bytes", what);
  }
  return Status::ok;
}

}  // namespace detail

// One host projection [experts, out, in]: sizes, group, bit widths, offsets (consistent with the
// bits, monotone, inside the data), alignment, zero points in range. `what` names it in messages.
[[nodiscard]] inline Status check_quantized_weights(QuantizedWeights<MemorySpace::host> const& w, char const* what,
                                                    std::int64_t experts, std::int64_t out, std::int64_t in) {
  return detail::check_quantized_view(w, what, experts, out, in, QuantizedLayout{w.bits, w.offsets}, true);
}

// A device projection, its bits and offsets read from the host copies in `layout` (zero points
// are not read).
[[nodiscard]] inline Status check_quantized_weights(QuantizedWeights<MemorySpace::device> const& w, char const* what,
                                                    std::int64_t experts, std::int64_t out, std::int64_t in,
                                                    QuantizedLayout layout) {
  return detail::check_quantized_view(w, what, experts, out, in, layout, false);
}

// The host copies of a device QuantizedMlpWeights' layouts (check_quantized_mlp_weights, device).
struct QuantizedMlpLayout {
  QuantizedLayout gate, up, down;
};

namespace detail {
template <MemorySpace S>
[[nodiscard]] Status check_quantized_mlp(QuantizedMlpWeights<S> const& w, ExpertShape shape, std::int64_t experts,
                                         std::int64_t hidden, std::int64_t intermediate, QuantizedMlpLayout layout,
                                         bool on_host) {
  if (experts < 0 || hidden < 1 || intermediate < 1) {
    return error(Status::invalid_argument, "quantized weights: need E >= 0, H >= 1, I >= 1 (got %lld, %lld, %lld)",
                 static_cast<long long>(experts), static_cast<long long>(hidden), static_cast<long long>(intermediate));
  }
  if (experts == 0) {
    return Status::ok;  // zero/identity experts only: no weights are read
  }
  if (shape == ExpertShape::gated) {
    if (Status s = check_quantized_view(w.gate, "gate [E, I, H]", experts, intermediate, hidden, layout.gate, on_host);
        !s) {
      return s;
    }
    if (Status s = check_float_bias(w.gate_bias, "gate_bias [E, I]", experts, intermediate); !s) {
      return s;
    }
  }
  if (Status s = check_quantized_view(w.up, "up [E, I, H]", experts, intermediate, hidden, layout.up, on_host); !s) {
    return s;
  }
  if (Status s = check_quantized_view(w.down, "down [E, H, I]", experts, hidden, intermediate, layout.down, on_host);
      !s) {
    return s;
  }
  if (Status s = check_float_bias(w.up_bias, "up_bias [E, I]", experts, intermediate); !s) {
    return s;
  }
  return check_float_bias(w.down_bias, "down_bias [E, H]", experts, hidden);
}
}  // namespace detail

// check_quantized_weights for each projection (the gate only for gated experts) and the biases.
[[nodiscard]] inline Status check_quantized_mlp_weights(QuantizedMlpWeights<MemorySpace::host> const& w,
                                                        ExpertShape shape, std::int64_t experts, std::int64_t hidden,
                                                        std::int64_t intermediate) {
  QuantizedMlpLayout const layout{
      {w.gate.bits, w.gate.offsets}, {w.up.bits, w.up.offsets}, {w.down.bits, w.down.offsets}};
  return detail::check_quantized_mlp(w, shape, experts, hidden, intermediate, layout, true);
}
[[nodiscard]] inline Status check_quantized_mlp_weights(QuantizedMlpWeights<MemorySpace::device> const& w,
                                                        ExpertShape shape, std::int64_t experts, std::int64_t hidden,
                                                        std::int64_t intermediate, QuantizedMlpLayout layout) {
  return detail::check_quantized_mlp(w, shape, experts, hidden, intermediate, layout, false);
}

}  // namespace experts
MOEKIT_NAMESPACE_END
