// io/safetensors.hpp: round trips for every dtype and 0-d/empty/1-d/4-d shapes, the layout the
// writer promises (name order, contiguous, header padded to 8), metadata, a hand-written file as
// other writers produce it, the exact-conversion rules, and every malformed file built here from
// bytes with its Status and message (outputs untouched, nothing written).

#include "moekit/io/safetensors.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
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
  TempDir() : io_test::TempDir("moekit_safetensors_test_") {}
};

// A .safetensors image: the 8-byte length `n` (the header's size unless given), the header text
// as given, then `buffer_bytes` bytes 0, 1, 2, ...
std::vector<std::byte> craft(std::string const& header, std::size_t buffer_bytes, std::uint64_t n = ~0ull) {
  if (n == ~0ull) {
    n = header.size();
  }
  std::vector<std::byte> b;
  for (int i = 0; i < 8; ++i) {
    b.push_back(std::byte{static_cast<unsigned char>((n >> (8 * i)) & 0xFFu)});
  }
  for (char c : header) {
    b.push_back(std::byte{static_cast<unsigned char>(c)});
  }
  for (std::size_t i = 0; i < buffer_bytes; ++i) {
    b.push_back(std::byte{static_cast<unsigned char>(i)});
  }
  return b;
}

void write_file(fs::path const& p, std::vector<std::byte> const& b) {
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<char const*>(b.data()), static_cast<std::streamsize>(b.size()));
}

std::vector<std::byte> file_bytes(fs::path const& p) {
  std::ifstream f(p, std::ios::binary);
  std::vector<char> c((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<std::byte> b(c.size());
  if (!c.empty()) {
    std::memcpy(b.data(), c.data(), c.size());
  }
  return b;
}

template <class T>
std::vector<T> sample_values(std::size_t n, unsigned seed) {
  std::vector<T> v(n);
  std::mt19937 rng(seed);
  for (std::size_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<T, bool>) {
      v[i] = (rng() & 1u) != 0;
    } else if constexpr (std::is_integral_v<T>) {
      T const special[] = {std::numeric_limits<T>::min(), std::numeric_limits<T>::max(), T(0), T(1)};
      v[i] = i < 4 ? special[i] : static_cast<T>(rng());
    } else if constexpr (std::is_floating_point_v<T>) {
      T const special[] = {std::numeric_limits<T>::quiet_NaN(), -std::numeric_limits<T>::infinity(), T(-0.0),
                           std::numeric_limits<T>::denorm_min()};
      v[i] = i < 4 ? special[i] : static_cast<T>(std::normal_distribution<double>(0, 100)(rng));
    } else {  // bf16_t, fp16_t, fp8: every bit pattern is a value to keep
      v[i] = T::from_bits(static_cast<decltype(T::bits)>(rng()));
    }
  }
  return v;
}

template <class T>
bool same_bits(std::vector<T> const& a, std::vector<T> const& b) {
  if constexpr (std::is_same_v<T, bool>) {
    return a == b;
  } else {
    return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0);
  }
}

template <class T>
io::SafetensorsTensor tensor_of(std::vector<T> const& v, std::vector<std::int64_t> shape) {
  auto const buffer = std::make_unique<T[]>(v.size() + 1);  // contiguous, std::vector<bool> included
  std::copy(v.begin(), v.end(), buffer.get());
  return io::make_safetensors_tensor(buffer.get(), std::move(shape));
}

std::uint64_t header_length(std::vector<std::byte> const& b) {
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) {
    n = (n << 8) | std::to_integer<std::uint64_t>(b[static_cast<std::size_t>(i)]);
  }
  return n;
}

}  // namespace

