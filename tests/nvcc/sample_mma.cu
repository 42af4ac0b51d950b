// Fixture for the nvcc resource report (tests/nvcc): one tensor-core kernel and nothing else.
// Self-contained on purpose (no moekit headers): it tests the report tool, not the library.
//
// One warp computes C[16x8] (fp32) = A[16xK] (bf16, row-major) * B[Kx8] (bf16, column-major)
// with cp.async (SASS LDGSTS) into shared memory, ldmatrix (LDSM) and
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (HMMA). K must be a multiple of 16.
#include <cstdint>

namespace fixture {

__device__ __forceinline__ std::uint32_t smem_addr(const void* p) {
  return static_cast<std::uint32_t>(__cvta_generic_to_shared(p));
}

__global__ void __launch_bounds__(32) mma_bf16_16x8(const std::uint16_t* __restrict__ a,
                                                    const std::uint16_t* __restrict__ b, float* __restrict__ c, int k) {
  // One k-step of operands: A 16x16 bf16 (512 B), B^T 8x16 bf16 (256 B); 16-byte rows.
  __shared__ __align__(128) std::uint16_t sa[16 * 16];
  __shared__ __align__(128) std::uint16_t sb[8 * 16];
  const int lane = static_cast<int>(threadIdx.x);
  float acc[4] = {0.f, 0.f, 0.f, 0.f};

  for (int k0 = 0; k0 < k; k0 += 16) {
    // 48 chunks of 16 bytes: 32 for A (16 rows x 2 halves), 16 for B^T (8 rows x 2 halves).
    for (int chunk = lane; chunk < 48; chunk += 32) {
      const std::uint16_t* src;
      std::uint16_t* dst;
      if (chunk < 32) {
        const int row = chunk >> 1, half = chunk & 1;
        src = a + static_cast<long>(row) * k + k0 + half * 8;
        dst = sa + row * 16 + half * 8;
      } else {
        const int row = (chunk - 32) >> 1, half = chunk & 1;
        src = b + static_cast<long>(row) * k + k0 + half * 8;
        dst = sb + row * 16 + half * 8;
      }
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_addr(dst)), "l"(src) : "memory");
    }
    asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
    __syncwarp();

    std::uint32_t fa[4], fb[2];
    // A: four 8x8 matrices; lanes 0-15 address rows 0-15 of the left half, 16-31 the right half.
    const std::uint16_t* pa = sa + (lane & 15) * 16 + (lane >> 4) * 8;
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(fa[0]), "=r"(fa[1]), "=r"(fa[2]), "=r"(fa[3])
                 : "r"(smem_addr(pa)));
    // B (column-major == B^T row-major): two 8x8 matrices, lanes 0-7 and 8-15 give the rows.
    const std::uint16_t* pb = sb + (lane & 7) * 16 + ((lane >> 3) & 1) * 8;
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(fb[0]), "=r"(fb[1])
                 : "r"(smem_addr(pb)));
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
                 : "r"(fa[0]), "r"(fa[1]), "r"(fa[2]), "r"(fa[3]), "r"(fb[0]), "r"(fb[1]));
    __syncwarp();
  }
  // Accumulator layout of m16n8: c0,c1 at (lane/4, 2*(lane%4)+{0,1}), c2,c3 eight rows below.
  const int row = lane >> 2, col = (lane & 3) * 2;
  c[row * 8 + col] = acc[0];
  c[row * 8 + col + 1] = acc[1];
  c[(row + 8) * 8 + col] = acc[2];
  c[(row + 8) * 8 + col + 1] = acc[3];
}

}  // namespace fixture
