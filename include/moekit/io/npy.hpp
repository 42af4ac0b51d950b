#pragma once
// NumPy .npy files: read and write, host only, standard library only.
//
// Format (numpy.lib.format): the magic "\x93NUMPY", a version byte pair (1.0, 2.0 or 3.0), the
// header length (2 bytes little-endian for 1.0, 4 bytes for 2.0/3.0), then a Python dict literal
// {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), } padded with spaces and ending in
// '\n', then the data. moekit reads and writes C-order, little-endian arrays of these dtypes:
//
//   '|b1' bool   '|i1' int8   '|u1' uint8   '<i2' int16   '<u2' uint16   '<i4' int32
//   '<u4' uint32 '<i8' int64  '<u8' uint64  '<f2' float16 '<f4' float32 '<f8' float64
//   '<V2' / '|V2' two opaque bytes (what np.save writes for an ml_dtypes.bfloat16 array)
//
// NumPy has no bfloat16: bf16_t arrays are written as '<u2' holding the bit patterns (load them
// with np.load(p).view(ml_dtypes.bfloat16), or torch.from_numpy(a).view(torch.bfloat16)), and a
// '<u2' or '<V2' array is read as bf16_t bit patterns.
//
// Typed reading converts only where every value converts exactly: a narrower integer to a wider
// one, float16 to float32 or float64, float32 to float64. float64 is NOT read as float32 (it
// would round); convert it in NumPy (a.astype(np.float32)) so that the rounding is visible.
//
// Errors come back as a Status with a moekit::error message naming the file and the problem:
// Status::io_error when the file cannot be opened, read or written; Status::invalid_argument for
// a malformed file (wrong magic, bad or truncated header, Fortran order, big-endian or
// unsupported dtype, data shorter or longer than the header's shape says) or a dtype that does
// not convert exactly. Writing goes to a temporary file beside the target that is then renamed
// over it, so a failure leaves no partial file. Written headers pad the preamble to a multiple of
// 64 bytes, as NumPy does, so the data is aligned for memory mapping.

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/status.hpp"
#include "moekit/io/file.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace io {

static_assert(std::endian::native == std::endian::little,
              "moekit/io/npy.hpp copies little-endian file data straight into memory: it needs a little-endian host");

// The element types a .npy file may hold (NumPy's type codes).
enum class NpyType : std::uint8_t { b1, i1, u1, i2, u2, i4, u4, i8, u8, f2, f4, f8, v2 };

[[nodiscard]] constexpr int item_size(NpyType t) noexcept {
  switch (t) {
    case NpyType::b1:
    case NpyType::i1:
    case NpyType::u1: return 1;
    case NpyType::i2:
    case NpyType::u2:
    case NpyType::f2:
    case NpyType::v2: return 2;
    case NpyType::i4:
    case NpyType::u4:
    case NpyType::f4: return 4;
    case NpyType::i8:
    case NpyType::u8:
    case NpyType::f8: return 8;
  }
  return 0;
}

// The header's 'descr' string moekit writes for `t`.
[[nodiscard]] constexpr char const* descr(NpyType t) noexcept {
  switch (t) {
    case NpyType::b1: return "|b1";
    case NpyType::i1: return "|i1";
    case NpyType::u1: return "|u1";
    case NpyType::i2: return "<i2";
    case NpyType::u2: return "<u2";
    case NpyType::i4: return "<i4";
    case NpyType::u4: return "<u4";
    case NpyType::i8: return "<i8";
    case NpyType::u8: return "<u8";
    case NpyType::f2: return "<f2";
    case NpyType::f4: return "<f4";
    case NpyType::f8: return "<f8";
    case NpyType::v2: return "<V2";
  }
  return "?";
}

