#pragma once
// Warp collectives: __syncwarp, shuffles, votes, __match_any_sync, __reduce_add_sync and
// __activemask. Each takes the CUDA mask of participating lanes, with CUDA's semantics.

#include <bit>
#include <cstring>
#include <type_traits>

#include "moekit/arch/config.hpp"

MOEKIT_NAMESPACE_BEGIN
namespace arch {
MOEKIT_ARCH_NAMESPACE_BEGIN

inline constexpr unsigned full_warp_mask = 0xffffffffu;

// Set bits of x (__popc on the device): with a match_any_sync mask, a lane's rank among its peers.
[[nodiscard]] MOEKIT_HOST_DEVICE MOEKIT_FORCEINLINE int popc(unsigned x) {
#if MOEKIT_DEVICE_PASS
  return __popc(x);
#else
  return std::popcount(x);
#endif
}

#if MOEKIT_EMULATION
namespace detail {
using emu::detail::Warp;

enum class ShflMode { idx, up, down, bfly };

template <std::size_t Size>
struct ShflIn {
  std::byte value[Size];
  int arg;
  int width;
};

// Source lane rules of the CUDA Programming Guide: lanes are split into segments of `width`;
// a source outside the segment (above it, for xor) returns the caller's own value.
template <ShflMode Mode, std::size_t Size>
void shfl_fn(Warp& w, std::uint32_t mask) {
  for (int lane = 0; lane < 32; ++lane) {
    if ((mask >> lane & 1u) == 0) {
      continue;
    }
    auto& in = w.lanes[lane]->in.as<ShflIn<Size>>();
    int const start = lane & ~(in.width - 1);
    int src = lane;
    switch (Mode) {
      case ShflMode::idx: src = start + (in.arg & (in.width - 1)); break;
      case ShflMode::up: src = lane - in.arg >= start ? lane - in.arg : lane; break;
      case ShflMode::down: src = lane + in.arg < start + in.width ? lane + in.arg : lane; break;
      case ShflMode::bfly: src = (lane ^ in.arg) < start + in.width ? lane ^ in.arg : lane; break;
    }
    if (src < 0 || src > 31 || (mask >> src & 1u) == 0) {
      src = lane;  // reading a lane outside the mask is undefined in CUDA; we return our own value
    }
    std::memcpy(w.lanes[lane]->out.bytes, w.lanes[src]->in.as<ShflIn<Size>>().value, Size);
  }
}

template <ShflMode Mode, class T>
T shfl(unsigned mask, T value, int arg, int width, char const* what, std::source_location where) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 16,
                "shuffle a trivially copyable value of <= 16 bytes");
  auto& t = me(what);
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    runtime().fail(t, emu::Finding::invalid_operation,
                   std::string(what) + ": width " + std::to_string(width) + " is not a power of two in [1, 32]");
  }
  auto& in = t.in.as<ShflIn<sizeof(T)>>();
  std::memcpy(in.value, &value, sizeof(T));
  in.arg = arg;
  in.width = width;
  runtime().warp_collective(t, mask, &shfl_fn<Mode, sizeof(T)>, what, where);
  T r;
  std::memcpy(&r, t.out.bytes, sizeof(T));
  return r;
}

enum class Vote { ballot, any, all };

template <Vote V>
void vote_fn(Warp& w, std::uint32_t mask) {
  std::uint32_t ballot = 0;
  for (int lane = 0; lane < 32; ++lane) {
    if ((mask >> lane & 1u) != 0 && w.lanes[lane]->in.as<int>() != 0) {
      ballot |= 1u << lane;
    }
  }
  std::uint32_t const r = V == Vote::ballot ? ballot : V == Vote::any ? (ballot != 0) : (ballot == mask);
  for (int lane = 0; lane < 32; ++lane) {
    if ((mask >> lane & 1u) != 0) {
      w.lanes[lane]->out.as<std::uint32_t>() = r;
    }
  }
}

