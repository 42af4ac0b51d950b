// experts/quantized_weights.hpp, dequantize.hpp, quantize.hpp, quantized.hpp: the packed format
// (pack/decode round trips for 1..8 bits), dequantize_run against decode, mixed bit widths in one
// tensor, the quantiser's error bound and its exact cases, the policy wrapper, and every
// rejection of check_quantized_*.

#include "moekit/experts/quantized.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "moekit/core/error_message.hpp"
#include "moekit/experts/clamped_swiglu.hpp"
#include "moekit/experts/dequantize.hpp"
#include "moekit/experts/gated_mlp.hpp"
#include "moekit/experts/plain_mlp.hpp"
#include "moekit/experts/quantize.hpp"
#include "moekit/experts/quantized_weights.hpp"

using namespace moekit;
using namespace moekit::experts;

static_assert(diagnose_expert<Quantized<SwiGlu<bf16_t>>>());
static_assert(diagnose_expert<Quantized<ClampedSwiglu<fp16_t>>>());
static_assert(std::is_same_v<Quantized<SwiGlu<fp16_t>>::Compute, fp16_t>);
static_assert(std::is_same_v<Quantized<SwiGlu<bf16_t>>::Element, QuantizedElement<bf16_t>>);

namespace {

std::string last_message() { return last_error_message(); }

// E experts' weights [E, out, in], normal with a few outliers (what min–max quantisation meets).
std::vector<float> random_weights(std::int64_t n, std::uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::uniform_int_distribution<int> outlier(0, 63);
  std::vector<float> w(static_cast<std::size_t>(n));
  for (auto& v : w) {
    v = normal(rng) * (outlier(rng) == 0 ? 20.0f : 1.0f);
  }
  return w;
}

HostTensor<float const, 3> view3(std::vector<float> const& w, std::int64_t e, std::int64_t o, std::int64_t i) {
  return HostTensor<float const, 3>::row_major(w.data(), {e, o, i});
}

// The quantiser's output checked and dequantised: ŵ [E, out, in].
std::vector<float> dequantize_all(QuantizedTensor const& t) {
  auto const v = t.view();
  REQUIRE(check_quantized_weights(v, "w", t.experts, t.out, t.in) == Status::ok);
  std::vector<float> out(static_cast<std::size_t>(t.experts * t.out * t.in));
  for (std::int64_t e = 0; e < t.experts; ++e) {
    auto m = HostTensor<float, 2>::row_major(out.data() + e * t.out * t.in, {t.out, t.in});
    REQUIRE(dequantize_matrix(v, e, m) == Status::ok);
  }
  return out;
}

float max_abs(float const* x, std::int64_t n) {
  float m = 0.0f;
  for (std::int64_t i = 0; i < n; ++i) {
    m = std::fmax(m, std::fabs(x[i]));
  }
  return m;
}

}  // namespace

TEST_CASE("pack_code and decode round-trip every bit width and row length", "[quantized]") {
  std::mt19937 rng(7);
  for (int b = 1; b <= 8; ++b) {
    for (std::int64_t in : {32, 64, 96, 160, 384}) {
      std::int64_t const bytes = quantized_row_bytes(in, b);
      REQUIRE(bytes * 8 == in * b);
      std::vector<std::uint8_t> row(static_cast<std::size_t>(bytes + 2), 0xA5);  // two guard bytes
      std::vector<unsigned> codes(static_cast<std::size_t>(in));
      std::uniform_int_distribution<unsigned> code(0, (1u << b) - 1u);
      for (std::int64_t i = 0; i < in; ++i) {
        codes[static_cast<std::size_t>(i)] = code(rng);
        pack_code(row.data(), b, i, codes[static_cast<std::size_t>(i)]);
      }
      bool all_equal = true;
      for (std::int64_t i = 0; i < in; ++i) {
        all_equal = all_equal && decode(row.data(), b, i) == codes[static_cast<std::size_t>(i)];
      }
      CAPTURE(b, in);
      CHECK(all_equal);
      CHECK(row[static_cast<std::size_t>(bytes)] == 0xA5);  // nothing written past the row
      CHECK(row[static_cast<std::size_t>(bytes) + 1] == 0xA5);
      // The bit-stream layout itself: code i is bits [i·b, (i+1)·b) of the row, little-endian.
      bool stream = true;
      for (std::int64_t i = 0; i < in; ++i) {
        unsigned q = 0;
        for (int k = 0; k < b; ++k) {
          std::int64_t const bit = i * b + k;
          q |= ((row[static_cast<std::size_t>(bit / 8)] >> (bit % 8)) & 1u) << k;
        }
        stream = stream && q == codes[static_cast<std::size_t>(i)];
      }
      CHECK(stream);
    }
  }
}

