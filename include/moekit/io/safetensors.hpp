#pragma once
// Hugging Face .safetensors files: read and write, host only; needs nlohmann-json (Debian:
// nlohmann-json3-dev; CMake: find_package(nlohmann_json) and link nlohmann_json::nlohmann_json).
//
// Format: an 8-byte little-endian unsigned header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value", ...}}            (the metadata entry is optional)
// then the data buffer; offsets are relative to the buffer's start, data is C order, little-endian.
//
// Reading checks everything the format promises, so a corrupt file is refused with a message
// naming the file (and the tensor) rather than read as garbage: the header length fits the file
// and the 100,000,000-byte limit, the header is a JSON object without duplicate names, each entry
// has a known dtype, a shape of non-negative extents and offsets begin <= end whose length is the
// shape's product times the dtype's size, the offsets lie inside the buffer, and the tensors cover
// the buffer exactly: no overlap, no gap, nothing after the last tensor. All of these are
// Status::invalid_argument; a file that cannot be opened or read is Status::io_error.
//
// Typed access converts only where every value converts exactly: a narrower integer to a wider
// one, F16/BF16/F8 to float32 or float64, F32 to float64. F32 is NOT read as bf16_t or fp16_t (it
// would round); round explicitly with bf16_t(x) so that the rounding is visible.
//
// Writing lays tensors out in name order, contiguous, the header padded with spaces to a multiple
// of 8 bytes (so the buffer starts 8-aligned), through a temporary file renamed over the target:
// a failure leaves no partial file and the target as it was.

#include <algorithm>
#include <bit>
#include <cstdarg>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <map>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/float16.hpp"
#include "moekit/core/float8.hpp"
#include "moekit/core/status.hpp"
#include "moekit/io/file.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace io {

static_assert(std::endian::native == std::endian::little,
              "moekit/io/safetensors.hpp copies little-endian file data straight into memory: it needs a "
              "little-endian host");

// The element types of the safetensors format that moekit reads and writes.
enum class SafetensorsDtype : std::uint8_t {
  boolean,
  i8,
  u8,
  i16,
  u16,
  i32,
  u32,
  i64,
  u64,
  f16,
  bf16,
  f32,
  f64,
  f8_e4m3,
  f8_e5m2
};

[[nodiscard]] constexpr int item_size(SafetensorsDtype t) noexcept {
  switch (t) {
    case SafetensorsDtype::boolean:
    case SafetensorsDtype::i8:
    case SafetensorsDtype::u8:
    case SafetensorsDtype::f8_e4m3:
    case SafetensorsDtype::f8_e5m2: return 1;
    case SafetensorsDtype::i16:
    case SafetensorsDtype::u16:
    case SafetensorsDtype::f16:
    case SafetensorsDtype::bf16: return 2;
    case SafetensorsDtype::i32:
    case SafetensorsDtype::u32:
    case SafetensorsDtype::f32: return 4;
    case SafetensorsDtype::i64:
    case SafetensorsDtype::u64:
    case SafetensorsDtype::f64: return 8;
  }
  return 0;
}

// The dtype string of the header ("F32", "BF16", ...).
[[nodiscard]] constexpr char const* to_string(SafetensorsDtype t) noexcept {
  switch (t) {
    case SafetensorsDtype::boolean: return "BOOL";
    case SafetensorsDtype::i8: return "I8";
    case SafetensorsDtype::u8: return "U8";
    case SafetensorsDtype::i16: return "I16";
    case SafetensorsDtype::u16: return "U16";
    case SafetensorsDtype::i32: return "I32";
    case SafetensorsDtype::u32: return "U32";
    case SafetensorsDtype::i64: return "I64";
    case SafetensorsDtype::u64: return "U64";
    case SafetensorsDtype::f16: return "F16";
    case SafetensorsDtype::bf16: return "BF16";
    case SafetensorsDtype::f32: return "F32";
    case SafetensorsDtype::f64: return "F64";
    case SafetensorsDtype::f8_e4m3: return "F8_E4M3";
    case SafetensorsDtype::f8_e5m2: return "F8_E5M2";
  }
  return "?";
}

