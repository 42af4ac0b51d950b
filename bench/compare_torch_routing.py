#!/usr/bin/env python3
"""Routing + dispatch plan on the CPU: moekit's CPU path against PyTorch, same inputs, same run.

Runs build*/bench/routing_bench (Google Benchmark, JSON) and times the same semantics written
in PyTorch on the same logits (rebuilt bit for bit from bench/cpu/bench_inputs.hpp's hash), checks
that the outputs agree through checksums, and prints per router and token count:
    moekit time, torch time (1 thread and the default thread count), and the ratios.

    bench/compare_torch_routing.py [--bench PATH] [--tokens 1,16,128,512,2048,8192] [--min-time S]

PyTorch and numpy come from PyPI into .venv-torch/ at the repository root (created on first use;
never by scripts/test). The routing_bench binary is built into build/ if --bench is not given.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-torch"


def ensure_venv():
    """Re-exec inside .venv-torch (created with torch + numpy from PyPI when missing)."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        subprocess.check_call([str(python), "-m", "pip", "install", "-q", "numpy", "torch"])
    os.execv(str(python), [str(python), __file__] + sys.argv[1:])


ensure_venv()
import numpy as np  # noqa: E402
import torch  # noqa: E402

# Router name -> (E, K, extra); keep in step with bench/cpu/routing_bench.cpp's main().
ROUTERS = {
    "mixtral": dict(E=8, K=2, kind="softmax", norm=True),
    "qwen3_moe": dict(E=128, K=8, kind="softmax", norm=True),
    "olmoe": dict(E=64, K=8, kind="softmax", norm=False),
    "gpt_oss": dict(E=128, K=4, kind="gpt_oss"),
    "llama4": dict(E=16, K=1, kind="llama4"),
    "deepseek_v3": dict(E=256, K=8, kind="deepseek_v3", n_group=8, topk_group=4, scale=2.5),
    "adamoe": dict(E=24, K=4, kind="adamoe", true_experts=8),
    "mc_moe_odp": dict(E=8, K=2, kind="top_any_ratio", beta=0.5),
    "dynmole": dict(E=8, K=8, kind="dynmole", q=1.1, tau=0.9, top_p=0.75, keep_top_k=2, eps=1e-5),
}
TILE = 16
M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def splitmix64(x):
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hashed_logits(tokens, experts, seed=1):
    i = np.arange(tokens * experts, dtype=np.uint64) + (np.uint64(seed) << np.uint64(32))
    h = splitmix64(i)
    z = (h >> np.uint64(40)).astype(np.int64).astype(np.float32) * np.float32(2.0**-21) - np.float32(4.0)
    return torch.from_numpy(z.reshape(tokens, experts))


def hashed_bias(experts):
    h = splitmix64(np.arange(experts, dtype=np.uint64) + np.uint64(0xB1A5))
    return torch.from_numpy(((h >> np.uint64(56)).astype(np.int64) - 128).astype(np.float32) * np.float32(2.0**-10))


def route(cfg, z, bias):
    k = cfg["K"]
    if cfg["kind"] == "softmax":
        p = torch.softmax(z, dim=-1)
        w, i = torch.topk(p, k, dim=-1)
        if cfg["norm"]:
            w = w / w.sum(dim=-1, keepdim=True)
    elif cfg["kind"] == "gpt_oss":
        v, i = torch.topk(z, k, dim=-1)
        w = torch.softmax(v, dim=-1)
    elif cfg["kind"] == "llama4":
        v, i = torch.topk(z, k, dim=-1)
        w = torch.sigmoid(v)
    elif cfg["kind"] == "adamoe":  # top-k over true + null, renormalised over the true ones
        p = torch.softmax(z, dim=-1)
        w, i = torch.topk(p, k, dim=-1)
        w = w * (i < cfg["true_experts"])
        total = w.sum(dim=-1, keepdim=True)
        w = w / torch.where(total > 0, total, torch.ones_like(total))
    elif cfg["kind"] == "top_any_ratio":  # MC-MoE ODP: drop slot s >= 1 when p_s < beta * p_0
        p = torch.softmax(z, dim=-1)
        w, i = torch.topk(p, k, dim=-1)
        keep = w >= cfg["beta"] * w[:, :1]
        w = torch.where(keep, w, torch.zeros_like(w))
        w = w / w.sum(dim=-1, keepdim=True)
        i = torch.where(keep, i, torch.full_like(i, cfg["E"]))
    elif cfg["kind"] == "dynmole":  # top-p (<=) with a minimum k, broadcast above the entropy threshold
        e, q = cfg["E"], cfg["q"]
        p = torch.softmax(z, dim=-1)
        sp, i = torch.sort(p, dim=-1, descending=True, stable=True)
        rank = torch.arange(e)
        keep = (torch.cumsum(sp, dim=-1) <= cfg["top_p"]) | (rank < cfg["keep_top_k"])
        entropy = (1 - ((p + cfg["eps"]) ** q).sum(dim=-1)) / (1 - e ** (1 - q))
        keep = keep | (entropy > cfg["tau"]).unsqueeze(-1)
        w = torch.where(keep, sp, torch.zeros_like(sp))
        i = torch.where(keep, i, torch.full_like(i, e))
    else:  # DeepSeek-V3 noaux_tc
        t, e, g = z.shape[0], cfg["E"], cfg["n_group"]
        s = torch.sigmoid(z)
        c = s + bias
        group_scores = c.view(t, g, e // g).topk(2, dim=-1).values.sum(dim=-1)
        groups = group_scores.topk(cfg["topk_group"], dim=-1).indices
        keep = torch.zeros(t, g, dtype=torch.bool).scatter_(1, groups, True)
        keep = keep.unsqueeze(-1).expand(t, g, e // g).reshape(t, e)
        i = c.masked_fill(~keep, float("-inf")).topk(k, dim=-1).indices
        w = s.gather(1, i)
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20) * cfg["scale"]
    return i, w


def build_plan(ids, experts):
    """vLLM/Megatron-style plan: stable sort by expert, counts, tile-padded offsets."""
    flat = ids.flatten()
    flat = flat[flat < experts]  # empty slots (id E) take no row
    order = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=experts)
    padded = (counts + TILE - 1) // TILE * TILE
    offsets = torch.cumsum(padded, 0) - padded
    rows = offsets.repeat_interleave(counts) + (torch.arange(flat.numel()) - (torch.cumsum(counts, 0) - counts).repeat_interleave(counts))
    return order, counts, offsets, rows


