#pragma once
// The host quantiser for experts/quantized_weights.hpp: E experts' [out, in] matrices (float,
// bf16_t or fp16_t) → packed codes, scales and zero points, a bit width per expert (1 to 8) and
// groups of G ∈ {32, 64, 128} along `in`. Round to nearest, ties to even; per (row, group):
//   asymmetric, b >= 2 (MC-MoE / GPTQ min–max): lo = min(min w, 0), hi = max(max w, 0),
//       scale = (hi − lo)/(2^b − 1), z = rne(−lo/scale) ∈ [0, 2^b − 1], q = clamp(rne(w/scale) + z)
//   symmetric, b >= 2: scale = max|w| / (2^(b−1) − 1), z = 2^(b−1), q = clamp(rne(w/scale) + z),
//       so ±max|w| are on the grid and the extra negative code −2^(b−1) is unused by the maximum
//   b = 1 (either scheme, ALGORITHMS.md §3.5): scale = mean|w| of the group, q = 1 for w >= 0
//       (zero included: one bit cannot say 0), else 0; dequantised ±scale
// A group whose range is 0 (all zero) gets scale 0, codes z and dequantises to 0. Scales are
// computed in double and rounded to float once; w/scale and −lo/scale are one fp32 division each.
// Error (asymmetric and symmetric, b >= 2): |w − ŵ| <= scale/2 in exact arithmetic; the fp32
// divisions, the rounding of the scale and the fma of dequantisation add a few ulps of max|w|
// (docs/quantized_experts.md states the bound the tests use).

#include <cmath>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/int4.hpp"
#include "moekit/core/status.hpp"
#include "moekit/core/tensor_view.hpp"
#include "moekit/experts/dequantize.hpp"
#include "moekit/experts/quantized_weights.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace experts {

enum class QuantScheme { asymmetric, symmetric };

struct QuantizeOptions {
  std::int64_t group = 128;                      // G: 32, 64 or 128
  QuantScheme scheme = QuantScheme::asymmetric;  // asymmetric stores zero points
};

// The quantiser's output; view() is what the kernels and dequantize_matrix read.
struct QuantizedTensor {
  std::vector<std::uint8_t> bits;     // [E]
  std::vector<std::int64_t> offsets;  // [E + 1], dense
  std::vector<std::uint8_t> data;     // packed codes
  std::vector<float> scales;          // [E, out, in/G]
  std::vector<std::uint8_t> zeros;    // [E, out, in/G]; empty when symmetric
  std::int64_t experts = 0, out = 0, in = 0, group = 0;

  [[nodiscard]] QuantizedWeights<MemorySpace::host> view() const noexcept {
    QuantizedWeights<MemorySpace::host> v;
    v.bits = bits.data();
    v.offsets = offsets.data();
    v.data = data.data();
    v.scales = scales.data();
    v.zeros = zeros.empty() ? nullptr : zeros.data();
    v.bytes = static_cast<std::int64_t>(data.size());
    v.experts = experts;
    v.out = out;
    v.in = in;
    v.group = group;
    return v;
  }
};

// Stores code q (< 2^bits) as element i of a packed row (the inverse of decode); other codes kept.
inline void pack_code(std::uint8_t* row, int bits, std::int64_t i, unsigned q) noexcept {
  std::int64_t const bit = i * bits;
  std::uint8_t* p = row + (bit >> 3);
  unsigned const shift = static_cast<unsigned>(bit & 7);
  unsigned const mask = ((1u << bits) - 1u) << shift;
  unsigned const v = (q << shift) & mask;
  p[0] = static_cast<std::uint8_t>((p[0] & ~mask) | v);
  if (shift + static_cast<unsigned>(bits) > 8u) {
    p[1] = static_cast<std::uint8_t>((p[1] & ~(mask >> 8)) | (v >> 8));
  }
}

// One group of n finite values quantised to `bits` bits: the codes, the scale and the zero point
// (the implicit one when symmetric; 0 for 1 bit). The rules are in the header comment.
inline void quantize_group(float const* x, std::int64_t n, int bits, QuantScheme scheme, unsigned* codes, float& scale,
                           int& zero) noexcept {
  if (bits == 1) {
    double sum = 0.0;
    for (std::int64_t i = 0; i < n; ++i) {
      sum += std::fabs(static_cast<double>(x[i]));
    }
    scale = static_cast<float>(sum / static_cast<double>(n));
    zero = 0;
    for (std::int64_t i = 0; i < n; ++i) {
      codes[i] = x[i] >= 0.0f ? 1u : 0u;
    }
    return;
  }
  int const qmax = (1 << bits) - 1;
  if (scheme == QuantScheme::symmetric) {
    float m = 0.0f;
    for (std::int64_t i = 0; i < n; ++i) {
      m = std::fmax(m, std::fabs(x[i]));
    }
    scale = static_cast<float>(static_cast<double>(m) / static_cast<double>(symmetric_zero(bits) - 1));
    zero = symmetric_zero(bits);
  } else {
    float lo = 0.0f;
    float hi = 0.0f;
    for (std::int64_t i = 0; i < n; ++i) {
      lo = std::fmin(lo, x[i]);
      hi = std::fmax(hi, x[i]);
    }
    // In double: hi − lo can pass FLT_MAX, the quotient cannot (qmax >= 3).
    scale = static_cast<float>((static_cast<double>(hi) - static_cast<double>(lo)) / static_cast<double>(qmax));
    zero = scale > 0.0f ? moekit::detail::round_half_even_saturate(-lo / scale, -1, qmax) : 0;
  }
  for (std::int64_t i = 0; i < n; ++i) {
    int q = zero;
    if (scale > 0.0f) {
      q += moekit::detail::round_half_even_saturate(x[i] / scale, -512, 512);
    }
    codes[i] = static_cast<unsigned>(q < 0 ? 0 : (q > qmax ? qmax : q));
  }
}

