#pragma once
// The MC# bit-allocation file (docs/quantized_experts.md): which bit width each expert of each
// MoE layer is quantised to (ALGORITHMS.md §3.5's allocator writes it, the quantiser reads it).
// Host only; needs nlohmann-json (as io/hf_config.hpp).
//
//   {"format": "moekit-mcsharp-allocation", "version": 1, "group_size": 128,
//    "scheme": "asymmetric", "layers": {"3": [4, 3, 3, 2], "5": [2, 2, 4, 4]},
//    "average_bits": 3.0, "objective": 0.28783677}
//
// Required: format, version (1), group_size (32/64/128), scheme ("asymmetric" | "symmetric"),
// layers (a non-empty object: decimal layer index → non-empty array of bit widths in [1, 8]).
// Optional: average_bits (the budget solved for: each layer's total must be <= floor(avg·E + 1e−9),
// as §3.5's B_tot), objective (a finite number, the allocator's cost). Any other key, a duplicate
// key or layer, a wrong JSON type, or an expert count other than the expected one is an error.
// Errors: invalid_argument naming the source (the file) and the problem; io_error when the file
// cannot be read or written.

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"
#include "moekit/io/file.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace io {

inline constexpr char const* allocation_format = "moekit-mcsharp-allocation";
inline constexpr int allocation_version = 1;

struct BitAllocation {
  int group_size = 128;
  bool symmetric = false;
  std::map<int, std::vector<int>> layers;  // layer index → bit width per expert
  std::optional<double> average_bits;
  std::optional<double> objective;
};

namespace detail {

using AllocJson = nlohmann::json;

// nlohmann-json keeps the last of duplicate keys; the parser callback sees every key first.
struct DuplicateKeyFinder {
  std::vector<std::set<std::string>> objects;
  std::string duplicate;
  bool operator()(int /*depth*/, AllocJson::parse_event_t event, AllocJson& parsed) {
    if (event == AllocJson::parse_event_t::object_start) {
      objects.emplace_back();
    } else if (event == AllocJson::parse_event_t::object_end) {
      if (!objects.empty()) {
        objects.pop_back();
      }
    } else if (event == AllocJson::parse_event_t::key && !objects.empty() && parsed.is_string()) {
      if (!objects.back().insert(parsed.get<std::string>()).second && duplicate.empty()) {
        duplicate = parsed.get<std::string>();
      }
    }
    return true;
  }
};

inline Status allocation_error(std::string_view source, char const* what) {
  return error(Status::invalid_argument, "allocation %.*s: %s", static_cast<int>(source.size()), source.data(), what);
}

// A decimal layer index without sign, in [0, 2^31).
inline bool parse_layer_index(std::string const& key, int& out) {
  if (key.empty() || key.size() > 10) {
    return false;
  }
  long long v = 0;
  for (char c : key) {
    if (c < '0' || c > '9') {
      return false;
    }
    v = v * 10 + (c - '0');
  }
  if (v > 2147483647LL) {
    return false;
  }
  out = static_cast<int>(v);
  return true;
}

// 'path' (appended, not `"'" + s`: GCC 12 warns falsely about that form, -Wrestrict).
inline std::string quoted(std::filesystem::path const& path) {
  std::string s(1, '\'');
  s.append(path.string());
  s.push_back('\'');
  return s;
}

}  // namespace detail