def time_torch(fn, min_time):
    fn()  # warm up
    samples = []
    deadline = time.perf_counter() + min_time
    while time.perf_counter() < deadline or len(samples) < 5:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def run_moekit(bench, min_time, tokens):
    filt = "^route(_plan)?/(" + "|".join(ROUTERS) + ")/(" + "|".join(map(str, tokens)) + ")$"
    out = subprocess.run([str(bench), f"--benchmark_filter={filt}", "--benchmark_format=json",
                          f"--benchmark_min_time={min_time}"], check=True, capture_output=True, text=True)
    results = {}
    for b in json.loads(out.stdout)["benchmarks"]:
        mode, router, t = b["name"].split("/")
        results[(mode, router, int(t))] = b
    return results, json.loads(out.stdout)["context"]


def find_bench(arg):
    if arg:
        return Path(arg)
    for candidate in sorted(ROOT.glob("build*/bench/routing_bench")):
        return candidate
    subprocess.check_call(["cmake", "-S", str(ROOT), "-B", str(ROOT / "build"), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release"])
    subprocess.check_call(["cmake", "--build", str(ROOT / "build"), "--target", "routing_bench"])
    return ROOT / "build" / "bench" / "routing_bench"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", help="path to routing_bench (default: build*/bench/routing_bench)")
    ap.add_argument("--tokens", default="1,16,128,512,2048,8192")
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds per measurement")
    args = ap.parse_args()
    tokens = [int(t) for t in args.tokens.split(",")]
    bench = find_bench(args.bench)
    moekit, context = run_moekit(bench, args.min_time, tokens)
    default_threads = torch.get_num_threads()
    print(f"# moekit CPU path (1 thread) vs torch {torch.__version__} ({default_threads} threads by default)")
    print(f"# host: {context.get('host_name', '?')}, {context.get('num_cpus', '?')} CPUs at "
          f"{context.get('mhz_per_cpu', '?')} MHz; {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"# ratio = torch time / moekit time (> 1: moekit faster)")
    header = (f"{'router':<12} {'T':>5} | {'moekit route':>12} {'torch 1t':>10} {'torch {}t'.format(default_threads):>10} "
              f"{'ratio 1t':>8} | {'moekit +plan':>12} {'torch 1t':>10} {'ratio 1t':>8} {'ratio {}t'.format(default_threads):>8} | check")
    print(header)
    print("-" * len(header))
    bias = hashed_bias(256)
    for name, cfg in ROUTERS.items():
        for t in tokens:
            z = hashed_logits(t, cfg["E"])
            b = bias[: cfg["E"]] if cfg["kind"] == "deepseek_v3" else None
            ids, w = route(cfg, z, b)
            m_route = moekit[("route", name, t)]
            m_plan = moekit[("route_plan", name, t)]
            ids_ok = int(ids.sum()) == round(m_route["ids_checksum"])
            w_ok = abs(float(w.double().sum()) - m_route["weights_checksum"]) <= 1e-4 * max(1.0, abs(m_route["weights_checksum"]))
            times = {}
            for threads in (1, default_threads):
                torch.set_num_threads(threads)
                times[("route", threads)] = time_torch(lambda: route(cfg, z, b), args.min_time)
                times[("plan", threads)] = time_torch(lambda: build_plan(route(cfg, z, b)[0], cfg["E"]), args.min_time)
            torch.set_num_threads(default_threads)
            mr = m_route["real_time"] * 1e-9 if m_route["time_unit"] == "ns" else None
            mp = m_plan["real_time"] * 1e-9 if m_plan["time_unit"] == "ns" else None
            check = "ok" if ids_ok and w_ok else ("weights ok, ids differ (ties)" if w_ok else "MISMATCH")
            print(f"{name:<12} {t:>5} | {mr * 1e6:>10.1f}us {times[('route', 1)] * 1e6:>8.1f}us "
                  f"{times[('route', default_threads)] * 1e6:>8.1f}us {times[('route', 1)] / mr:>8.2f} | "
                  f"{mp * 1e6:>10.1f}us {times[('plan', 1)] * 1e6:>8.1f}us {times[('plan', 1)] / mp:>8.2f} "
                  f"{times[('plan', default_threads)] / mp:>8.2f} | {check}")


if __name__ == "__main__":
    main()