// NumPy's name of the type, for messages.
[[nodiscard]] constexpr char const* to_string(NpyType t) noexcept {
  switch (t) {
    case NpyType::b1: return "bool";
    case NpyType::i1: return "int8";
    case NpyType::u1: return "uint8";
    case NpyType::i2: return "int16";
    case NpyType::u2: return "uint16";
    case NpyType::i4: return "int32";
    case NpyType::u4: return "uint32";
    case NpyType::i8: return "int64";
    case NpyType::u8: return "uint64";
    case NpyType::f2: return "float16";
    case NpyType::f4: return "float32";
    case NpyType::f8: return "float64";
    case NpyType::v2: return "void16";
  }
  return "?";
}

// An array as stored in a .npy file: C order, little-endian bytes.
struct NpyArray {
  NpyType type = NpyType::f4;
  std::vector<std::int64_t> shape;  // empty: a 0-d array (one element)
  std::vector<std::byte> data;

  // Elements: the product of the shape (1 for a 0-d array).
  [[nodiscard]] std::int64_t size() const noexcept {
    std::int64_t n = 1;
    for (std::int64_t d : shape) {
      n *= d;
    }
    return n;
  }
};

// The C++ type of each element type, and back. bf16_t is written as '<u2' (NumPy has no bf16).
template <class T>
struct NpyTypeOf {
  static constexpr bool known = false;
};
namespace detail {
template <NpyType Type>
struct NpyKnown {
  static constexpr bool known = true;
  static constexpr NpyType value = Type;
};
}  // namespace detail
template <>
struct NpyTypeOf<bool> : detail::NpyKnown<NpyType::b1> {};
template <>
struct NpyTypeOf<std::int8_t> : detail::NpyKnown<NpyType::i1> {};
template <>
struct NpyTypeOf<std::uint8_t> : detail::NpyKnown<NpyType::u1> {};
template <>
struct NpyTypeOf<std::int16_t> : detail::NpyKnown<NpyType::i2> {};
template <>
struct NpyTypeOf<std::uint16_t> : detail::NpyKnown<NpyType::u2> {};
template <>
struct NpyTypeOf<std::int32_t> : detail::NpyKnown<NpyType::i4> {};
template <>
struct NpyTypeOf<std::uint32_t> : detail::NpyKnown<NpyType::u4> {};
template <>
struct NpyTypeOf<std::int64_t> : detail::NpyKnown<NpyType::i8> {};
template <>
struct NpyTypeOf<std::uint64_t> : detail::NpyKnown<NpyType::u8> {};
template <>
struct NpyTypeOf<fp16_t> : detail::NpyKnown<NpyType::f2> {};
template <>
struct NpyTypeOf<float> : detail::NpyKnown<NpyType::f4> {};
template <>
struct NpyTypeOf<double> : detail::NpyKnown<NpyType::f8> {};
template <>
struct NpyTypeOf<bf16_t> : detail::NpyKnown<NpyType::u2> {};

// A C++ type a .npy element can be read into and written from.
template <class T>
concept NpyElement = NpyTypeOf<T>::known;

// Can every value of a `from` array be read as T exactly? (See the header comment.)
template <NpyElement T>
[[nodiscard]] constexpr bool converts_exactly(NpyType from) noexcept {
  using enum NpyType;
  auto const one_of = [from](std::initializer_list<NpyType> types) {
    for (NpyType t : types) {
      if (t == from) {
        return true;
      }
    }
    return false;
  };
  if constexpr (std::is_same_v<T, bool>) {
    return from == b1;
  } else if constexpr (std::is_same_v<T, std::int8_t>) {
    return from == i1;
  } else if constexpr (std::is_same_v<T, std::uint8_t>) {
    return from == u1;
  } else if constexpr (std::is_same_v<T, std::int16_t>) {
    return one_of({i1, u1, i2});
  } else if constexpr (std::is_same_v<T, std::uint16_t>) {
    return one_of({u1, u2});
  } else if constexpr (std::is_same_v<T, std::int32_t>) {
    return one_of({i1, u1, i2, u2, i4});
  } else if constexpr (std::is_same_v<T, std::uint32_t>) {
    return one_of({u1, u2, u4});
  } else if constexpr (std::is_same_v<T, std::int64_t>) {
    return one_of({i1, u1, i2, u2, i4, u4, i8});
  } else if constexpr (std::is_same_v<T, std::uint64_t>) {
    return one_of({u1, u2, u4, u8});
  } else if constexpr (std::is_same_v<T, fp16_t>) {
    return from == f2;
  } else if constexpr (std::is_same_v<T, float>) {
    return one_of({f2, f4});
  } else if constexpr (std::is_same_v<T, double>) {
    return one_of({f2, f4, f8});
  } else {  // bf16_t: the bit patterns, under either name NumPy gives two-byte data
    return one_of({u2, v2});
  }
}

