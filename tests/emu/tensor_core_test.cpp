// Tensor cores: mma.sync m16n8k16 (bf16, f16 -> fp32) and m16n8k32 (s8 -> s32) against a naive
// host GEMM, with every fragment built here from the PTX ISA's "Matrix Fragments for mma"
// formulas (transcribed independently of emu/tensor_core.hpp); and ldmatrix x1/x2/x4 with and
// without .trans against the ISA's distribution of rows to lanes.

#include <bit>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "emu_test_support.hpp"

using namespace moekit;
using emu_test::checked;

namespace {

// ---- PTX ISA fragment layouts (groupID = lane >> 2, threadID_in_group = lane % 4) ---------------
int group_id(int lane) { return lane >> 2; }
int thread_in_group(int lane) { return lane % 4; }

// m16n8k16 .f16/.bf16, A (16x16): a0..a7 in four .b32 registers, two elements each.
int a16_row(int lane, int i) { return (i < 2 || (i >= 4 && i < 6)) ? group_id(lane) : group_id(lane) + 8; }
int a16_col(int lane, int i) { return thread_in_group(lane) * 2 + (i & 1) + (i < 4 ? 0 : 8); }
// m16n8k16, B (16x8): b0..b3 in two registers.
int b16_row(int lane, int i) { return thread_in_group(lane) * 2 + (i & 1) + (i < 2 ? 0 : 8); }
int b16_col(int lane, int) { return group_id(lane); }
// C and D (16x8) of both shapes: c0..c3.
int cd_row(int lane, int i) { return i < 2 ? group_id(lane) : group_id(lane) + 8; }
int cd_col(int lane, int i) { return thread_in_group(lane) * 2 + (i & 1); }
// m16n8k32 .s8, A (16x32): a0..a15 in four registers, four elements each.
int a32_row(int lane, int i) { return (i < 4 || (i >= 8 && i < 12)) ? group_id(lane) : group_id(lane) + 8; }
int a32_col(int lane, int i) { return thread_in_group(lane) * 4 + (i & 3) + (i < 8 ? 0 : 16); }
// m16n8k32, B (32x8): b0..b7 in two registers.
int b32_row(int lane, int i) { return thread_in_group(lane) * 4 + (i & 3) + (i < 4 ? 0 : 16); }
int b32_col(int lane, int) { return group_id(lane); }

// Registers hold their elements lowest index in the lowest bits.
void put16(std::uint32_t* regs, int i, std::uint16_t bits) {
  regs[i / 2] |= static_cast<std::uint32_t>(bits) << (16 * (i % 2));
}
void put8(std::uint32_t* regs, int i, std::int8_t v) {
  regs[i / 4] |= static_cast<std::uint32_t>(static_cast<std::uint8_t>(v)) << (8 * (i % 4));
}

// 16-bit formats decoded here from their definitions, not with moekit's converters.
double bf16_value(std::uint16_t bits) { return static_cast<double>(std::bit_cast<float>(std::uint32_t{bits} << 16)); }
double fp16_value(std::uint16_t bits) {
  int const sign = bits >> 15, exponent = bits >> 10 & 0x1f, mantissa = bits & 0x3ff;
  double const magnitude = exponent == 0 ? std::ldexp(mantissa, -24) : std::ldexp(1024 + mantissa, exponent - 25);
  return sign != 0 ? -magnitude : magnitude;
}

// Random finite values: bf16 in about [2^-7, 2^4), fp16 in [2^-24, 2^5) including subnormals.
std::uint16_t random_bf16(std::mt19937& rng) {
  auto const sign = static_cast<unsigned>(rng() & 1u);
  auto const exponent = 120u + static_cast<unsigned>(rng() % 11u);
  auto const mantissa = static_cast<unsigned>(rng() & 0x7fu);
  return static_cast<std::uint16_t>(sign << 15 | exponent << 7 | mantissa);
}
std::uint16_t random_fp16(std::mt19937& rng) {
  auto const sign = static_cast<unsigned>(rng() & 1u);
  auto const exponent = static_cast<unsigned>(rng() % 20u);  // 0: subnormal
  auto const mantissa = static_cast<unsigned>(rng() & 0x3ffu);
  return static_cast<std::uint16_t>(sign << 15 | exponent << 10 | mantissa);
}

template <class Acc>
struct Fragments {
  std::uint32_t a[4] = {};
  std::uint32_t b[2] = {};
  Acc c[4] = {};
};

enum class Kind { bf16, f16 };

void mma16_kernel(Fragments<float> const* in, float* out, Kind kind) {
  unsigned const problem = arch::block_rank() * (arch::block_dim().x / 32) + arch::warp_id();
  unsigned const slot = problem * 32 + arch::lane_id();
  Fragments<float> const& f = in[slot];
  float d[4];
  if (kind == Kind::bf16) {
    arch::mma_m16n8k16_bf16(d, f.a, f.b, f.c);
  } else {
    arch::mma_m16n8k16_f16(d, f.a, f.b, f.c);
  }
  for (int i = 0; i < 4; ++i) {
    out[slot * 4 + static_cast<unsigned>(i)] = d[i];
  }
}

void mma_s8_kernel(Fragments<std::int32_t> const* in, std::int32_t* out) {
  unsigned const problem = arch::block_rank() * (arch::block_dim().x / 32) + arch::warp_id();
  unsigned const slot = problem * 32 + arch::lane_id();
  Fragments<std::int32_t> const& f = in[slot];
  std::int32_t d[4];
  arch::mma_m16n8k32_s8(d, f.a, f.b, f.c);
  for (int i = 0; i < 4; ++i) {
    out[slot * 4 + static_cast<unsigned>(i)] = d[i];
  }
}

constexpr unsigned problems = 8;  // 4 blocks of 2 warps, one problem per warp

}  // namespace