inline constexpr SafetensorsDtype safetensors_dtypes[] = {
    SafetensorsDtype::boolean, SafetensorsDtype::i8,      SafetensorsDtype::u8,     SafetensorsDtype::i16,
    SafetensorsDtype::u16,     SafetensorsDtype::i32,     SafetensorsDtype::u32,    SafetensorsDtype::i64,
    SafetensorsDtype::u64,     SafetensorsDtype::f16,     SafetensorsDtype::bf16,   SafetensorsDtype::f32,
    SafetensorsDtype::f64,     SafetensorsDtype::f8_e4m3, SafetensorsDtype::f8_e5m2};

// The dtype named `s`; false when no dtype has that name.
[[nodiscard]] inline bool parse_safetensors_dtype(std::string_view s, SafetensorsDtype& out) noexcept {
  for (SafetensorsDtype t : safetensors_dtypes) {
    if (s == to_string(t)) {
      out = t;
      return true;
    }
  }
  return false;
}

// The header's upper bound on N (the reference implementation's limit), refusing absurd lengths
// before allocating.
inline constexpr std::uint64_t safetensors_max_header_bytes = 100'000'000;

// One tensor to write: C order, little-endian bytes.
struct SafetensorsTensor {
  SafetensorsDtype dtype = SafetensorsDtype::f32;
  std::vector<std::int64_t> shape;  // empty: a 0-d tensor (one element)
  std::vector<std::byte> data;
};

// One tensor of a read file: where its bytes lie in SafetensorsFile::buffer.
struct SafetensorsEntry {
  SafetensorsDtype dtype = SafetensorsDtype::f32;
  std::vector<std::int64_t> shape;
  std::int64_t begin = 0;  // byte offsets into the buffer, [begin, end)
  std::int64_t end = 0;

  // Elements: the product of the shape (1 for a 0-d tensor).
  [[nodiscard]] std::int64_t size() const noexcept {
    std::int64_t n = 1;
    for (std::int64_t d : shape) {
      n *= d;
    }
    return n;
  }
};

// A read .safetensors file: the validated header and the whole data buffer.
struct SafetensorsFile {
  std::string source;                               // the path, for messages
  std::map<std::string, SafetensorsEntry> tensors;  // by name
  std::map<std::string, std::string> metadata;      // "__metadata__", empty when absent
  std::vector<std::byte> buffer;                    // the bytes after the header

  [[nodiscard]] bool contains(std::string_view name) const { return tensors.find(std::string(name)) != tensors.end(); }

  // The entry called `name`; invalid_argument "tensor 'x' not found in 'file'" when absent.
  [[nodiscard]] Status find(std::string_view name, SafetensorsEntry const*& out) const {
    auto const it = tensors.find(std::string(name));
    if (it == tensors.end()) {
      return error(Status::invalid_argument, "tensor '%.*s' not found in '%s' (it holds %zu tensors)",
                   static_cast<int>(name.size()), name.data(), source.c_str(), tensors.size());
    }
    out = &it->second;
    return Status::ok;
  }

  // The raw bytes of an entry of this file.
  [[nodiscard]] std::span<std::byte const> bytes(SafetensorsEntry const& e) const {
    return std::span<std::byte const>(buffer).subspan(static_cast<std::size_t>(e.begin),
                                                      static_cast<std::size_t>(e.end - e.begin));
  }
};

