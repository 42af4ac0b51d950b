// fp32::exp / log / sigmoid: within 1 ulp (exp, log) and 2 ulp (sigmoid) of the correctly rounded
// result, exact where math is exact, and IEEE behaviour on the special values. That they give
// the same bits on the GPU is checked by the [gpu] test in tests/kernels/sample_kernels_gpu.cu.

#include "moekit/core/fp32_math.hpp"

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

#include <catch2/catch.hpp>

namespace fp32 = moekit::fp32;

namespace {
// Distance in representable floats (ordered so that -0 and +0 are neighbours of the same point).
std::int64_t ulps(float a, float b) {
  auto ordered = [](float x) {
    std::int32_t i;
    std::memcpy(&i, &x, sizeof i);
    return i < 0 ? -static_cast<std::int64_t>(i & 0x7fffffff) : static_cast<std::int64_t>(i);
  };
  return std::llabs(ordered(a) - ordered(b));
}
float from_bits(std::uint32_t u) {
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}
}  // namespace

TEST_CASE("fp32 exp, log and sigmoid are within 1-2 ulp over a sweep of every float", "[core][math]") {
  std::int64_t worst_exp = 0, worst_log = 0, worst_sigmoid = 0;
  float at_exp = 0, at_log = 0, at_sigmoid = 0;
  for (std::uint64_t u = 0; u < (std::uint64_t{1} << 32); u += 997) {
    float const x = from_bits(static_cast<std::uint32_t>(u));
    if (std::isnan(x)) {
      continue;
    }
    auto const e = fp32::exp(x);
    auto const e_ref = static_cast<float>(std::exp(static_cast<double>(x)));
    if (auto const d = ulps(e, e_ref); d > worst_exp) {
      worst_exp = d;
      at_exp = x;
    }
    if (x >= 0.0f) {
      auto const l = fp32::log(x);
      auto const l_ref = static_cast<float>(std::log(static_cast<double>(x)));
      if (auto const d = ulps(l, l_ref); d > worst_log) {
        worst_log = d;
        at_log = x;
      }
    }
    auto const s = fp32::sigmoid(x);
    auto const s_ref = static_cast<float>(1.0 / (1.0 + std::exp(-static_cast<double>(x))));
    if (auto const d = ulps(s, s_ref); d > worst_sigmoid) {
      worst_sigmoid = d;
      at_sigmoid = x;
    }
  }
  CAPTURE(at_exp, at_log, at_sigmoid);
  CHECK(worst_exp <= 1);
  CHECK(worst_log <= 1);
  CHECK(worst_sigmoid <= 2);
}

TEST_CASE("fp32 exp: exact points, overflow and underflow boundaries, special values", "[core][math]") {
  float const inf = std::numeric_limits<float>::infinity();
  CHECK(fp32::exp(0.0f) == 1.0f);
  CHECK(fp32::exp(-0.0f) == 1.0f);
  CHECK(fp32::exp(inf) == inf);
  CHECK(fp32::exp(-inf) == 0.0f);
  CHECK(std::isnan(fp32::exp(std::numeric_limits<float>::quiet_NaN())));
  CHECK(fp32::exp(88.72283f) < inf);  // just below ln(FLT_MAX)
  CHECK(fp32::exp(88.7229f) == inf);
  CHECK(fp32::exp(100.0f) == inf);
  CHECK(fp32::exp(-103.972f) == std::numeric_limits<float>::denorm_min());  // rounds up to the smallest subnormal
  CHECK(fp32::exp(-104.5f) == 0.0f);
  CHECK(fp32::exp(-87.0f) > 0.0f);
  CHECK(std::fpclassify(fp32::exp(-95.0f)) == FP_SUBNORMAL);
}

TEST_CASE("fp32 log: exact points, subnormals and special values", "[core][math]") {
  float const inf = std::numeric_limits<float>::infinity();
  CHECK(fp32::log(1.0f) == 0.0f);
  CHECK(fp32::log(0.0f) == -inf);
  CHECK(fp32::log(-0.0f) == -inf);
  CHECK(fp32::log(inf) == inf);
  CHECK(std::isnan(fp32::log(-1.0f)));
  CHECK(std::isnan(fp32::log(-inf)));
  CHECK(std::isnan(fp32::log(std::numeric_limits<float>::quiet_NaN())));
  CHECK(ulps(fp32::log(std::numeric_limits<float>::denorm_min()), static_cast<float>(-149.0 * std::log(2.0))) <= 1);
  CHECK(ulps(fp32::log(std::numeric_limits<float>::max()), static_cast<float>(std::log(3.4028234663852886e38))) <= 1);
  for (int k = -149; k <= 127; ++k) {  // every power of two
    CAPTURE(k);
    CHECK(ulps(fp32::log(std::ldexp(1.0f, k)), static_cast<float>(k * std::log(2.0))) <= 1);
  }
}

TEST_CASE("fp32 sigmoid: symmetric limits and special values", "[core][math]") {
  float const inf = std::numeric_limits<float>::infinity();
  CHECK(fp32::sigmoid(0.0f) == 0.5f);
  CHECK(fp32::sigmoid(inf) == 1.0f);
  CHECK(fp32::sigmoid(-inf) == 0.0f);
  CHECK(fp32::sigmoid(40.0f) == 1.0f);
  CHECK(fp32::sigmoid(-95.0f) > 0.0f);  // subnormal, not flushed: e^x / (1 + e^x) for x < 0
  CHECK(std::isnan(fp32::sigmoid(std::numeric_limits<float>::quiet_NaN())));
  for (float x : {0.25f, 1.0f, 3.5f, 10.0f}) {  // sigmoid(-x) = 1 - sigmoid(x), to rounding
    CAPTURE(x);
    CHECK(std::abs(fp32::sigmoid(-x) - (1.0f - fp32::sigmoid(x))) <= 2 * std::numeric_limits<float>::epsilon());
  }
}
