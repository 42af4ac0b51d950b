#include "moekit/core/tensor_view.hpp"

#include <cstdint>
#include <type_traits>
#include <vector>

#include <catch2/catch.hpp>

using moekit::DeviceTensor;
using moekit::HostTensor;
using moekit::Status;

TEST_CASE("row-major views address every element exactly once", "[core]") {
  std::vector<int> buf(2 * 3 * 5);
  auto v = HostTensor<int, 3>::row_major(buf.data(), {2, 3, 5});
  REQUIRE(v.size() == 30);
  REQUIRE(v.strides == std::array<std::int64_t, 3>{15, 5, 1});
  REQUIRE(v.is_row_major());
  int k = 0;
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 3; ++j) {
      for (int l = 0; l < 5; ++l) {
        v(i, j, l) = k++;
      }
    }
  }
  for (int i = 0; i < 30; ++i) {
    REQUIRE(buf[static_cast<std::size_t>(i)] == i);
  }
  REQUIRE(v.validate() == Status::ok);
}

TEST_CASE("offsets are 64-bit past 2^31 elements", "[core]") {
  // No memory behind it: only the arithmetic is checked.
  auto v = DeviceTensor<float, 2>::row_major(nullptr, {std::int64_t{1} << 20, std::int64_t{1} << 14});
  REQUIRE(v.size() == std::int64_t{1} << 34);
  REQUIRE(v.offset((std::int64_t{1} << 20) - 1, 7) == ((std::int64_t{1} << 20) - 1) * (std::int64_t{1} << 14) + 7);
  REQUIRE(v.validate() == Status::invalid_argument);  // null pointer with elements to address
}

TEST_CASE("strided and broadcast views", "[core]") {
  std::vector<float> buf(4 * 8);
  HostTensor<float, 2> cols{buf.data(), {4, 3}, {8, 2}};  // every other column of the first 6
  REQUIRE_FALSE(cols.is_row_major());
  REQUIRE(&cols(3, 2) == &buf[3 * 8 + 4]);
  HostTensor<float, 2> bcast{buf.data(), {4, 8}, {0, 1}};  // one row seen 4 times
  REQUIRE(&bcast(3, 5) == &buf[5]);
  REQUIRE(bcast.validate() == Status::ok);
  HostTensor<float, 2> unit{buf.data(), {1, 8}, {999, 1}};  // a stride over an extent of 1 is irrelevant
  REQUIRE(unit.is_row_major());
}

TEST_CASE("validate rejects negative extents and strides; empty views are valid", "[core]") {
  HostTensor<int, 2> neg{nullptr, {-1, 4}, {4, 1}};
  REQUIRE(neg.validate() == Status::invalid_argument);
  HostTensor<int, 2> neg_stride{reinterpret_cast<int*>(16), {2, 2}, {-2, 1}};
  REQUIRE(neg_stride.validate() == Status::invalid_argument);
  auto empty = HostTensor<int, 2>::row_major(nullptr, {0, 7});
  REQUIRE(empty.empty());
  REQUIRE(empty.validate() == Status::ok);
}

TEST_CASE("alignment and const views", "[core]") {
  alignas(64) float buf[32] = {};
  auto v = HostTensor<float, 1>::row_major(buf, {32});
  REQUIRE(v.is_aligned(64));
  auto shifted = HostTensor<float, 1>::row_major(buf + 1, {31});
  REQUIRE_FALSE(shifted.is_aligned(16));
  auto c = v.as_const();
  STATIC_REQUIRE(std::is_same_v<decltype(c)::element_type, float const>);
  REQUIRE(c.data == buf);
  // Host and device views are different types: one cannot be passed for the other.
  STATIC_REQUIRE_FALSE(std::is_convertible_v<HostTensor<float, 1>, DeviceTensor<float, 1>>);
}
