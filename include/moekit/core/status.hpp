#pragma once
// Status: how every moekit call that can fail says so. No exceptions in device code, arch/,
// kernels/ or run(); only host I/O edges may throw.

#include "moekit/config.hpp"

MOEKIT_NAMESPACE_BEGIN

// clang-format off (clang-format 14 mangles an attribute on an enum)
enum class [[nodiscard]] Status : int{
    ok = 0,
    invalid_argument,     // a null pointer, a negative size, an argument out of its range
    invalid_problem,      // sizes that no configuration of this layer can run
    misaligned,           // a pointer or stride that breaks the alignment the kernel needs
    workspace_too_small,  // the caller's workspace is smaller than workspace_size() said
    unsupported_config,   // this compile-time configuration cannot run this problem
    unsupported_arch,     // the device lacks an instruction the kernel needs
    launch_failed,        // the launch itself failed (bad grid, too much shared memory, ...)
    cuda_error,           // a CUDA runtime error; the cudaError_t travels beside the Status
    emulation_error,      // the emulator found a bug: a race, a deadlock, a divergent barrier, ...
    out_of_memory,
    io_error,
    internal_error,
};
// clang-format on

[[nodiscard]] MOEKIT_HOST_DEVICE constexpr char const* to_string(Status s) noexcept {
  switch (s) {
    case Status::ok: return "ok";
    case Status::invalid_argument: return "invalid argument";
    case Status::invalid_problem: return "invalid problem";
    case Status::misaligned: return "misaligned pointer or stride";
    case Status::workspace_too_small: return "workspace too small";
    case Status::unsupported_config: return "configuration cannot run this problem";
    case Status::unsupported_arch: return "unsupported architecture";
    case Status::launch_failed: return "kernel launch failed";
    case Status::cuda_error: return "CUDA error";
    case Status::emulation_error: return "emulator detected an error";
    case Status::out_of_memory: return "out of memory";
    case Status::io_error: return "I/O error";
    case Status::internal_error: return "internal error";
  }
  return "unknown status";
}

// `if (!s)` reads as "if it failed", as in DESIGN.md §1.
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool operator!(Status s) noexcept { return s != Status::ok; }
[[nodiscard]] MOEKIT_HOST_DEVICE constexpr bool is_ok(Status s) noexcept { return s == Status::ok; }

MOEKIT_NAMESPACE_END
