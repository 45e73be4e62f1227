"""Compile the Triton kernels for an NVIDIA GPU architecture without a GPU (ahead of time, through
Triton's own compiler and its bundled ptxas), and report failures, registers and spills.

    python -m hwnas.kernels.compile_check [--arch 90] [--quick | --all-configs] [--only norm linear ...]

The interpreter tests check what the kernels compute; this checks that the code the GPU would run
compiles (dot shapes and dtypes, layouts, the int4 unpacking, every autotune config) for the chosen
compute capability (90 = H100/H200, 80 = A100). It must run without TRITON_INTERPRET (compiled
kernel objects are needed), so the tests run it in a subprocess.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time


def _jobs(all_configs: bool, quick: bool = False):
    """(name, autotuned kernel, pointer/float types, constexprs, config, unit strides) for every case;
    `quick`: one config of each kernel, bf16, one width."""
    import torch

    from . import linear_attention_triton as A
    from . import linear_triton as L
    from . import norm_triton as N
    from . import quant_matmul_triton as Q

    def pick(configs):
        return configs[:1] if quick else configs if all_configs else configs[:1] + configs[-1:]

    def union(*lists):  # the configs autotuning may try at any of several shapes
        return list({str(c): c for cs in lists for c in cs}.values())

    jobs = []
    for dt in ("bf16",) if quick else ("bf16", "fp32"):
        prec = "tf32x3" if dt == "fp32" else "tf32"  # what the wrappers pass (fp32 without torch's TF32)
        t = {"X": f"*{dt}", "R": f"*{dt}", "W": f"*{dt}", "B": f"*{dt}", "A": "*fp32", "Y": f"*{dt}", "H": f"*{dt}",
             "eps": "fp32"}
        for kind, name in enumerate(N.KINDS):
            for block_d in (1024,) if quick else (64, 1024, 8192):
                for cfg in pick(N.prune_configs(N.autotune_configs(), {}, BLOCK_D=block_d)):
                    jobs.append((f"norm {name} {dt} d<={block_d}", N.norm_fwd_kernel, t,
                                 {"KIND": kind, "HAS_RES": True, "HAS_BIAS": name != "rmsnorm", "BLOCK_D": block_d}, cfg, ()))
        t = {"A": f"*{dt}", "B": f"*{dt}", "C": f"*{dt}", "BIAS": f"*{dt}"}
        configs = union(*(L.prune_configs(L.autotune_configs(), {"M": m}, PRECISION=prec) for m in (16, 4096)))
        for cfg in pick(configs):
            jobs.append((f"elastic linear {dt}", L.matmul_kernel, t, {"HAS_BIAS": True, "PRECISION": prec, "DOT_FP32": False},
                         cfg, ("sak", "sbk", "scn")))  # the forward's layout: x rows, weight rows (read as W.T)
        for bits in (8, 4):
            t = {"X": f"*{dt}", "Q": "*i8" if bits == 8 else "*u8", "S": "*fp32", "Y": f"*{dt}"}
            x = torch.empty(0, dtype=torch.float32 if dt == "fp32" else torch.bfloat16)
            configs = union(*(Q.prune_configs(Q.autotune_configs(), {"M": m, "X": x}) for m in (1, 64, 4096)))
            for cfg in pick(configs):
                jobs.append((f"int{bits} matmul {dt}", Q.wq_matmul_kernel, t, {"BITS": bits, "DOT_FP32": False}, cfg,
                             ("sxk", "sqk", "syn")))
        t = {"Q": f"*{dt}", "K": f"*{dt}", "V": f"*{dt}", "Out": f"*{dt}", "eps": "fp32"}
        for block_d in (64,) if quick else (16, 64, 128):
            for cfg in pick(A.prune_configs(A.autotune_configs(), {}, BLOCK_D=block_d, PRECISION=prec)):
                jobs.append((f"linear attention {dt} hs<={block_d}", A.linear_attention_fwd_kernel, t,
                             {"PRECISION": prec, "BLOCK_D": block_d}, cfg, ("sqd", "skd", "svd", "sod")))
    return jobs


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(stack + local memory bytes per thread, i.e. register spills; registers per thread), from the
    bundled cuobjdump."""
    import triton

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as f:
        f.write(cubin)
    try:
        out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True).stdout
    finally:
        os.unlink(f.name)
    spilled = [int(a) + int(b) for a, b in re.findall(r"STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", out)]
    regs = [int(r) for r in re.findall(r"REG:(\d+)", out)]
    return max(spilled, default=0), max(regs, default=0)


def compile_all(arch: int = 90, all_configs: bool = False, only: list[str] | None = None,
                quick: bool = False) -> list[dict]:
    """Compile every case; return one record per case (name, config, ok, error, spill bytes, registers)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("compile_check needs compiled kernels: run it without TRITON_INTERPRET")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    target = GPUTarget("cuda", arch, 32)
    records = []
    for name, kernel, types, consts, cfg, ones in _jobs(all_configs, quick):
        if only and not any(name.startswith(o) for o in only):
            continue
        jit = kernel.fn  # the JITFunction under the autotuner
        # specialize as a launch would: unit strides become constants, pointers and the other strides
        # are taken as multiples of 16 (true of the contiguous tensors the wrappers pass, for widths
        # that are multiples of 16)
        constexprs = {**consts, **cfg.kwargs, **{n: 1 for n in ones}}
        sig = {p.name: "constexpr" if p.is_constexpr or p.name in ones else types.get(p.name, "i32") for p in jit.params}
        attrs = {(i,): [["tt.divisibility", 16]] for i, p in enumerate(jit.params)
                 if not p.is_constexpr and p.name not in ones and (sig[p.name].startswith("*") or p.name.startswith("s"))}
        config = ", ".join([f"{k}={v}" for k, v in cfg.kwargs.items()] + [f"warps={cfg.num_warps}", f"stages={cfg.num_stages}"])
        rec = {"name": name, "config": config, "ok": True, "error": "", "spill": 0, "regs": 0}
        try:
            k = triton.compile(ASTSource(jit, sig, constexprs=constexprs, attrs=attrs), target=target,
                               options={"num_warps": cfg.num_warps, "num_stages": cfg.num_stages})
            rec["spill"], rec["regs"] = _resource_usage(k.asm["cubin"])
        except Exception as e:  # noqa: BLE001 - collected and reported
            rec.update(ok=False, error=f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}")
        records.append(rec)
    return records


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90, help="compute capability x10: 90 H100/H200, 80 A100, 89 L4/L40S")
    p.add_argument("--all-configs", action="store_true", help="every autotune config (slow), not the first and last")
    p.add_argument("--quick", action="store_true", help="one config of each kernel, bf16 (what the tests run)")
    p.add_argument("--only", nargs="*", help="name prefixes: norm, elastic, int8, int4, linear attention")
    args = p.parse_args()
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    t0 = time.time()
    records = compile_all(args.arch, args.all_configs, args.only, args.quick)
    for r in records:
        status = "ok" if r["ok"] else f"FAILED {r['error']}"
        spill = f", SPILLS {r['spill']} bytes of local memory" if r["spill"] else ""
        print(f"{r['name']:34s} {r['config']:52s} {status} ({r['regs']} registers{spill})")
    failed = [r for r in records if not r["ok"]]
    print(f"sm_{args.arch}: {len(records) - len(failed)}/{len(records)} compiled in {time.time() - t0:.0f} s; "
          f"{sum(1 for r in records if r['spill'])} spill registers to local memory")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
