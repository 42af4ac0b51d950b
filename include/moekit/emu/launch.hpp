#pragma once
// emu::launch: runs a kernel written for moekit on the CPU, one fiber per CUDA thread, and
// says what it found (races, uninitialised reads, divergent barriers, deadlocks).
//
//   auto r = emu::launch({.grid = 4, .block = 256, .dynamic_shared_bytes = sizeof(Smem)},
//                        {.racecheck = true}, my_kernel, in, out, n);
//   REQUIRE(r.ok());   // r.summary() lists every finding

#include <cstdio>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

#include "moekit/config.hpp"
#include "moekit/emu/detail/runtime.hpp"
#include "moekit/emu/device.hpp"
#include "moekit/emu/diagnostics.hpp"
#include "moekit/emu/launch_config.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace emu {

namespace detail {

// The checks cudaLaunchKernel makes before running anything; an empty string means valid.
inline std::string launch_error(LaunchConfig const& c, LaunchOptions const& o) {
  VirtualDevice const& d = o.device;
  if (c.grid.volume() == 0 || c.block.volume() == 0) {
    return "grid " + format_dim(c.grid) + " or block " + format_dim(c.block) + " is empty";
  }
  if (c.block.x > 1024 || c.block.y > 1024 || c.block.z > 64 ||
      c.block.volume() > static_cast<std::uint64_t>(d.max_threads_per_block)) {
    return "block " + format_dim(c.block) + " exceeds " + std::to_string(d.max_threads_per_block) +
           " threads or the per-dimension limits (1024, 1024, 64)";
  }
  if (c.grid.y > 65535 || c.grid.z > 65535 || c.grid.volume() > 0xffffffffull) {
    return "grid " + format_dim(c.grid) + " exceeds the grid limits";
  }
  if (c.dynamic_shared_bytes > d.shared_memory_per_block) {
    return std::to_string(c.dynamic_shared_bytes) + " bytes of dynamic shared memory exceed the device's " +
           std::to_string(d.shared_memory_per_block) + " per block";
  }
  if (c.cooperative) {
    int const per_sm =
        max_active_blocks_per_sm(d, static_cast<int>(c.block.volume()), c.dynamic_shared_bytes, c.registers_per_thread);
    std::uint64_t const fit = static_cast<std::uint64_t>(per_sm) * static_cast<std::uint64_t>(d.sm_count);
    if (c.grid.volume() > fit) {
      return "cooperative grid of " + std::to_string(c.grid.volume()) + " blocks exceeds the " + std::to_string(fit) +
             " that can be co-resident on " + d.name;
    }
  }
  return {};
}

}  // namespace detail

template <class Kernel, class... Args>
LaunchResult launch(LaunchConfig const& config, LaunchOptions const& options, Kernel&& kernel, Args&&... args) {
  LaunchResult invalid;
  if (detail::current_thread != nullptr) {
    invalid.status = Status::launch_failed;
    invalid.diagnostics.push_back({Finding::invalid_launch, "a kernel cannot launch another under emulation"});
    return invalid;
  }
  if (std::string e = detail::launch_error(config, options); !e.empty()) {
    invalid.status = Status::launch_failed;
    invalid.diagnostics.push_back({Finding::invalid_launch, std::move(e)});
    return invalid;
  }
  // Each thread calls its own copy of the kernel with its own copies of the arguments, as CUDA
  // passes them: a functor's members (a lambda's captures) are kernel parameters too.
  using Bound = std::tuple<std::decay_t<Kernel>, std::decay_t<Args>...>;
  Bound bound(std::forward<Kernel>(kernel), std::forward<Args>(args)...);
  detail::Runtime rt;
  rt.config = config;
  rt.options = options;
  rt.body_context = &bound;
  rt.body = [](void* ctx) {
    std::apply(
        [](auto const& k, auto&... a) {
          auto own = k;
          own(a...);
        },
        *static_cast<Bound*>(ctx));
  };
  detail::Runtime* const outer = detail::current_runtime;
  detail::current_runtime = &rt;
  {
    detail::OverflowGuard const guard;  // a kernel overflowing its fiber stack is named, not a bare SIGSEGV
    rt.run();
  }
  detail::current_runtime = outer;
  return std::move(rt.result);
}

// The same with the default options: a ScopedLaunchOptions guard's, else the environment's.
template <class Kernel, class... Args>
  requires(!std::is_same_v<std::decay_t<Kernel>, LaunchOptions>)
LaunchResult launch(LaunchConfig const& config, Kernel&& kernel, Args&&... args) {
  return launch(config, default_launch_options(), std::forward<Kernel>(kernel), std::forward<Args>(args)...);
}

}  // namespace emu
MOEKIT_NAMESPACE_END
