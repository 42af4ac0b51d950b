#!/usr/bin/env python3
"""nvcc resource report for moekit's CUDA kernels (Python 3 standard library only).

Subcommands
  compile  compile one .cu file to a cubin per architecture with `ptxas -v`, disassemble it with
           `cuobjdump -sass`, and write a JSON report: per kernel registers, stack, spills, shared
           and constant memory, SASS instruction counts (tensor-core MMA, ldmatrix, cp.async,
           local memory, barriers, shuffles) and theoretical occupancy.
  check    read reports, print a table, exit non-zero on a spill, on a tensor-core kernel without
           tensor-core instructions, on a --tensor-core name that matches no kernel, or on a launch
           hint that cannot launch at all.
  merge    merge reports (or earlier merges) into one summary JSON.
  tools    print where the helper tools are (cuobjdump, nvdisasm, demangler); exit 1 when the
           disassembler is missing.

See docs/nvcc_report.md for the schema and what the check enforces.

nvcc flags, per architecture XX (and nothing else unless asked for with --define/--include/
--nvcc-flag/--ccbin):
  -cubin                       stop at the device binary: no host object, no fatbinary, no link
  -std=<std>                   the language standard (c++20 for moekit)
  -O3                          host-side optimisation level as in release builds (device code is
                               optimised by ptxas at its default -O3 either way)
  -Xptxas -v                   ptxas prints registers, stack, spills, shared/constant memory
  --expt-relaxed-constexpr     constexpr host functions callable from device code, as moekit's
                               CUDA targets use it
  -gencode=arch=compute_XX,code=sm_XX
                               exactly one real architecture per cubin; for Hopper `90a` gives
                               compute_90a/sm_90a (the `-arch=sm_90a` shorthand would add a plain
                               sm_90 pass that rejects wgmma/setmaxnreg)
  -isystem <cuda>/include/cccl only when the toolkit has a cccl/ include folder that its
                               nvcc.profile does not already put on the path (CUDA 13 does)
  -MD -MF <file> -MT <target>  only with --depfile: header dependencies for the build system
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

SCHEMA = "moekit.nvcc_report/1"
SUMMARY_SCHEMA = "moekit.nvcc_report.summary/1"

# SASS mnemonics always present in a kernel's "sass" object (zero when absent). Every mnemonic
# ending in "MMA" counts as a tensor-core instruction (HMMA, IMMA, QMMA, DMMA, BMMA and the
# Hopper warpgroup forms HGMMA, IGMMA, QGMMA, BGMMA); the full histogram is kept beside it.
SASS_OF_INTEREST = (
    "HMMA", "IMMA", "HGMMA", "IGMMA", "QMMA", "QGMMA",   # tensor cores
    "LDSM", "STSM",                                      # ldmatrix / stmatrix
    "LDGSTS", "LDGDEPBAR",                               # cp.async and its commit
    "UTMALDG", "UTMASTG", "UBLKCP",                      # TMA / bulk copies (sm_90)
    "LDL", "STL",                                        # local memory (spills, stack arrays)
    "BAR", "SHFL", "ATOMS", "ATOMG", "RED",              # barriers, shuffles, atomics
)

# Per-SM limits by compute capability (CUDA C++ Programming Guide, "Technical Specifications per
# Compute Capability"; allocation rules as in the toolkit's cuda_occupancy.h). Shared memory per SM
# is the largest carveout; a block may use up to shared_per_block_optin after
# cudaFuncSetAttribute(MaxDynamicSharedMemorySize), 48 KiB without it; the driver reserves
# reserved_shared_per_block more per block.
KIB = 1024
ARCH_LIMITS = {
    80: dict(max_warps_per_sm=64, max_blocks_per_sm=32, shared_per_sm=164 * KIB,
             shared_per_block_optin=163 * KIB, barriers_per_block_slot=2),
    86: dict(max_warps_per_sm=48, max_blocks_per_sm=16, shared_per_sm=100 * KIB,
             shared_per_block_optin=99 * KIB, barriers_per_block_slot=1),
    87: dict(max_warps_per_sm=48, max_blocks_per_sm=16, shared_per_sm=164 * KIB,
             shared_per_block_optin=163 * KIB, barriers_per_block_slot=1),
    89: dict(max_warps_per_sm=48, max_blocks_per_sm=24, shared_per_sm=100 * KIB,
             shared_per_block_optin=99 * KIB, barriers_per_block_slot=1),
    90: dict(max_warps_per_sm=64, max_blocks_per_sm=32, shared_per_sm=228 * KIB,
             shared_per_block_optin=227 * KIB, barriers_per_block_slot=2),
    100: dict(max_warps_per_sm=64, max_blocks_per_sm=32, shared_per_sm=228 * KIB,
              shared_per_block_optin=227 * KIB, barriers_per_block_slot=2),
}
COMMON_LIMITS = dict(registers_per_sm=65536, registers_per_block=65536, max_registers_per_thread=255,
                     register_alloc_unit_per_warp=256, register_sub_partitions=4,
                     max_threads_per_block=1024, warp_size=32, shared_alloc_unit=128,
                     reserved_shared_per_block=1 * KIB, shared_per_block_default=48 * KIB)


class ToolError(Exception):
    """A failure with a message for the user (exit status 2 unless said otherwise)."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------------------
