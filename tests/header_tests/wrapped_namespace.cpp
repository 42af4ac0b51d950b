// MOEKIT_WRAPPED_NAMESPACE (STYLE.md §4 "Namespace"): an embedder can put all of moekit inside a
// namespace of its own; the core types and the emulator then live under it and still work.
#include <cstdio>

#include "moekit/arch/arch.hpp"
#include "moekit/emu/emu.hpp"
#include "moekit/moekit.hpp"

namespace mk = embedder::moekit;

int main() {
  mk::bf16_t const one(1.0f);
  int out[32] = {};
  auto const r = mk::emu::launch({.grid = 1, .block = 32}, mk::emu::LaunchOptions{}, [&out] {
    unsigned const lane = mk::arch::lane_id();
    out[lane] = mk::arch::shfl_xor_sync(mk::arch::full_warp_mask, static_cast<int>(lane), 1);
  });
  bool ok = r.ok() && one.bits == 0x3F80u && mk::is_ok(mk::Status::ok);
  for (int i = 0; i < 32; ++i) {
    ok = ok && out[i] == (i ^ 1);
  }
  std::printf("wrapped namespace: %s\n", ok ? "ok" : "FAILED");
  return ok ? 0 : 1;
}