TEMPLATE_TEST_CASE("safetensors round trip keeps every bit, for every dtype and shape", "[io]", bool, std::int8_t,
                   std::uint8_t, std::int16_t, std::uint16_t, std::int32_t, std::uint32_t, std::int64_t, std::uint64_t,
                   fp16_t, bf16_t, float, double, fp8_e4m3_t, fp8_e5m2_t) {
  TempDir dir;
  auto const shape = GENERATE(std::vector<std::int64_t>{}, std::vector<std::int64_t>{0}, std::vector<std::int64_t>{7},
                              std::vector<std::int64_t>{2, 3, 1, 4}, std::vector<std::int64_t>{0, 8});
  std::int64_t n = 1;
  for (auto d : shape) {
    n *= d;
  }
  CAPTURE(shape);
  auto const a = sample_values<TestType>(static_cast<std::size_t>(n), 1);
  auto const b = sample_values<TestType>(5, 2);  // a second tensor, so that offsets are exercised
  fs::path const p = dir / "w.safetensors";
  REQUIRE(io::write_safetensors(p, {{"b.weight", tensor_of(b, {5})}, {"a", tensor_of(a, shape)}}) == Status::ok);
  CHECK(dir.entries() == 1);  // no temporary left behind

  auto const image = file_bytes(p);
  CHECK(header_length(image) % 8 == 0);
  io::SafetensorsFile f;
  REQUIRE(io::read_safetensors(p, f) == Status::ok);
  CHECK(f.source == p.string());
  CHECK(f.metadata.empty());
  REQUIRE(f.tensors.size() == 2);
  io::SafetensorsEntry const& ea = f.tensors.at("a");
  io::SafetensorsEntry const& eb = f.tensors.at("b.weight");
  CHECK(ea.dtype == io::SafetensorsTypeOf<TestType>::value);
  CHECK(ea.shape == shape);
  // Name order, contiguous from 0.
  CHECK(ea.begin == 0);
  CHECK(ea.end == n * static_cast<std::int64_t>(sizeof(TestType)));
  CHECK(eb.begin == ea.end);
  CHECK(eb.end == ea.end + 5 * static_cast<std::int64_t>(sizeof(TestType)));
  CHECK(f.buffer.size() == static_cast<std::size_t>(eb.end));

  std::vector<TestType> got;
  std::vector<std::int64_t> got_shape;
  REQUIRE(io::read_tensor(f, "a", got, got_shape) == Status::ok);
  CHECK(same_bits(got, a));
  CHECK(got_shape == shape);
  REQUIRE(io::read_tensor(f, "b.weight", got, got_shape) == Status::ok);
  CHECK(same_bits(got, b));
  CHECK(got_shape == std::vector<std::int64_t>{5});
}

TEST_CASE("safetensors metadata round trip and the exact bytes of a small file", "[io]") {
  TempDir dir;
  fs::path const p = dir / "m.safetensors";
  std::map<std::string, std::string> const metadata{{"format", "pt"}, {"note", "caf\xc3\xa9 \"quoted\""}};
  std::vector<float> const x{1.0f, -2.5f};
  REQUIRE(io::write_safetensors(p, {{"x", tensor_of(x, {2})}}, metadata) == Status::ok);
  io::SafetensorsFile f;
  REQUIRE(io::read_safetensors(p, f) == Status::ok);
  CHECK(f.metadata == metadata);

  // The header is compact JSON padded with spaces; the data follows at once.
  auto const image = file_bytes(p);
  std::uint64_t const n = header_length(image);
  std::string const header(reinterpret_cast<char const*>(image.data()) + 8, n);
  std::string const expected = R"({"__metadata__":{"format":"pt","note":"café \"quoted\""},)"
                               R"("x":{"data_offsets":[0,8],"dtype":"F32","shape":[2]}})";
  CHECK(header.substr(0, expected.size()) == expected);
  CHECK(header.find_first_not_of(' ', expected.size()) == std::string::npos);
  CHECK(n % 8 == 0);
  CHECK(image.size() == 8 + n + 8);
  CHECK(std::memcmp(image.data() + 8 + n, x.data(), 8) == 0);

  // tensor_span: a view into the buffer, which starts 8-aligned in memory.
  std::span<float const> view;
  std::vector<std::int64_t> shape;
  REQUIRE(io::tensor_span(f, "x", view, shape) == Status::ok);
  REQUIRE(view.size() == 2);
  CHECK(view[0] == 1.0f);
  CHECK(view[1] == -2.5f);
  CHECK(shape == std::vector<std::int64_t>{2});
  std::span<double const> wrong;
  CHECK(io::tensor_span(f, "x", wrong, shape) == Status::invalid_argument);
  CHECK_THAT(last_error_message(), Catch::Contains("tensor 'x': dtype F32, not F64"));
}

