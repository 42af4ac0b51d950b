// Tests of moekit's element types: bf16_t, fp16_t, fp8_e4m3_t, fp8_e5m2_t, int4x2_t, the int8/int4 quantisers and
// DType. Two oracles: an independent reference written here (every finite value of a format decoded with ldexp,
// nearest by search, ties to the even code), and, where the CUDA headers are on the include path, CUDA's own host
// conversions (__float2bfloat16_rn, __float2half_rn, __nv_cvt_float_to_fp8, ...), which must agree bit for bit.

#if defined(MOEKIT_TEST_HAVE_CUDA_HEADERS) && MOEKIT_TEST_HAVE_CUDA_HEADERS
#define MOEKIT_WITH_CUDA_TYPES 1
#endif

#include "moekit/core/dtypes.hpp"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

#include "moekit/core/cuda_interop.hpp"

namespace {

using namespace moekit;
using std::uint16_t;
using std::uint32_t;
using std::uint64_t;
using std::uint8_t;

constexpr float inf_f = std::numeric_limits<float>::infinity();
constexpr double inf_d = std::numeric_limits<double>::infinity();

float f32(uint32_t bits) { return std::bit_cast<float>(bits); }
uint32_t bits32(float x) { return std::bit_cast<uint32_t>(x); }
double f64(uint64_t bits) { return std::bit_cast<double>(bits); }
uint64_t bits64(double x) { return std::bit_cast<uint64_t>(x); }

std::string hex(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}
std::string describe(float x) { return hex(bits32(x)) + " (" + std::to_string(x) + ")"; }
std::string describe(double x) { return hex(bits64(x)) + " (" + std::to_string(x) + ")"; }

// Counts failures of a loop over many inputs and keeps the first few, so that a sweep over millions of inputs
// costs one assertion and still says which inputs failed.
struct Mismatches {
  uint64_t count = 0;
  std::string first;
  void add(std::string const& what) {
    if (count++ < 8) first += what + "\n";
  }
  std::string report() const { return std::to_string(count) + " mismatches; first:\n" + first; }
};

// ---------------------------------------------------------------------------------------------------------------
// The independent reference.

struct Format {
  char const* name;
  int exp_bits;
  int man_bits;
  bool e4m3;  // E4M3FN: no infinities, the only NaN is S.1111.111

  int bias() const { return (1 << (exp_bits - 1)) - 1; }
  uint32_t sign_bit() const { return 1u << (exp_bits + man_bits); }
  uint32_t inf_code() const { return ((1u << exp_bits) - 1u) << man_bits; }  // IEEE-like formats only
  uint32_t max_code() const { return e4m3 ? 0x7Eu : inf_code() - 1u; }       // largest finite magnitude
};

// Per element type: its format and, for the 16-bit types, where a NaN's quiet bit lies and how far its payload
// moves on the way to float.
template <class T>
struct FormatOf;
template <>
struct FormatOf<bf16_t> {
  static constexpr Format format{"bf16", 8, 7, false};
  static constexpr uint32_t quiet_bit = 0x0040u;
  static constexpr int payload_shift = 16;  // to_float is the code shifted: float's top 16 bits
};
template <>
struct FormatOf<fp16_t> {
  static constexpr Format format{"fp16", 5, 10, false};
  static constexpr uint32_t quiet_bit = 0x0200u;
  static constexpr int payload_shift = 13;
};
template <>
struct FormatOf<fp8_e4m3_t> {
  static constexpr Format format{"e4m3", 4, 3, true};
};
template <>
struct FormatOf<fp8_e5m2_t> {
  static constexpr Format format{"e5m2", 5, 2, false};
};

// Value of a code straight from the definition of the format.
double ref_decode(Format const& f, uint32_t code) {
  bool const negative = (code & f.sign_bit()) != 0;
  uint32_t const e = (code >> f.man_bits) & ((1u << f.exp_bits) - 1u);
  uint32_t const m = code & ((1u << f.man_bits) - 1u);
  double v;
  if (f.e4m3 && e == 15 && m == 7) {
    v = std::numeric_limits<double>::quiet_NaN();
  } else if (!f.e4m3 && e == (1u << f.exp_bits) - 1u) {
    v = m == 0 ? inf_d : std::numeric_limits<double>::quiet_NaN();
  } else if (e == 0) {
    v = std::ldexp(static_cast<double>(m), 1 - f.bias() - f.man_bits);
  } else {
    v = std::ldexp(static_cast<double>(m + (1u << f.man_bits)), static_cast<int>(e) - f.bias() - f.man_bits);
  }
  return negative ? -v : v;
}

// Round-to-nearest-even onto a format by search over all its finite non-negative values.
struct RefRounder {
  Format format;
  std::vector<double> values;  // values[c]: magnitude code c, 0..max_code; then one more, max + ulp(max)