TEST_CASE("tensor core: mma m16n8k16 bf16 and f16 -> fp32 against a host GEMM", "[emu][tensor_core]") {
  auto const kind = GENERATE(Kind::bf16, Kind::f16);
  auto const seed = GENERATE(0u, 1u);
  CAPTURE(kind == Kind::bf16 ? "bf16" : "f16", seed);
  std::mt19937 rng(1234u + seed * 7u + static_cast<unsigned>(kind));
  std::uniform_real_distribution<float> c_dist(-4.0f, 4.0f);

  std::vector<Fragments<float>> frags(problems * 32);
  std::vector<double> A(problems * 16 * 16), B(problems * 16 * 8), C(problems * 16 * 8);
  for (unsigned p = 0; p < problems; ++p) {
    // Draw A, B and C as matrices, then scatter them into lanes' registers by the ISA's rules.
    std::vector<std::uint16_t> a_bits(16 * 16), b_bits(16 * 8);
    for (unsigned i = 0; i < a_bits.size(); ++i) {
      a_bits[i] = kind == Kind::bf16 ? random_bf16(rng) : random_fp16(rng);
      A[p * 256 + i] = kind == Kind::bf16 ? bf16_value(a_bits[i]) : fp16_value(a_bits[i]);
    }
    for (unsigned i = 0; i < b_bits.size(); ++i) {
      b_bits[i] = kind == Kind::bf16 ? random_bf16(rng) : random_fp16(rng);
      B[p * 128 + i] = kind == Kind::bf16 ? bf16_value(b_bits[i]) : fp16_value(b_bits[i]);
    }
    std::vector<float> c(16 * 8);
    for (unsigned i = 0; i < c.size(); ++i) {
      c[i] = c_dist(rng);
      C[p * 128 + i] = c[i];
    }
    for (int lane = 0; lane < 32; ++lane) {
      Fragments<float>& f = frags[p * 32 + static_cast<unsigned>(lane)];
      for (int i = 0; i < 8; ++i) {
        put16(f.a, i, a_bits[static_cast<unsigned>(a16_row(lane, i) * 16 + a16_col(lane, i))]);
      }
      for (int i = 0; i < 4; ++i) {
        put16(f.b, i, b_bits[static_cast<unsigned>(b16_row(lane, i) * 8 + b16_col(lane, i))]);
        f.c[i] = c[static_cast<unsigned>(cd_row(lane, i) * 8 + cd_col(lane, i))];
      }
    }
  }

  std::vector<float> out(problems * 32 * 4, std::nanf(""));
  auto const r =
      emu::launch({.grid = problems / 2, .block = 64}, checked(seed, 2), mma16_kernel, frags.data(), out.data(), kind);
  INFO(r.summary());
  REQUIRE(r.ok());

  // Products of 16-bit floats are exact in double, and so is this sum. Hardware accumulates in
  // fp32 (or narrower) in its own order, so it agrees to a few fp32 roundings of the largest
  // partial sums: 1e-6 (about 8 ulp at 2^-23) of sum |a||b| + |c|, the size of those sums.
  // A wrong fragment layout misplaces whole products, errors of order 1e-2 of that scale.
  for (unsigned p = 0; p < problems; ++p) {
    for (int lane = 0; lane < 32; ++lane) {
      for (int i = 0; i < 4; ++i) {
        int const row = cd_row(lane, i), col = cd_col(lane, i);
        double want = C[p * 128 + static_cast<unsigned>(row * 8 + col)];
        double scale = std::abs(want);
        for (int k = 0; k < 16; ++k) {
          double const prod =
              A[p * 256 + static_cast<unsigned>(row * 16 + k)] * B[p * 128 + static_cast<unsigned>(k * 8 + col)];
          want += prod;
          scale += std::abs(prod);
        }
        double const got = out[(p * 32 + static_cast<unsigned>(lane)) * 4 + static_cast<unsigned>(i)];
        CAPTURE(p, lane, i, row, col, want, got);
        REQUIRE(std::abs(got - want) <= 1e-6 * scale);
      }
    }
  }
}