// The dtype of each C++ element type.
template <class T>
struct SafetensorsTypeOf {
  static constexpr bool known = false;
};
namespace detail {
template <SafetensorsDtype Type>
struct SafetensorsKnown {
  static constexpr bool known = true;
  static constexpr SafetensorsDtype value = Type;
};
}  // namespace detail
template <>
struct SafetensorsTypeOf<bool> : detail::SafetensorsKnown<SafetensorsDtype::boolean> {};
template <>
struct SafetensorsTypeOf<std::int8_t> : detail::SafetensorsKnown<SafetensorsDtype::i8> {};
template <>
struct SafetensorsTypeOf<std::uint8_t> : detail::SafetensorsKnown<SafetensorsDtype::u8> {};
template <>
struct SafetensorsTypeOf<std::int16_t> : detail::SafetensorsKnown<SafetensorsDtype::i16> {};
template <>
struct SafetensorsTypeOf<std::uint16_t> : detail::SafetensorsKnown<SafetensorsDtype::u16> {};
template <>
struct SafetensorsTypeOf<std::int32_t> : detail::SafetensorsKnown<SafetensorsDtype::i32> {};
template <>
struct SafetensorsTypeOf<std::uint32_t> : detail::SafetensorsKnown<SafetensorsDtype::u32> {};
template <>
struct SafetensorsTypeOf<std::int64_t> : detail::SafetensorsKnown<SafetensorsDtype::i64> {};
template <>
struct SafetensorsTypeOf<std::uint64_t> : detail::SafetensorsKnown<SafetensorsDtype::u64> {};
template <>
struct SafetensorsTypeOf<fp16_t> : detail::SafetensorsKnown<SafetensorsDtype::f16> {};
template <>
struct SafetensorsTypeOf<bf16_t> : detail::SafetensorsKnown<SafetensorsDtype::bf16> {};
template <>
struct SafetensorsTypeOf<float> : detail::SafetensorsKnown<SafetensorsDtype::f32> {};
template <>
struct SafetensorsTypeOf<double> : detail::SafetensorsKnown<SafetensorsDtype::f64> {};
template <>
struct SafetensorsTypeOf<fp8_e4m3_t> : detail::SafetensorsKnown<SafetensorsDtype::f8_e4m3> {};
template <>
struct SafetensorsTypeOf<fp8_e5m2_t> : detail::SafetensorsKnown<SafetensorsDtype::f8_e5m2> {};

// A C++ type a safetensors element can be read into and written from.
template <class T>
concept SafetensorsElement = SafetensorsTypeOf<T>::known;

// Can every value of a `from` tensor be read as T exactly? (See the header comment.)
template <SafetensorsElement T>
[[nodiscard]] constexpr bool converts_exactly(SafetensorsDtype from) noexcept {
  using enum SafetensorsDtype;
  auto const one_of = [from](std::initializer_list<SafetensorsDtype> types) {
    return std::find(types.begin(), types.end(), from) != types.end();
  };
  if constexpr (std::is_same_v<T, std::int16_t>) {
    return one_of({i8, u8, i16});
  } else if constexpr (std::is_same_v<T, std::uint16_t>) {
    return one_of({u8, u16});
  } else if constexpr (std::is_same_v<T, std::int32_t>) {
    return one_of({i8, u8, i16, u16, i32});
  } else if constexpr (std::is_same_v<T, std::uint32_t>) {
    return one_of({u8, u16, u32});
  } else if constexpr (std::is_same_v<T, std::int64_t>) {
    return one_of({i8, u8, i16, u16, i32, u32, i64});
  } else if constexpr (std::is_same_v<T, std::uint64_t>) {
    return one_of({u8, u16, u32, u64});
  } else if constexpr (std::is_same_v<T, float>) {  // every 8/16-bit float is a float exactly
    return one_of({f8_e4m3, f8_e5m2, f16, bf16, f32});
  } else if constexpr (std::is_same_v<T, double>) {
    return one_of({f8_e4m3, f8_e5m2, f16, bf16, f32, f64});
  } else {  // bool, int8, uint8, fp16_t, bf16_t and the fp8 types: their own dtype only
    return from == SafetensorsTypeOf<T>::value;
  }
}