namespace detail {

inline constexpr unsigned char npy_magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

inline std::string shape_string(std::vector<std::int64_t> const& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    s += std::to_string(shape[i]);
    s += shape.size() == 1 ? "," : (i + 1 < shape.size() ? ", " : "");
  }
  return s + ")";
}

// Bytes of `shape` elements of `size` bytes each; false on a negative extent or overflow.
inline bool data_bytes(std::vector<std::int64_t> const& shape, int size, std::int64_t& bytes) {
  std::int64_t n = size;
  for (std::int64_t d : shape) {
    if (d < 0) {
      return false;
    }
    if (d != 0 && n > std::numeric_limits<std::int64_t>::max() / d) {
      return false;
    }
    n *= d;
  }
  bytes = n;
  return true;
}

// Parser of the header dict: the subset of Python literal syntax np.save writes.
class NpyHeaderParser {
 public:
  NpyHeaderParser(std::string_view text, std::string_view name) : text_(text), name_(name) {}

  Status parse(NpyArray& out) {
    bool have_descr = false, have_order = false, have_shape = false;
    std::string descr_text;
    bool fortran = false;
    std::vector<std::int64_t> shape;
    skip_space();
    if (!eat('{')) {
      return fail("the header is not a Python dict ('{' expected)");
    }
    for (;;) {
      skip_space();
      if (eat('}')) {
        break;
      }
      std::string key;
      if (!string_literal(key)) {
        return fail("a quoted key expected in the header dict");
      }
      skip_space();
      if (!eat(':')) {
        return fail("':' expected after key '" + key + "'");
      }
      skip_space();
      if (key == "descr") {
        if (have_descr) {
          return fail("key 'descr' appears twice");
        }
        have_descr = true;
        if (peek() == '[') {
          return refuse("unsupported dtype: structured dtypes (a list 'descr') are not supported");
        }
        if (!string_literal(descr_text)) {
          return fail("'descr' must be a quoted dtype string such as '<f4'");
        }
      } else if (key == "fortran_order") {
        if (have_order) {
          return fail("key 'fortran_order' appears twice");
        }
        have_order = true;
        if (word("True")) {
          fortran = true;
        } else if (!word("False")) {
          return fail("'fortran_order' must be True or False");
        }
      } else if (key == "shape") {
        if (have_shape) {
          return fail("key 'shape' appears twice");
        }
        have_shape = true;
        if (Status s = tuple(shape); !s) {
          return s;
        }
      } else {
        return fail("unexpected key '" + key + "' (only 'descr', 'fortran_order' and 'shape' are allowed)");
      }
      skip_space();
      if (eat(',')) {
        continue;
      }
      skip_space();
      if (eat('}')) {
        break;
      }
      return fail("',' or '}' expected in the header dict");
    }
    skip_space();
    if (pos_ != text_.size()) {
      return fail("unexpected text after the header dict");
    }
    if (!have_descr || !have_order || !have_shape) {
      return fail(std::string("the header lacks key '") +
                  (!have_descr ? "descr" : (!have_order ? "fortran_order" : "shape")) + "'");
    }
    if (fortran) {
      return refuse("fortran_order is True: only C-order arrays are supported (save np.ascontiguousarray(a))");
    }
    NpyType type{};
    if (Status s = dtype(descr_text, type); !s) {
      return s;
    }
    out.type = type;
    out.shape = std::move(shape);
    return Status::ok;
  }