  explicit RefRounder(Format const& f) : format(f) {
    for (uint32_t c = 0; c <= f.max_code(); ++c) values.push_back(ref_decode(f, c));
    double const max = values[f.max_code()];
    double const prev = values[f.max_code() - 1];
    values.push_back(max + (max - prev));  // where the next code would lie if the format went on
  }
  // Magnitude code of |x|, not NaN, rounded to nearest, ties to the even code; max_code() + 1 means it rounded
  // beyond the largest finite value (IEEE: to the virtual next binade, i.e. overflow).
  uint32_t round_magnitude(double ax) const {
    auto const last = static_cast<uint32_t>(values.size() - 1);
    if (ax >= values[last]) return last;
    auto const it = std::upper_bound(values.begin(), values.end(), ax);
    auto const lo = static_cast<uint32_t>(it - values.begin() - 1);
    if (ax == values[lo]) return lo;
    double const mid = (values[lo] + values[lo + 1]) / 2;  // exact: both have few significant bits
    if (ax < mid) return lo;
    if (ax > mid) return lo + 1;
    return (lo & 1u) == 0 ? lo : lo + 1;
  }
  double mid_above(uint32_t c) const { return (values[c] + values[c + 1]) / 2; }
};

template <class T>
RefRounder const& ref() {
  static RefRounder const r(FormatOf<T>::format);
  return r;
}

// What the 16-bit conversions must give for x (float or double): RNE, overflow to inf, NaN: sign, quiet, top
// payload bits.
template <class Src>
uint32_t expected_16(RefRounder const& r, Src x) {
  Format const& f = r.format;
  bool const negative = std::signbit(x);
  uint32_t const sign = negative ? f.sign_bit() : 0u;
  if (std::isnan(x)) {
    constexpr int src_man = std::is_same_v<Src, float> ? 23 : 52;
    uint64_t const payload = (std::bit_cast<std::conditional_t<std::is_same_v<Src, float>, uint32_t, uint64_t>>(x) >>
                              (src_man - f.man_bits)) &
                             ((1u << f.man_bits) - 1u);
    return sign | f.inf_code() | (1u << (f.man_bits - 1)) | static_cast<uint32_t>(payload);
  }
  uint32_t const code = r.round_magnitude(std::fabs(static_cast<double>(x)));
  return sign | (code > f.max_code() ? f.inf_code() : code);
}

// What the fp8 conversions must give (CUDA's semantics, stated independently of its code).
template <class Src>
uint32_t expected_fp8(RefRounder const& r, Src x, Saturation sat) {
  Format const& f = r.format;
  uint32_t const sign = std::signbit(x) ? 0x80u : 0u;
  if (std::isnan(x)) {
    if constexpr (std::is_same_v<Src, float>) {
      return 0x7Fu;  // __nv_cvt_float_to_fp8 canonicalises NaN first: sign dropped
    } else {
      // __nv_cvt_double_to_fp8: sign kept; e5m2 keeps the mantissa bit below the quiet bit
      return f.e4m3 ? (sign | 0x7Fu) : (sign | 0x7Eu | static_cast<uint32_t>((bits64(x) >> 50) & 1u));
    }
  }
  uint32_t const code = r.round_magnitude(std::fabs(static_cast<double>(x)));
  if (code <= f.max_code()) return sign | code;
  if (sat == Saturation::satfinite) return sign | f.max_code();
  return sign | (f.e4m3 ? 0x7Fu : f.inf_code());
}

// Calls add(d) with every finite value of every format and every midpoint between neighbours (the ties).
template <class F>
void for_each_format_boundary(F&& add) {
  for (RefRounder const* r : {&ref<bf16_t>(), &ref<fp16_t>(), &ref<fp8_e4m3_t>(), &ref<fp8_e5m2_t>()}) {
    for (uint32_t c = 0; c < r->values.size(); ++c) {
      add(r->values[c]);
      if (c + 1 < r->values.size()) add(r->mid_above(c));
    }
  }
}

// Appends x (float or double) and its two neighbours in its own type, each with both signs.
template <class Fp>
void push_with_neighbours(std::vector<Fp>& out, Fp x) {
  constexpr Fp inf = std::numeric_limits<Fp>::infinity();
  for (Fp g : {x, std::nextafter(x, -inf), std::nextafter(x, inf)}) {
    out.push_back(g);
    out.push_back(-g);
  }
}

// Every float near a boundary of some format: each finite value, each midpoint between neighbours (the ties),
// their float neighbours, both signs; plus float's own special values.
std::vector<float> const& boundary_floats() {
  static std::vector<float> const v = [] {
    std::vector<float> out;
    auto add = [&](double d) {
      auto const f = static_cast<float>(d);
      if (static_cast<double>(f) != d) return;  // not a float: only the bf16 "max + ulp" value, 2^128
      push_with_neighbours(out, f);
    };
    for_each_format_boundary(add);
    for (uint32_t b :
         {0x00000000u, 0x00000001u, 0x007FFFFFu, 0x00800000u, 0x7F7FFFFFu, 0x7F800000u, 0x7F800001u, 0x7FA00000u,
          0x7FC00000u, 0x7FC00001u, 0x7FFFFFFFu, 0x7F802000u, 0x7FBFFFFFu, 0x7FE00000u, 0x7F812345u}) {
      out.push_back(f32(b));
      out.push_back(f32(b | 0x80000000u));
    }
    return out;
  }();
  return v;
}

// The same boundaries as doubles, with their double neighbours: a double one ulp off a tie rounds to the tie in
// float, so these catch a conversion that rounds twice (double -> float -> narrow).
std::vector<double> const& boundary_doubles() {
  static std::vector<double> const v = [] {
    std::vector<double> out;
    for_each_format_boundary([&](double d) { push_with_neighbours(out, d); });
    for (uint64_t b : {0x0ull, 0x1ull, 0x000FFFFFFFFFFFFFull, 0x7FEFFFFFFFFFFFFFull, 0x7FF0000000000000ull,
                       0x7FF0000000000001ull, 0x7FF4000000000000ull, 0x7FF8000000000000ull, 0x7FFC000000000000ull,
                       0x7FFFFFFFFFFFFFFFull, 0x47EFFFFFE0000000ull, 0x47EFFFFFF0000000ull}) {
      out.push_back(f64(b));
      out.push_back(f64(b | 0x8000000000000000ull));
    }
    return out;
  }();
  return v;
}

// Doubles spread over every exponent the formats reach (and beyond), plus arbitrary 64-bit patterns.
std::vector<double> const& random_doubles() {
  static std::vector<double> const v = [] {
    std::vector<double> out;
    std::mt19937_64 rng(20261124);
    for (int i = 0; i < 200000; ++i) {
      uint64_t const r = rng();
      auto const exp = static_cast<uint64_t>(1023 - 160 + static_cast<int>(r % 300));  // 2^-160 .. 2^139
      out.push_back(f64((rng() & 0x800FFFFFFFFFFFFFull) | (exp << 52)));
    }
    for (int i = 0; i < 50000; ++i) out.push_back(f64(rng()));
    return out;
  }();
  return v;
}

// All floats whose bit pattern is a multiple of `stride` (NaNs, infinities, subnormals and both signs included).
template <class F>
void for_strided_floats(uint32_t stride, F&& f) {
  for (uint64_t b = 0; b <= 0xFFFFFFFFull; b += stride) f(f32(static_cast<uint32_t>(b)));
}

// ---------------------------------------------------------------------------------------------------------------
// Compile-time: every conversion is constexpr.

static_assert(bf16_t(1.0f).bits == 0x3F80);
static_assert(bf16_t(-2.0).bits == 0xC000);
static_assert(bf16_t::from_bits(0x0001).to_float() == 0x1p-133f);
static_assert(fp16_t(65520.0f).bits == 0x7C00);
static_assert(fp16_t::from_bits(0x0001).to_float() == 0x1p-24f);
static_assert(fp16_t(0x1p-25f).bits == 0x0000);
static_assert(fp8_e4m3_t(1000.0f).bits == 0x7E);
static_assert(fp8_e4m3_t(1000.0f, Saturation::nosat).bits == 0x7F);
static_assert(fp8_e4m3_t::from_bits(0x7E).to_float() == 448.0f);
static_assert(fp8_e5m2_t(inf_f, Saturation::nosat).bits == 0x7C);
static_assert(fp8_e5m2_t::from_bits(0x7B).to_float() == 57344.0f);
static_assert(quantize_int8(2.5f) == 2 && quantize_int4(-7.5f) == -8);
static_assert(int4x2_t::pack(-8, 7).bits == 0x78 && int4x2_t::from_bits(0x78).lo() == -8);
static_assert(to_float(fp8_e4m3_t::from_bits(0x38)) == 1.0f && from_float<fp16_t>(1.0f).bits == 0x3C00);

// ---------------------------------------------------------------------------------------------------------------
// 16-bit formats

// Both 16-bit types: every check is made on every code of each, so a check first written for one type (the exact
// float bits of bf16, the NaN payload of fp16, operator double) now covers the other as well.
TEMPLATE_TEST_CASE("bf16, fp16: to_float is exact and float -> 16 bits -> float round-trips, for all 65536 bit "
                   "patterns",
                   "[core][dtypes]", bf16_t, fp16_t) {
  using T = TestType;
  using F = FormatOf<T>;
  constexpr uint32_t man_mask = (1u << F::format.man_bits) - 1u;
  Mismatches decode, round_trip, round_trip_double, nan_round_trip, predicates;
  for (uint32_t code = 0; code <= 0xFFFF; ++code) {
    auto const x = T::from_bits(static_cast<uint16_t>(code));
    float const f = x.to_float();
    double const want = ref_decode(F::format, code);
    bool const nan = std::isnan(want);
    if (std::isnan(f) != nan || (!nan && bits64(static_cast<double>(f)) != bits64(want)) ||
        std::signbit(f) != ((code & 0x8000) != 0)) {
      decode.add(hex(code) + " -> " + describe(f));
    }
    if constexpr (std::is_same_v<T, bf16_t>) {
      if (bits32(f) != code << F::payload_shift) decode.add(hex(code) + " -> " + describe(f));
    }
    if (nan && (bits32(f) & 0x007FFFFFu) != (code & man_mask) << F::payload_shift) {
      decode.add(hex(code) + ": NaN payload lost");
    }
    if (bits32(static_cast<float>(x)) != bits32(f) || bits64(x.to_double()) != bits64(static_cast<double>(f)) ||
        bits64(static_cast<double>(x)) != bits64(x.to_double())) {
      decode.add(hex(code) + ": operator float / to_double disagree with to_float");
    }
    if (x.is_nan() != nan || x.is_inf() != std::isinf(f) || x.is_finite() != std::isfinite(f) ||
        x.signbit() != std::signbit(f)) {
      predicates.add(hex(code));
    }
    if (!nan) {
      if (T(f).bits != code) round_trip.add(hex(code) + " -> " + hex(T(f).bits));
      if (T(x.to_double()).bits != code) round_trip_double.add(hex(code) + " -> " + hex(T(x.to_double()).bits));
    } else if (T(f).bits != (code | F::quiet_bit)) {  // quietened, sign and payload kept
      nan_round_trip.add(hex(code) + " -> " + hex(T(f).bits));
    }
  }
  INFO(F::format.name);
  INFO(decode.report());
  CHECK(decode.count == 0);
  INFO(predicates.report());
  CHECK(predicates.count == 0);
  INFO(round_trip.report());
  CHECK(round_trip.count == 0);
  INFO(round_trip_double.report());
  CHECK(round_trip_double.count == 0);
  INFO(nan_round_trip.report());
  CHECK(nan_round_trip.count == 0);
}

TEST_CASE("bf16: rounding, overflow, subnormals, zeros and NaN", "[core][dtypes]") {
  SECTION("ties go to the even mantissa; anything past a tie goes away from it") {
    CHECK(bf16_t(f32(0x3F808000)).bits == 0x3F80);  // 1 + 2^-8: halfway between 0x3F80 (even) and 0x3F81
    CHECK(bf16_t(f32(0x3F818000)).bits == 0x3F82);  // 1 + 3*2^-8: halfway between 0x3F81 and 0x3F82 (even)
    CHECK(bf16_t(f32(0x3F808001)).bits == 0x3F81);
    CHECK(bf16_t(f32(0x3F807FFF)).bits == 0x3F80);
    CHECK(bf16_t(f32(0x3F817FFF)).bits == 0x3F81);
    CHECK(bf16_t(f32(0xBF808000)).bits == 0xBF80);  // negative ties too
    CHECK(bf16_t(f32(0xBF818000)).bits == 0xBF82);
    CHECK(bf16_t(f32(0x3FFF8000)).bits == 0x4000);  // carry into the exponent: 1.99609375 -> 2
  }
  SECTION("largest finite and overflow to inf") {
    CHECK(bf16_t::max_finite().to_float() == f32(0x7F7F0000));
    CHECK(bf16_t(f32(0x7F7F7FFF)).bits == 0x7F7F);  // just below max + half an ulp
    CHECK(bf16_t(f32(0x7F7F8000)).bits == 0x7F80);  // max + half an ulp: the tie goes to even, which is inf
    CHECK(bf16_t(std::numeric_limits<float>::max()).bits == 0x7F80);
    CHECK(bf16_t(-std::numeric_limits<float>::max()).bits == 0xFF80);
    CHECK(bf16_t(inf_f).bits == 0x7F80);
    CHECK(bf16_t(-inf_f).bits == 0xFF80);
    CHECK(bf16_t(1e300).bits == 0x7F80);
    CHECK(bf16_t::infinity().is_inf());
  }
  SECTION("subnormals: exact, and values below the smallest round to zero or up") {
    CHECK(bf16_t::min_subnormal().to_float() == 0x1p-133f);
    CHECK(bf16_t::min_normal().to_float() == 0x1p-126f);
    CHECK(bf16_t(0x1p-133f).bits == 0x0001);
    CHECK(bf16_t(f32(0x00008000)).bits == 0x0000);  // half the smallest subnormal: tie to even (zero)
    CHECK(bf16_t(f32(0x00008001)).bits == 0x0001);  // just above half: up to the smallest subnormal
    CHECK(bf16_t(f32(0x00007FFF)).bits == 0x0000);
    CHECK(bf16_t(f32(0x80008000)).bits == 0x8000);  // negative: to -0
    CHECK(bf16_t(f32(0x00018000)).bits == 0x0002);  // 1.5 * smallest: tie to even
    CHECK(bf16_t(f32(0x007F8000)).bits == 0x0080);  // largest subnormal + half an ulp: tie, up to the smallest normal
    CHECK(bf16_t(f32(0x00000001)).bits == 0x0000);  // float's smallest subnormal
    CHECK(bf16_t(0x1p-134).bits == 0x0000);
    CHECK(bf16_t(std::nextafter(0x1p-134, 1.0)).bits == 0x0001);
  }
  SECTION("signed zeros") {
    CHECK(bf16_t(0.0f).bits == 0x0000);
    CHECK(bf16_t(-0.0f).bits == 0x8000);
    CHECK(bf16_t(-0.0).bits == 0x8000);
    CHECK(std::signbit(bf16_t::from_bits(0x8000).to_float()));
    CHECK(bf16_t{}.bits == 0);
  }
  SECTION("NaN stays NaN: quiet, sign and top payload bits kept") {
    CHECK(bf16_t(std::numeric_limits<float>::quiet_NaN()).bits == 0x7FC0);
    CHECK(bf16_t(f32(0xFFC00000)).bits == 0xFFC0);
    CHECK(bf16_t(f32(0x7F800001)).bits == 0x7FC0);  // signalling NaN, payload below bf16's: quiet NaN
    CHECK(bf16_t(f32(0x7FA00000)).bits == 0x7FE0);  // signalling NaN: made quiet, payload kept
    CHECK(bf16_t(f32(0xFF812345)).bits == 0xFFC1);
    CHECK(bf16_t(std::numeric_limits<double>::quiet_NaN()).bits == 0x7FC0);
    CHECK(bf16_t(-std::numeric_limits<double>::quiet_NaN()).bits == 0xFFC0);
    CHECK(bf16_t(f64(0x7FF0000000000001)).bits == 0x7FC0);
    CHECK(bf16_t::quiet_nan().is_nan());
    CHECK(std::isnan(bf16_t::from_bits(0x7F81).to_float()));
  }
}

TEST_CASE("fp16: rounding, overflow, subnormals, zeros and NaN", "[core][dtypes]") {
  SECTION("ties go to the even mantissa") {
    CHECK(fp16_t(1.0f).bits == 0x3C00);
    CHECK(fp16_t(1.0f + 0x1p-11f).bits == 0x3C00);      // halfway between 0x3C00 (even) and 0x3C01
    CHECK(fp16_t(1.0f + 3 * 0x1p-11f).bits == 0x3C02);  // halfway between 0x3C01 and 0x3C02 (even)
    CHECK(fp16_t(std::nextafter(1.0f + 0x1p-11f, 2.0f)).bits == 0x3C01);
    CHECK(fp16_t(-(1.0f + 0x1p-11f)).bits == 0xBC00);
    CHECK(fp16_t(2047.0f + 0.5f).bits == fp16_t(2048.0f).bits);  // 2047.5: tie, up to even 2048
    CHECK(fp16_t(2049.0f).bits == 0x6800);                       // 2049: tie between 2048 (even) and 2050
  }
  SECTION("largest finite and overflow to inf") {
    CHECK(fp16_t::max_finite().to_float() == 65504.0f);
    CHECK(fp16_t(65504.0f).bits == 0x7BFF);
    CHECK(fp16_t(f32(0x477FEFFF)).bits == 0x7BFF);  // 65519.996: below max + half an ulp
    CHECK(fp16_t(65520.0f).bits == 0x7C00);         // max + half an ulp: tie to even, which is inf
    CHECK(fp16_t(-65520.0f).bits == 0xFC00);
    CHECK(fp16_t(1e10f).bits == 0x7C00);
    CHECK(fp16_t(inf_f).bits == 0x7C00);
    CHECK(fp16_t(-inf_f).bits == 0xFC00);
    CHECK(fp16_t(65519.999999).bits == 0x7BFF);  // from double, no double rounding
    CHECK(fp16_t::infinity().is_inf());
  }
  SECTION("subnormals: exact, and values below the smallest round to zero or up") {
    CHECK(fp16_t::min_subnormal().to_float() == 0x1p-24f);
    CHECK(fp16_t::min_normal().to_float() == 0x1p-14f);
    CHECK(fp16_t::from_bits(0x03FF).to_float() == 1023 * 0x1p-24f);
    CHECK(fp16_t(0x1p-24f).bits == 0x0001);
    CHECK(fp16_t(0x1p-25f).bits == 0x0000);  // half the smallest subnormal: tie to even (zero)
    CHECK(fp16_t(std::nextafter(0x1p-25f, 1.0f)).bits == 0x0001);
    CHECK(fp16_t(std::nextafter(0x1p-25f, 0.0f)).bits == 0x0000);
    CHECK(fp16_t(-0x1p-25f).bits == 0x8000);
    CHECK(fp16_t(3 * 0x1p-25f).bits == 0x0002);        // tie between 1 and 2 (even) subnormal ulps
    CHECK(fp16_t(5 * 0x1p-25f).bits == 0x0002);        // tie between 2 (even) and 3
    CHECK(fp16_t(1023.5f * 0x1p-24f).bits == 0x0400);  // largest subnormal + half: up to the smallest normal
    CHECK(fp16_t(0x1p-14f).bits == 0x0400);
    CHECK(fp16_t(1e-30f).bits == 0x0000);
    CHECK(fp16_t(-1e-30f).bits == 0x8000);
  }
  SECTION("signed zeros") {
    CHECK(fp16_t(0.0f).bits == 0x0000);
    CHECK(fp16_t(-0.0f).bits == 0x8000);
    CHECK(std::signbit(fp16_t::from_bits(0x8000).to_float()));
  }
  SECTION("NaN stays NaN: quiet, sign and top payload bits kept") {
    CHECK(fp16_t(std::numeric_limits<float>::quiet_NaN()).bits == 0x7E00);
    CHECK(fp16_t(f32(0xFFC00000)).bits == 0xFE00);
    CHECK(fp16_t(f32(0x7F800001)).bits == 0x7E00);  // signalling NaN, payload below fp16's: quiet NaN
    CHECK(fp16_t(f32(0x7F802000)).bits == 0x7E01);  // payload bit 13 is fp16's payload bit 0
    CHECK(fp16_t(-std::numeric_limits<double>::quiet_NaN()).bits == 0xFE00);
    CHECK(fp16_t::from_bits(0x7C01).to_float() != fp16_t::from_bits(0x7C01).to_float());
    CHECK(bits32(fp16_t::from_bits(0xFE01).to_float()) == 0xFFC02000);
  }
}

// Compares T(x) (T bf16_t or fp16_t, x float or double) with the reference; a mismatch goes to bad.
template <class T, class Src>
void check_16(Src x, Mismatches& bad) {
  if (uint32_t const w = expected_16(ref<T>(), x); T(x).bits != w) {
    bad.add(describe(x) + " -> " + hex(T(x).bits) + ", want " + hex(w));
  }
}

TEST_CASE("bf16, fp16: float -> 16 bits agrees with the reference rounding on every boundary and every 4093rd "
          "float",
          "[core][dtypes]") {
  Mismatches bf16_bad, fp16_bad;
  std::uint64_t n = 0;
  auto check = [&](float x) {
    ++n;
    check_16<bf16_t>(x, bf16_bad);
    check_16<fp16_t>(x, fp16_bad);
  };
  for (float x : boundary_floats()) check(x);
  for_strided_floats(4093, check);
  INFO(n << " floats");
  INFO("bf16: " << bf16_bad.report());
  CHECK(bf16_bad.count == 0);
  INFO("fp16: " << fp16_bad.report());
  CHECK(fp16_bad.count == 0);
}

TEST_CASE("bf16, fp16: double -> 16 bits rounds once, as the reference does", "[core][dtypes]") {
  // 1 + 2^-8 + 2^-30 is above the bf16 tie at 1 + 2^-8, so it rounds up; through float it would first become the
  // tie and then go down to the even 1.0.
  double const above_tie = 1.0 + 0x1p-8 + 0x1p-30;
  CHECK(static_cast<double>(static_cast<float>(above_tie)) == 1.0 + 0x1p-8);
  CHECK(bf16_t(above_tie).bits == 0x3F81);
  CHECK(bf16_t(static_cast<float>(above_tie)).bits == 0x3F80);
  CHECK(fp16_t(1.0 + 0x1p-11 + 0x1p-40).bits == 0x3C01);
  CHECK(fp16_t(0x1p-25 + 0x1p-60).bits == 0x0001);  // just above half the smallest subnormal

  Mismatches bf16_bad, fp16_bad;
  auto check = [&](double x) {
    check_16<bf16_t>(x, bf16_bad);
    check_16<fp16_t>(x, fp16_bad);
  };
  for (double x : boundary_doubles()) check(x);
  for (double x : random_doubles()) check(x);
  INFO("bf16: " << bf16_bad.report());
  CHECK(bf16_bad.count == 0);
  INFO("fp16: " << fp16_bad.report());
  CHECK(fp16_bad.count == 0);
}

// ---------------------------------------------------------------------------------------------------------------
// fp8

template <class T>
void check_fp8_codes() {
  Format const& f = FormatOf<T>::format;
  Mismatches decode, round_trip, predicates;
  for (uint32_t code = 0; code <= 0xFF; ++code) {
    auto const x = T::from_bits(static_cast<uint8_t>(code));
    float const v = x.to_float();
    double const want = ref_decode(f, code);
    bool const nan = std::isnan(want);
    if (std::isnan(v) != nan || (!nan && bits64(static_cast<double>(v)) != bits64(want)) ||
        std::signbit(v) != ((code & 0x80) != 0)) {
      decode.add(hex(code) + " -> " + describe(v));
    }
    if (bits32(static_cast<float>(x)) != bits32(v) || bits64(x.to_double()) != bits64(static_cast<double>(v)) ||
        bits32(to_float(x)) != bits32(v)) {
      decode.add(hex(code) + ": operator float / to_double / to_float(x) disagree with to_float()");
    }
    if (x.is_nan() != nan || x.is_inf() != std::isinf(v) || x.is_finite() != std::isfinite(v) ||
        x.signbit() != std::signbit(v)) {
      predicates.add(hex(code));
    }
    if (nan) continue;
    for (Saturation sat : {Saturation::satfinite, Saturation::nosat}) {
      // Every finite code comes back; satfinite turns e5m2's infinities into the largest finite value.
      uint32_t const back = std::isinf(v) && sat == Saturation::satfinite ? (code & 0x80u) | f.max_code() : code;
      if (T(v, sat).bits != back) round_trip.add(hex(code) + " -> " + hex(T(v, sat).bits));
      if (T(x.to_double(), sat).bits != back) {
        round_trip.add(hex(code) + " (via double) -> " + hex(T(x.to_double(), sat).bits));
      }
    }
  }
  INFO(f.name);
  INFO(decode.report());
  CHECK(decode.count == 0);
  INFO(predicates.report());
  CHECK(predicates.count == 0);
  INFO(round_trip.report());
  CHECK(round_trip.count == 0);
}

TEST_CASE("fp8 e4m3: to_float is exact and round-trips, for all 256 codes", "[core][dtypes]") {
  check_fp8_codes<fp8_e4m3_t>();
  CHECK(fp8_e4m3_t::max_finite().to_float() == 448.0f);
  CHECK(fp8_e4m3_t::min_normal().to_float() == 0x1p-6f);
  CHECK(fp8_e4m3_t::min_subnormal().to_float() == 0x1p-9f);
  CHECK(fp8_e4m3_t::from_bits(0x7F).is_nan());
  CHECK(fp8_e4m3_t::from_bits(0xFF).is_nan());
  CHECK(std::signbit(fp8_e4m3_t::from_bits(0xFF).to_float()));
  CHECK(fp8_e4m3_t::from_bits(0x78).to_float() == 256.0f);  // exponent field all ones is finite in E4M3FN
  CHECK(fp8_e4m3_t::from_bits(0xF7).to_float() == -240.0f);
  int nans = 0;
  for (uint32_t c = 0; c <= 0xFF; ++c) nans += fp8_e4m3_t::from_bits(static_cast<uint8_t>(c)).is_nan() ? 1 : 0;
  CHECK(nans == 2);
}

TEST_CASE("fp8 e5m2: to_float is exact and round-trips, for all 256 codes", "[core][dtypes]") {
  check_fp8_codes<fp8_e5m2_t>();
  CHECK(fp8_e5m2_t::max_finite().to_float() == 57344.0f);
  CHECK(fp8_e5m2_t::min_normal().to_float() == 0x1p-14f);
  CHECK(fp8_e5m2_t::min_subnormal().to_float() == 0x1p-16f);
  CHECK(fp8_e5m2_t::infinity().to_float() == inf_f);
  CHECK(fp8_e5m2_t::from_bits(0xFC).to_float() == -inf_f);
  int nans = 0;
  for (uint32_t c = 0; c <= 0xFF; ++c) {
    auto const x = fp8_e5m2_t::from_bits(static_cast<uint8_t>(c));
    nans += x.is_nan() ? 1 : 0;
    CHECK(bits32(x.to_float()) == bits32(fp16_t::from_bits(static_cast<uint16_t>(c << 8)).to_float()));
  }
  CHECK(nans == 6);
}

TEST_CASE("fp8 e4m3: saturation, overflow, rounding, subnormals and NaN", "[core][dtypes]") {
  using T = fp8_e4m3_t;
  constexpr auto sat = Saturation::satfinite;
  constexpr auto nosat = Saturation::nosat;
  SECTION("the default is satfinite") {
    for (float x : {1.0f, 464.0f, 500.0f, -1e9f, inf_f, -inf_f, 0x1p-10f}) CHECK(T(x).bits == T(x, sat).bits);
    CHECK(T(1e9).bits == T(1e9, sat).bits);
  }
  SECTION("overflow: satfinite clamps to +-448, nosat gives NaN (e4m3 has no inf)") {
    CHECK(T(448.0f, sat).bits == 0x7E);
    CHECK(T(448.0f, nosat).bits == 0x7E);
    CHECK(T(464.0f, sat).bits == 0x7E);  // 448 + half an ulp: tie to even, which is 448 (0x7F would be NaN)
    CHECK(T(464.0f, nosat).bits == 0x7E);
    CHECK(T(std::nextafter(464.0f, 1e9f), sat).bits == 0x7E);
    CHECK(T(std::nextafter(464.0f, 1e9f), nosat).bits == 0x7F);
    CHECK(T(480.0f, sat).bits == 0x7E);
    CHECK(T(480.0f, nosat).bits == 0x7F);
    CHECK(T(-1000.0f, sat).bits == 0xFE);
    CHECK(T(-1000.0f, nosat).bits == 0xFF);  // NaN with the sign of the input
    CHECK(T(inf_f, sat).bits == 0x7E);
    CHECK(T(-inf_f, sat).bits == 0xFE);
    CHECK(T(inf_f, nosat).bits == 0x7F);
    CHECK(T(-inf_f, nosat).bits == 0xFF);
    CHECK(T(std::numeric_limits<float>::max(), sat).bits == 0x7E);
    CHECK(T(1e300, nosat).bits == 0x7F);
  }
  SECTION("NaN: a float NaN of either sign gives 0x7F (CUDA canonicalises it); a double NaN keeps its sign") {
    for (auto s : {sat, nosat}) {
      CHECK(T(std::numeric_limits<float>::quiet_NaN(), s).bits == 0x7F);
      CHECK(T(f32(0xFFC00000), s).bits == 0x7F);
      CHECK(T(f32(0x7F800001), s).bits == 0x7F);
      CHECK(T(std::numeric_limits<double>::quiet_NaN(), s).bits == 0x7F);
      CHECK(T(-std::numeric_limits<double>::quiet_NaN(), s).bits == 0xFF);
    }
  }
  SECTION("rounding to nearest even, subnormals and zeros") {
    CHECK(T(1.0f).bits == 0x38);
    CHECK(T(1.0f + 0x1p-4f).bits == 0x38);      // tie: to even 1.0
    CHECK(T(1.0f + 3 * 0x1p-4f).bits == 0x3A);  // tie: to even 1.25
    CHECK(T(std::nextafter(1.0f + 0x1p-4f, 2.0f)).bits == 0x39);
    CHECK(T(0x1p-9f).bits == 0x01);
    CHECK(T(0x1p-10f).bits == 0x00);  // half the smallest subnormal: tie to even (zero)
    CHECK(T(std::nextafter(0x1p-10f, 1.0f)).bits == 0x01);
    CHECK(T(-0x1p-10f).bits == 0x80);
    CHECK(T(3 * 0x1p-10f).bits == 0x02);  // tie: to even
    CHECK(T(0x1p-6f).bits == 0x08);
    CHECK(T(7.5f * 0x1p-9f).bits == 0x08);  // largest subnormal + half: up to the smallest normal
    CHECK(T(-0.0f).bits == 0x80);
    CHECK(T(1e-30f).bits == 0x00);
  }
}

TEST_CASE("fp8 e5m2: saturation, overflow, rounding, subnormals and NaN", "[core][dtypes]") {
  using T = fp8_e5m2_t;
  constexpr auto sat = Saturation::satfinite;
  constexpr auto nosat = Saturation::nosat;
  SECTION("overflow: satfinite clamps to +-57344, nosat gives inf") {
    CHECK(T(57344.0f, nosat).bits == 0x7B);
    CHECK(T(std::nextafter(61440.0f, 0.0f), nosat).bits == 0x7B);
    CHECK(T(61440.0f, sat).bits == 0x7B);  // 57344 + half an ulp: tie to even, which is inf
    CHECK(T(61440.0f, nosat).bits == 0x7C);
    CHECK(T(-61440.0f, nosat).bits == 0xFC);
    CHECK(T(inf_f, sat).bits == 0x7B);
    CHECK(T(-inf_f, sat).bits == 0xFB);
    CHECK(T(inf_f, nosat).bits == 0x7C);
    CHECK(T(-inf_f, nosat).bits == 0xFC);
    CHECK(T(inf_f).bits == 0x7B);  // the default is satfinite
    CHECK(T(1e300, nosat).bits == 0x7C);
  }
  SECTION("NaN: a float NaN of either sign gives 0x7F; a double NaN keeps its sign and one payload bit") {
    for (auto s : {sat, nosat}) {
      CHECK(T(std::numeric_limits<float>::quiet_NaN(), s).bits == 0x7F);
      CHECK(T(f32(0xFFC00000), s).bits == 0x7F);
      CHECK(T(std::numeric_limits<double>::quiet_NaN(), s).bits == 0x7E);
      CHECK(T(-std::numeric_limits<double>::quiet_NaN(), s).bits == 0xFE);
      CHECK(T(f64(0x7FFC000000000000), s).bits == 0x7F);
      CHECK(T(f64(0x7FF0000000000001), s).bits == 0x7E);  // signalling: made quiet
    }
  }
  SECTION("rounding to nearest even, subnormals and zeros") {
    CHECK(T(1.0f).bits == 0x3C);
    CHECK(T(1.125f).bits == 0x3C);  // tie: to even 1.0
    CHECK(T(1.375f).bits == 0x3E);  // tie: to even 1.5
    CHECK(T(0x1p-16f).bits == 0x01);
    CHECK(T(0x1p-17f).bits == 0x00);
    CHECK(T(std::nextafter(0x1p-17f, 1.0f)).bits == 0x01);
    CHECK(T(-0x1p-17f).bits == 0x80);
    CHECK(T(3.5f * 0x1p-16f).bits == 0x04);  // largest subnormal + half: up to the smallest normal
    CHECK(T(-0.0f).bits == 0x80);
  }
}

// Compares T(x, sat) (T an fp8 type, x float or double) with the reference; a mismatch goes to bad.
template <class T, class Src>
void check_fp8(Src x, Saturation sat, Mismatches& bad) {
  if (uint32_t const w = expected_fp8(ref<T>(), x, sat); T(x, sat).bits != w) {
    char const* mode = sat == Saturation::satfinite ? " satfinite" : " nosat";
    bad.add(std::string(FormatOf<T>::format.name) + mode + " " + describe(x) + " -> " + hex(T(x, sat).bits) +
            ", want " + hex(w));
  }
}

TEST_CASE("fp8: float and double -> fp8 agree with the reference in both saturation modes", "[core][dtypes]") {
  Mismatches bad;
  std::uint64_t n = 0;
  auto check = [&](auto x) {
    ++n;
    for (Saturation s : {Saturation::satfinite, Saturation::nosat}) {
      check_fp8<fp8_e4m3_t>(x, s, bad);
      check_fp8<fp8_e5m2_t>(x, s, bad);
    }
  };
  for (float x : boundary_floats()) check(x);
  for_strided_floats(4093, check);
  for (double x : boundary_doubles()) check(x);
  for (double x : random_doubles()) check(x);
  INFO(n << " inputs");
  INFO(bad.report());
  CHECK(bad.count == 0);
}

// ---------------------------------------------------------------------------------------------------------------
// int4, int8

TEST_CASE("int4x2_t: pack, get and set for all 256 bytes; element 0 is the low nibble", "[core][dtypes]") {
  Mismatches bad;
  for (uint32_t b = 0; b <= 0xFF; ++b) {
    auto const p = int4x2_t::from_bits(static_cast<uint8_t>(b));
    int const lo = static_cast<int>(b & 0xF) >= 8 ? static_cast<int>(b & 0xF) - 16 : static_cast<int>(b & 0xF);
    int const hi = static_cast<int>(b >> 4) >= 8 ? static_cast<int>(b >> 4) - 16 : static_cast<int>(b >> 4);
    if (p.get(0) != lo || p.get(1) != hi || p.lo() != lo || p.hi() != hi) bad.add(hex(b) + ": get");
    if (int4x2_t::pack(lo, hi).bits != b) bad.add(hex(b) + ": pack");
    for (int v = int4x2_t::min_value; v <= int4x2_t::max_value; ++v) {
      int4x2_t q = p;
      q.set(0, v);
      if (q.get(0) != v || q.get(1) != hi) bad.add(hex(b) + ": set(0, " + std::to_string(v) + ")");
      q = p;
      q.set(1, v);
      if (q.get(1) != v || q.get(0) != lo) bad.add(hex(b) + ": set(1, " + std::to_string(v) + ")");
    }
  }
  INFO(bad.report());
  CHECK(bad.count == 0);
  CHECK(int4x2_t::pack(1, -1).bits == 0xF1);
  CHECK(int4x2_t::pack(-8, 0).bits == 0x08);
  CHECK(int4x2_t{}.bits == 0);
  CHECK(quantize_int4x2(2.5f, -100.0f).bits == int4x2_t::pack(2, -8).bits);
}

TEST_CASE("quantize_int8, quantize_int4: ties to even, saturation, NaN and inf", "[core][dtypes]") {
  constexpr float nan = std::numeric_limits<float>::quiet_NaN();
  SECTION("int8") {
    CHECK(quantize_int8(0.5f) == 0);
    CHECK(quantize_int8(1.5f) == 2);
    CHECK(quantize_int8(2.5f) == 2);
    CHECK(quantize_int8(-0.5f) == 0);
    CHECK(quantize_int8(-1.5f) == -2);
    CHECK(quantize_int8(-2.5f) == -2);
    CHECK(quantize_int8(std::nextafter(0.5f, 0.0f)) == 0);
    CHECK(quantize_int8(std::nextafter(0.5f, 1.0f)) == 1);
    CHECK(quantize_int8(126.5f) == 126);
    CHECK(quantize_int8(127.49f) == 127);
    CHECK(quantize_int8(127.5f) == 127);  // would round to 128: saturates
    CHECK(quantize_int8(1e30f) == 127);
    CHECK(quantize_int8(-127.5f) == -128);
    CHECK(quantize_int8(-128.5f) == -128);
    CHECK(quantize_int8(-1e30f) == -128);
    CHECK(quantize_int8(inf_f) == 127);
    CHECK(quantize_int8(-inf_f) == -128);
    CHECK(quantize_int8(nan) == 0);
    CHECK(quantize_int8(-nan) == 0);
    CHECK(quantize_int8(-0.0f) == 0);
    CHECK(quantize_int8(0x1p-149f) == 0);
  }
  SECTION("int4") {
    CHECK(quantize_int4(0.5f) == 0);
    CHECK(quantize_int4(1.5f) == 2);
    CHECK(quantize_int4(6.5f) == 6);
    CHECK(quantize_int4(-6.5f) == -6);
    CHECK(quantize_int4(6.6f) == 7);
    CHECK(quantize_int4(7.5f) == 7);
    CHECK(quantize_int4(8.0f) == 7);
    CHECK(quantize_int4(-7.5f) == -8);
    CHECK(quantize_int4(-8.5f) == -8);
    CHECK(quantize_int4(-9.0f) == -8);
    CHECK(quantize_int4(inf_f) == 7);
    CHECK(quantize_int4(-inf_f) == -8);
    CHECK(quantize_int4(nan) == 0);
  }
  SECTION("agree with nearbyint + clamp over a sweep of floats") {
    Mismatches bad;
    auto sweep = [&](float x) {
      if (std::isnan(x)) return;
      double const r = std::nearbyint(static_cast<double>(x));  // ties to even in the default rounding mode
      auto const want8 = static_cast<int>(std::clamp(r, -128.0, 127.0));
      auto const want4 = static_cast<int>(std::clamp(r, -8.0, 7.0));
      if (quantize_int8(x) != want8 || quantize_int4(x) != want4) bad.add(describe(x));
    };
    for_strided_floats(4093, sweep);
    for (int i = -600; i <= 600; ++i) {  // every multiple of 1/2 (the ties) and its neighbours, to +-300
      float const x = static_cast<float>(i) / 2;
      sweep(x);
      sweep(std::nextafter(x, -inf_f));
      sweep(std::nextafter(x, inf_f));
    }
    INFO(bad.report());
    CHECK(bad.count == 0);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// DType

template <DType D>
constexpr bool dtype_maps_back() {
  return dtype_of_v<type_of_t<D>> == D;
}
static_assert(dtype_maps_back<DType::f32>() && dtype_maps_back<DType::bf16>() && dtype_maps_back<DType::f16>() &&
              dtype_maps_back<DType::fp8_e4m3>() && dtype_maps_back<DType::fp8_e5m2>() &&
              dtype_maps_back<DType::i8>() && dtype_maps_back<DType::i4>());
static_assert(std::is_same_v<type_of_t<DType::bf16>, bf16_t> && std::is_same_v<type_of_t<DType::i8>, std::int8_t> &&
              std::is_same_v<type_of_t<DType::i4>, int4x2_t>);
static_assert(dtype_of_v<float const> == DType::f32 && dtype_of_v<fp8_e4m3_t> == DType::fp8_e4m3);
static_assert(Numeric<bf16_t const> && Numeric<std::int8_t> && !Numeric<double> && !Numeric<int> &&
              !Numeric<std::uint8_t>);
static_assert(FloatingNumeric<fp8_e5m2_t> && !FloatingNumeric<int4x2_t> && !FloatingNumeric<std::int8_t>);

template <DType D>
constexpr bool size_matches_type() {
  return static_cast<int>(sizeof(type_of_t<D>)) * 8 == size_in_bits(D) * (D == DType::i4 ? 2 : 1);
}
static_assert(size_matches_type<DType::f32>() && size_matches_type<DType::bf16>() && size_matches_type<DType::f16>() &&
              size_matches_type<DType::fp8_e4m3>() && size_matches_type<DType::fp8_e5m2>() &&
              size_matches_type<DType::i8>() && size_matches_type<DType::i4>());

TEST_CASE("DType: names, sizes and storage", "[core][dtypes]") {
  std::vector<std::string_view> names;
  for (DType t : all_dtypes) names.emplace_back(to_string(t));
  CHECK(names == std::vector<std::string_view>{"f32", "bf16", "f16", "fp8_e4m3", "fp8_e5m2", "i8", "i4"});
  CHECK(std::string_view(to_string(static_cast<DType>(200))) == "unknown dtype");
  std::vector<int> bits;
  for (DType t : all_dtypes) bits.push_back(size_in_bits(t));
  CHECK(bits == std::vector<int>{32, 16, 16, 8, 8, 8, 4});
  CHECK(size_in_bits(static_cast<DType>(200)) == 0);
  CHECK(storage_bytes(DType::i4, 0) == 0);
  CHECK(storage_bytes(DType::i4, 3) == 2);
  CHECK(storage_bytes(DType::i4, 4) == 2);
  CHECK(storage_bytes(DType::bf16, 3) == 6);
  CHECK(storage_bytes(DType::f32, std::int64_t{1} << 40) == std::int64_t{1} << 42);
  CHECK(is_floating(DType::fp8_e5m2));
  CHECK_FALSE(is_floating(DType::i8));
  CHECK(from_float<float>(0.1f) == 0.1f);
  CHECK(from_float<bf16_t const>(1.0f).bits == 0x3F80);
  CHECK(from_float<fp8_e4m3_t>(1000.0f).bits == 0x7E);  // saturating, as the constructor
  CHECK(to_float(fp16_t::from_bits(0x3C00)) == 1.0f);
  CHECK(to_float(bf16_t::from_bits(0xBF80)) == -1.0f);
}

// ---------------------------------------------------------------------------------------------------------------
// The CUDA headers as the oracle

#if MOEKIT_HAS_CUDA_TYPES

uint32_t cuda_bits(__nv_bfloat16 x) { return static_cast<__nv_bfloat16_raw>(x).x; }
uint32_t cuda_bits(__half x) { return static_cast<__half_raw>(x).x; }

// CUDA's host conversions, one name for float and double.
__nv_bfloat16 cuda_bf16(float x) { return __float2bfloat16_rn(x); }
__nv_bfloat16 cuda_bf16(double x) { return __double2bfloat16(x); }
__half cuda_fp16(float x) { return __float2half_rn(x); }
__half cuda_fp16(double x) { return __double2half(x); }
__nv_fp8_storage_t cuda_fp8(float x, __nv_saturation_t sat, __nv_fp8_interpretation_t fmt) {
  return __nv_cvt_float_to_fp8(x, sat, fmt);
}
__nv_fp8_storage_t cuda_fp8(double x, __nv_saturation_t sat, __nv_fp8_interpretation_t fmt) {
  return __nv_cvt_double_to_fp8(x, sat, fmt);
}

// Compares one float or double with CUDA's host conversions. bf16 and fp16 must agree bit for bit except for NaN,
// where CUDA returns its canonical NaN 0x7FFF and moekit keeps the sign and payload (both must still be NaN);
// fp8 must agree bit for bit, NaN included.
struct CudaOracle {
  Mismatches bf16_bad, fp16_bad, fp8_bad;
  std::uint64_t n = 0;

  template <class Src>
  void check(Src x) {
    ++n;
    compare_16(x, bf16_t(x).bits, cuda_bits(cuda_bf16(x)), bf16_t::from_bits(bf16_t(x).bits).is_nan(), bf16_bad);
    compare_16(x, fp16_t(x).bits, cuda_bits(cuda_fp16(x)), fp16_t::from_bits(fp16_t(x).bits).is_nan(), fp16_bad);
    compare_fp8(x, cuda_fp8(x, __NV_SATFINITE, __NV_E4M3), fp8_e4m3_t(x, Saturation::satfinite).bits, "e4m3 satfinite");
    compare_fp8(x, cuda_fp8(x, __NV_NOSAT, __NV_E4M3), fp8_e4m3_t(x, Saturation::nosat).bits, "e4m3 nosat");
    compare_fp8(x, cuda_fp8(x, __NV_SATFINITE, __NV_E5M2), fp8_e5m2_t(x, Saturation::satfinite).bits, "e5m2 satfinite");
    compare_fp8(x, cuda_fp8(x, __NV_NOSAT, __NV_E5M2), fp8_e5m2_t(x, Saturation::nosat).bits, "e5m2 nosat");
  }
  // The reports of every format; the caller names the inputs.
  void check_reports() const {
    INFO("bf16: " << bf16_bad.report());
    CHECK(bf16_bad.count == 0);
    INFO("fp16: " << fp16_bad.report());
    CHECK(fp16_bad.count == 0);
    INFO("fp8: " << fp8_bad.report());
    CHECK(fp8_bad.count == 0);
  }

  template <class Src>
  static void compare_16(Src x, uint32_t ours, uint32_t cuda, bool ours_is_nan, Mismatches& bad) {
    bool const ok = std::isnan(x) ? (ours_is_nan && cuda == 0x7FFFu) : ours == cuda;
    if (!ok) bad.add(describe(x) + " -> " + hex(ours) + ", CUDA " + hex(cuda));
  }
  template <class Src>
  void compare_fp8(Src x, __nv_fp8_storage_t cuda, uint8_t ours, char const* what) {
    if (ours != cuda) fp8_bad.add(std::string(what) + " " + describe(x) + " -> " + hex(ours) + ", CUDA " + hex(cuda));
  }
};

TEST_CASE("CUDA oracle: float -> bf16, fp16, e4m3, e5m2 on every 251st float and every boundary",
          "[core][dtypes][cuda]") {
  CudaOracle o;
  for (float x : boundary_floats()) o.check(x);
  for_strided_floats(251, [&](float x) { o.check(x); });
  INFO(o.n << " floats");
  o.check_reports();
  CHECK(o.n > 17'000'000);
}

TEST_CASE("CUDA oracle: double -> bf16, fp16, e4m3, e5m2 on boundaries and random doubles", "[core][dtypes][cuda]") {
  CudaOracle o;
  for (double x : boundary_doubles()) o.check(x);
  for (double x : random_doubles()) o.check(x);
  INFO(o.n << " doubles");
  o.check_reports();
}

TEST_CASE("CUDA oracle: to_float of every code; NaN only differs in sign and payload", "[core][dtypes][cuda]") {
  Mismatches bad;
  auto compare = [&](char const* what, uint32_t code, float ours, float cuda) {
    bool const ok = std::isnan(cuda) ? std::isnan(ours) : bits32(ours) == bits32(cuda);
    if (!ok) bad.add(std::string(what) + " " + hex(code) + " -> " + describe(ours) + ", CUDA " + describe(cuda));
  };
  for (uint32_t c = 0; c <= 0xFFFF; ++c) {
    auto const b = static_cast<uint16_t>(c);
    compare("bf16", c, bf16_t::from_bits(b).to_float(), __bfloat162float(to_cuda(bf16_t::from_bits(b))));
    compare("fp16", c, fp16_t::from_bits(b).to_float(), __half2float(to_cuda(fp16_t::from_bits(b))));
  }
  for (uint32_t c = 0; c <= 0xFF; ++c) {
    auto const b = static_cast<uint8_t>(c);
    compare("e4m3", c, fp8_e4m3_t::from_bits(b).to_float(), static_cast<float>(to_cuda(fp8_e4m3_t::from_bits(b))));
    compare("e5m2", c, fp8_e5m2_t::from_bits(b).to_float(), static_cast<float>(to_cuda(fp8_e5m2_t::from_bits(b))));
  }
  INFO(bad.report());
  CHECK(bad.count == 0);
}

TEST_CASE("cuda_interop: to_cuda / from_cuda keep every bit", "[core][dtypes][cuda]") {
  Mismatches bad;
  for (uint32_t c = 0; c <= 0xFFFF; ++c) {
    auto const b = static_cast<uint16_t>(c);
    if (cuda_bits(to_cuda(bf16_t::from_bits(b))) != c || from_cuda(to_cuda(bf16_t::from_bits(b))).bits != c) {
      bad.add("bf16 " + hex(c));
    }
    if (cuda_bits(to_cuda(fp16_t::from_bits(b))) != c || from_cuda(to_cuda(fp16_t::from_bits(b))).bits != c) {
      bad.add("fp16 " + hex(c));
    }
    __nv_bfloat16_raw rb;
    rb.x = b;
    __half_raw rh;
    rh.x = b;
    if (from_cuda(__nv_bfloat16(rb)).bits != c || from_cuda(__half(rh)).bits != c) bad.add("from_cuda " + hex(c));
  }
  for (uint32_t c = 0; c <= 0xFF; ++c) {
    auto const b = static_cast<uint8_t>(c);
    if (to_cuda(fp8_e4m3_t::from_bits(b)).__x != c || from_cuda(to_cuda(fp8_e4m3_t::from_bits(b))).bits != c) {
      bad.add("e4m3 " + hex(c));
    }
    if (to_cuda(fp8_e5m2_t::from_bits(b)).__x != c || from_cuda(to_cuda(fp8_e5m2_t::from_bits(b))).bits != c) {
      bad.add("e5m2 " + hex(c));
    }
  }
  INFO(bad.report());
  CHECK(bad.count == 0);
  // The CUDA types' own float constructors agree with ours on ordinary values.
  CHECK(from_cuda(__nv_fp8_e4m3(1000.0f)).bits == fp8_e4m3_t(1000.0f).bits);
  CHECK(from_cuda(__nv_fp8_e5m2(-0.3f)).bits == fp8_e5m2_t(-0.3f).bits);
  CHECK(from_cuda(__float2bfloat16_rn(3.14159f)).bits == bf16_t(3.14159f).bits);
}

#else

TEST_CASE("CUDA oracle: skipped, the CUDA headers are not on the include path", "[core][dtypes][cuda]") {
  WARN("Configure with the CUDA toolkit found (CUDA_INCLUDES) to cross-check against CUDA's conversions.");
  SUCCEED();
}

#endif

}  // namespace
