// io/npy.hpp: round trips for every element type and 0-d/1-d/3-d/empty shapes, the exact header
// NumPy writes, headers in the other forms NumPy and older writers produce, the exact-conversion
// rules, and every malformed file with its Status and message (outputs untouched).

#include "moekit/io/npy.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "temp_dir.hpp"
#include <catch2/catch.hpp>

#include "moekit/core/error_message.hpp"

using namespace moekit;
namespace fs = std::filesystem;

namespace {

// A fresh directory per test case, removed afterwards.
struct TempDir : io_test::TempDir {
  TempDir() : io_test::TempDir("moekit_npy_test_") {}
};

std::vector<std::byte> bytes_of(std::string const& s) {
  std::vector<std::byte> b(s.size());
  std::memcpy(b.data(), s.data(), s.size());
  return b;
}

// A .npy image with a hand-written header: magic, version major.0, the header length in 2 or 4
// bytes, the header text as given (no padding added), then the data bytes.
std::vector<std::byte> craft(int major, std::string const& header, std::vector<std::byte> const& data) {
  std::string s = "\x93NUMPY";
  s += char(major);
  s += char(0);
  std::size_t const n = header.size();
  s += char(n & 0xFF);
  s += char((n >> 8) & 0xFF);
  if (major >= 2) {
    s += char((n >> 16) & 0xFF);
    s += char((n >> 24) & 0xFF);
  }
  s += header;
  auto b = bytes_of(s);
  b.insert(b.end(), data.begin(), data.end());
  return b;
}

template <class T>
std::vector<std::byte> raw(std::vector<T> const& v) {
  std::vector<std::byte> b(v.size() * sizeof(T));
  if (!v.empty()) {
    std::memcpy(b.data(), v.data(), b.size());
  }
  return b;
}

void write_file(fs::path const& p, std::vector<std::byte> const& b) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<char const*>(b.data()), static_cast<std::streamsize>(b.size()));
}

template <class T>
std::vector<T> sample_values(std::size_t n) {
  std::vector<T> v(n);
  std::mt19937 rng(42);
  for (std::size_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<T, bool>) {
      v[i] = (rng() & 1u) != 0;
    } else if constexpr (std::is_integral_v<T>) {
      // Extremes first, then random bits.
      T const special[] = {std::numeric_limits<T>::min(), std::numeric_limits<T>::max(), T(0), T(1)};
      v[i] = i < 4 ? special[i] : static_cast<T>(rng());
    } else if constexpr (std::is_floating_point_v<T>) {
      T const special[] = {std::numeric_limits<T>::quiet_NaN(), -std::numeric_limits<T>::infinity(), T(-0.0),
                           std::numeric_limits<T>::denorm_min()};
      v[i] = i < 4 ? special[i] : static_cast<T>(std::normal_distribution<double>(0, 100)(rng));
    } else {  // bf16_t, fp16_t: every bit pattern is a value to keep
      v[i] = T::from_bits(static_cast<std::uint16_t>(rng()));
    }
  }
  return v;
}

template <class T>
bool same_bits(std::vector<T> const& a, std::vector<T> const& b) {
  if constexpr (std::is_same_v<T, bool>) {  // std::vector<bool> has no data()
    return a == b;
  } else {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
  }
}

}  // namespace