namespace detail {

inline std::string st_shape_string(std::vector<std::int64_t> const& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    s += (i > 0 ? ", " : "") + std::to_string(shape[i]);
  }
  return s + "]";
}

// Bytes of `shape` elements of `size` bytes each; false on a negative extent or overflow.
inline bool st_data_bytes(std::vector<std::int64_t> const& shape, int size, std::int64_t& bytes) {
  std::int64_t n = size;
  for (std::int64_t d : shape) {
    if (d < 0 || (d != 0 && n > std::numeric_limits<std::int64_t>::max() / d)) {
      return false;
    }
    n *= d;
  }
  bytes = n;
  return true;
}

// An invalid_argument error about the file `name`, prefixed as every message of this header is.
#if defined(__GNUC__)
__attribute__((format(printf, 2, 3)))
#endif
inline Status
st_fail(std::string_view name, char const* format, ...) noexcept {
  char what[768];
  std::va_list args;
  va_start(args, format);
  std::vsnprintf(what, sizeof what, format, args);
  va_end(args);
  return error(Status::invalid_argument, "safetensors file '%.*s': %s", static_cast<int>(name.size()), name.data(),
               what);
}

// Reads one header entry (everything but the coverage check, which needs all of them).
inline Status parse_safetensors_entry(std::string_view file, std::string const& tensor, nlohmann::json const& j,
                                      std::uint64_t buffer_size, SafetensorsEntry& out) {
  char const* const t = tensor.c_str();
  if (!j.is_object()) {
    return st_fail(file, "tensor '%s': the header entry is not a JSON object", t);
  }
  for (auto const& [key, value] : j.items()) {
    (void)value;
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return st_fail(file, "tensor '%s': unexpected key '%s' (only dtype, shape, data_offsets)", t, key.c_str());
    }
  }
  auto const dtype = j.find("dtype");
  if (dtype == j.end() || !dtype->is_string()) {
    return st_fail(file, "tensor '%s': missing or non-string \"dtype\"", t);
  }
  std::string const dtype_text = dtype->get<std::string>();
  if (!parse_safetensors_dtype(dtype_text, out.dtype)) {
    return st_fail(file,
                   "tensor '%s': unknown dtype '%s' (supported: BOOL I8 U8 I16 U16 I32 U32 I64 U64 F16 BF16 F32 F64 "
                   "F8_E4M3 F8_E5M2)",
                   t, dtype_text.c_str());
  }
  auto const shape = j.find("shape");
  if (shape == j.end() || !shape->is_array()) {
    return st_fail(file, "tensor '%s': missing or non-array \"shape\"", t);
  }
  out.shape.clear();
  for (auto const& d : *shape) {
    if (!d.is_number_unsigned() ||
        d.get<std::uint64_t>() > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
      return st_fail(file, "tensor '%s': \"shape\" must hold non-negative 64-bit integers, got %s", t,
                     shape->dump().c_str());
    }
    out.shape.push_back(static_cast<std::int64_t>(d.get<std::uint64_t>()));
  }
  auto const offsets = j.find("data_offsets");
  if (offsets == j.end() || !offsets->is_array() || offsets->size() != 2 || !(*offsets)[0].is_number_unsigned() ||
      !(*offsets)[1].is_number_unsigned()) {
    return st_fail(file, "tensor '%s': \"data_offsets\" must be [begin, end] of non-negative integers", t);
  }
  std::uint64_t const begin = (*offsets)[0].get<std::uint64_t>();
  std::uint64_t const end = (*offsets)[1].get<std::uint64_t>();
  if (end < begin) {
    return st_fail(file, "tensor '%s': data_offsets [%llu, %llu) end before they begin", t,
                   static_cast<unsigned long long>(begin), static_cast<unsigned long long>(end));
  }
  if (end > buffer_size) {
    return st_fail(file,
                   "tensor '%s': data_offsets [%llu, %llu) run past the end of the data buffer (%llu bytes): the file "
                   "is truncated or the offsets are wrong",
                   t, static_cast<unsigned long long>(begin), static_cast<unsigned long long>(end),
                   static_cast<unsigned long long>(buffer_size));
  }
  std::int64_t bytes = 0;
  if (!st_data_bytes(out.shape, item_size(out.dtype), bytes)) {
    return st_fail(file, "tensor '%s': shape %s is too large", t, st_shape_string(out.shape).c_str());
  }
  if (static_cast<std::uint64_t>(bytes) != end - begin) {
    return st_fail(file, "tensor '%s': shape %s of %s needs %lld bytes, but data_offsets [%llu, %llu) hold %llu", t,
                   st_shape_string(out.shape).c_str(), to_string(out.dtype), static_cast<long long>(bytes),
                   static_cast<unsigned long long>(begin), static_cast<unsigned long long>(end),
                   static_cast<unsigned long long>(end - begin));
  }
  out.begin = static_cast<std::int64_t>(begin);
  out.end = static_cast<std::int64_t>(end);
  return Status::ok;
}

}  // namespace detail

