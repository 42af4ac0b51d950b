// [gpu] The foundation's sample kernels on a real device (built by nvcc for sm_80 and sm_90a),
// against the same host computations as the emulated test. Without a device it reports
// itself skipped (exit code 77, ctest's SKIP_RETURN_CODE).

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "block_scan_kernel.hpp"
#include "mma_gemm_kernel.hpp"
#include <cuda_runtime.h>

#include "moekit/arch/launch.hpp"
#include "moekit/arch/thread_index.hpp"
#include "moekit/core/fp32_math.hpp"

namespace sample_gpu {
MOEKIT_KERNEL void fp32_math_kernel(float const* x, float* out, std::int64_t n) {
  std::int64_t const i = std::int64_t{moekit::arch::block_rank()} * 256 + moekit::arch::thread_rank();
  if (i < n) {
    out[3 * i] = moekit::fp32::exp(x[i]);
    out[3 * i + 1] = moekit::fp32::log(x[i]);
    out[3 * i + 2] = moekit::fp32::sigmoid(x[i]);
  }
}

}  // namespace sample_gpu

namespace {

namespace arch = moekit::arch;
using moekit::bf16_t;

int failures = 0;

void check(bool ok, char const* what) {
  if (!ok) {
    std::printf("FAILED: %s\n", what);
    ++failures;
  }
}

template <class T>
T* to_device(std::vector<T> const& v) {
  T* p = nullptr;
  cudaMalloc(&p, v.size() * sizeof(T) + 1);
  cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice);
  return p;
}

template <class T>
std::vector<T> to_host(T const* p, std::size_t n) {
  std::vector<T> v(n);
  cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
  return v;
}

// ALGORITHMS.md §0: the device's exp/log/sigmoid must give the host's bits exactly.
void fp32_math_bits() {
  std::vector<float> x;
  for (std::uint64_t u = 0; u < (std::uint64_t{1} << 32); u += 4099) {
    auto const b = static_cast<std::uint32_t>(u);
    float f;
    std::memcpy(&f, &b, sizeof f);
    x.push_back(f);
  }
  auto const n = static_cast<std::int64_t>(x.size());
  float* d_x = to_device(x);
  float* d_out = to_device(std::vector<float>(x.size() * 3));
  moekit::Status const s =
      arch::launch(sample_gpu::fp32_math_kernel, {.grid = static_cast<unsigned>((n + 255) / 256), .block = 256},
                   nullptr, d_x, d_out, n);
  check(s == moekit::Status::ok && cudaDeviceSynchronize() == cudaSuccess, "fp32 math launch");
  auto const out = to_host(d_out, x.size() * 3);
  std::size_t mismatches = 0;
  for (std::size_t i = 0; i < x.size(); ++i) {
    float const host[3] = {moekit::fp32::exp(x[i]), moekit::fp32::log(x[i]), moekit::fp32::sigmoid(x[i])};
    mismatches += std::memcmp(host, &out[3 * i], sizeof host) != 0 ? 1 : 0;
  }
  if (mismatches != 0) {
    std::printf("fp32 math: %zu of %zu inputs differ between host and device\n", mismatches, x.size());
  }
  check(mismatches == 0, "fp32 exp/log/sigmoid bit-identical on host and device");
  cudaFree(d_x);
  cudaFree(d_out);
}