TEST_CASE("safetensors reads a file as other writers lay it out", "[io]") {
  // Unpadded header, entries out of offset order, metadata last, whitespace: all legal.
  TempDir dir;
  fs::path const p = dir / "h.safetensors";
  std::string const header = R"({ "b": {"dtype": "BF16", "shape": [2], "data_offsets": [4, 8]},
      "a": {"dtype": "I16", "shape": [1, 2], "data_offsets": [0, 4]}, "__metadata__": {"k": "v"} })";
  auto image = craft(header, 8);
  // a = [0x0100, 0x0302] as int16; b = bf16 bits 0x3F80 (1.0) and 0xC000 (-2.0).
  image[image.size() - 4] = std::byte{0x80};
  image[image.size() - 3] = std::byte{0x3F};
  image[image.size() - 2] = std::byte{0x00};
  image[image.size() - 1] = std::byte{0xC0};
  write_file(p, image);
  io::SafetensorsFile f;
  REQUIRE(io::read_safetensors(p, f) == Status::ok);
  CHECK(f.metadata == std::map<std::string, std::string>{{"k", "v"}});
  std::vector<std::int64_t> shape;
  std::vector<std::int32_t> a;
  REQUIRE(io::read_tensor(f, "a", a, shape) == Status::ok);  // int16 widened exactly
  CHECK(a == std::vector<std::int32_t>{0x0100, 0x0302});
  CHECK(shape == std::vector<std::int64_t>{1, 2});
  std::vector<float> b;
  REQUIRE(io::read_tensor(f, "b", b, shape) == Status::ok);  // bf16 widened exactly
  CHECK(b == std::vector<float>{1.0f, -2.0f});
}

TEST_CASE("safetensors typed reads convert only exactly", "[io]") {
  TempDir dir;
  fs::path const p = dir / "c.safetensors";
  std::vector<fp16_t> const h{fp16_t::from_bits(0x3C00), fp16_t::from_bits(0x0001)};           // 1, smallest subnormal
  std::vector<bf16_t> const bf{bf16_t::from_bits(0x4049), bf16_t::from_bits(0xFF80)};          // 3.140625, -inf
  std::vector<fp8_e4m3_t> const e4{fp8_e4m3_t::from_bits(0x7E), fp8_e4m3_t::from_bits(0x01)};  // 448, 2^-9
  std::vector<fp8_e5m2_t> const e5{fp8_e5m2_t::from_bits(0x7B), fp8_e5m2_t::from_bits(0xFC)};  // 57344, -inf
  std::vector<float> const f32{0.1f, -3.0f};
  std::vector<double> const f64{0.1, 2.0};
  std::vector<std::uint32_t> const u32{0xFFFFFFFFu, 7};
  REQUIRE(io::write_safetensors(p, {{"h", tensor_of(h, {2})},
                                    {"bf", tensor_of(bf, {2})},
                                    {"e4", tensor_of(e4, {2})},
                                    {"e5", tensor_of(e5, {2})},
                                    {"f32", tensor_of(f32, {2})},
                                    {"f64", tensor_of(f64, {2})},
                                    {"u32", tensor_of(u32, {2})}}) == Status::ok);
  io::SafetensorsFile f;
  REQUIRE(io::read_safetensors(p, f) == Status::ok);
  std::vector<std::int64_t> shape;
  std::vector<float> v;
  REQUIRE(io::read_tensor(f, "h", v, shape) == Status::ok);
  CHECK(v == std::vector<float>{1.0f, std::ldexp(1.0f, -24)});
  REQUIRE(io::read_tensor(f, "bf", v, shape) == Status::ok);
  CHECK(v == std::vector<float>{3.140625f, -std::numeric_limits<float>::infinity()});
  REQUIRE(io::read_tensor(f, "e4", v, shape) == Status::ok);
  CHECK(v == std::vector<float>{448.0f, std::ldexp(1.0f, -9)});
  REQUIRE(io::read_tensor(f, "e5", v, shape) == Status::ok);
  CHECK(v == std::vector<float>{57344.0f, -std::numeric_limits<float>::infinity()});
  std::vector<double> d;
  REQUIRE(io::read_tensor(f, "f32", d, shape) == Status::ok);
  CHECK(d == std::vector<double>{double(0.1f), -3.0});
  std::vector<std::int64_t> i64;
  REQUIRE(io::read_tensor(f, "u32", i64, shape) == Status::ok);
  CHECK(i64 == std::vector<std::int64_t>{0xFFFFFFFFll, 7});

  // Narrowing is refused, outputs untouched.
  std::vector<bf16_t> narrow{bf16_t::from_bits(0x1234)};
  std::vector<std::int64_t> shape_kept{9};
  CHECK(io::read_tensor(f, "f32", narrow, shape_kept) == Status::invalid_argument);
  CHECK_THAT(last_error_message(), Catch::Contains("'" + p.string() + "'") &&
                                       Catch::Contains("tensor 'f32': dtype F32 cannot be read as BF16"));
  CHECK(narrow.size() == 1);
  CHECK(narrow[0].bits == 0x1234);
  CHECK(shape_kept == std::vector<std::int64_t>{9});
  std::vector<float> kept{5.0f};
  CHECK(io::read_tensor(f, "f64", kept, shape_kept) == Status::invalid_argument);
  CHECK_THAT(last_error_message(), Catch::Contains("dtype F64 cannot be read as F32"));
  std::vector<std::int32_t> i32;
  CHECK(io::read_tensor(f, "u32", i32, shape_kept) == Status::invalid_argument);
  CHECK_THAT(last_error_message(), Catch::Contains("dtype U32 cannot be read as I32"));
  CHECK(io::read_tensor(f, "e4", narrow, shape_kept) == Status::invalid_argument);
  CHECK(kept == std::vector<float>{5.0f});

  // A missing tensor.
  CHECK(io::read_tensor(f, "nope", kept, shape_kept) == Status::invalid_argument);
  CHECK_THAT(last_error_message(), Catch::Contains("tensor 'nope' not found in '" + p.string() + "'"));
  CHECK(!f.contains("nope"));
  CHECK(f.contains("bf"));
}