TEMPLATE_TEST_CASE("npy round trip keeps every bit, for every element type and shape", "[io]", bool, std::int8_t,
                   std::uint8_t, std::int16_t, std::uint16_t, std::int32_t, std::uint32_t, std::int64_t, std::uint64_t,
                   fp16_t, float, double, bf16_t) {
  TempDir dir;
  auto const shape = GENERATE(std::vector<std::int64_t>{}, std::vector<std::int64_t>{0}, std::vector<std::int64_t>{7},
                              std::vector<std::int64_t>{2, 3, 4}, std::vector<std::int64_t>{0, 8},
                              std::vector<std::int64_t>{1, 1, 1, 1, 5});
  std::int64_t n = 1;
  for (auto d : shape) {
    n *= d;
  }
  CAPTURE(shape);
  auto const values = sample_values<TestType>(static_cast<std::size_t>(n));
  fs::path const p = dir / "a.npy";
  auto const buffer = std::make_unique<TestType[]>(values.size() + 1);  // contiguous, std::vector<bool> included
  std::copy(values.begin(), values.end(), buffer.get());
  REQUIRE(io::write_npy(p, buffer.get(), shape) == Status::ok);

  // The file is laid out as NumPy lays it out: version 1.0, data offset a multiple of 64.
  io::NpyArray a;
  REQUIRE(io::read_npy(p, a) == Status::ok);
  CHECK(a.type == io::NpyTypeOf<TestType>::value);
  CHECK(a.shape == shape);
  auto const file_size = static_cast<std::int64_t>(fs::file_size(p));
  CHECK((file_size - std::int64_t(a.data.size())) % 64 == 0);

  std::vector<TestType> back;
  std::vector<std::int64_t> back_shape{99};
  REQUIRE(io::read_npy(p, back, back_shape) == Status::ok);
  CHECK(back_shape == shape);
  CHECK(same_bits(back, values));
  // No temporary file is left beside the target.
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);
}

TEST_CASE("npy header is byte for byte what np.save writes", "[io]") {
  float const v[6] = {1, 2, 3, 4, 5, 6};
  io::NpyArray a = io::make_npy_array(v, {2, 3});
  std::vector<std::byte> image;
  REQUIRE(io::encode_npy(a, image) == Status::ok);
  // np.save(f, np.zeros((2, 3), np.float32)): 10-byte preamble + 118-byte header = 128.
  std::string const dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  std::string expected = std::string("\x93NUMPY\x01\x00", 8) + "\x76" + std::string(1, '\0') + dict +
                         std::string(128 - 10 - dict.size() - 1, ' ') + "\n";
  REQUIRE(image.size() == 128 + 24);
  CHECK(std::string(reinterpret_cast<char const*>(image.data()), 128) == expected);
  // 1-d: the tuple keeps its trailing comma; 0-d: an empty tuple.
  io::NpyArray b = io::make_npy_array(v, {6});
  REQUIRE(io::encode_npy(b, image) == Status::ok);
  CHECK(std::string(reinterpret_cast<char const*>(image.data()) + 10, 60).find("'shape': (6,), }") !=
        std::string::npos);
  io::NpyArray c = io::make_npy_array(v, {});
  REQUIRE(io::encode_npy(c, image) == Status::ok);
  CHECK(std::string(reinterpret_cast<char const*>(image.data()) + 10, 60).find("'shape': (), }") != std::string::npos);
  CHECK(image.size() == 128 + 4);  // 10 + 56 + 1 bytes do not fit in 64
}

TEST_CASE("npy headers in the other forms writers produce are read", "[io]") {
  std::vector<std::int32_t> const v = {5, -6, 7};
  auto const data = raw(v);
  struct Case {
    int major;
    std::string header;
  };
  auto const c =
      GENERATE(Case{2, "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }    \n"},  // version 2.0
               Case{3, "{'descr': '<i4', 'fortran_order': False, 'shape': (3,), }\n"},      // version 3.0, no padding
               Case{1, "{\"descr\": \"<i4\", \"fortran_order\": False, \"shape\": (3,)}\n"},
               Case{1, "{'shape': (3L,), 'fortran_order': False, 'descr': '<i4'}"},  // key order, Python 2 long
               Case{1, "{ 'descr' : '<i4' ,'fortran_order':False,'shape':( 3 , ) }\t\r\n"});
  CAPTURE(c.header);
  io::NpyArray a;
  REQUIRE(io::parse_npy(craft(c.major, c.header, data), a) == Status::ok);
  CHECK(a.type == io::NpyType::i4);
  CHECK(a.shape == std::vector<std::int64_t>{3});
  std::vector<std::int32_t> back;
  REQUIRE(io::to_vector(a, back) == Status::ok);
  CHECK(back == v);
}