template <Vote V>
std::uint32_t vote(unsigned mask, bool predicate, char const* what, std::source_location where) {
  auto& t = me(what);
  t.in.as<int>() = predicate ? 1 : 0;
  runtime().warp_collective(t, mask, &vote_fn<V>, what, where);
  return t.out.as<std::uint32_t>();
}

struct MatchIn {
  unsigned long long value;
};

inline void match_any_fn(Warp& w, std::uint32_t mask) {
  for (int lane = 0; lane < 32; ++lane) {
    if ((mask >> lane & 1u) == 0) {
      continue;
    }
    std::uint32_t same = 0;
    for (int other = 0; other < 32; ++other) {
      if ((mask >> other & 1u) != 0 &&
          w.lanes[other]->in.as<MatchIn>().value == w.lanes[lane]->in.as<MatchIn>().value) {
        same |= 1u << other;
      }
    }
    w.lanes[lane]->out.as<std::uint32_t>() = same;
  }
}

inline void reduce_add_fn(Warp& w, std::uint32_t mask) {
  std::uint32_t sum = 0;
  for (int lane = 0; lane < 32; ++lane) {
    if ((mask >> lane & 1u) != 0) {
      sum += w.lanes[lane]->in.as<std::uint32_t>();
    }
  }
  for (int lane = 0; lane < 32; ++lane) {
    if ((mask >> lane & 1u) != 0) {
      w.lanes[lane]->out.as<std::uint32_t>() = sum;
    }
  }
}

inline void sync_warp_fn(Warp&, std::uint32_t) {}
}  // namespace detail

inline void sync_warp(unsigned mask = full_warp_mask, std::source_location where = std::source_location::current()) {
  auto& t = detail::me("__syncwarp");
  detail::runtime().warp_collective(t, mask, &detail::sync_warp_fn, "__syncwarp", where);
}
template <class T>
T shfl_sync(unsigned mask, T value, int src_lane, int width = 32,
            std::source_location where = std::source_location::current()) {
  return detail::shfl<detail::ShflMode::idx>(mask, value, src_lane, width, "__shfl_sync", where);
}
template <class T>
T shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32,
               std::source_location where = std::source_location::current()) {
  return detail::shfl<detail::ShflMode::up>(mask, value, static_cast<int>(delta), width, "__shfl_up_sync", where);
}
template <class T>
T shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32,
                 std::source_location where = std::source_location::current()) {
  return detail::shfl<detail::ShflMode::down>(mask, value, static_cast<int>(delta), width, "__shfl_down_sync", where);
}
template <class T>
T shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32,
                std::source_location where = std::source_location::current()) {
  return detail::shfl<detail::ShflMode::bfly>(mask, value, lane_mask, width, "__shfl_xor_sync", where);
}
inline unsigned ballot_sync(unsigned mask, bool predicate,
                            std::source_location where = std::source_location::current()) {
  return detail::vote<detail::Vote::ballot>(mask, predicate, "__ballot_sync", where);
}
inline bool any_sync(unsigned mask, bool predicate, std::source_location where = std::source_location::current()) {
  return detail::vote<detail::Vote::any>(mask, predicate, "__any_sync", where) != 0;
}
inline bool all_sync(unsigned mask, bool predicate, std::source_location where = std::source_location::current()) {
  return detail::vote<detail::Vote::all>(mask, predicate, "__all_sync", where) != 0;
}
template <class T>
unsigned match_any_sync(unsigned mask, T value, std::source_location where = std::source_location::current()) {
  static_assert(std::is_integral_v<T> && (sizeof(T) == 4 || sizeof(T) == 8),
                "__match_any_sync takes 32/64-bit integers");
  auto& t = detail::me("__match_any_sync");
  t.in.as<detail::MatchIn>().value = static_cast<unsigned long long>(value);
  detail::runtime().warp_collective(t, mask, &detail::match_any_fn, "__match_any_sync", where);
  return t.out.as<std::uint32_t>();
}
inline unsigned reduce_add_sync(unsigned mask, unsigned value,
                                std::source_location where = std::source_location::current()) {
  auto& t = detail::me("__reduce_add_sync");
  t.in.as<std::uint32_t>() = value;
  detail::runtime().warp_collective(t, mask, &detail::reduce_add_fn, "__reduce_add_sync", where);
  return t.out.as<std::uint32_t>();
}
// Lanes of this warp that have not exited. Hardware reports the lanes converged at this point,
// which can be fewer in divergent code; the emulator does not model divergence.
inline unsigned active_mask() {
  auto& t = detail::me("__activemask");
  return t.warp->exists & ~t.warp->exited;
}
#else
namespace detail {
// __shfl_*_sync take arithmetic types; anything else travels as 32-bit words.
template <class T, class Shfl>
MOEKIT_DEVICE MOEKIT_FORCEINLINE T shfl_words(T value, Shfl shfl) {
  if constexpr (std::is_arithmetic_v<T> && sizeof(T) >= 4) {
    return shfl(value);
  } else {
    static_assert(std::is_trivially_copyable_v<T>, "shuffle a trivially copyable value");
    constexpr int words = (sizeof(T) + 3) / 4;
    unsigned w[words] = {};
    memcpy(w, &value, sizeof(T));
#pragma unroll
    for (int i = 0; i < words; ++i) {
      w[i] = shfl(w[i]);
    }
    T r;
    memcpy(&r, w, sizeof(T));
    return r;
  }
}
}  // namespace detail