TEST_CASE("dequantize_run equals decode with one fma per element, every bit width and run", "[quantized]") {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> uni(-1.0f, 1.0f);
  std::int64_t const in = 256;
  for (std::int64_t group : {32, 64, 128}) {
    for (int b = 1; b <= 8; ++b) {
      for (bool symmetric : {false, true}) {
        std::vector<std::uint8_t> row(static_cast<std::size_t>(quantized_row_bytes(in, b)));
        std::uniform_int_distribution<unsigned> code(0, (1u << b) - 1u);
        for (std::int64_t i = 0; i < in; ++i) {
          pack_code(row.data(), b, i, code(rng));
        }
        std::vector<float> scales(static_cast<std::size_t>(in / group));
        std::vector<std::uint8_t> zeros(scales.size());
        for (std::size_t g = 0; g < scales.size(); ++g) {
          scales[g] = std::ldexp(uni(rng), -4);
          zeros[g] = static_cast<std::uint8_t>(code(rng));
        }
        std::uint8_t const* z = symmetric ? nullptr : zeros.data();
        // Runs that start and end inside groups and cross group boundaries.
        for (auto [first, count] : {std::pair<std::int64_t, std::int64_t>{0, in}, {8, 48}, {24, 120}, {200, 56}}) {
          std::vector<float> out(static_cast<std::size_t>(count));
          std::vector<bf16_t> out16(static_cast<std::size_t>(count));
          dequantize_run(row.data(), b, first, count, scales.data(), z, group, out.data());
          dequantize_run(row.data(), b, first, count, scales.data(), z, group, out16.data());
          bool same = true;
          bool same16 = true;
          for (std::int64_t k = 0; k < count; ++k) {
            std::int64_t const i = first + k;
            std::int64_t const g = i / group;
            float const s = scales[static_cast<std::size_t>(g)];
            float const q = static_cast<float>(decode(row.data(), b, i));
            int const zero = symmetric ? (1 << (b - 1)) : zeros[static_cast<std::size_t>(g)];
            // The documented formula, bit for bit: b = 1 is ±scale, else fma(s, q, −(s·z)).
            float const want = b == 1 ? (q == 1.0f ? s : -s) : std::fma(s, q, -(s * static_cast<float>(zero)));
            same = same && std::memcmp(&want, &out[static_cast<std::size_t>(k)], sizeof want) == 0;
            same16 = same16 && out16[static_cast<std::size_t>(k)].bits == bf16_t(want).bits;
          }
          CAPTURE(group, b, symmetric, first, count);
          CHECK(same);
          CHECK(same16);
        }
      }
    }
  }
}

