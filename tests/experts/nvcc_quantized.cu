// experts/dequantize.hpp and quantized_weights.hpp compiled by nvcc for every architecture (the
// resource report: registers, spills, stack), so the headers are proven device-clean: one kernel
// with the runtime bit-width dispatch of dequantize_run, and one per shipped bit width (2/3/4/8)
// that vector-loads a 32-element chunk and decodes it in registers with dequantize8.
#include "moekit/experts/dequantize.hpp"
#include "moekit/experts/gated_mlp.hpp"
#include "moekit/experts/quantized.hpp"

namespace moekit::experts {

// One thread per 32 elements of a row of expert e (row r, chunk c): out [out, in] dense.
__device__ inline bool this_thread_chunk(QuantizedWeights<MemorySpace::device> const& w, std::int64_t& r,
                                         std::int64_t& c) {
  std::int64_t const chunks = w.in / 32;
  std::int64_t const t = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= w.out * chunks) {
    return false;
  }
  r = t / chunks;
  c = t % chunks;
  return true;
}

template <class Out>
MOEKIT_KERNEL void dequantize_rows_kernel(QuantizedWeights<MemorySpace::device> w, std::int64_t e, Out* out) {
  std::int64_t r = 0;
  std::int64_t c = 0;
  if (!this_thread_chunk(w, r, c)) {
    return;
  }
  dequantize_run(w.row(e, r), w.bits[e], c * 32, 32, w.row_scales(e, r), w.row_zeros(e, r), w.group,
                 out + r * w.in + c * 32);
}

// B fixed: the 4·B bytes of 32 codes are 4-byte aligned (rows start on 4-byte boundaries), so
// they are read as B 32-bit words and decoded eight codes (B bytes) at a time.
template <int B, class Out>
MOEKIT_KERNEL void dequantize_chunk_kernel(QuantizedWeights<MemorySpace::device> w, std::int64_t e, Out* out) {
  std::int64_t r = 0;
  std::int64_t c = 0;
  if (!this_thread_chunk(w, r, c)) {
    return;
  }
  auto const* words = reinterpret_cast<std::uint32_t const*>(w.row(e, r) + c * 4 * B);
  std::uint32_t packed[B];
#pragma unroll
  for (int k = 0; k < B; ++k) {
    packed[k] = words[k];
  }
  GroupAffine const a = group_affine(w.row_scales(e, r), w.row_zeros(e, r), c * 32 / w.group, B);
  Out* o = out + r * w.in + c * 32;
#pragma unroll
  for (int j = 0; j < 4; ++j) {  // codes 8j .. 8j+7 are bytes jB .. jB+B−1
    std::uint64_t v = 0;
#pragma unroll
    for (int k = 0; k < B; ++k) {
      int const byte = j * B + k;
      v |= static_cast<std::uint64_t>((packed[byte / 4] >> (8 * (byte % 4))) & 0xFFu) << (8 * k);
    }
    dequantize8<B>(v, a, o + 8 * j);
  }
}

template __global__ void dequantize_rows_kernel<float>(QuantizedWeights<MemorySpace::device>, std::int64_t, float*);
template __global__ void dequantize_rows_kernel<bf16_t>(QuantizedWeights<MemorySpace::device>, std::int64_t, bf16_t*);
template __global__ void dequantize_chunk_kernel<2, bf16_t>(QuantizedWeights<MemorySpace::device>, std::int64_t,
                                                            bf16_t*);
template __global__ void dequantize_chunk_kernel<3, bf16_t>(QuantizedWeights<MemorySpace::device>, std::int64_t,
                                                            bf16_t*);
template __global__ void dequantize_chunk_kernel<4, bf16_t>(QuantizedWeights<MemorySpace::device>, std::int64_t,
                                                            bf16_t*);
template __global__ void dequantize_chunk_kernel<8, bf16_t>(QuantizedWeights<MemorySpace::device>, std::int64_t,
                                                            bf16_t*);

static_assert(Expert<Quantized<SwiGlu<bf16_t>>>);

}  // namespace moekit::experts
