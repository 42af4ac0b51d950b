// GPU timing of the foundation's sample kernels (scripts/gpu-check runs it on a lent GPU): the
// 2-stage mma.sync GEMM and the block scan, timed with CUDA events (median of 20 after 3 warm
// ups), printed as one JSON object per line for the report. Exit 77 without a device.

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "block_scan_kernel.hpp"
#include "mma_gemm_kernel.hpp"
#include <cuda_runtime.h>

#include "moekit/arch/launch.hpp"

namespace {

template <class Launch>
float median_ms(Launch launch) {
  cudaEvent_t start, stop;
  cudaEventCreate(&start);
  cudaEventCreate(&stop);
  for (int i = 0; i < 3; ++i) {
    launch();
  }
  std::vector<float> times;
  for (int i = 0; i < 20; ++i) {
    cudaEventRecord(start);
    launch();
    cudaEventRecord(stop);
    cudaEventSynchronize(stop);
    float ms = 0;
    cudaEventElapsedTime(&ms, start, stop);
    times.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  namespace arch = moekit::arch;
  using S = moekit_samples::MmaGemmShape;
  for (std::int64_t n : {1024, 2048, 4096}) {
    moekit::bf16_t *a = nullptr, *b = nullptr;
    float* c = nullptr;
    cudaMalloc(&a, sizeof(moekit::bf16_t) * n * n);
    cudaMalloc(&b, sizeof(moekit::bf16_t) * n * n);
    cudaMalloc(&c, sizeof(float) * n * n);
    cudaMemset(a, 0, sizeof(moekit::bf16_t) * n * n);
    cudaMemset(b, 0, sizeof(moekit::bf16_t) * n * n);
    arch::KernelLaunch const l{.grid =
                                   dim3(static_cast<unsigned>(n / S::block_n), static_cast<unsigned>(n / S::block_m)),
                               .block = S::threads,
                               .dynamic_shared_bytes = sizeof(moekit_samples::MmaGemmStorage)};
    float const ms =
        median_ms([&] { (void)arch::launch(moekit_samples::mma_gemm_kernel<false>, l, nullptr, a, b, c, n, n, n); });
    std::printf(
        "{\"kernel\": \"mma_gemm_bf16_f32\", \"m\": %lld, \"n\": %lld, \"k\": %lld, \"ms\": %.4f, \"tflops\": %.2f}\n",
        static_cast<long long>(n), static_cast<long long>(n), static_cast<long long>(n), static_cast<double>(ms),
        2.0 * n * n * n / (static_cast<double>(ms) * 1e9));
    cudaFree(a);
    cudaFree(b);
    cudaFree(c);
  }
  std::int64_t const n = std::int64_t{1} << 26;
  int *in = nullptr, *prefix = nullptr, *totals = nullptr;
  cudaMalloc(&in, sizeof(int) * n);
  cudaMalloc(&prefix, sizeof(int) * n);
  cudaMalloc(&totals, sizeof(int) * (n / 256));
  cudaMemset(in, 0, sizeof(int) * n);
  arch::KernelLaunch const l{.grid = static_cast<unsigned>(n / 256),
                             .block = 256,
                             .dynamic_shared_bytes = sizeof(moekit_samples::BlockScanStorage)};
  float const ms =
      median_ms([&] { (void)arch::launch(moekit_samples::block_scan_kernel, l, nullptr, in, prefix, totals, n); });
  std::printf("{\"kernel\": \"block_scan_i32\", \"n\": %lld, \"ms\": %.4f, \"gbps\": %.1f}\n",
              static_cast<long long>(n), static_cast<double>(ms),
              2.0 * sizeof(int) * n / (static_cast<double>(ms) * 1e6));
  cudaFree(in);
  cudaFree(prefix);
  cudaFree(totals);
  return cudaGetLastError() == cudaSuccess ? 0 : 1;
}