TEST_CASE("tensor core: mma m16n8k32 s8 -> s32 against a host GEMM, exactly", "[emu][tensor_core]") {
  auto const seed = GENERATE(0u, 1u);
  CAPTURE(seed);
  std::mt19937 rng(99u + seed);
  std::uniform_int_distribution<int> s8(-128, 127);
  std::uniform_int_distribution<std::int32_t> c_dist(-(1 << 20), 1 << 20);

  std::vector<Fragments<std::int32_t>> frags(problems * 32);
  std::vector<std::int32_t> A(problems * 16 * 32), B(problems * 32 * 8), C(problems * 16 * 8);
  for (unsigned p = 0; p < problems; ++p) {
    for (unsigned i = 0; i < 16 * 32; ++i) {
      A[p * 512 + i] = s8(rng);
    }
    for (unsigned i = 0; i < 32 * 8; ++i) {
      B[p * 256 + i] = s8(rng);
    }
    for (unsigned i = 0; i < 16 * 8; ++i) {
      C[p * 128 + i] = c_dist(rng);
    }
    if (p == 0) {  // the extremes: -128 * -128 in every product of one output
      for (int k = 0; k < 32; ++k) {
        A[static_cast<unsigned>(k)] = -128;
        B[static_cast<unsigned>(k * 8)] = -128;
      }
    }
    for (int lane = 0; lane < 32; ++lane) {
      Fragments<std::int32_t>& f = frags[p * 32 + static_cast<unsigned>(lane)];
      for (int i = 0; i < 16; ++i) {
        put8(f.a, i,
             static_cast<std::int8_t>(A[p * 512 + static_cast<unsigned>(a32_row(lane, i) * 32 + a32_col(lane, i))]));
      }
      for (int i = 0; i < 8; ++i) {
        put8(f.b, i,
             static_cast<std::int8_t>(B[p * 256 + static_cast<unsigned>(b32_row(lane, i) * 8 + b32_col(lane, i))]));
      }
      for (int i = 0; i < 4; ++i) {
        f.c[i] = C[p * 128 + static_cast<unsigned>(cd_row(lane, i) * 8 + cd_col(lane, i))];
      }
    }
  }

  std::vector<std::int32_t> out(problems * 32 * 4, 0);
  auto const r =
      emu::launch({.grid = problems / 2, .block = 64}, checked(seed, 2), mma_s8_kernel, frags.data(), out.data());
  INFO(r.summary());
  REQUIRE(r.ok());
  for (unsigned p = 0; p < problems; ++p) {
    for (int lane = 0; lane < 32; ++lane) {
      for (int i = 0; i < 4; ++i) {
        int const row = cd_row(lane, i), col = cd_col(lane, i);
        std::int64_t want = C[p * 128 + static_cast<unsigned>(row * 8 + col)];
        for (int k = 0; k < 32; ++k) {
          want += std::int64_t{A[p * 512 + static_cast<unsigned>(row * 32 + k)]} *
                  B[p * 256 + static_cast<unsigned>(k * 8 + col)];
        }
        CAPTURE(p, lane, i, row, col);
        REQUIRE(out[(p * 32 + static_cast<unsigned>(lane)) * 4 + static_cast<unsigned>(i)] == want);
      }
    }
  }
}

