#!/usr/bin/env python3
"""Tests of tools/nvcc_report.py (standard library unittest).

Without MOEKIT_NVCC_FIXTURE_REPORT: the parsers and the occupancy arithmetic on canned ptxas /
cuobjdump text (no CUDA needed). With MOEKIT_NVCC_FIXTURE_REPORT=<nvcc_fixtures.json>: the facts
that tests/nvcc/sample_*.cu are built to produce, on every architecture in that report.
"""

import importlib.util
import json
import os
import sys
import unittest
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "nvcc_report.py"
_spec = importlib.util.spec_from_file_location("nvcc_report", TOOL)
nr = importlib.util.module_from_spec(_spec)
sys.modules["nvcc_report"] = nr
_spec.loader.exec_module(nr)

FIXTURE_REPORT = os.environ.get("MOEKIT_NVCC_FIXTURE_REPORT")

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN7fixture12forced_spillEPKfPfi' for 'sm_80'
ptxas info    : Function properties for _ZN7fixture12forced_spillEPKfPfi
    360 bytes stack frame, 1048 bytes spill stores, 1044 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 360 bytes cumulative stack size, 372 bytes cmem[0]
ptxas info    : Compile time = 22.831 ms
ptxas info    : Compiling entry function '_ZN7fixture9block_sumILi256EEEvPKfPfi' for 'sm_80'
ptxas info    : Function properties for _ZN7fixture9block_sumILi256EEEvPKfPfi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 15 registers, used 1 barriers, 32 bytes smem, 372 bytes cmem[0], 8 bytes cmem[2]
ptxas info    : Compile time = 5.366 ms
ptxas info    : Function properties for _Z1fPfi
    16 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas warning : Registers are spilled to local memory in function '_Z1fPfi', 4 bytes spill stores, 4 bytes spill loads
"""

# the pre-CUDA-12 form of the "Used" line (no barrier count)
PTXAS_OLD = """\
ptxas info    : Compiling entry function '_Z1kPf' for 'sm_80'
ptxas info    : Function properties for _Z1kPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 42 registers, 768 bytes smem, 380 bytes cmem[0], 16 bytes lmem
"""

SASS = """
\tcode for sm_90a
\t\tFunction : _Z1kPf
\t.headerflags\t@"EF_CUDA_SM90 EF_CUDA_VIRTUAL_SM(EF_CUDA_SM90)"
        /*0000*/                   LDC R1, c[0x0][0x28] ;                     /* 0x00000a00ff017b82 */
                                                                              /* 0x000fe40000000800 */
        /*0010*/                   HMMA.16816.F32.BF16 R4, R8, R2, R4 ;       /* 0x000000020804723c */
        /*0020*/              @!P0 HMMA.16816.F32.BF16 R4, R8, R2, R4 ;       /* 0x000000020804723c */
        /*0030*/              @UP0 HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24 ;  /* 0x0 */
        /*0040*/              @!PT LDS RZ, [RZ] ;                             /* 0x00000000fffff984 */
        /*0050*/                   LDSM.16.M88.4 R8, [R24] ;                  /* 0x000000001808783b */
        /*0060*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;              /* 0x0000000000007b1d */
        /*0070*/                   STL.128 [R1], R16 ;                        /* 0x0000001001007387 */
        /*0080*/                   EXIT ;                                     /* 0x000000000000794d */
\t\t..........

\t\tFunction : _Z1gv
        /*0000*/                   SHFL.BFLY PT, R3, R0, 0x10, 0x1f ;         /* 0x0e201f0000037f89 */
        /*0010*/                   EXIT ;                                     /* 0x000000000000794d */
"""

ELF = """
.nv.info._Z1kPf
\t<0x1>
\tAttribute:\tEIATTR_MAXREG_COUNT
\tFormat:\tEIFMT_HVAL
\tValue:\t0x20
\t<0x2>
\tAttribute:\tEIATTR_MAX_THREADS
\tFormat:\tEIFMT_SVAL
\tValue:\t0x100 0x1 0x1 
.nv.info._Z1gv
\tAttribute:\tEIATTR_REQNTID
\tFormat:\tEIFMT_SVAL
\tValue:\t0x20 0x4 0x1 