# architectures


def parse_arch(text: str) -> str:
    """'80', 'sm_80', '90a', '90a-real' -> '80' / '90a'."""
    m = re.fullmatch(r"(?:sm_|compute_)?(\d+)([af]?)(?:-real|-virtual)?", text.strip())
    if not m:
        raise ToolError(f"bad --arch '{text}': expected a number with an optional a/f suffix, e.g. 80 or 90a")
    return m.group(1) + m.group(2)


def arch_limits(arch: str) -> dict | None:
    number = int(re.match(r"\d+", arch).group(0))
    specific = ARCH_LIMITS.get(number)
    if specific is None:
        return None
    return {**COMMON_LIMITS, **specific}


# ------------------------------------------------------------------------------------------------
# tools next to nvcc


def python_nvidia_bin_dirs() -> list[Path]:
    """bin folders of NVIDIA's PyPI wheels (nvidia-cuda-cuobjdump & co.) for this interpreter."""
    dirs: list[Path] = []
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    for root in (spec.submodule_search_locations if spec and spec.submodule_search_locations else []):
        root = Path(root)
        dirs += sorted(root.glob("cu*/bin")) + sorted(root.glob("cuda_*/bin"))
    return dirs


def find_tool(name: str, explicit: str | None, cuda_bin: Path | None) -> str | None:
    if explicit:
        return explicit if Path(explicit).is_file() else None
    if cuda_bin and (cuda_bin / name).is_file():
        return str(cuda_bin / name)
    found = shutil.which(name)
    if found:
        return found
    for d in python_nvidia_bin_dirs():
        if (d / name).is_file():
            return str(d / name)
    return None


def cccl_flags(nvcc: Path) -> list[str]:
    """-isystem <cuda>/include/cccl when the toolkit has that folder but nvcc.profile misses it."""
    top = nvcc.resolve().parent.parent
    candidates = [top / "include" / "cccl"] + sorted(top.glob("targets/*/include/cccl"))
    cccl = next((c for c in candidates if c.is_dir()), None)
    if cccl is None:
        return []  # CUDA 12 and older: CUB/Thrust/libcu++ live directly in include/
    profile = nvcc.resolve().parent / "nvcc.profile"
    try:
        if "cccl" in profile.read_text(errors="replace"):
            return []  # nvcc already adds it (CUDA 13)
    except OSError:
        pass
    return ["-isystem", str(cccl)]


def nvcc_version(nvcc: str) -> str | None:
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return None
    m = re.search(r"\bV(\d+\.\d+\.\d+)", out)
    return m.group(1) if m else None


def demangle(names: list[str], demangler: str | None) -> dict[str, str]:
    result = {n: n for n in names}
    todo = [n for n in names if n.startswith("_Z")]
    if not todo or not demangler:
        return result
    try:
        out = subprocess.run([demangler], input="\n".join(todo) + "\n", capture_output=True,
                             text=True, check=False).stdout.splitlines()
    except OSError:
        return result
    if len(out) == len(todo):
        result.update({n: d.strip() or n for n, d in zip(todo, out)})
    return result


# ------------------------------------------------------------------------------------------------
# parsing ptxas -v and cuobjdump output