TEST_CASE("tensor core: mma needs a full warp", "[emu][tensor_core][planted]") {
  std::vector<Fragments<float>> frags(32);
  std::vector<float> out(32 * 4, 0.0f);
  auto const r = emu::launch({.grid = 1, .block = 16}, checked(), mma16_kernel, frags.data(), out.data(), Kind::bf16);
  INFO(r.summary());
  CHECK(emu_test::has_message(r, emu::Finding::invalid_operation, "mma.sync.m16n8k16.bf16", "full warp"));
}

// ---- ldmatrix -------------------------------------------------------------------------------------
namespace {

// Four 8x8 matrices of 16-bit elements, 32 rows of 16 bytes, stored in a scrambled row order
// so that the rows a lane names, not their layout, decide what the warp loads.
struct LdSmem {
  alignas(16) arch::SharedArray<std::uint16_t, 32 * 8> rows;
};
unsigned stored_row(unsigned matrix, unsigned row) { return (matrix * 8 + row) * 13 % 32; }  // 13 odd: a permutation
std::uint16_t element(unsigned matrix, unsigned row, unsigned col) {
  return static_cast<std::uint16_t>(0xa000u | matrix << 8 | row << 4 | col);
}

enum class Ld { x1, x2, x4, x1_trans, x2_trans, x4_trans };
unsigned matrices(Ld v) { return v == Ld::x1 || v == Ld::x1_trans ? 1u : v == Ld::x2 || v == Ld::x2_trans ? 2u : 4u; }
bool transposed(Ld v) { return v == Ld::x1_trans || v == Ld::x2_trans || v == Ld::x4_trans; }

void ldmatrix_kernel(std::uint32_t* out, Ld variant, unsigned misaligned_lane) {
  auto& s = arch::shared_storage<LdSmem>();
  unsigned const lane = arch::lane_id();
  // Lane l of warp 0 stores row l of the scrambled storage: matrix m's row r where
  // stored_row(m, r) == l. Every warp then loads from it.
  for (unsigned m = 0; m < 4; ++m) {
    for (unsigned r = 0; r < 8; ++r) {
      if (arch::warp_id() == 0 && stored_row(m, r) == lane) {
        for (unsigned c = 0; c < 8; ++c) {
          s.rows[lane * 8 + c] = element(m, r, c);
        }
      }
    }
  }
  arch::sync_threads();
  // Lanes 8m .. 8m+7 give the rows of matrix m; lanes past the matrices loaded give none.
  std::uint16_t const* row = nullptr;
  if (lane < 8 * matrices(variant)) {
    row = &s.rows[stored_row(lane / 8, lane % 8) * 8];
    if (lane == misaligned_lane) {
      row += 4;  // 8 bytes into the row
    }
  }
  std::uint32_t d[4] = {0, 0, 0, 0};
  std::uint32_t d1[1] = {0}, d2[2] = {0, 0};
  switch (variant) {
    case Ld::x1: arch::ldmatrix_x1(d1, row); break;
    case Ld::x2: arch::ldmatrix_x2(d2, row); break;
    case Ld::x4: arch::ldmatrix_x4(d, row); break;
    case Ld::x1_trans: arch::ldmatrix_x1_trans(d1, row); break;
    case Ld::x2_trans: arch::ldmatrix_x2_trans(d2, row); break;
    case Ld::x4_trans: arch::ldmatrix_x4_trans(d, row); break;
  }
  if (matrices(variant) == 1) {
    d[0] = d1[0];
  } else if (matrices(variant) == 2) {
    d[0] = d2[0];
    d[1] = d2[1];
  }
  unsigned const t = arch::thread_rank();
  for (unsigned i = 0; i < 4; ++i) {
    out[t * 4 + i] = d[i];
  }
}

}  // namespace