.nv.constant0._Z1kPf
0x00000000 0x00000000
"""


class Parsers(unittest.TestCase):
    def test_ptxas(self):
        kernels, others, gmem, diags = nr.parse_ptxas(PTXAS_LOG)
        self.assertEqual(gmem, 0)
        self.assertEqual([k["name"] for k in kernels],
                         ["_ZN7fixture12forced_spillEPKfPfi", "_ZN7fixture9block_sumILi256EEEvPKfPfi"])
        spill, bsum = kernels
        self.assertEqual((spill["registers"], spill["stack_bytes"], spill["spill_store_bytes"],
                          spill["spill_load_bytes"], spill["cumulative_stack_bytes"], spill["shared_bytes"]),
                         (32, 360, 1048, 1044, 360, 0))
        self.assertEqual((bsum["registers"], bsum["barriers"], bsum["shared_bytes"], bsum["constant_bytes"]),
                         (15, 1, 32, 372))
        self.assertEqual(bsum["constant_banks"], {"cmem[0]": 372, "cmem[2]": 8})
        self.assertEqual([(f["name"], f["stack_bytes"], f["spill_store_bytes"]) for f in others],
                         [("_Z1fPfi", 16, 4)])
        self.assertEqual(len(diags), 1)
        self.assertIn("Registers are spilled", diags[0])

    def test_ptxas_old_format(self):
        (k,), _, _, _ = nr.parse_ptxas(PTXAS_OLD)
        self.assertEqual((k["registers"], k["barriers"], k["shared_bytes"], k["local_bytes"]), (42, 0, 768, 16))

    def test_sass(self):
        sass = nr.parse_sass(SASS)
        self.assertEqual(set(sass), {"_Z1kPf", "_Z1gv"})
        k = sass["_Z1kPf"]
        self.assertEqual(k["HMMA"], 2)  # predicated instructions count too
        self.assertEqual(k["HGMMA"], 1)
        self.assertEqual((k["LDSM"], k["BAR"], k["STL"], k["LDS"], k["LDC"], k["EXIT"]), (1, 1, 1, 1, 1, 1))
        self.assertEqual(sum(k.values()), 9)  # the encoding-only lines are not instructions
        self.assertEqual(sass["_Z1gv"], {"SHFL": 1, "EXIT": 1})

    def test_elf_launch_bounds(self):
        self.assertEqual(nr.parse_elf_launch_bounds(ELF),
                         {"_Z1kPf": {"max_threads": 256}, "_Z1gv": {"required_threads": 128}})

    def test_arch_names(self):
        self.assertEqual([nr.parse_arch(a) for a in ("80", "sm_80", "90a", "90a-real", "compute_100f")],
                         ["80", "80", "90a", "90a", "100f"])
        with self.assertRaises(nr.ToolError):
            nr.parse_arch("native")

    def test_launch_hints(self):
        self.assertEqual(nr.parse_launch(["block_sum<256>=256:4096", "k=128"]),
                         [("block_sum<256>", 256, 4096), ("k", 128, 0)])
        with self.assertRaises(nr.ToolError):
            nr.parse_launch(["k=lots"])


def _kernel(registers, shared=0, barriers=0):
    return {"registers": registers, "shared_bytes": shared, "barriers": barriers}


class Occupancy(unittest.TestCase):
    """Figures worked by hand with the rules of cuda_occupancy.h."""

    sm80 = nr.arch_limits("80")
    sm90 = nr.arch_limits("90a")

    def test_limits_table(self):
        self.assertEqual((self.sm80["shared_per_sm"], self.sm90["shared_per_sm"]), (164 * 1024, 228 * 1024))
        self.assertEqual((self.sm80["max_warps_per_sm"], self.sm80["max_blocks_per_sm"]), (64, 32))
        self.assertIsNone(nr.arch_limits("75"))

    def test_registers(self):
        # 42 regs -> 1344 -> 1536 per warp; 16384 / 1536 = 10 warps per sub-partition -> 40 warps
        o = nr.occupancy(self.sm80, _kernel(42), 128, 0, "launch")
        self.assertEqual(o["registers_per_warp_allocated"], 1536)
        self.assertEqual(o["warps_per_sm_register_limit"], 40)
        self.assertEqual((o["limits"]["registers"], o["blocks_per_sm"], o["warps_per_sm"]), (10, 10, 40))
        self.assertEqual(o["limited_by"], ["registers"])
        self.assertEqual(o["occupancy"], 0.625)

    def test_block_size_independent_figure_without_a_hint(self):
        o = nr.occupancy(self.sm80, _kernel(128), None, 0, None)
        self.assertEqual(o["warps_per_sm_register_limit"], 16)
        self.assertIsNone(o["blocks_per_sm"])

    def test_shared_memory(self):
        # 32 B static + 48 KiB dynamic + 1 KiB reserved = 50208 -> 50304 (128 B units);
        # sm_80: 167936 / 50304 = 3 blocks; sm_90: 233472 / 50304 = 4 blocks
        o80 = nr.occupancy(self.sm80, _kernel(32, shared=32), 256, 48 * 1024, "launch")
        o90 = nr.occupancy(self.sm90, _kernel(32, shared=32), 256, 48 * 1024, "launch")
        self.assertEqual(o80["shared_bytes_allocated_per_block"], 50304)
        self.assertEqual((o80["blocks_per_sm"], o80["limited_by"], o80["needs_shared_optin"]), (3, ["shared"], True))
        self.assertEqual(o90["blocks_per_sm"], 4)

    def test_does_not_fit(self):
        o = nr.occupancy(self.sm80, _kernel(32), 128, 200 * 1024, "launch")  # > 163 KiB per block
        self.assertEqual((o["blocks_per_sm"], o["limited_by"]), (0, ["shared"]))
        o = nr.occupancy(self.sm80, _kernel(255), 1024, 0, "launch")  # 255 * 1024 registers > 64 Ki
        self.assertEqual(o["blocks_per_sm"], 0)
        o = nr.occupancy(self.sm80, _kernel(16), 2048, 0, "launch")
        self.assertEqual((o["blocks_per_sm"], o["limited_by"]), (0, ["warps"]))

    def test_launch_bounds(self):
        k = dict(_kernel(32), max_threads=128)
        self.assertEqual(nr.occupancy(self.sm80, k, 128, 0, "launch")["blocks_per_sm"], 16)
        o = nr.occupancy(self.sm80, k, 256, 0, "launch")
        self.assertEqual((o["blocks_per_sm"], o["limited_by"]), (0, ["launch_bounds"]))
        o = nr.occupancy(self.sm80, dict(_kernel(32), required_threads=128), 64, 0, "launch")
        self.assertEqual(o["blocks_per_sm"], 0)

    def test_block_and_warp_limits(self):
        o = nr.occupancy(self.sm80, _kernel(16), 32, 0, "launch")  # 1 warp: 32 blocks at most
        self.assertEqual((o["blocks_per_sm"], o["warps_per_sm"], o["limited_by"]), (32, 32, ["blocks"]))
        o = nr.occupancy(self.sm90, _kernel(32), 1024, 0, "launch")
        self.assertEqual((o["blocks_per_sm"], o["warps_per_sm"], o["occupancy"]), (2, 64, 1.0))


@unittest.skipUnless(FIXTURE_REPORT, "MOEKIT_NVCC_FIXTURE_REPORT not set (needs the nvcc build)")
class FixtureReport(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        (cls.report,) = [r for r in nr.load_reports([FIXTURE_REPORT]) if r["source"].endswith("sample_mma.cu")]
        (cls.plain,) = [r for r in nr.load_reports([FIXTURE_REPORT]) if r["source"].endswith("sample_plain.cu")]

    def kernel(self, report, arch, substring):
        (k,) = [k for k in report["arch"][arch]["kernels"] if substring in k["demangled"]]
        return k

    def test_every_arch_is_there(self):
        self.assertGreaterEqual(set(self.report["arch"]), {"sm_80", "sm_90a"})
        for a in self.report["arch"].values():
            self.assertTrue(a["sass_available"], a["sass_error"])
            self.assertIn("-gencode=arch=compute_", a["gencode"])

    def test_mma_kernel(self):
        for arch in self.report["arch"]:
            k = self.kernel(self.report, arch, "fixture::mma_bf16_16x8")
            self.assertGreaterEqual(k["sass"]["HMMA"], 1, arch)
            self.assertEqual(k["tensor_core_instructions"], k["sass"]["HMMA"], arch)
            self.assertGreaterEqual(k["sass"]["LDSM"], 2, arch)    # ldmatrix x4 and x2
            self.assertGreaterEqual(k["sass"]["LDGSTS"], 1, arch)  # cp.async
            self.assertEqual(k["shared_bytes"], 768, arch)
            self.assertEqual((k["spill_store_bytes"], k["spill_load_bytes"]), (0, 0), arch)
            self.assertEqual(k["max_threads"], 32, arch)           # __launch_bounds__(32)
            self.assertEqual(k["occupancy"]["block_threads_source"], "launch_bounds")

    def test_plain_kernels(self):
        for arch in self.plain["arch"]:
            k = self.kernel(self.plain, arch, "fixture::block_sum<256>")
            self.assertEqual(k["tensor_core_instructions"], 0, arch)
            self.assertGreaterEqual(k["sass"]["SHFL"], 10, arch)   # two 5-step butterflies
            self.assertGreaterEqual(k["sass"]["BAR"], 1, arch)
            self.assertEqual(k["shared_bytes"], 32, arch)
            o = k["occupancy"]
            self.assertEqual((o["block_threads"], o["dynamic_shared_bytes"], o["block_threads_source"]),
                             (256, 4096, "launch"))
            self.assertEqual(o["blocks_per_sm"], 8, arch)  # 64 warps / 8 warps per block
            s = self.kernel(self.plain, arch, "fixture::forced_spill")
            self.assertEqual(s["registers"], 32, arch)     # __launch_bounds__(256, 8)
            self.assertGreater(s["spill_store_bytes"], 0, arch)
            self.assertGreater(s["spill_load_bytes"], 0, arch)
            self.assertGreater(s["sass"]["STL"], 0, arch)


if __name__ == "__main__":
    unittest.main()