 private:
  Status fail(std::string const& what) { return refuse("malformed header: " + what); }
  Status refuse(std::string const& what) {
    return error(Status::invalid_argument, "npy file '%.*s': %s", static_cast<int>(name_.size()), name_.data(),
                 what.c_str());
  }

  [[nodiscard]] char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  bool eat(char c) {
    if (peek() == c && pos_ < text_.size()) {
      ++pos_;
      return true;
    }
    return false;
  }
  void skip_space() {
    while (pos_ < text_.size() &&
           (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool word(std::string_view w) {
    if (text_.substr(pos_, w.size()) != w) {
      return false;
    }
    pos_ += w.size();
    return true;
  }
  bool string_literal(std::string& out) {
    char const quote = peek();
    if (quote != '\'' && quote != '"') {
      return false;
    }
    ++pos_;
    out.clear();
    while (pos_ < text_.size() && text_[pos_] != quote) {
      if (text_[pos_] == '\\') {  // dtype strings have no escapes; refuse rather than guess
        return false;
      }
      out += text_[pos_++];
    }
    return eat(quote);
  }
  Status tuple(std::vector<std::int64_t>& shape) {
    if (!eat('(')) {
      return fail("'shape' must be a tuple such as (2, 3)");
    }
    for (;;) {
      skip_space();
      if (eat(')')) {
        return Status::ok;
      }
      std::int64_t v = 0;
      std::size_t const start = pos_;
      while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') {
        int const digit = text_[pos_++] - '0';
        if (v > (std::numeric_limits<std::int64_t>::max() - digit) / 10) {
          return fail("a 'shape' extent does not fit in 64 bits");
        }
        v = v * 10 + digit;
      }
      if (pos_ == start) {
        return fail("'shape' must hold non-negative integers");
      }
      eat('L');  // Python 2 long literals, as old NumPy wrote them
      shape.push_back(v);
      skip_space();
      if (eat(',')) {
        continue;
      }
      if (eat(')')) {
        return Status::ok;
      }
      return fail("',' or ')' expected in 'shape'");
    }
  }
  Status dtype(std::string const& d, NpyType& type) {
    auto unsupported = [&](char const* why) {
      return error(Status::invalid_argument, "npy file '%.*s': unsupported dtype '%s'%s",
                   static_cast<int>(name_.size()), name_.data(), d.c_str(), why);
    };
    if (d.size() < 3) {
      return unsupported("");
    }
    char const order = d[0];
    std::string_view const code(d.data() + 1, d.size() - 1);
    struct Code {
      char const* code;
      NpyType type;
    };
    static constexpr Code codes[] = {{"b1", NpyType::b1}, {"i1", NpyType::i1}, {"u1", NpyType::u1}, {"i2", NpyType::i2},
                                     {"u2", NpyType::u2}, {"i4", NpyType::i4}, {"u4", NpyType::u4}, {"i8", NpyType::i8},
                                     {"u8", NpyType::u8}, {"f2", NpyType::f2}, {"f4", NpyType::f4}, {"f8", NpyType::f8},
                                     {"V2", NpyType::v2}};
    for (Code const& c : codes) {
      if (code != c.code) {
        continue;
      }
      bool const single_byte = item_size(c.type) == 1;
      if (order == '>' && !single_byte) {
        return unsupported(": big-endian data; save it little-endian (a.astype(a.dtype.newbyteorder('<')))");
      }
      if (order == '|' && !single_byte && c.type != NpyType::v2) {
        return unsupported(": a multi-byte type needs a byte order ('<')");
      }
      if (order != '<' && order != '|' && order != '>' && order != '=') {
        return unsupported(": unknown byte order");
      }
      type = c.type;
      return Status::ok;
    }
    return unsupported(" (supported: b1 i1 u1 i2 u2 i4 u4 i8 u8 f2 f4 f8 V2, little-endian)");
  }

  std::string_view text_;
  std::string_view name_;
  std::size_t pos_ = 0;
};

inline std::uint32_t read_le(std::byte const* p, int bytes) {
  std::uint32_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) {
    v = (v << 8) | std::to_integer<std::uint32_t>(p[i]);
  }
  return v;
}

}  // namespace detail