// Parses a whole .safetensors file held in memory. `name` (a path, usually) goes into messages.
// `out` is untouched on failure.
[[nodiscard]] inline Status parse_safetensors(std::span<std::byte const> bytes, SafetensorsFile& out,
                                              std::string_view name = "<memory>") {
  using detail::st_fail;
  if (bytes.size() < 8) {
    return st_fail(name, "truncated file: %zu bytes, too short for the 8-byte header length", bytes.size());
  }
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) {
    n = (n << 8) | std::to_integer<std::uint64_t>(bytes[static_cast<std::size_t>(i)]);
  }
  if (n > safetensors_max_header_bytes) {
    return st_fail(name, "header length %llu exceeds the limit of %llu bytes", static_cast<unsigned long long>(n),
                   static_cast<unsigned long long>(safetensors_max_header_bytes));
  }
  if (n > bytes.size() - 8) {
    return st_fail(name, "truncated header: the header length is %llu bytes, the file has %zu after it",
                   static_cast<unsigned long long>(n), bytes.size() - 8);
  }
  auto const text = std::string_view(reinterpret_cast<char const*>(bytes.data()) + 8, static_cast<std::size_t>(n));
  std::uint64_t const buffer_size = bytes.size() - 8 - n;

  // nlohmann-json keeps the last of duplicate keys silently: watch the top-level keys go by.
  std::set<std::string> seen;
  std::string duplicate;
  auto const watch = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    if (depth == 1 && event == nlohmann::json::parse_event_t::key && duplicate.empty()) {
      std::string key = parsed.get<std::string>();
      if (!seen.insert(key).second) {
        duplicate = std::move(key);
      }
    }
    return true;
  };
  nlohmann::json header;
#if defined(__cpp_exceptions)
  try {
    header = nlohmann::json::parse(text.begin(), text.end(), watch);
  } catch (nlohmann::json::exception const& e) {  // the I/O edge: nlohmann-json throws, moekit returns a Status
    return st_fail(name, "malformed JSON header: %s", e.what());
  }
#else
  header = nlohmann::json::parse(text.begin(), text.end(), watch, false);
  if (header.is_discarded()) {
    return st_fail(name, "malformed JSON header");
  }
