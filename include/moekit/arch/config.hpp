#pragma once
// What every arch/ wrapper needs: the emulator's runtime under the host compiler, the CUDA
// headers under nvcc. arch/ is the only place for inline PTX, intrinsics and CUB block
// primitives; every wrapper has a real branch and an emulated branch with the same contract.

#include <cstdint>

#include "moekit/config.hpp"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "moekit's kernels need sm_80 or newer (mma.sync bf16, cp.async, ldmatrix)"
#endif

#if MOEKIT_EMULATION
#include <source_location>

#include "moekit/emu/detail/runtime.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace arch {
MOEKIT_ARCH_NAMESPACE_BEGIN
namespace detail {
inline emu::detail::Runtime& runtime() noexcept { return *emu::detail::current_runtime; }
inline emu::detail::Thread& me(char const* what) { return emu::detail::this_thread(what); }
}  // namespace detail
MOEKIT_ARCH_NAMESPACE_END
}  // namespace arch
MOEKIT_NAMESPACE_END
#endif