// Parses a whole .npy file held in memory. `name` (a path, usually) goes into messages.
[[nodiscard]] inline Status parse_npy(std::span<std::byte const> bytes, NpyArray& out,
                                      std::string_view name = "<memory>") {
  int const n = static_cast<int>(name.size());
  char const* const nm = name.data();
  if (bytes.size() < 6 || std::memcmp(bytes.data(), detail::npy_magic, 6) != 0) {
    return error(Status::invalid_argument, "npy file '%.*s': not a .npy file (the magic \\x93NUMPY is missing)", n, nm);
  }
  if (bytes.size() < 8) {
    return error(Status::invalid_argument, "npy file '%.*s': truncated header (no version)", n, nm);
  }
  int const major = std::to_integer<int>(bytes[6]);
  int const minor = std::to_integer<int>(bytes[7]);
  if (major < 1 || major > 3 || minor != 0) {
    return error(Status::invalid_argument, "npy file '%.*s': unsupported format version %d.%d (1.0, 2.0, 3.0 are)", n,
                 nm, major, minor);
  }
  std::size_t const length_bytes = major == 1 ? 2 : 4;
  if (bytes.size() < 8 + length_bytes) {
    return error(Status::invalid_argument, "npy file '%.*s': truncated header (no header length)", n, nm);
  }
  std::size_t const header_length = detail::read_le(bytes.data() + 8, static_cast<int>(length_bytes));
  std::size_t const data_offset = 8 + length_bytes + header_length;
  if (bytes.size() < data_offset) {
    return error(Status::invalid_argument,
                 "npy file '%.*s': truncated header (the header says %zu bytes, the file has %zu after the preamble)",
                 n, nm, header_length, bytes.size() - 8 - length_bytes);
  }
  std::string_view const header(reinterpret_cast<char const*>(bytes.data()) + 8 + length_bytes, header_length);
  NpyArray parsed;
  if (Status s = detail::NpyHeaderParser(header, name).parse(parsed); !s) {
    return s;
  }
  std::int64_t expected = 0;
  if (!detail::data_bytes(parsed.shape, item_size(parsed.type), expected) ||
      static_cast<std::uint64_t>(expected) > std::numeric_limits<std::size_t>::max()) {
    return error(Status::invalid_argument, "npy file '%.*s': shape %s is too large", n, nm,
                 detail::shape_string(parsed.shape).c_str());
  }
  std::size_t const available = bytes.size() - data_offset;
  if (available < static_cast<std::size_t>(expected)) {
    return error(Status::invalid_argument,
                 "npy file '%.*s': truncated data: shape %s of %s needs %lld bytes, the file has %zu", n, nm,
                 detail::shape_string(parsed.shape).c_str(), to_string(parsed.type), static_cast<long long>(expected),
                 available);
  }
  if (available > static_cast<std::size_t>(expected)) {
    return error(Status::invalid_argument,
                 "npy file '%.*s': %zu bytes after the data: the header's shape %s of %s accounts for %lld bytes", n,
                 nm, available - static_cast<std::size_t>(expected), detail::shape_string(parsed.shape).c_str(),
                 to_string(parsed.type), static_cast<long long>(expected));
  }
  parsed.data.assign(bytes.begin() + static_cast<std::ptrdiff_t>(data_offset), bytes.end());
  out = std::move(parsed);
  return Status::ok;
}

// Reads `path` into `out` (untouched on failure).
[[nodiscard]] inline Status read_npy(std::filesystem::path const& path, NpyArray& out) {
  std::vector<std::byte> bytes;
  if (Status s = read_file(path, "npy file", bytes); !s) {
    return s;
  }
  return parse_npy(bytes, out, path.string());
}