TEST_CASE("safetensors refuses every malformed file with a message naming the file and tensor", "[io]") {
  struct Case {
    char const* what;
    std::vector<std::byte> image;
    char const* message;
  };
  std::string const ok_entry = R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  std::vector<Case> const cases{
      {"shorter than the length field", std::vector<std::byte>(5), "truncated file: 5 bytes"},
      {"header length past the 100 MB limit", craft("{}", 0, 100'000'001ull),
       "header length 100000001 exceeds the limit of 100000000 bytes"},
      {"header length larger than the file", craft("{}", 0, 64), "truncated header: the header length is 64 bytes"},
      {"truncated header (JSON cut short)", craft("{" + ok_entry, 8), "malformed JSON header"},
      {"invalid JSON", craft("{\"a\": nope}", 0), "malformed JSON header"},
      {"empty header", craft("", 0), "malformed JSON header"},
      {"header not an object", craft("[1, 2]", 0), "the header is not a JSON object"},
      {"unknown dtype", craft(R"({"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}})", 16),
       "tensor 'a': unknown dtype 'F128'"},
      {"dtype not a string", craft(R"({"a":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", 4),
       "tensor 'a': missing or non-string \"dtype\""},
      {"negative extent", craft(R"({"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,0]}})", 0),
       "tensor 'a': \"shape\" must hold non-negative 64-bit integers"},
      {"offsets not a pair", craft(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0]}})", 1),
       "tensor 'a': \"data_offsets\" must be [begin, end]"},
      {"offsets reversed", craft(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", 4),
       "tensor 'a': data_offsets [4, 0) end before they begin"},
      {"unexpected entry key", craft(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"x":1}})", 1),
       "tensor 'a': unexpected key 'x'"},
      {"size mismatch", craft(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
       "tensor 'a': shape [3] of F32 needs 12 bytes, but data_offsets [0, 8) hold 8"},
      {"offsets past the end", craft(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", 8),
       "tensor 'a': data_offsets [8, 16) run past the end of the data buffer (8 bytes)"},
      {"truncated data", craft("{" + ok_entry + "}", 6),
       "tensor 'a': data_offsets [0, 8) run past the end of the data buffer (6 bytes)"},
      {"overlapping tensors", craft("{" + ok_entry + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
       "tensors 'a' and 'b' overlap: 'b' begins at 4, before 'a' ends at 8"},
      {"an empty tensor inside another",
       craft("{" + ok_entry + R"(,"b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}})", 8), "overlap"},
      {"gap between tensors", craft("{" + ok_entry + R"(,"b":{"dtype":"F32","shape":[1],"data_offsets":[12,16]}})", 16),
       "gap of 4 bytes between tensor 'a' (ends at 8) and tensor 'b' (begins at 12)"},
      {"gap at the start", craft(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
       "gap of 4 bytes at the start of the data buffer, before tensor 'a'"},
      {"bytes after the last tensor", craft("{" + ok_entry + "}", 10), "2 bytes after the last tensor's data"},
      {"duplicate names", craft("{" + ok_entry + "," + ok_entry + "}", 8), "name 'a' appears twice in the header"},
      {"metadata not strings", craft(R"({"__metadata__":{"k":1}})", 0),
       "\"__metadata__\" value of 'k' is not a string"},
      {"metadata not an object", craft(R"({"__metadata__":[]})", 0), "\"__metadata__\" is not a JSON object"},
  };
  TempDir dir;
  for (Case const& c : cases) {
    CAPTURE(c.what);
    fs::path const p = dir / "bad.safetensors";
    write_file(p, c.image);
    io::SafetensorsFile f;
    f.source = "untouched";
    f.metadata["keep"] = "me";
    CHECK(io::read_safetensors(p, f) == Status::invalid_argument);
    CHECK_THAT(last_error_message(),
               Catch::Contains("safetensors file '" + p.string() + "'") && Catch::Contains(c.message));
    CHECK(f.source == "untouched");
    CHECK(f.tensors.empty());
    CHECK(f.metadata.size() == 1);
    CHECK(file_bytes(p) == c.image);  // reading touches nothing
    CHECK(dir.entries() == 1);
  }
}

TEST_CASE("safetensors I/O errors and refused writes leave nothing behind", "[io]") {
  TempDir dir;
  io::SafetensorsFile f;
  CHECK(io::read_safetensors(dir / "missing.safetensors", f) == Status::io_error);
  CHECK_THAT(last_error_message(), Catch::Contains("missing.safetensors': cannot open: no such file"));
  CHECK(io::read_safetensors(dir.path, f) == Status::io_error);
  CHECK_THAT(last_error_message(), Catch::Contains("it is a directory"));

  fs::path const p = dir / "out.safetensors";
  std::vector<float> const x{1.0f, 2.0f};
  REQUIRE(io::write_safetensors(p, {{"x", tensor_of(x, {2})}}) == Status::ok);
  auto const before = file_bytes(p);

  io::SafetensorsTensor short_data = tensor_of(x, {2});
  short_data.shape = {3};
  CHECK(io::write_safetensors(p, {{"y", short_data}}) == Status::invalid_argument);
  CHECK_THAT(last_error_message(), Catch::Contains("tensor 'y': shape [3] of F32 needs 12 bytes of data, got 8"));
  io::SafetensorsTensor negative = tensor_of(x, {2});
  negative.shape = {-2};
  CHECK(io::write_safetensors(p, {{"y", negative}}) == Status::invalid_argument);
  CHECK(io::write_safetensors(p, {{"__metadata__", tensor_of(x, {2})}}) == Status::invalid_argument);
  CHECK_THAT(last_error_message(), Catch::Contains("invalid tensor name '__metadata__'"));
  CHECK(io::write_safetensors(p, {{"", tensor_of(x, {2})}}) == Status::invalid_argument);
  CHECK(io::write_safetensors(p, {{"x", tensor_of(x, {2})}}, {{"k", "\xff"}}) == Status::invalid_argument);
  CHECK_THAT(last_error_message(), Catch::Contains("cannot encode the header"));
  CHECK(file_bytes(p) == before);
  CHECK(dir.entries() == 1);

  CHECK(io::write_safetensors(dir / "no_such_dir" / "w.safetensors", {{"x", tensor_of(x, {2})}}) == Status::io_error);
  CHECK_THAT(last_error_message(), Catch::Contains("cannot create"));
  CHECK(dir.entries() == 1);

  // An empty file: no tensors, no metadata, the header "{}" padded to 8.
  fs::path const e = dir / "empty.safetensors";
  REQUIRE(io::write_safetensors(e, {}) == Status::ok);
  auto const image = file_bytes(e);
  CHECK(image.size() == 16);
  CHECK(header_length(image) == 8);
  REQUIRE(io::read_safetensors(e, f) == Status::ok);
  CHECK(f.tensors.empty());
  CHECK(f.buffer.empty());
}