_RE_ENTRY = re.compile(r"ptxas info\s*: Compiling entry function '([^']+)' for '([^']+)'")
_RE_FUNC = re.compile(r"ptxas info\s*: Compiling function '([^']+)'")
_RE_PROPS = re.compile(r"ptxas info\s*: Function properties for (\S+)")
_RE_FRAME = re.compile(r"^\s*(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_RE_USED = re.compile(r"ptxas info\s*: Used (\d+) registers(.*)$")
_RE_GMEM = re.compile(r"ptxas info\s*: (\d+) bytes gmem")
_RE_BYTES = re.compile(r"(\d+) bytes ([A-Za-z_ ]+?(?:\[\d+\])?)\s*(?:,|$)")


def _blank_function(name: str, entry: bool) -> dict:
    f = {"name": name, "entry": entry, "registers": None, "barriers": 0, "stack_bytes": 0,
         "cumulative_stack_bytes": 0, "spill_store_bytes": 0, "spill_load_bytes": 0,
         "shared_bytes": 0, "constant_bytes": 0, "constant_banks": {}, "local_bytes": 0}
    return f


def parse_ptxas(log: str) -> tuple[list[dict], list[dict], int | None, list[str]]:
    """-> (kernels, other functions, gmem bytes, diagnostics) in ptxas' order."""
    functions: dict[str, dict] = {}
    order: list[str] = []
    entry = props = None
    gmem = None
    diagnostics: list[str] = []

    def get(name: str, is_entry: bool) -> dict:
        if name not in functions:
            functions[name] = _blank_function(name, is_entry)
            order.append(name)
        elif is_entry:
            functions[name]["entry"] = True
        return functions[name]

    for line in log.splitlines():
        if m := _RE_ENTRY.search(line):
            entry = props = m.group(1)
            get(entry, True)
        elif m := _RE_FUNC.search(line):
            entry = props = m.group(1)
            get(entry, False)
        elif m := _RE_PROPS.search(line):
            props = m.group(1)
            get(props, False)
        elif m := _RE_FRAME.match(line):
            if props is not None:
                f = functions[props]
                f["stack_bytes"], f["spill_store_bytes"], f["spill_load_bytes"] = map(int, m.groups())
        elif m := _RE_USED.search(line):
            if entry is None:
                continue
            f = functions[entry]
            f["registers"] = int(m.group(1))
            rest = m.group(2)
            if b := re.search(r"used (\d+) barriers", rest):
                f["barriers"] = int(b.group(1))
            for amount, what in _RE_BYTES.findall(rest):
                amount, what = int(amount), what.strip()
                if what == "smem":
                    f["shared_bytes"] = amount
                elif what.startswith("cmem"):
                    f["constant_banks"][what] = amount
                    if what == "cmem[0]":
                        f["constant_bytes"] = amount
                elif what == "lmem":
                    f["local_bytes"] = amount
                elif what == "cumulative stack size":
                    f["cumulative_stack_bytes"] = amount
                elif what == "stack":
                    f["stack_bytes"] = max(f["stack_bytes"], amount)
        elif m := _RE_GMEM.search(line):
            gmem = int(m.group(1))
        elif line.strip() and "ptxas info" not in line and not _RE_FRAME.match(line):
            diagnostics.append(line.rstrip())
    kernels = [functions[n] for n in order if functions[n]["entry"]]
    others = [functions[n] for n in order if not functions[n]["entry"]]
    return kernels, others, gmem, diagnostics


_RE_SASS_FUNC = re.compile(r"^\s*Function\s*:\s*(\S+)")
_RE_SASS_INSN = re.compile(r"^\s*/\*[0-9a-fA-F]+\*/\s+(?:@!?U?P(?:T|\d+)\s+)?([A-Z][A-Z0-9_]*)")


def parse_sass(text: str) -> dict[str, dict[str, int]]:
    """cuobjdump -sass text -> {function name: {mnemonic: count}} (mnemonic without modifiers)."""
    result: dict[str, dict[str, int]] = {}
    current = None
    for line in text.splitlines():
        if m := _RE_SASS_FUNC.match(line):
            current = result.setdefault(m.group(1), {})
        elif current is not None and (m := _RE_SASS_INSN.match(line)):
            op = m.group(1)
            current[op] = current.get(op, 0) + 1
    return result


_RE_ELF_INFO = re.compile(r"^\.nv\.info\.(\S+)\s*$")
_RE_ELF_ATTR = re.compile(r"^\s*Attribute:\s*(\S+)")
_RE_ELF_VALUE = re.compile(r"^\s*Value:\s*(.*)$")


def parse_elf_launch_bounds(text: str) -> dict[str, dict]:
    """cuobjdump -elf text -> {kernel: {"max_threads": n, "required_threads": n}} from the
    EIATTR_MAX_THREADS (__launch_bounds__) and EIATTR_REQNTID attributes."""
    result: dict[str, dict] = {}
    current = attr = None
    for line in text.splitlines():
        if m := _RE_ELF_INFO.match(line):
            current, attr = m.group(1), None
        elif line.startswith(".") or not line.strip():
            if line.startswith("."):
                current = None
        elif current is not None and (m := _RE_ELF_ATTR.match(line)):
            attr = m.group(1)
        elif current is not None and attr and (m := _RE_ELF_VALUE.match(line)):
            key = {"EIATTR_MAX_THREADS": "max_threads", "EIATTR_REQNTID": "required_threads"}.get(attr)
            if key:
                dims = [int(v, 16) for v in re.findall(r"0x[0-9a-fA-F]+", m.group(1))]
                if dims:
                    result.setdefault(current, {})[key] = math.prod(dims)
            attr = None
    return result


# ------------------------------------------------------------------------------------------------
# occupancy (the rules of cuda_occupancy.h for compute capability 8.x/9.x/10.x)


def _round_up(x: int, unit: int) -> int:
    return -(-x // unit) * unit


def registers_warp_limit(limits: dict, registers: int) -> tuple[int, int]:
    """-> (registers allocated per warp, most warps an SM can hold by registers alone)."""
    per_warp = _round_up(registers * limits["warp_size"], limits["register_alloc_unit_per_warp"])
    if per_warp == 0:
        return 0, limits["max_warps_per_sm"]
    subs = limits["register_sub_partitions"]
    return per_warp, (limits["registers_per_sm"] // subs // per_warp) * subs


def occupancy(limits: dict, kernel: dict, threads: int | None, dynamic_smem: int, source: str | None) -> dict:
    regs = kernel["registers"] or 0
    per_warp, warps_by_regs = registers_warp_limit(limits, regs)
    occ = {"block_threads": threads, "block_threads_source": source,
           "dynamic_shared_bytes": dynamic_smem if threads else None,
           "registers_per_warp_allocated": per_warp,
           "warps_per_sm_register_limit": min(warps_by_regs, limits["max_warps_per_sm"]),
           "shared_bytes_allocated_per_block": None, "needs_shared_optin": None,
           "blocks_per_sm": None, "warps_per_sm": None, "occupancy": None,
           "limited_by": None, "limits": None}
    if not threads:
        return occ
    warps = -(-threads // limits["warp_size"])
    # registers: per-block checks (hardware assumes whole sub-partition groups), then per SM
    if (regs > limits["max_registers_per_thread"]
            or per_warp * _round_up(warps, limits["register_sub_partitions"]) > limits["registers_per_block"]):
        by_regs = 0
    else:
        by_regs = warps_by_regs // warps
    by_warps = 0 if threads > limits["max_threads_per_block"] else limits["max_warps_per_sm"] // warps
    by_blocks = limits["max_blocks_per_sm"]
    user_smem = kernel["shared_bytes"] + dynamic_smem
    smem = _round_up(user_smem + limits["reserved_shared_per_block"], limits["shared_alloc_unit"])
    if smem > limits["shared_per_block_optin"] + limits["reserved_shared_per_block"]:
        by_smem = 0
    else:
        by_smem = limits["shared_per_sm"] // smem if smem else by_blocks
    table = {"registers": by_regs, "warps": by_warps, "blocks": by_blocks, "shared": by_smem}
    # a block size the kernel was not built for (__launch_bounds__, reqntid) does not launch
    max_threads, required = kernel.get("max_threads"), kernel.get("required_threads")
    if (max_threads and threads > max_threads) or (required and threads != required):
        table["launch_bounds"] = 0
    barriers = kernel.get("barriers") or 0
    if barriers:  # named barriers: 2 per block slot on sm_80/sm_90 (cuda_occupancy.h)
        table["barriers"] = (limits["max_blocks_per_sm"] * limits["barriers_per_block_slot"]) // barriers
    blocks = min(table.values())
    occ.update({
        "dynamic_shared_bytes": dynamic_smem,
        "shared_bytes_allocated_per_block": smem,
        "needs_shared_optin": user_smem > limits["shared_per_block_default"],
        "blocks_per_sm": blocks,
        "warps_per_sm": blocks * warps,
        "occupancy": round(blocks * warps / limits["max_warps_per_sm"], 4),
        "limited_by": sorted(k for k, v in table.items() if v == blocks),
        "limits": table,
    })
    return occ


# ------------------------------------------------------------------------------------------------
# compile


def parse_launch(specs: list[str]) -> list[tuple[str, int, int]]:
    hints = []
    for spec in specs:
        m = re.fullmatch(r"(.+)=(\d+)(?::(\d+))?", spec)
        if not m:
            raise ToolError(f"bad --launch '{spec}': expected KERNEL_SUBSTRING=THREADS[:DYNAMIC_SMEM_BYTES]")
        hints.append((m.group(1), int(m.group(2)), int(m.group(3) or 0)))
    return hints


def cmd_compile(args: argparse.Namespace) -> int:
    nvcc = Path(args.nvcc)
    if not nvcc.is_file():
        raise ToolError(f"nvcc not found at '{args.nvcc}'")
    source = Path(args.source).resolve()
    if not source.is_file():
        raise ToolError(f"source '{args.source}' does not exist")
    archs = list(dict.fromkeys(parse_arch(a) for a in args.arch))
    if not archs:
        raise ToolError("no --arch given")
    hints = parse_launch(args.launch)
    workdir = Path(args.workdir or Path(args.out).resolve().parent / "work").resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cuda_bin = nvcc.resolve().parent
    cuobjdump = find_tool("cuobjdump", args.cuobjdump, cuda_bin)
    nvdisasm = find_tool("nvdisasm", None, cuda_bin)
    demangler = find_tool("cu++filt", None, cuda_bin) or shutil.which("c++filt")

    common = ["-cubin", f"-std={args.std}", "-O3", "-Xptxas", "-v", "--expt-relaxed-constexpr"]
    extra = cccl_flags(nvcc)
    if args.ccbin:
        extra += ["-ccbin", args.ccbin]
    for inc in args.include:
        extra += ["-I", str(Path(inc).resolve())]
    for d in args.define:
        extra.append(f"-D{d}")
    extra += args.nvcc_flag

    env = dict(os.environ)
    if nvdisasm:  # cuobjdump -sass runs nvdisasm, looked up in PATH or NVDISASM_PATH
        env["NVDISASM_PATH"] = str(Path(nvdisasm).parent)
        env["PATH"] = str(Path(nvdisasm).parent) + os.pathsep + env.get("PATH", "")

    report = {"schema": SCHEMA, "source": str(source), "defines": list(args.define),
              "includes": [str(Path(i).resolve()) for i in args.include],
              "nvcc": {"path": str(nvcc), "version": nvcc_version(str(nvcc))},
              "flags": common + extra,
              "tools": {"cuobjdump": cuobjdump, "nvdisasm": nvdisasm, "demangler": demangler},
              "launch_hints": [{"kernel": k, "threads": t, "dynamic_shared_bytes": s} for k, t, s in hints],
              "arch": {}}
    stem = source.stem
    for i, arch in enumerate(archs):
        sm = f"sm_{arch}"
        cubin = workdir / f"{stem}.{sm}.cubin"
        cmd = [str(nvcc), *common, f"-gencode=arch=compute_{arch},code={sm}", *extra]
        if args.depfile and i == 0:  # same headers for every arch; one depfile
            cmd += ["-MD", "-MF", str(Path(args.depfile).resolve()), "-MT", args.deptarget or args.out]
        cmd += [str(source), "-o", str(cubin)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stdout)
            raise ToolError(f"nvcc failed for {source.name} ({sm}), exit status {proc.returncode}:\n  "
                            + " ".join(cmd), status=proc.returncode or 1)
        kernels, others, gmem, diagnostics = parse_ptxas(proc.stdout)

        sass: dict[str, dict[str, int]] | None = None
        bounds: dict[str, dict] = {}
        sass_error = None
        if cuobjdump is None:
            sass_error = ("cuobjdump not found (beside nvcc, on PATH, or from the PyPI packages "
                          "nvidia-cuda-cuobjdump + nvidia-cuda-nvdisasm)")
        else:
            dis = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True,
                                 env=env, check=False)
            if dis.returncode != 0:
                sass_error = f"cuobjdump -sass failed: {(dis.stderr or dis.stdout).strip()}"
            else:
                sass = parse_sass(dis.stdout)
            elf = subprocess.run([cuobjdump, "-elf", str(cubin)], capture_output=True, text=True,
                                 env=env, check=False)
            if elf.returncode == 0:
                bounds = parse_elf_launch_bounds(elf.stdout)
        if sass_error:
            print(f"nvcc_report: warning: {source.name} {sm}: {sass_error}", file=sys.stderr)

        names = demangle([f["name"] for f in kernels + others], demangler)
        limits = arch_limits(arch)
        out_kernels = []
        for f in kernels:
            k = {"name": f["name"], "demangled": names[f["name"]]}
            k.update({key: f[key] for key in ("registers", "barriers", "stack_bytes", "cumulative_stack_bytes",
                                               "spill_store_bytes", "spill_load_bytes", "shared_bytes",
                                               "constant_bytes", "constant_banks", "local_bytes")})
            b = bounds.get(f["name"], {})
            k["max_threads"] = b.get("max_threads")
            k["required_threads"] = b.get("required_threads")
            hist = sass.get(f["name"]) if sass is not None else None
            if hist is not None:
                k["sass"] = {op: hist.get(op, 0) for op in SASS_OF_INTEREST}
                k["tensor_core_instructions"] = sum(n for op, n in hist.items() if op.endswith("MMA"))
                k["sass_instructions"] = sum(hist.values())
                k["sass_histogram"] = dict(sorted(hist.items()))
            else:
                k["sass"] = None
                k["tensor_core_instructions"] = None
                k["sass_instructions"] = None
                k["sass_histogram"] = None
            hint = next(((t, s) for sub, t, s in hints if sub in k["demangled"] or sub in k["name"]), None)
            if hint:
                threads, dyn, src = hint[0], hint[1], "launch"
            elif k["required_threads"] or k["max_threads"]:
                threads, dyn, src = k["required_threads"] or k["max_threads"], 0, "launch_bounds"
            else:
                threads, dyn, src = None, 0, None
            k["occupancy"] = occupancy(limits, k, threads, dyn, src) if limits else None
            out_kernels.append(k)
        out_functions = [{"name": f["name"], "demangled": names[f["name"]], "stack_bytes": f["stack_bytes"],
                          "spill_store_bytes": f["spill_store_bytes"], "spill_load_bytes": f["spill_load_bytes"]}
                         for f in others]
        report["arch"][sm] = {
            "gencode": f"-gencode=arch=compute_{arch},code={sm}",
            "command": cmd,
            "cubin": str(cubin),
            "limits": limits,
            "global_bytes": gmem,
            "sass_available": sass is not None,
            "sass_error": sass_error,
            "kernels": out_kernels,
            "functions": out_functions,
            "diagnostics": diagnostics,
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out)
    return 0


# ------------------------------------------------------------------------------------------------
# reading reports, merge


def load_reports(paths: list[str]) -> list[dict]:
    """Per-source reports from report files and/or merged summaries, merged by (source, defines)."""
    merged: dict[tuple, dict] = {}
    for p in paths:
        try:
            data = json.loads(Path(p).read_text())
        except (OSError, ValueError) as e:
            raise ToolError(f"cannot read report '{p}': {e}")
        if data.get("schema") == SUMMARY_SCHEMA:
            items = data.get("sources", [])
        elif data.get("schema") == SCHEMA:
            items = [data]
        else:
            raise ToolError(f"'{p}' is not an nvcc report (schema '{data.get('schema')}')")
        for r in items:
            key = (r["source"], tuple(r.get("defines", [])))
            if key in merged:
                merged[key]["arch"].update(r["arch"])
            else:
                merged[key] = json.loads(json.dumps(r))  # deep copy
    return list(merged.values())


def summarize(reports: list[dict]) -> dict:
    per_arch: dict[str, dict] = {}
    for r in reports:
        for sm, a in r["arch"].items():
            t = per_arch.setdefault(sm, {"kernels": 0, "spilling_kernels": 0, "tensor_core_kernels": 0,
                                         "max_registers": 0, "max_shared_bytes": 0})
            for k in a["kernels"]:
                t["kernels"] += 1
                t["spilling_kernels"] += bool(k["spill_store_bytes"] or k["spill_load_bytes"])
                t["tensor_core_kernels"] += bool(k.get("tensor_core_instructions"))
                t["max_registers"] = max(t["max_registers"], k["registers"] or 0)
                t["max_shared_bytes"] = max(t["max_shared_bytes"], k["shared_bytes"])
    return dict(sorted(per_arch.items()))


def cmd_merge(args: argparse.Namespace) -> int:
    reports = sorted(load_reports(args.reports), key=lambda r: (r["source"], r.get("defines", [])))
    summary = {"schema": SUMMARY_SCHEMA, "sources": reports, "totals": summarize(reports)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=1) + "\n")
    tmp.replace(out)
    return 0


# ------------------------------------------------------------------------------------------------
# check


def _tc_spec(spec: str) -> tuple[str, list[str] | None]:
    """'name' or 'name@sm_90a,sm_100a' -> (substring, archs or None for every arch)."""
    if "@" in spec:
        sub, archs = spec.rsplit("@", 1)
        return sub, [f"sm_{parse_arch(a)}" for a in archs.split(",") if a]
    return spec, None


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_check(args: argparse.Namespace) -> int:
    reports = load_reports(args.reports)
    tc_specs = [_tc_spec(s) for s in args.tensor_core]
    failures: list[str] = []
    warnings: list[str] = []
    all_archs = sorted({sm for r in reports for sm in r["arch"]})
    # per --tensor-core spec: matches per arch it applies to (its @ list, else every arch)
    tc_hits: dict[str, dict[str, int]] = {
        spec: {sm: 0 for sm in (archs if archs is not None else all_archs)}
        for spec, (_, archs) in zip(args.tensor_core, tc_specs)}
    allow_hits: dict[str, int] = {s: 0 for s in args.allow_spills}

    rows = []
    for r in reports:
        src = Path(r["source"]).name
        if not r["arch"]:
            warnings.append(f"{src}: no architecture in the report")
        for sm, a in sorted(r["arch"].items()):
            if not a["kernels"]:
                warnings.append(f"{src} {sm}: no kernel in this translation unit")
            for k in a["kernels"]:
                name = k["demangled"]
                allowed = [s for s in args.allow_spills if s in name]
                for s in allowed:
                    allow_hits[s] += 1
                spills = k["spill_store_bytes"] + k["spill_load_bytes"]
                if spills and not allowed:
                    failures.append(f"{name} [{sm}]: spills {k['spill_store_bytes']} bytes stored / "
                                    f"{k['spill_load_bytes']} bytes loaded ({k['registers']} registers)")
                elif spills:
                    warnings.append(f"{name} [{sm}]: spills (allowed by --allow-spills)")
                sass = k.get("sass") or {}
                local_ops = sass.get("LDL", 0) + sass.get("STL", 0)
                if not spills and (local_ops or k["stack_bytes"]):
                    warnings.append(f"{name} [{sm}]: {k['stack_bytes']} bytes stack frame, {local_ops} "
                                    f"LDL/STL without spills (a local array or an ABI call)")
                for spec, (sub, archs) in zip(args.tensor_core, tc_specs):
                    if sub not in name:
                        continue
                    if archs is not None and sm not in archs:
                        continue
                    tc_hits[spec][sm] += 1
                    if not a.get("sass_available"):
                        failures.append(f"{name} [{sm}]: SASS not available, cannot verify tensor-core "
                                        f"instructions: {a.get('sass_error')}")
                    elif not k.get("tensor_core_instructions"):
                        failures.append(f"{name} [{sm}]: named by --tensor-core '{spec}' but has no "
                                        f"tensor-core instruction (HMMA/IMMA/HGMMA/IGMMA/...)")
                occ = k.get("occupancy") or {}
                if occ.get("blocks_per_sm") == 0:
                    failures.append(f"{name} [{sm}]: cannot launch with {occ['block_threads']} threads and "
                                    f"{occ['dynamic_shared_bytes']} bytes dynamic shared memory "
                                    f"(limited by {', '.join(occ['limited_by'])})")
                rows.append((name, sm, k, spills))
            for f in a.get("functions", []):
                if (f["spill_store_bytes"] or f["spill_load_bytes"]) and not any(s in f["demangled"] for s in args.allow_spills):
                    failures.append(f"{f['demangled']} [{sm}] (device function): spills "
                                    f"{f['spill_store_bytes']} bytes stored / {f['spill_load_bytes']} bytes loaded")
    for spec, per_arch in tc_hits.items():
        missing = [sm for sm in per_arch if sm not in all_archs]
        if not any(per_arch.values()):
            failures.append(f"--tensor-core '{spec}' matched no kernel (renamed, or not compiled?)"
                            + (f"; {', '.join(missing)} not in the reports" if missing else ""))
            continue
        for sm, n in per_arch.items():
            if n == 0:
                failures.append(f"--tensor-core '{spec}' matched no kernel on {sm}"
                                + ("" if sm in all_archs else " (that arch is not in the reports)"))
    for spec, n in allow_hits.items():
        if n == 0:
            warnings.append(f"--allow-spills '{spec}' matched no kernel")

    # the table
    width = max([len("kernel")] + [min(len(r[0]), args.name_width) for r in rows])
    head = (f"{'kernel':<{width}}  {'arch':<7} {'regs':>4} {'stack':>6} {'spill st/ld':>12} {'smem':>7} "
            f"{'tensor-core':<16} {'LDL/STL':>7} {'occupancy':<30}")
    print(head)
    print("-" * len(head))
    for name, sm, k, spills in sorted(rows, key=lambda r: (r[0], r[1])):
        sass = k.get("sass")
        if sass is None:
            tc = "n/a (no SASS)"
            local = "n/a"
        else:
            parts = [f"{op} {sass[op]}" for op in ("HMMA", "IMMA", "HGMMA", "IGMMA", "QMMA", "QGMMA") if sass.get(op)]
            other = (k.get("tensor_core_instructions") or 0) - sum(sass.get(op, 0) for op in
                                                                   ("HMMA", "IMMA", "HGMMA", "IGMMA", "QMMA", "QGMMA"))
            if other:
                parts.append(f"other {other}")
            tc = ", ".join(parts) or "-"
            local = f"{sass.get('LDL', 0)}/{sass.get('STL', 0)}"
        occ = k.get("occupancy")
        if not occ:
            occ_text = "n/a (unknown arch)"
        elif occ["block_threads"] is None:
            occ_text = f"<= {occ['warps_per_sm_register_limit']} warps by regs"
        else:
            occ_text = (f"{occ['blocks_per_sm']} x {occ['block_threads']}t = {occ['warps_per_sm']} warps "
                        f"({occ['occupancy']:.0%})")
        spill = f"{k['spill_store_bytes']}/{k['spill_load_bytes']}"
        print(f"{_short(name, width):<{width}}  {sm:<7} {k['registers'] or 0:>4} {k['stack_bytes']:>6} "
              f"{spill:>12} {k['shared_bytes']:>7} {tc:<16} {local:>7} {occ_text:<30}")
    print()
    for w in warnings:
        print(f"warning: {w}")
    for f in failures:
        print(f"FAIL: {f}")
    n_archs = len({sm for r in reports for sm in r["arch"]})
    if failures:
        print(f"nvcc check FAILED: {len(failures)} problem(s) in {len(rows)} kernel builds "
              f"({len(reports)} source(s), {n_archs} arch(s))")
        return 1
    allowed = sum(1 for _, _, _, spills in rows if spills)
    verified = sum(n for per_arch in tc_hits.values() for n in per_arch.values())
    print(f"nvcc check passed: {len(rows)} kernel builds ({len(reports)} source(s), {n_archs} arch(s)), "
          f"{'no spills' if not allowed else f'{allowed} allowed spilling build(s)'}, "
          f"{verified} tensor-core kernel build(s) verified")
    return 0


def cmd_tools(args: argparse.Namespace) -> int:
    cuda_bin = Path(args.nvcc).resolve().parent if args.nvcc else None
    found = {"cuobjdump": find_tool("cuobjdump", None, cuda_bin), "nvdisasm": find_tool("nvdisasm", None, cuda_bin),
             "demangler": (find_tool("cu++filt", None, cuda_bin) if cuda_bin else None) or shutil.which("c++filt")}
    print(json.dumps(found))
    return 0 if found["cuobjdump"] and found["nvdisasm"] else 1


# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="nvcc_report.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compile", help="compile one .cu per arch and write its report")
    c.add_argument("--nvcc", required=True, help="path to nvcc")
    c.add_argument("--source", required=True, help="the .cu file")
    c.add_argument("--arch", action="append", default=[], help="80, 90a, ... (repeatable)")
    c.add_argument("--include", action="append", default=[], help="include directory (repeatable)")
    c.add_argument("--define", action="append", default=[], help="macro definition X or X=V (repeatable)")
    c.add_argument("--std", default="c++20")
    c.add_argument("--ccbin", help="host compiler for nvcc (-ccbin)")
    c.add_argument("--nvcc-flag", action="append", default=[], help="extra nvcc flag (repeatable)")
    c.add_argument("--launch", action="append", default=[],
                   help="KERNEL_SUBSTRING=THREADS[:DYNAMIC_SMEM_BYTES] occupancy hint (repeatable)")
    c.add_argument("--cuobjdump", help="path to cuobjdump (default: beside nvcc, PATH, PyPI wheel)")
    c.add_argument("--depfile", help="write a make-style header dependency file")
    c.add_argument("--deptarget", help="the target named in the depfile (default: --out)")
    c.add_argument("--out", required=True, help="report JSON to write")
    c.add_argument("--workdir", help="folder for the cubins (default: <out folder>/work)")
    c.set_defaults(func=cmd_compile)

    k = sub.add_parser("check", help="print a table and enforce the rules")
    k.add_argument("reports", nargs="+", help="report or summary JSON files")
    k.add_argument("--tensor-core", action="append", default=[], metavar="KERNEL_SUBSTRING[@ARCH,...]",
                   help="kernels whose demangled name contains this must have tensor-core instructions "
                        "(on every arch, or on the listed ones); must match at least one kernel")
    k.add_argument("--allow-spills", action="append", default=[], metavar="KERNEL_SUBSTRING",
                   help="kernels whose demangled name contains this may spill (reported as a warning)")
    k.add_argument("--name-width", type=int, default=72, help="kernel column width of the table")
    k.set_defaults(func=cmd_check)

    m = sub.add_parser("merge", help="merge reports into one summary")
    m.add_argument("reports", nargs="*", help="report or summary JSON files (none: an empty summary)")
    m.add_argument("--out", required=True)
    m.set_defaults(func=cmd_merge)

    t = sub.add_parser("tools", help="where cuobjdump, nvdisasm and the demangler are")
    t.add_argument("--nvcc", help="path to nvcc (its folder is searched first)")
    t.set_defaults(func=cmd_tools)

    args = p.parse_args(argv)
    try:
        return args.func(args)
    except ToolError as e:
        print(f"nvcc_report: error: {e}", file=sys.stderr)
        return e.status


if __name__ == "__main__":
    sys.exit(main())