MOEKIT_DEVICE MOEKIT_FORCEINLINE void sync_warp(unsigned mask = full_warp_mask) { __syncwarp(mask); }
template <class T>
MOEKIT_DEVICE MOEKIT_FORCEINLINE T shfl_sync(unsigned mask, T value, int src_lane, int width = 32) {
  return detail::shfl_words(value, [&](auto v) { return __shfl_sync(mask, v, src_lane, width); });
}
template <class T>
MOEKIT_DEVICE MOEKIT_FORCEINLINE T shfl_up_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  return detail::shfl_words(value, [&](auto v) { return __shfl_up_sync(mask, v, delta, width); });
}
template <class T>
MOEKIT_DEVICE MOEKIT_FORCEINLINE T shfl_down_sync(unsigned mask, T value, unsigned delta, int width = 32) {
  return detail::shfl_words(value, [&](auto v) { return __shfl_down_sync(mask, v, delta, width); });
}
template <class T>
MOEKIT_DEVICE MOEKIT_FORCEINLINE T shfl_xor_sync(unsigned mask, T value, int lane_mask, int width = 32) {
  return detail::shfl_words(value, [&](auto v) { return __shfl_xor_sync(mask, v, lane_mask, width); });
}
MOEKIT_DEVICE MOEKIT_FORCEINLINE unsigned ballot_sync(unsigned mask, bool predicate) {
  return __ballot_sync(mask, predicate);
}
MOEKIT_DEVICE MOEKIT_FORCEINLINE bool any_sync(unsigned mask, bool predicate) {
  return __any_sync(mask, predicate) != 0;
}
MOEKIT_DEVICE MOEKIT_FORCEINLINE bool all_sync(unsigned mask, bool predicate) {
  return __all_sync(mask, predicate) != 0;
}
template <class T>
MOEKIT_DEVICE MOEKIT_FORCEINLINE unsigned match_any_sync(unsigned mask, T value) {
  return __match_any_sync(mask, value);
}
MOEKIT_DEVICE MOEKIT_FORCEINLINE unsigned reduce_add_sync(unsigned mask, unsigned value) {
  return __reduce_add_sync(mask, value);
}
MOEKIT_DEVICE MOEKIT_FORCEINLINE unsigned active_mask() { return __activemask(); }
#endif

MOEKIT_ARCH_NAMESPACE_END
}  // namespace arch
MOEKIT_NAMESPACE_END
