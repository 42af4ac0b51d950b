#pragma once
// Whole-file reads and atomic writes for the io/ readers and writers (.npy, .safetensors). Every
// message starts with `kind` ("npy file", "safetensors file") and the path.

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>
#include <system_error>
#include <vector>

#include "moekit/config.hpp"
#include "moekit/core/error_message.hpp"
#include "moekit/core/status.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace io {

namespace detail {
inline char const* errno_text() {
  char const* s = std::strerror(errno);
  return s != nullptr ? s : "unknown error";
}
}  // namespace detail

// The bytes of `path` (`bytes` untouched on failure): io_error naming a missing file, a
// directory, or a failed read.
[[nodiscard]] inline Status read_file(std::filesystem::path const& path, char const* kind,
                                      std::vector<std::byte>& bytes) {
  using detail::errno_text;
  std::string const name = path.string();
  std::error_code ec;
  auto const st = std::filesystem::status(path, ec);
  if (st.type() == std::filesystem::file_type::not_found) {
    return error(Status::io_error, "%s '%s': cannot open: no such file", kind, name.c_str());
  }
  if (ec) {
    return error(Status::io_error, "%s '%s': cannot open: %s", kind, name.c_str(), ec.message().c_str());
  }
  if (std::filesystem::is_directory(st)) {
    return error(Status::io_error, "%s '%s': cannot open: it is a directory", kind, name.c_str());
  }
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    return error(Status::io_error, "%s '%s': cannot open: %s", kind, name.c_str(), errno_text());
  }
  f.seekg(0, std::ios::end);
  std::streamoff const size = f.tellg();
  f.seekg(0, std::ios::beg);
  if (size < 0 || !f) {
    return error(Status::io_error, "%s '%s': cannot read its size", kind, name.c_str());
  }
  std::vector<std::byte> data(static_cast<std::size_t>(size));
  f.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(size));
  if (f.gcount() != size) {
    return error(Status::io_error, "%s '%s': read error after %lld of %lld bytes", kind, name.c_str(),
                 static_cast<long long>(f.gcount()), static_cast<long long>(size));
  }
  bytes = std::move(data);
  return Status::ok;
}

// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so that
// `path` is either left as it was or replaced whole.
[[nodiscard]] inline Status write_file_atomically(std::filesystem::path const& path, std::span<std::byte const> bytes,
                                                  char const* kind = "file") {
  using detail::errno_text;
  std::string const name = path.string();
  static std::atomic<unsigned> counter{0};  // distinct temporary names for concurrent writers
  auto const stamp = static_cast<unsigned long long>(std::chrono::steady_clock::now().time_since_epoch().count());
  char suffix[64];
  std::snprintf(suffix, sizeof suffix, ".tmp-%llx-%x", stamp, counter.fetch_add(1) + 1);
  std::filesystem::path temp = path;
  temp += suffix;
  {
    std::ofstream f(temp, std::ios::binary | std::ios::trunc);
    if (!f) {
      return error(Status::io_error, "%s '%s': cannot create: %s", kind, name.c_str(), errno_text());
    }
    f.write(reinterpret_cast<char const*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
    f.close();
    if (!f) {
      std::error_code ignored;
      std::filesystem::remove(temp, ignored);
      return error(Status::io_error, "%s '%s': write error: %s", kind, name.c_str(), errno_text());
    }
  }
  std::error_code ec;
  std::filesystem::rename(temp, path, ec);
  if (ec) {
    std::error_code ignored;
    std::filesystem::remove(temp, ignored);
    return error(Status::io_error, "%s '%s': cannot replace: %s", kind, name.c_str(), ec.message().c_str());
  }
  return Status::ok;
}

}  // namespace io
MOEKIT_NAMESPACE_END