TEST_CASE("mixed bit widths 2/3/4/8 in one tensor: offsets, strides and rows", "[quantized]") {
  std::int64_t const E = 4, out = 6, in = 192;
  std::vector<int> const bits = {2, 3, 4, 8};
  auto const w = random_weights(E * out * in, 3);
  QuantizedTensor t;
  REQUIRE(quantize_experts(view3(w, E, out, in), bits, {64, QuantScheme::asymmetric}, t) == Status::ok);
  auto const v = t.view();
  REQUIRE(check_quantized_weights(v, "w", E, out, in) == Status::ok);
  std::int64_t offset = 0;
  for (std::int64_t e = 0; e < E; ++e) {
    CHECK(v.offsets[e] == offset);
    CHECK(v.row_bytes(e) == in * bits[static_cast<std::size_t>(e)] / 8);
    CHECK(v.row(e, 3) == t.data.data() + offset + 3 * v.row_bytes(e));
    offset += out * in * bits[static_cast<std::size_t>(e)] / 8;
  }
  CHECK(v.offsets[E] == offset);
  CHECK(v.bytes == offset);
  // dequantize_matrix == the one-element form, everywhere.
  auto const hat = dequantize_all(t);
  bool same = true;
  for (std::int64_t e = 0; e < E; ++e) {
    for (std::int64_t r = 0; r < out; ++r) {
      for (std::int64_t i = 0; i < in; ++i) {
        same = same && hat[static_cast<std::size_t>((e * out + r) * in + i)] == dequantize_element(v, e, r, i);
      }
    }
  }
  CHECK(same);
}

TEST_CASE("quantiser: |w - ŵ| <= scale/2 (+ fp32 slack) for every bit width, group and scheme", "[quantized]") {
  std::int64_t const E = 8, out = 4, in = 256;
  std::vector<int> const bits = {2, 3, 4, 5, 6, 7, 8, 4};
  auto const w = random_weights(E * out * in, 5);
  for (std::int64_t group : {32, 64, 128}) {
    for (auto scheme : {QuantScheme::asymmetric, QuantScheme::symmetric}) {
      QuantizedTensor t;
      REQUIRE(quantize_experts(view3(w, E, out, in), bits, {group, scheme}, t) == Status::ok);
      CHECK(t.zeros.empty() == (scheme == QuantScheme::symmetric));
      auto const hat = dequantize_all(t);
      // Slack: in exact arithmetic the error is <= scale/2. The fp32 scale (one rounding), the
      // fp32 division w/scale (can pick the farther code within a few ulps of a tie), the
      // rounded offset −(scale·z) and the fma's rounding add at most ~6.5·2^-24·M, M = max|w| of
      // the group (docs/quantized_experts.md); 2^-20·M is that with a 2.5x margin.
      double worst = 0.0;  // largest |w − ŵ| / scale seen, reported on failure
      bool within = true;
      for (std::int64_t e = 0; e < E; ++e) {
        for (std::int64_t r = 0; r < out; ++r) {
          for (std::int64_t g = 0; g < in / group; ++g) {
            std::size_t const base = static_cast<std::size_t>((e * out + r) * in + g * group);
            float const s = t.scales[static_cast<std::size_t>((e * out + r) * (in / group) + g)];
            float const m = max_abs(w.data() + base, group);
            for (std::int64_t i = 0; i < group; ++i) {
              double const err = std::fabs(double(w[base + static_cast<std::size_t>(i)]) -
                                           double(hat[base + static_cast<std::size_t>(i)]));
              within = within && err <= 0.5 * double(s) + std::ldexp(double(m), -20);
              worst = std::fmax(worst, err / double(s));
            }
          }
        }
      }
      CAPTURE(group, static_cast<int>(scheme), worst);
      CHECK(within);
      CHECK(worst > 0.25);  // the bound is approached, not trivially met
    }
  }
}

