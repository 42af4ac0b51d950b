#pragma once
// A fresh directory per test case under the system's temporary directory, removed with
// everything in it at the end of the scope (shared by the io tests).

#include <cstddef>
#include <filesystem>
#include <iterator>
#include <random>
#include <string>
#include <system_error>

namespace io_test {

struct TempDir {
  std::filesystem::path path;
  explicit TempDir(std::string const& prefix) {
    std::random_device rd;
    path = std::filesystem::temp_directory_path() / (prefix + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(TempDir const&) = delete;
  TempDir& operator=(TempDir const&) = delete;
  std::filesystem::path operator/(char const* name) const { return path / name; }
  // Files and folders in it (tests that nothing, or no stray temporary file, was left behind).
  [[nodiscard]] std::size_t entries() const {
    return static_cast<std::size_t>(
        std::distance(std::filesystem::directory_iterator(path), std::filesystem::directory_iterator()));
  }
};

}  // namespace io_test