// Reads a parsed allocation into `out` (untouched on failure). expected_experts > 0: every layer
// must list that many experts.
[[nodiscard]] inline Status parse_allocation(nlohmann::json const& j, BitAllocation& out, std::string_view source,
                                             int expected_experts = 0) {
  using detail::allocation_error;
  auto const src = [&] { return std::string(source); };
  if (!j.is_object()) {
    return allocation_error(source, "the top level is not a JSON object");
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    static constexpr char const* known[] = {"format", "version",      "group_size", "scheme",
                                            "layers", "average_bits", "objective"};
    bool ok = false;
    for (char const* k : known) {
      ok = ok || it.key() == k;
    }
    if (!ok) {
      return error(Status::invalid_argument, "allocation %s: unknown key '%s'", src().c_str(), it.key().c_str());
    }
  }
  auto const format = j.find("format");
  if (format == j.end() || !format->is_string()) {
    return allocation_error(source, "'format' is missing or not a string");
  }
  if (format->get<std::string>() != allocation_format) {
    return error(Status::invalid_argument, "allocation %s: unknown format '%s' (expected '%s')", src().c_str(),
                 format->get<std::string>().c_str(), allocation_format);
  }
  auto const version = j.find("version");
  if (version == j.end() || !version->is_number_integer()) {
    return allocation_error(source, "'version' is missing or not an integer");
  }
  if (version->get<long long>() != allocation_version) {
    return error(Status::invalid_argument, "allocation %s: unsupported version %lld (this reader knows %d)",
                 src().c_str(), version->get<long long>(), allocation_version);
  }
  BitAllocation a;
  auto const group = j.find("group_size");
  if (group == j.end() || !group->is_number_integer()) {
    return allocation_error(source, "'group_size' is missing or not an integer");
  }
  long long const g = group->get<long long>();
  if (g != 32 && g != 64 && g != 128) {
    return error(Status::invalid_argument, "allocation %s: group_size %lld, expected 32, 64 or 128", src().c_str(), g);
  }
  a.group_size = static_cast<int>(g);
  auto const scheme = j.find("scheme");
  if (scheme == j.end() || !scheme->is_string()) {
    return allocation_error(source, "'scheme' is missing or not a string");
  }
  if (scheme->get<std::string>() == "symmetric") {
    a.symmetric = true;
  } else if (scheme->get<std::string>() != "asymmetric") {
    return error(Status::invalid_argument, "allocation %s: scheme '%s', expected 'asymmetric' or 'symmetric'",
                 src().c_str(), scheme->get<std::string>().c_str());
  }
  for (char const* key : {"average_bits", "objective"}) {
    auto const v = j.find(key);
    if (v == j.end()) {
      continue;
    }
    if (!v->is_number() || !std::isfinite(v->get<double>())) {
      return error(Status::invalid_argument, "allocation %s: '%s' is not a finite number", src().c_str(), key);
    }
    (key[0] == 'a' ? a.average_bits : a.objective) = v->get<double>();
  }
  if (a.average_bits && !(*a.average_bits >= 1.0 && *a.average_bits <= 8.0)) {
    return error(Status::invalid_argument, "allocation %s: average_bits %g is outside [1, 8]", src().c_str(),
                 *a.average_bits);
  }
  auto const layers = j.find("layers");
  if (layers == j.end() || !layers->is_object() || layers->empty()) {
    return allocation_error(source, "'layers' is missing, not an object, or empty");
  }
  for (auto it = layers->begin(); it != layers->end(); ++it) {
    int layer = 0;
    if (!detail::parse_layer_index(it.key(), layer)) {
      return error(Status::invalid_argument, "allocation %s: layer key '%s' is not a non-negative decimal integer",
                   src().c_str(), it.key().c_str());
    }
    if (a.layers.count(layer) != 0) {
      return error(Status::invalid_argument, "allocation %s: duplicate layer %d", src().c_str(), layer);
    }
    if (!it->is_array() || it->empty()) {
      return error(Status::invalid_argument, "allocation %s: layer %d is not a non-empty array of bit widths",
                   src().c_str(), layer);
    }
    std::vector<int> bits;
    long long total = 0;
    for (std::size_t e = 0; e < it->size(); ++e) {
      auto const& b = (*it)[e];
      if (!b.is_number_integer() || b.get<long long>() < 1 || b.get<long long>() > 8) {
        return error(Status::invalid_argument,
                     "allocation %s: layer %d expert %zu: bit width %s is not an integer in "
                     "[1, 8]",
                     src().c_str(), layer, e, b.dump().c_str());
      }
      bits.push_back(static_cast<int>(b.get<long long>()));
      total += bits.back();
    }
    if (expected_experts > 0 && static_cast<int>(bits.size()) != expected_experts) {
      return error(Status::invalid_argument, "allocation %s: layer %d lists %zu experts, expected %d", src().c_str(),
                   layer, bits.size(), expected_experts);
    }
    if (a.average_bits) {
      auto const budget = static_cast<long long>(std::floor(*a.average_bits * static_cast<double>(bits.size()) + 1e-9));
      if (total > budget) {
        return error(Status::invalid_argument,
                     "allocation %s: layer %d uses %lld bits, over the budget %lld of average_bits %g", src().c_str(),
                     layer, total, budget, *a.average_bits);
      }
    }
    a.layers.emplace(layer, std::move(bits));
  }
  out = std::move(a);
  return Status::ok;
}

