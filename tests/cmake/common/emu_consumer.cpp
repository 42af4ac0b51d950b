// A consumer of moekit::emu: the emulator target must bring moekit's headers and Boost.Context
// (headers and library), so an emulated kernel with a barrier and a warp shuffle compiles,
// links and runs here, with racecheck on.
#include <cstdio>

#include "moekit/arch/arch.hpp"
#include "moekit/emu/emu.hpp"

struct Smem {
  moekit::arch::SharedArray<int, 64> v;
};

MOEKIT_KERNEL void rotate(int* out) {
  namespace arch = moekit::arch;
  auto& s = arch::shared_storage<Smem>();
  unsigned const t = arch::thread_rank();
  s.v[t] = static_cast<int>(t);
  arch::sync_threads();
  int const next = s.v[(t + 1) % 64];
  out[t] = arch::shfl_xor_sync(arch::full_warp_mask, next, 1);
}

int main() {
  int out[64] = {};
  moekit::emu::LaunchOptions options;
  options.racecheck = true;
  auto const r =
      moekit::emu::launch({.grid = 1, .block = 64, .dynamic_shared_bytes = sizeof(Smem)}, options, rotate, out);
  // Thread t gets the value lane t^1 read: ((t ^ 1) + 1) mod 64.
  bool ok = r.ok();
  for (int t = 0; t < 64; ++t) {
    ok = ok && out[t] == ((t ^ 1) + 1) % 64;
  }
  std::printf("moekit::emu consumer: emulated kernel %s (%s)\n", ok ? "ok" : "FAILED", r.summary().c_str());
  return ok ? 0 : 1;
}