void block_scan(std::int64_t n) {
  std::mt19937 rng(static_cast<unsigned>(n));
  std::uniform_int_distribution<int> dist(-1000, 1000);
  std::vector<int> in(static_cast<std::size_t>(n));
  for (auto& x : in) {
    x = dist(rng);
  }
  auto const blocks = static_cast<unsigned>((n + 255) / 256);
  int* d_in = to_device(in);
  int* d_prefix = to_device(std::vector<int>(in.size()));
  int* d_totals = to_device(std::vector<int>(blocks));
  moekit::Status const s =
      arch::launch(moekit_samples::block_scan_kernel,
                   {.grid = blocks, .block = 256, .dynamic_shared_bytes = sizeof(moekit_samples::BlockScanStorage)},
                   nullptr, d_in, d_prefix, d_totals, n);
  check(s == moekit::Status::ok && cudaDeviceSynchronize() == cudaSuccess, "block scan launch");
  auto const prefix = to_host(d_prefix, in.size());
  auto const totals = to_host(d_totals, blocks);
  for (unsigned b = 0; b < blocks; ++b) {
    int running = 0;
    for (std::int64_t i = std::int64_t{b} * 256; i < std::min<std::int64_t>(n, (b + 1) * 256); ++i) {
      check(prefix[static_cast<std::size_t>(i)] == running, "block scan prefix");
      running += in[static_cast<std::size_t>(i)];
    }
    check(totals[b] == running, "block scan total");
  }
  cudaFree(d_in);
  cudaFree(d_prefix);
  cudaFree(d_totals);
}

void mma_gemm(std::int64_t m, std::int64_t n, std::int64_t k) {
  std::mt19937 rng(42);
  std::uniform_real_distribution<float> dist(-2.f, 2.f);
  std::vector<bf16_t> a(static_cast<std::size_t>(m * k)), bt(static_cast<std::size_t>(n * k));
  for (auto& x : a) {
    x = bf16_t(dist(rng));
  }
  for (auto& x : bt) {
    x = bf16_t(dist(rng));
  }
  using S = moekit_samples::MmaGemmShape;
  bf16_t* d_a = to_device(a);
  bf16_t* d_b = to_device(bt);
  float* d_c = to_device(std::vector<float>(static_cast<std::size_t>(m * n)));
  moekit::Status const s =
      arch::launch(moekit_samples::mma_gemm_kernel<false>,
                   {.grid = dim3(static_cast<unsigned>(n / S::block_n), static_cast<unsigned>(m / S::block_m)),
                    .block = S::threads,
                    .dynamic_shared_bytes = sizeof(moekit_samples::MmaGemmStorage)},
                   nullptr, d_a, d_b, d_c, m, n, k);
  check(s == moekit::Status::ok && cudaDeviceSynchronize() == cudaSuccess, "mma gemm launch");
  auto const c = to_host(d_c, static_cast<std::size_t>(m * n));
  // Tensor cores accumulate in their own order: allow (K/16 + 2) fp32 ulps of sum |a*b|.
  for (std::int64_t i = 0; i < m; ++i) {
    for (std::int64_t j = 0; j < n; ++j) {
      double ref = 0, mag = 0;
      for (std::int64_t p = 0; p < k; ++p) {
        double const prod =
            a[static_cast<std::size_t>(i * k + p)].to_double() * bt[static_cast<std::size_t>(j * k + p)].to_double();
        ref += prod;
        mag += std::abs(prod);
      }
      double const tol = (static_cast<double>(k) / 16 + 2) * std::ldexp(1.0, -24) * mag;
      check(std::abs(c[static_cast<std::size_t>(i * n + j)] - ref) <= tol, "mma gemm value");
    }
  }
  cudaFree(d_a);
  cudaFree(d_b);
  cudaFree(d_c);
}

}  // namespace

// --small: only the small shapes (for compute-sanitizer, which slows kernels down a lot).
int main(int argc, char** argv) {
  bool const small = argc > 1 && std::string(argv[1]) == "--small";
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: [gpu] sample kernel test skipped\n");
    return 77;
  }
  for (std::int64_t n : {1, 255, 256, 1000, 1 << 20}) {
    if (!small || n < 4096) {
      block_scan(n);
    }
  }
  fp32_math_bits();
  mma_gemm(64, 64, 64);
  mma_gemm(128, 64, 96);
  if (!small) {
    mma_gemm(1024, 1024, 1024);
  }
  std::printf("%s\n", failures == 0 ? "[gpu] sample kernels: all checks passed" : "[gpu] sample kernels: FAILED");
  return failures == 0 ? 0 : 1;
}
