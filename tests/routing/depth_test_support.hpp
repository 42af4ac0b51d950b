#pragma once
// Shared by the depth / token-skip / layer router tests: running a library entry point under the
// emulator with a given schedule seed (racecheck and initcheck on, two resident blocks), a 256-byte aligned
// workspace, bitwise comparison of float vectors, unit roundoff, and central finite differences.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <span>
#include <vector>

#include <catch2/catch.hpp>

#include "moekit/core/tensor_view.hpp"
#include "moekit/emu/launch_config.hpp"

namespace depth_test {

inline constexpr double u32 = 0x1p-24;  // unit roundoff of fp32
inline constexpr float nan_value = std::numeric_limits<float>::quiet_NaN();
inline constexpr float inf_value = std::numeric_limits<float>::infinity();

// Runs `f` (which calls a device entry point) under the emulator with this schedule seed.
template <class F>
auto with_schedule(std::uint64_t seed, F&& f) {
  moekit::emu::LaunchOptions o;
  o.schedule_seed = seed;
  o.racecheck = true;
  o.initcheck = true;
  o.max_resident_blocks = 2;
  moekit::emu::ScopedLaunchOptions const guard(o);
  return f();
}

// Caller-owned workspace, 256-byte aligned as Workspace wants.
struct AlignedWorkspace {
  std::vector<std::byte> storage;
  void* data = nullptr;
  std::size_t bytes = 0;
  explicit AlignedWorkspace(std::size_t n) : storage(n + 256) {
    auto const p = reinterpret_cast<std::uintptr_t>(storage.data());
    data = storage.data() + ((256 - p % 256) % 256);
    bytes = n;
  }
};

inline std::uint32_t bits(float v) {
  std::uint32_t b;
  std::memcpy(&b, &v, 4);
  return b;
}

inline void require_same_bits(std::vector<float> const& a, std::vector<float> const& b, char const* what) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) {
    INFO(what << "[" << i << "]: " << a[i] << " vs " << b[i]);
    REQUIRE(bits(a[i]) == bits(b[i]));
  }
}

// |got − expected| <= tol[i] elementwise (NaN only where expected is NaN).
inline void require_within(std::vector<float> const& got, std::vector<float> const& expected,
                           std::vector<double> const& tol, char const* what) {
  REQUIRE(got.size() == expected.size());
  for (std::size_t i = 0; i < got.size(); ++i) {
    if (std::isnan(expected[i]) || std::isinf(expected[i])) {
      INFO(what << "[" << i << "]: got " << got[i] << ", expected " << expected[i]);
      REQUIRE((std::isnan(expected[i]) ? std::isnan(got[i]) : got[i] == expected[i]));
      continue;
    }
    INFO(what << "[" << i << "]: got " << got[i] << ", expected " << expected[i] << ", tolerance " << tol[i]);
    REQUIRE(std::fabs(double(got[i]) - double(expected[i])) <= tol[i]);
  }
}

// Central finite differences of a double function, step h.
inline std::vector<double> central_differences(std::function<double(std::vector<double> const&)> const& f,
                                               std::vector<double> x, double h = 1e-6) {
  std::vector<double> g(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    double const keep = x[i];
    x[i] = keep + h;
    double const up = f(x);
    x[i] = keep - h;
    double const down = f(x);
    x[i] = keep;
    g[i] = (up - down) / (2 * h);
  }
  return g;
}

template <class T, int Rank>
moekit::HostTensor<T, Rank> host_view(std::vector<std::remove_const_t<T>>& v, std::array<std::int64_t, Rank> e) {
  return moekit::HostTensor<T, Rank>::row_major(v.data(), e);
}
template <class T, int Rank>
moekit::HostTensor<T, Rank> host_view(std::vector<std::remove_const_t<T>> const& v, std::array<std::int64_t, Rank> e) {
  return moekit::HostTensor<T, Rank>::row_major(const_cast<std::remove_const_t<T>*>(v.data()), e);
}
// "Device" memory under the emulator is host memory tagged as device.
template <class T, int Rank>
moekit::DeviceTensor<T, Rank> device_view(std::vector<std::remove_const_t<T>> const& v,
                                          std::array<std::int64_t, Rank> e) {
  return moekit::DeviceTensor<T, Rank>::row_major(const_cast<std::remove_const_t<T>*>(v.data()), e);
}

}  // namespace depth_test