#endif
  if (!header.is_object()) {
    return st_fail(name, "the header is not a JSON object");
  }
  if (!duplicate.empty()) {
    return st_fail(name, "name '%s' appears twice in the header", duplicate.c_str());
  }

  SafetensorsFile parsed;
  parsed.source = std::string(name);
  for (auto const& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) {
        return st_fail(name, "\"__metadata__\" is not a JSON object");
      }
      for (auto const& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string()) {
          return st_fail(name, "\"__metadata__\" value of '%s' is not a string", mkey.c_str());
        }
        parsed.metadata.emplace(mkey, mvalue.get<std::string>());
      }
      continue;
    }
    SafetensorsEntry e;
    if (Status s = detail::parse_safetensors_entry(name, key, value, buffer_size, e); !s) {
      return s;
    }
    parsed.tensors.emplace(key, std::move(e));
  }

  // The tensors must tile the buffer: sorted by offset, each begins where the previous ended.
  std::vector<std::pair<SafetensorsEntry const*, std::string const*>> order;
  order.reserve(parsed.tensors.size());
  for (auto const& [key, e] : parsed.tensors) {
    order.emplace_back(&e, &key);
  }
  std::stable_sort(order.begin(), order.end(), [](auto const& a, auto const& b) {
    return a.first->begin != b.first->begin ? a.first->begin < b.first->begin : a.first->end < b.first->end;
  });
  std::int64_t covered = 0;
  std::string const* previous = nullptr;
  for (auto const& [e, key] : order) {
    if (e->begin < covered) {
      return st_fail(name, "tensors '%s' and '%s' overlap: '%s' begins at %lld, before '%s' ends at %lld",
                     previous->c_str(), key->c_str(), key->c_str(), static_cast<long long>(e->begin), previous->c_str(),
                     static_cast<long long>(covered));
    }
    if (e->begin > covered) {
      if (previous == nullptr) {
        return st_fail(name, "gap of %lld bytes at the start of the data buffer, before tensor '%s'",
                       static_cast<long long>(e->begin), key->c_str());
      }
      return st_fail(name, "gap of %lld bytes between tensor '%s' (ends at %lld) and tensor '%s' (begins at %lld)",
                     static_cast<long long>(e->begin - covered), previous->c_str(), static_cast<long long>(covered),
                     key->c_str(), static_cast<long long>(e->begin));
    }
    covered = e->end;
    previous = key;
  }
  if (static_cast<std::uint64_t>(covered) != buffer_size) {
    return st_fail(name, "%llu bytes after the last tensor's data (the tensors cover %lld of %llu buffer bytes)",
                   static_cast<unsigned long long>(buffer_size - static_cast<std::uint64_t>(covered)),
                   static_cast<long long>(covered), static_cast<unsigned long long>(buffer_size));
  }
  parsed.buffer.assign(bytes.begin() + static_cast<std::ptrdiff_t>(8 + n), bytes.end());
  out = std::move(parsed);
  return Status::ok;
}

// Reads `path` into `out` (untouched on failure).
[[nodiscard]] inline Status read_safetensors(std::filesystem::path const& path, SafetensorsFile& out) {
  std::vector<std::byte> bytes;
  if (Status s = read_file(path, "safetensors file", bytes); !s) {
    return s;
  }
  return parse_safetensors(bytes, out, path.string());
}