TEST_CASE("quantiser: values on the grid are reproduced exactly", "[quantized]") {
  std::mt19937 rng(13);
  std::int64_t const out = 3, in = 128, group = 32;
  for (int b = 2; b <= 8; ++b) {
    int const qmax = (1 << b) - 1;
    SECTION("asymmetric b=" + std::to_string(b)) {
      // Groups s·(k − z), k ∈ [0, qmax] with both ends present, s a power of two: lo = −s·z and
      // hi = s·(qmax − z) give scale = s and the zero point z exactly, so every step is exact.
      float const s = 0.015625f;
      std::vector<float> w(static_cast<std::size_t>(out * in));
      std::vector<unsigned> want_codes(w.size());
      std::vector<int> want_zero(static_cast<std::size_t>(out * in / group));
      std::uniform_int_distribution<int> code(0, qmax);
      for (std::size_t gi = 0; gi < want_zero.size(); ++gi) {
        int const z = code(rng);
        want_zero[gi] = z;
        for (std::int64_t i = 0; i < group; ++i) {
          int const k = i == 0 ? 0 : (i == 1 ? qmax : code(rng));
          std::size_t const at = gi * static_cast<std::size_t>(group) + static_cast<std::size_t>(i);
          want_codes[at] = static_cast<unsigned>(k);
          w[at] = s * static_cast<float>(k - z);
        }
      }
      QuantizedTensor t;
      std::vector<int> const bits = {b};
      REQUIRE(quantize_experts(view3(w, 1, out, in), bits, {group, QuantScheme::asymmetric}, t) == Status::ok);
      auto const hat = dequantize_all(t);
      CHECK(hat == w);
      bool codes_ok = true;
      for (std::int64_t r = 0; r < out; ++r) {
        for (std::int64_t i = 0; i < in; ++i) {
          codes_ok = codes_ok && decode(t.view().row(0, r), b, i) == want_codes[static_cast<std::size_t>(r * in + i)];
        }
      }
      CHECK(codes_ok);
      bool zeros_ok = true;
      for (std::size_t gi = 0; gi < want_zero.size(); ++gi) {
        zeros_ok = zeros_ok && t.zeros[gi] == want_zero[gi] && t.scales[gi] == s;
      }
      CHECK(zeros_ok);
    }
    SECTION("symmetric b=" + std::to_string(b)) {
      // s·j, |j| <= 2^(b−1) − 1 with the maximum present: scale = s exactly.
      int const jmax = (1 << (b - 1)) - 1;
      float const s = 0.03125f;
      std::vector<float> w(static_cast<std::size_t>(out * in));
      std::uniform_int_distribution<int> j(-jmax, jmax);
      for (std::size_t i = 0; i < w.size(); ++i) {
        w[i] = s * static_cast<float>(i % static_cast<std::size_t>(group) == 0 ? -jmax : j(rng));
      }
      QuantizedTensor t;
      std::vector<int> const bits = {b};
      REQUIRE(quantize_experts(view3(w, 1, out, in), bits, {group, QuantScheme::symmetric}, t) == Status::ok);
      CHECK(dequantize_all(t) == w);
    }
  }
}

TEST_CASE("quantiser: b=8 symmetric round-trips integer-valued bf16 weights exactly", "[quantized]") {
  std::int64_t const E = 2, out = 4, in = 128;
  std::mt19937 rng(17);
  std::uniform_int_distribution<int> v(-127, 127);
  std::vector<bf16_t> w(static_cast<std::size_t>(E * out * in));
  for (std::size_t i = 0; i < w.size(); ++i) {
    w[i] = bf16_t(static_cast<float>(i % 64 == 5 ? 127 : v(rng)));  // 127 in every group: scale = 1
  }
  QuantizedTensor t;
  std::vector<int> const bits = {8, 8};
  REQUIRE(quantize_experts(HostTensor<bf16_t const, 3>::row_major(w.data(), {E, out, in}), bits,
                           {64, QuantScheme::symmetric}, t) == Status::ok);
  auto const hat = dequantize_all(t);
  bool exact = true;
  for (std::size_t i = 0; i < w.size(); ++i) {
    exact = exact && hat[i] == w[i].to_float();
  }
  CHECK(exact);
}

TEST_CASE("quantiser: 1 bit is sign × mean|w| of the row-group, in both schemes", "[quantized]") {
  std::int64_t const out = 2, in = 64, group = 32;
  auto w = random_weights(out * in, 19);
  w[3] = 0.0f;  // zero takes the + code
  for (auto scheme : {QuantScheme::asymmetric, QuantScheme::symmetric}) {
    QuantizedTensor t;
    std::vector<int> const bits = {1};
    REQUIRE(quantize_experts(view3(w, 1, out, in), bits, {group, scheme}, t) == Status::ok);
    auto const hat = dequantize_all(t);
    bool ok = true;
    for (std::int64_t gi = 0; gi < out * in / group; ++gi) {
      double sum = 0.0;
      for (std::int64_t i = 0; i < group; ++i) {
        sum += std::fabs(double(w[static_cast<std::size_t>(gi * group + i)]));
      }
      float const mean = static_cast<float>(sum / double(group));
      ok = ok && t.scales[static_cast<std::size_t>(gi)] == mean;
      for (std::int64_t i = 0; i < group; ++i) {
        std::size_t const at = static_cast<std::size_t>(gi * group + i);
        ok = ok && hat[at] == (w[at] >= 0.0f ? mean : -mean);
      }
    }
    CHECK(ok);
  }
}