// Parses JSON text (duplicate keys are errors), then the allocation.
[[nodiscard]] inline Status parse_allocation_text(std::string_view text, BitAllocation& out,
                                                  std::string_view source = "text", int expected_experts = 0) {
  detail::DuplicateKeyFinder finder;
  nlohmann::json::parser_callback_t callback = [&finder](int depth, nlohmann::json::parse_event_t event,
                                                         nlohmann::json& parsed) {
    return finder(depth, event, parsed);
  };
  nlohmann::json j;
#if defined(__cpp_exceptions)
  try {
    j = nlohmann::json::parse(text.begin(), text.end(), callback);
  } catch (nlohmann::json::exception const& e) {  // the I/O edge: nlohmann-json throws, moekit returns a Status
    return error(Status::invalid_argument, "allocation %.*s: malformed JSON: %s", static_cast<int>(source.size()),
                 source.data(), e.what());
  }
#else
  j = nlohmann::json::parse(text.begin(), text.end(), callback, false);
  if (j.is_discarded()) {
    return detail::allocation_error(source, "malformed JSON");
  }
#endif
  if (!finder.duplicate.empty()) {
    return error(Status::invalid_argument, "allocation %.*s: duplicate key '%s'", static_cast<int>(source.size()),
                 source.data(), finder.duplicate.c_str());
  }
  return parse_allocation(j, out, source, expected_experts);
}

// Reads the allocation file at `path` (messages name it).
[[nodiscard]] inline Status read_allocation(std::filesystem::path const& path, BitAllocation& out,
                                            int expected_experts = 0) {
  std::vector<std::byte> bytes;
  if (Status s = read_file(path, "allocation file", bytes); !s) {
    return s;
  }
  std::string const source = detail::quoted(path);
  std::string_view const text(reinterpret_cast<char const*>(bytes.data()), bytes.size());
  return parse_allocation_text(text, out, source, expected_experts);
}

// The file's text: keys in the documented order, layers in increasing index, one line per layer.
[[nodiscard]] inline std::string allocation_to_json(BitAllocation const& a) {
  nlohmann::ordered_json j;
  j["format"] = allocation_format;
  j["version"] = allocation_version;
  j["group_size"] = a.group_size;
  j["scheme"] = a.symmetric ? "symmetric" : "asymmetric";
  if (a.average_bits) {
    j["average_bits"] = *a.average_bits;
  }
  if (a.objective) {
    j["objective"] = *a.objective;
  }
  std::string text = j.dump(2);
  text.pop_back();  // the closing '}' (dump(2) ends "\n}"), to append layers by hand
  text.pop_back();
  text += ",\n  \"layers\": {";
  bool first = true;
  for (auto const& [layer, bits] : a.layers) {
    text += first ? "\n    \"" : ",\n    \"";
    first = false;
    text += std::to_string(layer) + "\": " + nlohmann::json(bits).dump();
  }
  text += "\n  }\n}\n";
  return text;
}

// Writes `a` to `path` atomically (temporary file + rename). `a` is validated first, with the
// reader's rules, so that every file written can be read back.
[[nodiscard]] inline Status write_allocation(std::filesystem::path const& path, BitAllocation const& a) {
  std::string const text = allocation_to_json(a);
  std::string const source = detail::quoted(path) + " (to write)";
  BitAllocation check;
  if (Status s = parse_allocation_text(text, check, source); !s) {
    return s;
  }
  return write_file_atomically(path,
                               std::span<std::byte const>(reinterpret_cast<std::byte const*>(text.data()), text.size()),
                               "allocation file");
}

}  // namespace io
MOEKIT_NAMESPACE_END
