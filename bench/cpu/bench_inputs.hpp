#pragma once
// Benchmark inputs both moekit's benchmarks and bench/compare_torch_routing.py can rebuild bit
// for bit, without sharing files: logits[t, e] = a splitmix64 hash of (seed, t*E + e) mapped to
// a multiple of 2^-21 in [-4, 4) — exactly representable in fp32, so the two sides see the
// same numbers and can compare their routing outputs through checksums.

#include <cstdint>
#include <vector>

namespace moekit_bench {

inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

inline std::vector<float> hashed_logits(std::int64_t tokens, int experts, std::uint64_t seed) {
  std::vector<float> z(static_cast<std::size_t>(tokens * experts));
  for (std::size_t i = 0; i < z.size(); ++i) {
    std::uint64_t const h = splitmix64((seed << 32) + i);
    z[i] = float(std::int64_t(h >> 40)) * 0x1p-21f - 4.f;  // 24 random bits -> [-4, 4) in steps of 2^-21
  }
  return z;
}

// The DeepSeek-V3 correction bias of the benchmarks: small, deterministic, exactly representable.
inline std::vector<float> hashed_bias(int experts) {
  std::vector<float> b(static_cast<std::size_t>(experts));
  for (int e = 0; e < experts; ++e) {
    b[e] = float(std::int64_t(splitmix64(0xb1a5ull + e) >> 56) - 128) * 0x1p-10f;  // [-0.125, 0.125)
  }
  return b;
}

}  // namespace moekit_bench