// The file image of `a`: version 1.0 header (2.0 when it would not fit), preamble padded with
// spaces to a multiple of 64 bytes. invalid_argument when a.data does not hold a.size() elements.
[[nodiscard]] inline Status encode_npy(NpyArray const& a, std::vector<std::byte>& out,
                                       std::string_view name = "<memory>") {
  std::int64_t bytes = 0;
  if (!detail::data_bytes(a.shape, item_size(a.type), bytes) || static_cast<std::uint64_t>(bytes) != a.data.size()) {
    return error(Status::invalid_argument, "npy file '%.*s': shape %s of %s needs %lld bytes of data, got %zu",
                 static_cast<int>(name.size()), name.data(), detail::shape_string(a.shape).c_str(), to_string(a.type),
                 static_cast<long long>(bytes), a.data.size());
  }
  std::string dict = "{'descr': '";
  dict += descr(a.type);
  dict += "', 'fortran_order': False, 'shape': ";
  dict += detail::shape_string(a.shape);
  dict += ", }";
  std::size_t length_bytes = 2;
  std::size_t total = 8 + length_bytes + dict.size() + 1;  // + the final '\n'
  if ((total + 63) / 64 * 64 - 8 - length_bytes > 0xFFFF) {
    length_bytes = 4;
    total = 8 + length_bytes + dict.size() + 1;
  }
  std::size_t const padded = (total + 63) / 64 * 64;
  dict.append(padded - total, ' ');
  dict += '\n';
  std::size_t const header_length = dict.size();
  out.clear();
  out.reserve(padded + a.data.size());
  for (unsigned char c : detail::npy_magic) {
    out.push_back(std::byte{c});
  }
  out.push_back(std::byte{static_cast<unsigned char>(length_bytes == 2 ? 1 : 2)});
  out.push_back(std::byte{0});
  for (std::size_t i = 0; i < length_bytes; ++i) {
    out.push_back(std::byte{static_cast<unsigned char>((header_length >> (8 * i)) & 0xFFu)});
  }
  for (char c : dict) {
    out.push_back(std::byte{static_cast<unsigned char>(c)});
  }
  out.insert(out.end(), a.data.begin(), a.data.end());
  return Status::ok;
}

[[nodiscard]] inline Status write_npy(std::filesystem::path const& path, NpyArray const& a) {
  std::vector<std::byte> bytes;
  if (Status s = encode_npy(a, bytes, path.string()); !s) {
    return s;
  }
  return write_file_atomically(path, bytes, "npy file");
}