TEST_CASE("quantiser: all-zero and constant groups, fp16 input, bad input", "[quantized]") {
  std::int64_t const out = 1, in = 64;
  std::vector<int> const four = {4};
  SECTION("all zero: scale 0, ŵ = 0, no NaN") {
    std::vector<float> w(static_cast<std::size_t>(in), 0.0f);
    for (auto scheme : {QuantScheme::asymmetric, QuantScheme::symmetric}) {
      QuantizedTensor t;
      REQUIRE(quantize_experts(view3(w, 1, out, in), four, {32, scheme}, t) == Status::ok);
      CHECK(t.scales[0] == 0.0f);
      CHECK(dequantize_all(t) == w);
    }
  }
  SECTION("constant 3: the range includes 0, so the group is [0, 3] and 3 is the top code") {
    std::vector<float> w(static_cast<std::size_t>(in), 3.0f);
    QuantizedTensor t;
    REQUIRE(quantize_experts(view3(w, 1, out, in), four, {32, QuantScheme::asymmetric}, t) == Status::ok);
    CHECK(t.zeros[0] == 0);
    CHECK(decode(t.data.data(), 4, 0) == 15u);
    // ŵ = 15·fp32(0.2) rounded once: |fp32(0.2) − 0.2| <= 2^-24·0.2, times 15, plus half an ulp of 3.
    CHECK(std::fabs(dequantize_all(t)[0] - 3.0f) <= 15.0f * std::ldexp(0.2f, -24) + std::ldexp(3.0f, -24));
  }
  SECTION("fp16 input gives the codes of its float values") {
    auto const wf = random_weights(2 * in, 23);
    std::vector<fp16_t> w16;
    std::vector<float> back;
    for (float x : wf) {
      w16.push_back(fp16_t(x));
      back.push_back(w16.back().to_float());
    }
    QuantizedTensor a;
    QuantizedTensor b;
    std::vector<int> const bits = {3, 5};
    REQUIRE(quantize_experts(HostTensor<fp16_t const, 3>::row_major(w16.data(), {2, out, in}), bits, {64}, a) ==
            Status::ok);
    REQUIRE(quantize_experts(view3(back, 2, out, in), bits, {64}, b) == Status::ok);
    CHECK(a.data == b.data);
    CHECK(a.scales == b.scales);
    CHECK(a.zeros == b.zeros);
  }
  SECTION("rejections leave the output untouched") {
    std::vector<float> w(static_cast<std::size_t>(2 * 3 * in), 0.5f);
    QuantizedTensor t;
    t.experts = 99;
    std::vector<int> const two = {4, 4};
    std::vector<int> const bad_bits = {4, 9};
    std::vector<int> const zero_bits = {0, 4};
    CHECK(quantize_experts(view3(w, 2, 3, in), four, {32}, t) == Status::invalid_argument);
    CHECK_THAT(last_message(), Catch::Contains("1 bit widths for 2 experts"));
    CHECK(quantize_experts(view3(w, 2, 3, in), bad_bits, {32}, t) == Status::invalid_argument);
    CHECK_THAT(last_message(), Catch::Contains("expert 1 has 9 bits"));
    CHECK(quantize_experts(view3(w, 2, 3, in), zero_bits, {32}, t) == Status::invalid_argument);
    CHECK_THAT(last_message(), Catch::Contains("expert 0 has 0 bits"));
    CHECK(quantize_experts(view3(w, 2, 3, in), two, {16}, t) == Status::invalid_argument);
    CHECK_THAT(last_message(), Catch::Contains("group size 16"));
    CHECK(quantize_experts(view3(w, 2, 3, in), two, {128}, t) == Status::invalid_argument);
    CHECK_THAT(last_message(), Catch::Contains("not a multiple of the group size 128"));
    w[static_cast<std::size_t>((1 * 3 + 2) * in + 40)] = std::nanf("");
    CHECK(quantize_experts(view3(w, 2, 3, in), two, {32}, t) == Status::invalid_argument);
    CHECK_THAT(last_message(), Catch::Contains("expert 1 row 2 has a non-finite weight at column 40"));
    w[static_cast<std::size_t>((1 * 3 + 2) * in + 40)] = 0.5f;
    w[5] = -INFINITY;
    CHECK(quantize_experts(view3(w, 2, 3, in), two, {32}, t) == Status::invalid_argument);
    CHECK_THAT(last_message(), Catch::Contains("expert 0 row 0 has a non-finite weight at column 5"));
    CHECK(t.experts == 99);
  }
}