// The elements of tensor `tensor` of `file` as T, where every value converts exactly
// (converts_exactly<T>), and its shape. Outputs untouched on failure.
template <SafetensorsElement T>
[[nodiscard]] Status read_tensor(SafetensorsFile const& file, std::string_view tensor, std::vector<T>& values,
                                 std::vector<std::int64_t>& shape) {
  SafetensorsEntry const* e = nullptr;
  if (Status s = file.find(tensor, e); !s) {
    return s;
  }
  if (!converts_exactly<T>(e->dtype)) {
    return detail::st_fail(file.source, "tensor '%.*s': dtype %s cannot be read as %s without changing values",
                           static_cast<int>(tensor.size()), tensor.data(), to_string(e->dtype),
                           to_string(SafetensorsTypeOf<T>::value));
  }
  auto const n = static_cast<std::size_t>(e->size());
  std::byte const* const p = file.buffer.data() + e->begin;
  std::vector<T> v(n);
  auto const load = [p]<class S>(std::size_t i, S) {
    S s;
    std::memcpy(&s, p + i * sizeof(S), sizeof(S));
    return s;
  };
  for (std::size_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<T, bool>) {
      v[i] = load(i, std::uint8_t{}) != 0;
    } else if constexpr (!std::is_arithmetic_v<T>) {  // the 8- and 16-bit float types: their own bits
      v[i] = T::from_bits(load(i, decltype(T::bits){}));
    } else {
      using enum SafetensorsDtype;
      switch (e->dtype) {
        case i8: v[i] = static_cast<T>(load(i, std::int8_t{})); break;
        case u8: v[i] = static_cast<T>(load(i, std::uint8_t{})); break;
        case i16: v[i] = static_cast<T>(load(i, std::int16_t{})); break;
        case u16: v[i] = static_cast<T>(load(i, std::uint16_t{})); break;
        case i32: v[i] = static_cast<T>(load(i, std::int32_t{})); break;
        case u32: v[i] = static_cast<T>(load(i, std::uint32_t{})); break;
        case i64: v[i] = static_cast<T>(load(i, std::int64_t{})); break;
        case u64: v[i] = static_cast<T>(load(i, std::uint64_t{})); break;
        case f16: v[i] = static_cast<T>(fp16_t::from_bits(load(i, std::uint16_t{})).to_float()); break;
        case bf16: v[i] = static_cast<T>(bf16_t::from_bits(load(i, std::uint16_t{})).to_float()); break;
        case f8_e4m3: v[i] = static_cast<T>(fp8_e4m3_t::from_bits(load(i, std::uint8_t{})).to_float()); break;
        case f8_e5m2: v[i] = static_cast<T>(fp8_e5m2_t::from_bits(load(i, std::uint8_t{})).to_float()); break;
        case f32: v[i] = static_cast<T>(load(i, float{})); break;
        case f64: v[i] = static_cast<T>(load(i, double{})); break;
        case boolean: break;  // excluded by converts_exactly
      }
    }
  }
  values = std::move(v);
  shape = e->shape;
  return Status::ok;
}

// A view of tensor `tensor` without copying: its dtype must be T's exactly, and its data aligned
// for T in the buffer (Status::misaligned otherwise; read_tensor copies instead). Valid while
// `file` lives and is not modified.
template <SafetensorsElement T>
  requires(!std::is_same_v<T, bool>)
[[nodiscard]] Status tensor_span(SafetensorsFile const& file, std::string_view tensor, std::span<T const>& values,
                                 std::vector<std::int64_t>& shape) {
  SafetensorsEntry const* e = nullptr;
  if (Status s = file.find(tensor, e); !s) {
    return s;
  }
  if (e->dtype != SafetensorsTypeOf<T>::value) {
    return detail::st_fail(file.source, "tensor '%.*s': dtype %s, not %s (tensor_span does not convert)",
                           static_cast<int>(tensor.size()), tensor.data(), to_string(e->dtype),
                           to_string(SafetensorsTypeOf<T>::value));
  }
  std::byte const* const p = file.buffer.data() + e->begin;
  if (reinterpret_cast<std::uintptr_t>(p) % alignof(T) != 0) {
    return error(Status::misaligned,
                 "safetensors file '%s': tensor '%.*s' begins at buffer offset %lld, not aligned for %s",
                 file.source.c_str(), static_cast<int>(tensor.size()), tensor.data(), static_cast<long long>(e->begin),
                 to_string(e->dtype));
  }
  values = std::span<T const>(reinterpret_cast<T const*>(p), static_cast<std::size_t>(e->size()));
  shape = e->shape;
  return Status::ok;
}

