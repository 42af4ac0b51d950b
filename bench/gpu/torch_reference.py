"""PyTorch on the same shapes as bench/gpu/sample_gemm_bench.cu, for scripts/gpu-check's report:
bf16 x bf16 -> fp32 GEMM (torch.matmul on bf16, then .float(): cuBLAS's path) and an int32
cumulative sum per 256-element block. Median of 20 after 3 warm-ups, CUDA events; JSON lines."""
import json
import sys

try:
    import torch
except ImportError:
    print(json.dumps({"error": "torch not importable"}))
    sys.exit(0)


def median_ms(fn):
    for _ in range(3):
        fn()
    times = []
    for _ in range(20):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


if not torch.cuda.is_available():
    print(json.dumps({"error": "no CUDA device"}))
    sys.exit(0)
for n in (1024, 2048, 4096):
    a = torch.zeros(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.zeros(n, n, dtype=torch.bfloat16, device="cuda")
    ms = median_ms(lambda: torch.matmul(a, b.t()).float())
    print(json.dumps({"kernel": "torch.matmul_bf16_to_f32", "m": n, "n": n, "k": n, "ms": round(ms, 4),
                      "tflops": round(2 * n**3 / (ms * 1e9), 2)}))
n = 1 << 26
x = torch.zeros(n // 256, 256, dtype=torch.int32, device="cuda")
ms = median_ms(lambda: torch.cumsum(x, dim=1))
print(json.dumps({"kernel": "torch.cumsum_i32_rows256", "n": n, "ms": round(ms, 4), "gbps": round(2 * 4 * n / (ms * 1e6), 1)}))