TEST_CASE("Quantized<Base> keeps Base's function, shape and validation", "[quantized]") {
  Quantized<ClampedSwiglu<bf16_t>> q;
  ClampedSwiglu<bf16_t> const base;
  CHECK(q.hidden_unit(1.5f, -0.25f) == base.hidden_unit(1.5f, -0.25f));
  CHECK(q.validate() == Status::ok);
  q.base.limit = -1.0f;
  CHECK(q.validate() == Status::invalid_argument);
  CHECK(Quantized<ReluMlp<fp16_t>>::shape == ExpertShape::plain);
  CHECK(Quantized<SwiGlu<bf16_t>>::shape == ExpertShape::gated);
  CHECK(Quantized<SwiGlu<bf16_t>>::kernel_bits(3));
  CHECK_FALSE(Quantized<SwiGlu<bf16_t>>::kernel_bits(5));
}

TEST_CASE("check_quantized_weights rejects each bad field with a message", "[quantized]") {
  std::int64_t const E = 3, out = 4, in = 128;
  auto const w = random_weights(E * out * in, 29);
  std::vector<int> const bits = {2, 4, 8};
  QuantizedTensor t;
  REQUIRE(quantize_experts(view3(w, E, out, in), bits, {64}, t) == Status::ok);
  auto const good = t.view();
  REQUIRE(check_quantized_weights(good, "up", E, out, in) == Status::ok);

  auto expect = [&](QuantizedWeights<MemorySpace::host> const& v, Status want, char const* text) {
    clear_error_message();
    CHECK(check_quantized_weights(v, "up", E, out, in) == want);
    CHECK_THAT(last_message(), Catch::Contains(text));
  };
  std::vector<std::uint8_t> bad_bits = t.bits;
  std::vector<std::int64_t> bad_offsets = t.offsets;
  auto v = good;
  v.bits = bad_bits.data();
  bad_bits[1] = 0;
  expect(v, Status::invalid_argument, "up: expert 1 has 0 bits");
  bad_bits[1] = 9;
  expect(v, Status::invalid_argument, "up: expert 1 has 9 bits");
  bad_bits[1] = 5;  // 5-bit codes need more bytes than the offsets give
  expect(v, Status::invalid_argument, "expert 1 spans 256 bytes");
  v = good;
  v.offsets = bad_offsets.data();
  bad_offsets[0] = 4;
  expect(v, Status::invalid_argument, "offsets[0] must be 0");
  bad_offsets = t.offsets;
  bad_offsets[2] = bad_offsets[1] - 4;  // not monotone
  expect(v, Status::invalid_argument, "expert 1 spans");
  bad_offsets = t.offsets;
  bad_offsets[2] += 2;
  expect(v, Status::misaligned, "offsets[2] = 386 is not a multiple of 4");
  bad_offsets = t.offsets;
  bad_offsets[3] += 4;  // padding is allowed, past the data is not
  expect(v, Status::invalid_argument, "offsets[E] = 900 is past the 896 data bytes");
  v = good;
  v.group = 48;
  expect(v, Status::invalid_argument, "group size 48");
  v = good;
  v.in = 96;
  clear_error_message();
  CHECK(check_quantized_weights(v, "up", E, out, 96) == Status::invalid_argument);
  CHECK_THAT(last_message(), Catch::Contains("96 is not a multiple of the group size 64"));
  v = good;
  expect(v, Status::ok, "");
  clear_error_message();
  CHECK(check_quantized_weights(good, "up", E, out + 1, in) == Status::invalid_argument);
  CHECK_THAT(last_message(), Catch::Contains("up is [3, 4, 128], expected [3, 5, 128]"));
  v.scales = nullptr;
  expect(v, Status::invalid_argument, "null bits, offsets, data or scales");
  v = good;
  v.data = good.data + 1;
  expect(v, Status::misaligned, "4-byte aligned");
  std::vector<std::uint8_t> bad_zeros = t.zeros;
  v = good;
  v.zeros = bad_zeros.data();
  bad_zeros[(1 * out + 2) * 2 + 1] = 16;  // expert 1 has 4 bits
  expect(v, Status::invalid_argument, "expert 1 row 2 group 1 has zero point 16 > 15");

  SECTION("device views are checked against host copies of bits and offsets") {
    QuantizedWeights<MemorySpace::device> d;  // the host pointers stand in: the check does not read them
    d.bits = good.bits;
    d.offsets = good.offsets;
    d.data = good.data;
    d.scales = good.scales;
    d.zeros = good.zeros;
    d.bytes = good.bytes;
    d.experts = E;
    d.out = out;
    d.in = in;
    d.group = good.group;
    CHECK(check_quantized_weights(d, "down", E, out, in, QuantizedLayout{t.bits.data(), t.offsets.data()}) ==
          Status::ok);
    CHECK(check_quantized_weights(d, "down", E, out, in, QuantizedLayout{}) == Status::invalid_argument);
    CHECK_THAT(last_message(), Catch::Contains("host copies of its bits and offsets"));
  }
  SECTION("QuantizedMlpWeights: the gate for gated experts, each projection's shape, the biases") {
    std::int64_t const H = 128, I = 64;
    QuantizedTensor gate, up, down;
    REQUIRE(quantize_experts(view3(random_weights(E * I * H, 31), E, I, H), bits, {64}, gate) == Status::ok);
    REQUIRE(quantize_experts(view3(random_weights(E * I * H, 37), E, I, H), bits, {32}, up) == Status::ok);
    REQUIRE(quantize_experts(view3(random_weights(E * H * I, 41), E, H, I), bits, {64}, down) == Status::ok);
    QuantizedMlpWeights<MemorySpace::host> m;
    m.up = up.view();
    m.down = down.view();
    CHECK(check_quantized_mlp_weights(m, ExpertShape::plain, E, H, I) == Status::ok);
    CHECK(check_quantized_mlp_weights(m, ExpertShape::gated, E, H, I) == Status::invalid_argument);
    CHECK_THAT(last_message(), Catch::Contains("gate [E, I, H] is [0, 0, 0], expected [3, 64, 128]"));
    m.gate = gate.view();
    CHECK(check_quantized_mlp_weights(m, ExpertShape::gated, E, H, I) == Status::ok);
    m.down = up.view();
    CHECK(check_quantized_mlp_weights(m, ExpertShape::gated, E, H, I) == Status::invalid_argument);
    CHECK_THAT(last_message(), Catch::Contains("down [E, H, I] is [3, 64, 128], expected [3, 128, 64]"));
    m.down = down.view();
    std::vector<float> bias(static_cast<std::size_t>(E * I));
    m.down_bias = HostTensor<float const, 2>::row_major(bias.data(), {E, I});
    CHECK(check_quantized_mlp_weights(m, ExpertShape::gated, E, H, I) == Status::invalid_argument);
    CHECK_THAT(last_message(), Catch::Contains("down_bias [E, H] is [3, 64], expected [3, 128]"));
    m.down_bias = {};
    m.up_bias = HostTensor<float const, 2>::row_major(bias.data(), {E, I});
    CHECK(check_quantized_mlp_weights(m, ExpertShape::gated, E, H, I) == Status::ok);
  }
}
