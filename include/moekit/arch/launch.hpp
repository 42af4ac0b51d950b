#pragma once
// Launching a kernel from host code: cudaLaunchKernelEx under nvcc (cooperative when asked),
// emu::launch under the host compiler (synchronous; findings printed to stderr and returned
// as Status::emulation_error). Either way the result is a Status and nothing throws.

#include <cstddef>
#include <utility>

#include "moekit/config.hpp"
#include "moekit/core/status.hpp"

#if MOEKIT_CUDA_COMPILER
#include <cuda_runtime.h>
#else
#include <cstdio>

#include "moekit/emu/launch.hpp"
#endif

MOEKIT_NAMESPACE_BEGIN
namespace arch {
MOEKIT_ARCH_NAMESPACE_BEGIN

#if MOEKIT_CUDA_COMPILER
using Stream = cudaStream_t;
using LaunchDim = dim3;
#else
struct EmulatedStream;
using Stream = EmulatedStream*;  // emulated launches run synchronously on the calling thread
using LaunchDim = emu::Dim3;
#endif

struct KernelLaunch {
  LaunchDim grid;
  LaunchDim block;
  std::size_t dynamic_shared_bytes = 0;
  bool cooperative = false;
};

template <class... Params, class... Args>
Status launch(void (*kernel)(Params...), KernelLaunch const& l, Stream stream, Args&&... args) {
#if MOEKIT_CUDA_COMPILER
  if (l.dynamic_shared_bytes > 48 * 1024) {
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             static_cast<int>(l.dynamic_shared_bytes)) != cudaSuccess) {
      return Status::launch_failed;
    }
  }
  cudaLaunchAttribute attribute{};
  attribute.id = cudaLaunchAttributeCooperative;
  attribute.val.cooperative = l.cooperative ? 1 : 0;
  cudaLaunchConfig_t config{};
  config.gridDim = l.grid;
  config.blockDim = l.block;
  config.dynamicSmemBytes = l.dynamic_shared_bytes;
  config.stream = stream;
  config.attrs = &attribute;
  config.numAttrs = 1;
  cudaError_t const e = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
  return e == cudaSuccess ? Status::ok : Status::launch_failed;
#else
  (void)stream;
  emu::LaunchConfig const c{l.grid, l.block, l.dynamic_shared_bytes, l.cooperative};
  emu::LaunchResult const r = emu::launch(c, kernel, std::forward<Args>(args)...);
  if (!r.ok()) {
    std::fprintf(stderr, "moekit emulator: %s\n", r.summary().c_str());
  }
  return r.status;
#endif
}

// The most blocks of `threads` threads and `dynamic_shared_bytes` that can be co-resident on the
// device (cudaOccupancyMaxActiveBlocksPerMultiprocessor × SMs; the virtual device's same rule
// under emulation): the largest grid a cooperative (grid-synchronising) launch may use. 0 when
// one block does not fit or the query fails. A host query, not a synchronisation.
template <class... Params>
[[nodiscard]] int max_cooperative_blocks(void (*kernel)(Params...), int threads, std::size_t dynamic_shared_bytes) {
#if MOEKIT_CUDA_COMPILER
  if (dynamic_shared_bytes > 48 * 1024 && cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                               static_cast<int>(dynamic_shared_bytes)) != cudaSuccess) {
    return 0;
  }
  int device = 0, sms = 0, per_sm = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, dynamic_shared_bytes) != cudaSuccess) {
    return 0;
  }
  return per_sm * sms;
#else
  (void)kernel;
  emu::VirtualDevice const d = emu::default_launch_options().device;
  return emu::max_active_blocks_per_sm(d, threads, dynamic_shared_bytes) * d.sm_count;
#endif
}

MOEKIT_ARCH_NAMESPACE_END
}  // namespace arch
MOEKIT_NAMESPACE_END