TEST_CASE("ldmatrix: x1, x2, x4 and .trans distribute rows to lanes as the ISA documents", "[emu][tensor_core]") {
  auto const variant = GENERATE(Ld::x1, Ld::x2, Ld::x4, Ld::x1_trans, Ld::x2_trans, Ld::x4_trans);
  auto const seed = GENERATE(0u, 1u);
  CAPTURE(static_cast<int>(variant), seed);
  constexpr unsigned threads = 64;  // two warps, each loading on its own
  std::vector<std::uint32_t> out(threads * 4, 0xffffffffu);
  auto const r = emu::launch({.grid = 1, .block = threads, .dynamic_shared_bytes = sizeof(LdSmem)}, checked(seed),
                             ldmatrix_kernel, out.data(), variant, 99u);
  INFO(r.summary());
  REQUIRE(r.ok());
  for (unsigned t = 0; t < threads; ++t) {
    unsigned const l = t % 32;
    for (unsigned m = 0; m < 4; ++m) {
      CAPTURE(t, m);
      std::uint32_t const got = out[t * 4 + m];
      if (m >= matrices(variant)) {
        CHECK(got == 0u);  // registers past the matrices loaded are untouched
        continue;
      }
      // Lane l holds (l/4, 2(l%4)) and (l/4, 2(l%4)+1) of matrix m, or of its transpose.
      unsigned const row = l / 4, col = 2 * (l % 4);
      std::uint16_t const lo = transposed(variant) ? element(m, col, row) : element(m, row, col);
      std::uint16_t const hi = transposed(variant) ? element(m, col + 1, row) : element(m, row, col + 1);
      CHECK(got == (std::uint32_t{lo} | std::uint32_t{hi} << 16));
    }
  }
}

TEST_CASE("ldmatrix: a row address that is not 16-byte aligned is reported", "[emu][tensor_core][planted]") {
  auto const variant = GENERATE(Ld::x1, Ld::x4, Ld::x2_trans);
  // Lane 31 arrives last in index order and runs the collective; lane 3 does not.
  auto const lane = GENERATE(3u, 7u);
  auto const seed = GENERATE(0u, 1u);
  CAPTURE(static_cast<int>(variant), lane, seed);
  std::vector<std::uint32_t> out(32 * 4, 0);
  auto const r = emu::launch({.grid = 1, .block = 32, .dynamic_shared_bytes = sizeof(LdSmem)}, checked(seed),
                             ldmatrix_kernel, out.data(), variant, lane);
  INFO(r.summary());
  CHECK(r.status == Status::emulation_error);
  CHECK(emu_test::has_message(r, emu::Finding::misaligned_address, "thread " + std::to_string(lane) + " ", "ldmatrix"));
}

TEST_CASE("ldmatrix: rows nothing wrote are reported by initcheck", "[emu][tensor_core][planted]") {
  std::vector<std::uint32_t> out(32 * 4, 0);
  auto const r = emu::launch(
      {.grid = 1, .block = 32, .dynamic_shared_bytes = sizeof(LdSmem)}, checked(),
      [](std::uint32_t* o) {
        auto& s = arch::shared_storage<LdSmem>();
        std::uint32_t d[4];
        arch::ldmatrix_x4(d, &s.rows[arch::lane_id() * 8]);
        o[arch::lane_id()] = d[0];
      },
      out.data());
  INFO(r.summary());
  CHECK(r.has(emu::Finding::uninitialized_read));
}