// The elements of `a` as T, where every value converts exactly (converts_exactly<T>).
template <NpyElement T>
[[nodiscard]] Status to_vector(NpyArray const& a, std::vector<T>& values, std::string_view name = "<memory>") {
  if (!converts_exactly<T>(a.type)) {
    return error(Status::invalid_argument,
                 "npy file '%.*s': dtype %s ('%s') cannot be read as %s without changing values; convert it in NumPy "
                 "(e.g. a.astype(np.%s))",
                 static_cast<int>(name.size()), name.data(), to_string(a.type), descr(a.type),
                 to_string(NpyTypeOf<T>::value), to_string(NpyTypeOf<T>::value));
  }
  std::int64_t bytes = 0;
  if (!detail::data_bytes(a.shape, item_size(a.type), bytes) || static_cast<std::uint64_t>(bytes) != a.data.size()) {
    return error(Status::invalid_argument, "npy array '%.*s': shape %s does not match its %zu data bytes",
                 static_cast<int>(name.size()), name.data(), detail::shape_string(a.shape).c_str(), a.data.size());
  }
  auto const n = static_cast<std::size_t>(a.size());
  std::vector<T> v(n);
  auto const load = [&a]<class S>(std::size_t i, S) {
    S s;
    std::memcpy(&s, a.data.data() + i * sizeof(S), sizeof(S));
    return s;
  };
  for (std::size_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<T, bf16_t>) {
      v[i] = bf16_t::from_bits(load(i, std::uint16_t{}));
    } else if constexpr (std::is_same_v<T, fp16_t>) {
      v[i] = fp16_t::from_bits(load(i, std::uint16_t{}));
    } else if constexpr (std::is_same_v<T, bool>) {
      v[i] = load(i, std::uint8_t{}) != 0;
    } else {
      switch (a.type) {
        case NpyType::i1: v[i] = static_cast<T>(load(i, std::int8_t{})); break;
        case NpyType::u1: v[i] = static_cast<T>(load(i, std::uint8_t{})); break;
        case NpyType::i2: v[i] = static_cast<T>(load(i, std::int16_t{})); break;
        case NpyType::u2: v[i] = static_cast<T>(load(i, std::uint16_t{})); break;
        case NpyType::i4: v[i] = static_cast<T>(load(i, std::int32_t{})); break;
        case NpyType::u4: v[i] = static_cast<T>(load(i, std::uint32_t{})); break;
        case NpyType::i8: v[i] = static_cast<T>(load(i, std::int64_t{})); break;
        case NpyType::u8: v[i] = static_cast<T>(load(i, std::uint64_t{})); break;
        case NpyType::f2: v[i] = static_cast<T>(fp16_t::from_bits(load(i, std::uint16_t{})).to_float()); break;
        case NpyType::f4: v[i] = static_cast<T>(load(i, float{})); break;
        case NpyType::f8: v[i] = static_cast<T>(load(i, double{})); break;
        case NpyType::b1:
        case NpyType::v2: break;  // excluded by converts_exactly
      }
    }
  }
  values = std::move(v);
  return Status::ok;
}

// Reads `path` as T elements (converting only where exact) and its shape. Outputs untouched on failure.
template <NpyElement T>
[[nodiscard]] Status read_npy(std::filesystem::path const& path, std::vector<T>& values,
                              std::vector<std::int64_t>& shape) {
  NpyArray a;
  if (Status s = read_npy(path, a); !s) {
    return s;
  }
  std::vector<T> v;
  if (Status s = to_vector(a, v, path.string()); !s) {
    return s;
  }
  values = std::move(v);
  shape = std::move(a.shape);
  return Status::ok;
}

// An NpyArray holding a copy of `data` (shape's product elements) as T's type.
template <NpyElement T>
[[nodiscard]] NpyArray make_npy_array(T const* data, std::vector<std::int64_t> shape) {
  NpyArray a;
  a.type = NpyTypeOf<T>::value;
  a.shape = std::move(shape);
  std::int64_t bytes = 0;
  if (detail::data_bytes(a.shape, static_cast<int>(sizeof(T)), bytes) && bytes > 0) {
    a.data.resize(static_cast<std::size_t>(bytes));
    if constexpr (std::is_same_v<T, bool>) {
      for (std::size_t i = 0; i < a.data.size(); ++i) {
        a.data[i] = std::byte{static_cast<unsigned char>(data[i] ? 1 : 0)};
      }
    } else {
      std::memcpy(a.data.data(), data, static_cast<std::size_t>(bytes));
    }
  }
  return a;
}

// Writes `shape`'s product elements of `data` to `path` (atomically, see write_file_atomically).
template <NpyElement T>
[[nodiscard]] Status write_npy(std::filesystem::path const& path, T const* data, std::vector<std::int64_t> shape) {
  std::int64_t bytes = 0;
  if (!detail::data_bytes(shape, static_cast<int>(sizeof(T)), bytes)) {
    return error(Status::invalid_argument, "npy file '%s': invalid shape %s", path.string().c_str(),
                 detail::shape_string(shape).c_str());
  }
  if (data == nullptr && bytes != 0) {
    return error(Status::invalid_argument, "npy file '%s': null data for shape %s", path.string().c_str(),
                 detail::shape_string(shape).c_str());
  }
  return write_npy(path, make_npy_array(data, std::move(shape)));
}

}  // namespace io
MOEKIT_NAMESPACE_END
