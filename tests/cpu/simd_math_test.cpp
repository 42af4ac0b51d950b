// The CPU path's eight-lane exp and sigmoid give exactly the scalar fp32::exp / fp32::sigmoid
// bits (the routers' CPU fast paths rely on it), over every float in [-110, 95] at a stride
// that visits each binade thousands of times, plus the edges.

#include "moekit/cpu/detail/simd_math.hpp"

#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include <catch2/catch.hpp>

using namespace moekit;

namespace {
std::vector<float> sample_floats() {
  std::vector<float> x;
  for (std::uint32_t u = 0; u < 0x80000000u; u += 4099) {  // positive floats, then their negatives
    float const f = std::bit_cast<float>(u);
    if (f <= 95.f) {
      x.push_back(f);
    }
    if (f <= 110.f) {
      x.push_back(-f);
    }
  }
  for (float f : {0.f, -0.f, 88.7f, 88.8f, 88.80001f, -104.f, -104.00001f, -87.33655f, -103.97f, 1e-30f, -1e-30f,
                  -std::numeric_limits<float>::infinity()}) {
    x.push_back(f);
  }
  while (x.size() % 8 != 0) {
    x.push_back(1.f);
  }
  return x;
}
}  // namespace

TEST_CASE("eight-lane exp and sigmoid match the scalar routines bit for bit", "[cpu][core]") {
  std::vector<float> const x = sample_floats();
  std::vector<float> out(x.size());
  cpu::detail::sigmoid_n(x.data(), static_cast<int>(x.size()), out.data());
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    mismatches += std::bit_cast<std::uint32_t>(out[i]) != std::bit_cast<std::uint32_t>(fp32::sigmoid(x[i]));
  }
  CHECK(mismatches == 0);
  // softmax_normalisers8 over 8 rows of the samples: the maximum and the ascending-order sum.
  int const experts = static_cast<int>(x.size() / 8 > 4096 ? 4096 : x.size() / 8);
  std::vector<float> rows(x.begin(), x.begin() + 8 * experts);
  for (float& v : rows) {
    v = v > 80.f ? 80.f : v;  // keep exp(z - max) finite
  }
  float max[8], denominator[8];
  cpu::detail::softmax_normalisers8(rows.data(), experts, experts, max, denominator);
  for (int l = 0; l < 8; ++l) {
    float const* z = rows.data() + l * experts;
    float m = z[0];
    for (int e = 1; e < experts; ++e) {
      m = z[e] > m ? z[e] : m;
    }
    float sum = 0.f;
    for (int e = 0; e < experts; ++e) {
      sum += fp32::exp(z[e] - m);
    }
    CHECK(std::bit_cast<std::uint32_t>(max[l]) == std::bit_cast<std::uint32_t>(m));
    CHECK(std::bit_cast<std::uint32_t>(denominator[l]) == std::bit_cast<std::uint32_t>(sum));
  }
}