// Quantises w [E, out, in] (any strides) with bits[e] bits for expert e into `result` (replaced
// whole; untouched on failure). invalid_argument: bits.size() != E, a bit width outside [1, 8],
// a group size other than 32/64/128, `in` not a multiple of it, an empty matrix, or a NaN/inf
// weight (named by expert, row and column).
template <class T>
[[nodiscard]] Status quantize_experts(HostTensor<T const, 3> const& w, std::span<int const> bits,
                                      QuantizeOptions const& options, QuantizedTensor& result) {
  std::int64_t const experts = w.extent(0);
  std::int64_t const rows = w.extent(1);
  std::int64_t const in = w.extent(2);
  std::int64_t const group = options.group;
  if (!w.validate() || experts < 1 || rows < 1 || in < 1) {
    return error(Status::invalid_argument, "quantize: the weights must be a valid non-empty [E, out, in] view");
  }
  if (static_cast<std::int64_t>(bits.size()) != experts) {
    return error(Status::invalid_argument, "quantize: %lld bit widths for %lld experts",
                 static_cast<long long>(bits.size()), static_cast<long long>(experts));
  }
  if (!is_quant_group_size(group)) {
    return error(Status::invalid_argument, "quantize: group size %lld, expected 32, 64 or 128",
                 static_cast<long long>(group));
  }
  if (in % group != 0) {
    return error(Status::invalid_argument, "quantize: the input size %lld is not a multiple of the group size %lld",
                 static_cast<long long>(in), static_cast<long long>(group));
  }
  if (options.scheme != QuantScheme::asymmetric && options.scheme != QuantScheme::symmetric) {
    return error(Status::invalid_argument, "quantize: bad scheme %d", static_cast<int>(options.scheme));
  }
  QuantizedTensor t;
  t.experts = experts;
  t.out = rows;
  t.in = in;
  t.group = group;
  t.offsets.push_back(0);
  for (std::int64_t e = 0; e < experts; ++e) {
    int const b = bits[static_cast<std::size_t>(e)];
    if (!is_quant_bits(b)) {
      return error(Status::invalid_argument, "quantize: expert %lld has %d bits, expected 1 to 8",
                   static_cast<long long>(e), b);
    }
    t.bits.push_back(static_cast<std::uint8_t>(b));
    t.offsets.push_back(t.offsets.back() + rows * quantized_row_bytes(in, b));
  }
  std::int64_t const groups = in / group;
  t.data.assign(static_cast<std::size_t>(t.offsets.back()), std::uint8_t{0});
  t.scales.assign(static_cast<std::size_t>(experts * rows * groups), 0.0f);
  if (options.scheme == QuantScheme::asymmetric) {
    t.zeros.assign(t.scales.size(), std::uint8_t{0});
  }
  std::vector<float> x(static_cast<std::size_t>(group));
  std::vector<unsigned> codes(static_cast<std::size_t>(group));
  for (std::int64_t e = 0; e < experts; ++e) {
    int const b = t.bits[static_cast<std::size_t>(e)];
    for (std::int64_t r = 0; r < rows; ++r) {
      std::uint8_t* row = t.data.data() + t.offsets[static_cast<std::size_t>(e)] + r * quantized_row_bytes(in, b);
      for (std::int64_t g = 0; g < groups; ++g) {
        for (std::int64_t i = 0; i < group; ++i) {
          float const v = to_float(*w.pointer(e, r, g * group + i));
          if (!std::isfinite(v)) {
            return error(Status::invalid_argument,
                         "quantize: expert %lld row %lld has a non-finite weight at column %lld",
                         static_cast<long long>(e), static_cast<long long>(r), static_cast<long long>(g * group + i));
          }
          x[static_cast<std::size_t>(i)] = v;
        }
        float scale = 0.0f;
        int zero = 0;
        quantize_group(x.data(), group, b, options.scheme, codes.data(), scale, zero);
        std::size_t const k = static_cast<std::size_t>((e * rows + r) * groups + g);
        t.scales[k] = scale;
        if (!t.zeros.empty()) {
          t.zeros[k] = static_cast<std::uint8_t>(zero);
        }
        for (std::int64_t i = 0; i < group; ++i) {
          pack_code(row, b, g * group + i, codes[static_cast<std::size_t>(i)]);
        }
      }
    }
  }
  result = std::move(t);
  return Status::ok;
}

}  // namespace experts
MOEKIT_NAMESPACE_END