TEST_CASE("npy single-byte types take '|' or '<', bf16 is read from '<u2' or '<V2'", "[io]") {
  std::vector<std::uint8_t> const bytes = {1, 200, 3};
  for (char const* descr : {"|u1", "<u1"}) {
    io::NpyArray a;
    REQUIRE(io::parse_npy(craft(1, std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (3,), }",
                                raw(bytes)),
                          a) == Status::ok);
    std::vector<std::uint8_t> back;
    REQUIRE(io::to_vector(a, back) == Status::ok);
    CHECK(back == bytes);
  }
  std::vector<std::uint16_t> const bits = {0x3F80, 0xC000, 0x7FC0};  // 1, -2, NaN in bf16
  for (char const* descr : {"<u2", "<V2", "|V2"}) {
    io::NpyArray a;
    REQUIRE(io::parse_npy(
                craft(1, std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (3,), }", raw(bits)),
                a) == Status::ok);
    std::vector<bf16_t> back;
    REQUIRE(io::to_vector(a, back) == Status::ok);
    CHECK(back[0].to_float() == 1.f);
    CHECK(back[1].to_float() == -2.f);
    CHECK(back[2].is_nan());
  }
}

TEST_CASE("npy typed reads convert only where every value converts exactly", "[io]") {
  TempDir dir;
  std::vector<fp16_t> const half = {fp16_t(1.5f), fp16_t(-65504.f), fp16_t(0.000061035156f)};
  REQUIRE(io::write_npy(dir / "h.npy", half.data(), {3}) == Status::ok);
  std::vector<float> f;
  std::vector<std::int64_t> shape;
  REQUIRE(io::read_npy(dir / "h.npy", f, shape) == Status::ok);
  CHECK(f == std::vector<float>{1.5f, -65504.f, half[2].to_float()});
  std::vector<double> d;
  REQUIRE(io::read_npy(dir / "h.npy", d, shape) == Status::ok);
  CHECK(d[1] == -65504.0);

  std::vector<std::uint8_t> const small = {0, 255, 7};
  REQUIRE(io::write_npy(dir / "u1.npy", small.data(), {3}) == Status::ok);
  std::vector<std::int32_t> i32;
  REQUIRE(io::read_npy(dir / "u1.npy", i32, shape) == Status::ok);
  CHECK(i32 == std::vector<std::int32_t>{0, 255, 7});
  std::vector<std::int64_t> i64;
  REQUIRE(io::read_npy(dir / "u1.npy", i64, shape) == Status::ok);
  CHECK(i64 == std::vector<std::int64_t>{0, 255, 7});

  struct Refused {
    char const* file;
    std::string fragment;
  };
  std::vector<double> const doubles = {1.2, 3.0};
  REQUIRE(io::write_npy(dir / "f8.npy", doubles.data(), {2}) == Status::ok);
  std::vector<std::int64_t> const longs = {1, 2};
  REQUIRE(io::write_npy(dir / "i8.npy", longs.data(), {2}) == Status::ok);
  std::vector<float> const floats = {1.f, 2.f};
  REQUIRE(io::write_npy(dir / "f4.npy", floats.data(), {2}) == Status::ok);

  std::vector<float> untouched_f = {-7.f};
  clear_error_message();
  CHECK(io::read_npy(dir / "f8.npy", untouched_f, shape) == Status::invalid_argument);
  CHECK_THAT(last_error_message(), Catch::Contains("dtype float64 ('<f8') cannot be read as float32") &&
                                       Catch::Contains("f8.npy") && Catch::Contains("astype(np.float32)"));
  CHECK(untouched_f == std::vector<float>{-7.f});
  std::vector<std::int32_t> untouched_i = {-7};
  CHECK(io::read_npy(dir / "i8.npy", untouched_i, shape) == Status::invalid_argument);
  CHECK_THAT(last_error_message(), Catch::Contains("int64 ('<i8') cannot be read as int32"));
  CHECK(untouched_i == std::vector<std::int32_t>{-7});
  std::vector<bf16_t> b16;
  CHECK(io::read_npy(dir / "f4.npy", b16, shape) == Status::invalid_argument);
  std::vector<std::uint32_t> u32;
  CHECK(io::read_npy(dir / "i8.npy", u32, shape) == Status::invalid_argument);
}

