#!/usr/bin/env python3
"""Markdown table of one nvcc report (tools/nvcc_report.py compile output): registers, spills, stack,
dynamic shared memory, tensor-core instructions and occupancy per kernel, sm_80 beside sm_90a.

    python3 tools/nvcc_report_table.py build/nvcc_report/experts_expert_stage.json [--skip SUBSTR...]

docs/kernels.md's resource table is this script's output.
"""
import json
import re
import sys

skip = sys.argv[3:] if len(sys.argv) > 2 and sys.argv[2] == '--skip' else []
d=json.load(open(sys.argv[1]))
out={}
order=[]
for arch in ['sm_80','sm_90a']:
    for k in (k for src in d['sources'] for k in src['arch'][arch]['kernels']):
        n=k['demangled']
        n=re.sub(r'\(.*$','',n).replace('void ','')
        n=re.sub(r'moekit::v0_1::','',n)
        n=re.sub(r'(kernels|plan|routing)::cuda::','',n)
        n=n.replace('experts::','').replace('act::','').replace('kernels::','').replace('routing::','')
        n=n.replace('KernelConfig<64, 64, 32, 2, 2, 3>','Prefill').replace('KernelConfig<16, 64, 64, 1, 4, 3>','Decode')
        n=n.replace('GatedMlp<SiLU, bf16_t>','SwiGlu<bf16>').replace('GatedMlp<SiLU, fp16_t>','SwiGlu<fp16>').replace('bf16_t','bf16').replace('fp16_t','fp16')
        if n not in out: order.append(n); out[n]={}
        o=k['occupancy'] or {}
        out[n][arch]=(k['registers'],k['spill_store_bytes']+k['spill_load_bytes'],k['stack_bytes'],o.get('dynamic_shared_bytes',0),k['tensor_core_instructions'],o.get('blocks_per_sm'),o.get('occupancy'))
print('| kernel | regs sm_80 / sm_90a | spills | stack B | dyn. smem B | HMMA (sm_90a) | blocks/SM sm_80 / sm_90a | occupancy sm_80 / sm_90a |')
print('|---|---|---|---|---|---|---|---|')
for n in sorted(order):
    if any(x in n for x in skip):
        continue
    a=out[n].get('sm_80'); b=out[n].get('sm_90a')
    print(f"| `{n}` | {a[0]} / {b[0]} | {a[1]+b[1]} | {b[2]} | {b[3]} | {b[4]} | {a[5]} / {b[5]} | {a[6]:.2f} / {b[6]:.2f} |")