// A SafetensorsTensor holding a copy of `data` (shape's product elements) as T's dtype.
template <SafetensorsElement T>
[[nodiscard]] SafetensorsTensor make_safetensors_tensor(T const* data, std::vector<std::int64_t> shape) {
  SafetensorsTensor t;
  t.dtype = SafetensorsTypeOf<T>::value;
  t.shape = std::move(shape);
  std::int64_t bytes = 0;
  if (detail::st_data_bytes(t.shape, static_cast<int>(sizeof(T)), bytes) && bytes > 0) {
    t.data.resize(static_cast<std::size_t>(bytes));
    if constexpr (std::is_same_v<T, bool>) {
      for (std::size_t i = 0; i < t.data.size(); ++i) {
        t.data[i] = std::byte{static_cast<unsigned char>(data[i] ? 1 : 0)};
      }
    } else {
      std::memcpy(t.data.data(), data, static_cast<std::size_t>(bytes));
    }
  }
  return t;
}

// The file image of `tensors` (laid out in name order) and `metadata`. invalid_argument when a
// tensor's data does not hold its shape's bytes, a name is empty or "__metadata__", or a string
// is not valid UTF-8.
[[nodiscard]] inline Status encode_safetensors(std::map<std::string, SafetensorsTensor> const& tensors,
                                               std::map<std::string, std::string> const& metadata,
                                               std::vector<std::byte>& out, std::string_view name = "<memory>") {
  using detail::st_fail;
  nlohmann::json header = nlohmann::json::object();
  std::uint64_t offset = 0;
  for (auto const& [key, t] : tensors) {
    if (key.empty() || key == "__metadata__") {
      return st_fail(name, "invalid tensor name '%s'", key.c_str());
    }
    std::int64_t bytes = 0;
    if (!detail::st_data_bytes(t.shape, item_size(t.dtype), bytes) ||
        static_cast<std::uint64_t>(bytes) != t.data.size()) {
      return st_fail(name, "tensor '%s': shape %s of %s needs %lld bytes of data, got %zu", key.c_str(),
                     detail::st_shape_string(t.shape).c_str(), to_string(t.dtype), static_cast<long long>(bytes),
                     t.data.size());
    }
    header[key] = {{"dtype", to_string(t.dtype)},
                   {"shape", t.shape},
                   {"data_offsets", {offset, offset + static_cast<std::uint64_t>(bytes)}}};
    offset += static_cast<std::uint64_t>(bytes);
  }
  if (!metadata.empty()) {
    header["__metadata__"] = metadata;
  }
  std::string text;
#if defined(__cpp_exceptions)
  try {
    text = header.dump();
  } catch (nlohmann::json::exception const& e) {  // type_error 316: a string that is not UTF-8
    return st_fail(name, "cannot encode the header: %s", e.what());
  }
#else
  text = header.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
#endif
  text.append((8 - text.size() % 8) % 8, ' ');  // the buffer starts 8-aligned
  if (text.size() > safetensors_max_header_bytes) {
    return st_fail(name, "the header would be %zu bytes, over the limit of %llu", text.size(),
                   static_cast<unsigned long long>(safetensors_max_header_bytes));
  }
  std::vector<std::byte> image;
  image.reserve(8 + text.size() + offset);
  for (int i = 0; i < 8; ++i) {
    image.push_back(std::byte{static_cast<unsigned char>((text.size() >> (8 * i)) & 0xFFu)});
  }
  for (char c : text) {
    image.push_back(std::byte{static_cast<unsigned char>(c)});
  }
  for (auto const& [key, t] : tensors) {
    image.insert(image.end(), t.data.begin(), t.data.end());
  }
  out = std::move(image);
  return Status::ok;
}

// Writes `tensors` and `metadata` to `path` (see encode_safetensors), atomically: nothing is
// created or changed on failure.
[[nodiscard]] inline Status write_safetensors(std::filesystem::path const& path,
                                              std::map<std::string, SafetensorsTensor> const& tensors,
                                              std::map<std::string, std::string> const& metadata = {}) {
  std::vector<std::byte> bytes;
  if (Status s = encode_safetensors(tensors, metadata, bytes, path.string()); !s) {
    return s;
  }
  return write_file_atomically(path, bytes, "safetensors file");
}

}  // namespace io
MOEKIT_NAMESPACE_END