TEST_CASE("malformed npy files get invalid_argument naming the file and the problem", "[io]") {
  std::vector<float> const v = {1, 2, 3, 4, 5, 6};
  auto const data = raw(v);
  std::string const good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n";
  struct Case {
    std::string name;
    std::vector<std::byte> image;
    std::string fragment;
  };
  auto truncated = craft(1, good, data);
  truncated.resize(40);
  auto preamble_only = craft(1, good, data);
  preamble_only.resize(9);
  auto const c = GENERATE_REF(
      Case{"bad magic", bytes_of("\x93NUMPX\x01\x00\x10\x00{}"), "not a .npy file"},
      Case{"not npy at all", bytes_of("hello"), "not a .npy file"},
      Case{"no header length", preamble_only, "truncated header (no header length)"},
      Case{"truncated header", truncated, "truncated header (the header says"},
      Case{"version 4.0", craft(4, good, data), "unsupported format version 4.0"},
      Case{"fortran order", craft(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", data),
           "fortran_order is True: only C-order arrays are supported"},
      Case{"big-endian", craft(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", data),
           "unsupported dtype '>f4': big-endian"},
      Case{"complex", craft(1, "{'descr': '<c8', 'fortran_order': False, 'shape': (3,), }", data),
           "unsupported dtype '<c8'"},
      Case{"object", craft(1, "{'descr': '|O', 'fortran_order': False, 'shape': (3,), }", data),
           "unsupported dtype '|O'"},
      Case{"unicode", craft(1, "{'descr': '<U1', 'fortran_order': False, 'shape': (6,), }", data),
           "unsupported dtype '<U1'"},
      Case{"structured", craft(1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (6,), }", data),
           "structured dtypes"},
      Case{"no byte order", craft(1, "{'descr': '|f4', 'fortran_order': False, 'shape': (2, 3), }", data),
           "needs a byte order"},
      Case{"missing key", craft(1, "{'descr': '<f4', 'shape': (2, 3), }", data), "lacks key 'fortran_order'"},
      Case{"extra key", craft(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}", data),
           "unexpected key 'x'"},
      Case{"duplicate key", craft(1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (6,)}", data),
           "key 'descr' appears twice"},
      Case{"negative extent", craft(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }", data),
           "'shape' must hold non-negative integers"},
      Case{"shape is a list", craft(1, "{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3], }", data),
           "'shape' must be a tuple"},
      Case{"not a dict", craft(1, "('<f4', False, (2, 3))", data), "not a Python dict"},
      Case{"trailing text", craft(1, good + "x", data), "unexpected text after the header dict"},
      Case{"fortran_order not a bool", craft(1, "{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 3), }", data),
           "'fortran_order' must be True or False"},
      Case{"overflowing extent",
           craft(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", data),
           "does not fit in 64 bits"},
      Case{"huge shape",
           craft(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }", data),
           "is too large"},
      Case{"header claims more data", craft(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }", data),
           "truncated data: shape (2, 4) of float32 needs 32 bytes, the file has 24"},
      Case{"header claims less data", craft(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", data),
           "4 bytes after the data"},
      Case{"header claims another dtype", craft(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", data),
           "truncated data: shape (2, 3) of float64 needs 48 bytes, the file has 24"});
  CAPTURE(c.name);
  TempDir dir;
  fs::path const p = dir / "bad.npy";
  write_file(p, c.image);
  io::NpyArray a;
  a.shape = {42};
  clear_error_message();
  CHECK(io::read_npy(p, a) == Status::invalid_argument);
  CHECK_THAT(last_error_message(), Catch::Contains(c.fragment) && Catch::Contains("bad.npy"));
  CHECK(a.shape == std::vector<std::int64_t>{42});  // untouched
  std::vector<float> values = {-7.f};
  std::vector<std::int64_t> shape = {42};
  CHECK(io::read_npy(p, values, shape) == Status::invalid_argument);
  CHECK(values == std::vector<float>{-7.f});
  CHECK(shape == std::vector<std::int64_t>{42});
}

TEST_CASE("npy files that cannot be opened or written get io_error and leave nothing behind", "[io]") {
  TempDir dir;
  io::NpyArray a;
  clear_error_message();
  CHECK(io::read_npy(dir / "missing.npy", a) == Status::io_error);
  CHECK_THAT(last_error_message(), Catch::Contains("missing.npy") && Catch::Contains("cannot open"));
  CHECK(io::read_npy(dir.path, a) == Status::io_error);
  CHECK_THAT(last_error_message(), Catch::Contains("it is a directory"));

  float const v[2] = {1.f, 2.f};
  CHECK(io::write_npy(dir / "no_such_dir/a.npy", v, {2}) == Status::io_error);
  CHECK_THAT(last_error_message(), Catch::Contains("no_such_dir/a.npy"));
  CHECK(!fs::exists(dir / "no_such_dir"));
  // A directory in the way: the rename fails, the temporary file is removed.
  fs::create_directories(dir / "taken.npy" / "inner");
  CHECK(io::write_npy(dir / "taken.npy", v, {2}) == Status::io_error);
  CHECK_THAT(last_error_message(), Catch::Contains("cannot replace"));
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator()) == 1);

  // A shape that does not match the data: nothing is created.
  io::NpyArray wrong = io::make_npy_array(v, {2});
  wrong.shape = {3};
  CHECK(io::write_npy(dir / "wrong.npy", wrong) == Status::invalid_argument);
  CHECK_THAT(last_error_message(), Catch::Contains("needs 12 bytes of data, got 8"));
  CHECK(!fs::exists(dir / "wrong.npy"));
  CHECK(io::write_npy(dir / "neg.npy", v, {-2}) == Status::invalid_argument);
  CHECK(!fs::exists(dir / "neg.npy"));

  // Overwriting replaces the whole file.
  float const longer[4] = {1, 2, 3, 4};
  REQUIRE(io::write_npy(dir / "x.npy", longer, {4}) == Status::ok);
  REQUIRE(io::write_npy(dir / "x.npy", v, {2}) == Status::ok);
  std::vector<float> back;
  std::vector<std::int64_t> shape;
  REQUIRE(io::read_npy(dir / "x.npy", back, shape) == Status::ok);
  CHECK(back == std::vector<float>{1.f, 2.f});
}

TEST_CASE("npy writes version 2.0 when the header does not fit in 65535 bytes", "[io]") {
  // 12000 dimensions of extent 1: the shape tuple alone is ~36 kB... and 3 bytes each more: 70 kB.
  std::vector<std::int64_t> shape(24000, 1);
  float const v = 3.5f;
  io::NpyArray a = io::make_npy_array(&v, shape);
  std::vector<std::byte> image;
  REQUIRE(io::encode_npy(a, image) == Status::ok);
  CHECK(std::to_integer<int>(image[6]) == 2);
  CHECK((image.size() - 4) % 64 == 0);
  io::NpyArray back;
  REQUIRE(io::parse_npy(image, back) == Status::ok);
  CHECK(back.shape == shape);
  std::vector<float> values;
  REQUIRE(io::to_vector(back, values) == Status::ok);
  CHECK(values == std::vector<float>{3.5f});
}
