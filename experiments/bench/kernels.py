"""Triton kernels vs torch eager vs torch.compile on one CUDA GPU: time, achieved GB/s (memory-bound
kernels) or TFLOP/s (matmuls), and the share of the GPU's peak.

    python experiments/bench/kernels.py [--dtype bf16] [--peak-gbs 3350 --peak-tflops 989] [--no-write]

Needs a CUDA GPU and Triton; without one it says so, exits with status 2 and writes nothing. Each
case first checks the Triton output against the reference, then times every variant with
`triton.testing.do_bench` (median over ~100 ms of runs, L2 flushed between runs, so weights and
activations come from HBM as they do in a model). "eager" is the reference twin (`kernels.*_reference`)
run by torch; "compile" is `torch.compile` of that same function. Targets (issue 10, on an H100):
norms >= 80% of memory bandwidth; elastic linear within 10% of cuBLAS on a contiguous copy of the
slice; int8 weight-only matmul faster than the bf16 matmul at batch <= 16.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, median_time, write_section  # noqa: E402

from hwnas import kernels as K  # noqa: E402

SECTION = "Kernels (Triton, GPU)"  # replaces the placeholder written where no GPU was lent

# (memory bandwidth GB/s, dense bf16/fp16 tensor-core TFLOP/s) from the vendors' datasheets; the first
# substring found in torch.cuda.get_device_name() wins, so the specific names come first.
PEAKS = [
    ("H200", (4800.0, 989.0)),
    ("H100 NVL", (3900.0, 835.0)),
    ("H100 PCIe", (2000.0, 756.0)),
    ("H100", (3350.0, 989.0)),  # SXM5 (torch names it "NVIDIA H100 80GB HBM3")
    ("A100-SXM4-80GB", (2039.0, 312.0)),
    ("A100 80GB PCIe", (1935.0, 312.0)),
    ("A100", (1555.0, 312.0)),  # 40 GB, SXM4 or PCIe
    ("L40S", (864.0, 362.0)),
    ("A10G", (600.0, 70.0)),
    ("L4", (300.0, 121.0)),
]
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()} | {torch.float32: "fp32"}  # fp32: the dry run on CPU

# shapes: decoder widths around GPT-2 small .. LLaMA-7B, with elastic slices of wider weights
NORM_SHAPES = [(16384, 1000, 1024), (8192, 4096, 4096), (32768, 768, 1024)]  # (rows, d, weight width)
LINEAR_SHAPES = [  # (rows, out, in, weight rows, weight cols)
    (8192, 3000, 1000, 4096, 1536), (4096, 4096, 4096, 6144, 6144), (2048, 11008, 4096, 11008, 4096),
    (16, 4000, 4000, 6144, 6144),
]
QUANT_SHAPES = [(m, n, k) for m in (1, 4, 16) for n, k in [(4096, 4096), (11008, 4096)]]  # (rows, out, in)
ATTN_SHAPES = [(8, 12, 1024, 64), (2, 16, 4096, 64), (32, 4, 512, 32)]  # (B, nh, T, hs)
SHAPES = {"norm": NORM_SHAPES, "linear": LINEAR_SHAPES, "quant": QUANT_SHAPES, "attention": ATTN_SHAPES}
# one small shape each, with slices of wider weights: the same code paths on CPU under TRITON_INTERPRET=1 (gpu.py --dry-run)
TINY_SHAPES = {"norm": [(8, 24, 32)], "linear": [(8, 20, 24, 32, 40)], "quant": [(2, 32, 64)], "attention": [(1, 2, 64, 16)]}


def device_peaks(name: str, gbs: float | None, tflops: float | None) -> tuple[float | None, float | None]:
    table = next((p for key, p in PEAKS if key in name), (None, None))
    return (gbs or table[0], tflops or table[1])


@dataclass
class Case:
    """One kernel at one shape: the Triton call, the reference it must equal, the extra baselines."""

    kernel: str
    shape: str
    triton: object
    reference: object
    nbytes: float  # bytes that must move through HBM at least once
    flops: float = 0.0
    baselines: dict = field(default_factory=dict)  # name -> fn (cuBLAS on a contiguous copy, bf16 matmul)
    target: str = ""
    met: object = None  # fn(times in µs, % of peak) -> bool: whether the target is met
    atol: float = 2e-2
    rtol: float = 2e-2


def norm_cases(dtype, shapes=NORM_SHAPES, device="cuda") -> list[Case]:
    cases = []
    for rows, d, d_max in shapes:
        for kind in K.NORM_KINDS:
            for residual in (False, True):
                x = torch.randn(rows, d, device=device, dtype=dtype)
                w, b = torch.randn(d_max, device=device, dtype=dtype), torch.randn(d_max, device=device, dtype=dtype)
                alpha = torch.tensor(0.7, device=device)
                bias = None if kind == "rmsnorm" else b
                r = torch.randn(rows, d, device=device, dtype=dtype) if residual else None
                es = x.element_size()
                cases.append(Case(
                    f"{kind}{' + residual' if residual else ''}", f"{rows}x{d} (w {d_max})",
                    triton=lambda kind=kind, x=x, w=w, bias=bias, alpha=alpha, r=r: K.elastic_norm(
                        kind, x, w, bias, alpha, residual=r, backend="triton"),
                    reference=lambda kind=kind, x=x, w=w, bias=bias, alpha=alpha, r=r: K.norm_reference(
                        kind, x, w, bias, alpha, residual=r),
                    nbytes=rows * d * es * (4 if residual else 2), target=">= 80% of bandwidth",
                    met=lambda t, pct: pct is not None and pct >= 80,
                    atol=6e-2,
                ))
    return cases


def linear_cases(dtype, shapes=LINEAR_SHAPES, device="cuda") -> list[Case]:
    cases = []
    for M, out_f, in_f, out_max, in_max in shapes:
        x = torch.randn(M, in_f, device=device, dtype=dtype)
        w = torch.randn(out_max, in_max, device=device, dtype=dtype) / in_f ** 0.5
        wc = w[:out_f, :in_f].contiguous()
        es = x.element_size()
        cases.append(Case(
            "elastic linear", f"{M}x{in_f} @ [{out_f}x{in_f}] of {out_max}x{in_max}",
            triton=lambda x=x, w=w, o=out_f, i=in_f: K.elastic_linear(x, w, o, i, backend="triton"),
            reference=lambda x=x, w=w, o=out_f, i=in_f: K.linear_reference(x, w, o, i),
            nbytes=(M * in_f + out_f * in_f + M * out_f) * es, flops=2.0 * M * out_f * in_f,
            baselines={"cuBLAS contiguous": lambda x=x, wc=wc: F.linear(x, wc)},
            target="<= 1.10x cuBLAS contiguous",
            met=lambda t, pct: t["triton"] <= 1.10 * t["cuBLAS contiguous"],
        ))
    return cases


def quant_cases(dtype, shapes=QUANT_SHAPES, device="cuda") -> list[Case]:
    cases = []
    for M, N, K_ in shapes:
        w = torch.randn(N, K_, device=device) / K_ ** 0.5
        wd = w.to(dtype)
        x = torch.randn(M, K_, device=device, dtype=dtype)
        for bits in (8, 4):
            qw = K.quantize_weight(w, bits)
            cases.append(Case(
                f"int{bits} weight-only matmul", f"{M}x{K_} @ [{N}x{K_}]",
                triton=lambda x=x, qw=qw: K.quant_matmul(x, qw, backend="triton"),
                reference=lambda x=x, qw=qw: K.quant_matmul_reference(x, qw),
                nbytes=qw.nbytes() + (M * K_ + M * N) * x.element_size(), flops=2.0 * M * N * K_,
                baselines={f"{DTYPE_NAMES[dtype]} matmul": lambda x=x, wd=wd: F.linear(x, wd)},
                target=f"faster than the {DTYPE_NAMES[dtype]} matmul" if bits == 8 and M <= 16 else "",
                met=(lambda t, pct: t["triton"] < t[f"{DTYPE_NAMES[dtype]} matmul"]) if bits == 8 and M <= 16 else None,
            ))
    return cases


def attention_cases(dtype, shapes=ATTN_SHAPES, device="cuda") -> list[Case]:
    cases = []
    for B, nh, T, hs in shapes:
        q, k, v = (torch.randn(B, nh, T, hs, device=device, dtype=dtype) for _ in range(3))
        c = 32
        flops = B * nh * T * (4.0 * c * hs + 6.0 * hs * hs)  # scores, in-chunk values, state read and update
        cases.append(Case(
            "linear attention", f"B{B} nh{nh} T{T} hs{hs}",
            triton=lambda q=q, k=k, v=v: K.linear_attention(q, k, v, backend="triton"),
            reference=lambda q=q, k=k, v=v: K.linear_attention_reference(q, k, v),
            nbytes=4.0 * B * nh * T * hs * q.element_size(), flops=flops, atol=5e-2, rtol=5e-2,
        ))
    return cases


BUILDERS = {"norm": norm_cases, "linear": linear_cases, "quant": quant_cases, "attention": attention_cases}


def all_cases(dtype, shapes=SHAPES, device="cuda", only=None) -> list[Case]:
    """Every case of the kernels in `only` (default all) at `shapes`, tensors on `device`."""
    return [c for key, build in BUILDERS.items() if not only or key in only for c in build(dtype, shapes[key], device)]


def bench(fn) -> float:
    """Median time in microseconds: `do_bench` on CUDA; elsewhere (a dry run under the Triton
    interpreter, which proves the path and times nothing meaningful) a median of a few calls."""
    if not torch.cuda.is_available():
        return median_time(fn, repeats=3, warmup=0) * 1e6
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3


def compiled(fn):
    try:
        c = torch.compile(fn, dynamic=False)
        c()
        return c
    except Exception as e:  # noqa: BLE001 - report and go on: compile support varies by op and version
        print(f"  torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}")
        return None


def run_case(case: Case, peak_gbs, peak_tflops, compile_: bool = True) -> dict:
    """Check the Triton output against the reference (raises if it differs), then time every variant."""
    first = lambda out: out[0] if isinstance(out, tuple) else out  # noqa: E731
    torch.testing.assert_close(first(case.triton()).float(), first(case.reference()).float(),
                               atol=case.atol, rtol=case.rtol)
    t = {"triton": bench(case.triton), "eager": bench(case.reference)}
    comp = compiled(case.reference) if compile_ else None
    t["compile"] = bench(comp) if comp is not None else float("nan")
    for name, fn in case.baselines.items():
        t[name] = bench(fn)
    secs = t["triton"] * 1e-6
    gbs, tflops = case.nbytes / secs / 1e9, case.flops / secs / 1e12
    compute_bound = peak_gbs and peak_tflops and case.flops / case.nbytes > peak_tflops * 1e3 / peak_gbs
    if case.flops and (compute_bound or not case.nbytes):
        achieved, pct = f"{tflops:.1f} TFLOP/s", (100 * tflops / peak_tflops if peak_tflops else None)
    else:
        achieved, pct = f"{gbs:.0f} GB/s", (100 * gbs / peak_gbs if peak_gbs else None)
    return {"case": case, "t": t, "achieved": achieved, "pct": pct, "gbs": gbs, "tflops": tflops}


def fmt_us(v: float) -> str:
    return "n/a" if v != v else f"{v:.1f}"


def run_cases(cases: list[Case], peak_gbs, peak_tflops, compile_: bool = True) -> list[dict]:
    """`run_case` on each, a line printed per case."""
    rows = []
    for case in cases:
        r = run_case(case, peak_gbs, peak_tflops, compile_)
        t = r["t"]
        extra = "  ".join(f"{k} {fmt_us(v)}" for k, v in t.items() if k not in ("triton", "eager", "compile"))
        pct = "" if r["pct"] is None else f" ({r['pct']:.0f}% of peak)"
        print(f"{case.kernel:28s} {case.shape:38s} triton {fmt_us(t['triton']):>8s} us  eager {fmt_us(t['eager']):>8s}"
              f"  compile {fmt_us(t['compile']):>8s}  {extra}  {r['achieved']}{pct}")
        rows.append(r)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return rows


def target_met(r: dict) -> bool | None:
    """Whether the case's target is met (None: it has none)."""
    return None if r["case"].met is None else bool(r["case"].met(r["t"], r["pct"]))


def table(rows: list[dict]) -> list[str]:
    """The markdown table of the timed cases, with the legend above it."""
    body = [
        "Median times (µs) from `triton.testing.do_bench`, L2 flushed between runs. eager = the reference twin in "
        "torch; compile = `torch.compile` of it; baseline = cuBLAS on a contiguous copy of the slice (elastic linear) "
        "or the dense 16-bit matmul (weight-only). Speed-ups are other / Triton. Achieved = Triton's GB/s "
        "(memory-bound) or TFLOP/s (compute-bound, by the roofline).\n",
        "| kernel | shape | Triton µs | eager µs | compile µs | baseline µs | vs eager | vs compile | vs baseline "
        "| achieved | % of peak | target |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        c, t, met = r["case"], r["t"], target_met(r)
        base = next(iter(c.baselines), None)
        tb = t[base] if base else float("nan")
        ratio = lambda v, t=t: "n/a" if v != v else f"{v / t['triton']:.2f}x"  # noqa: E731
        pct = "" if r["pct"] is None else f"{r['pct']:.0f}%"
        target = c.target + ("" if met is None else (" (met)" if met else " (**missed**)"))
        body.append(
            f"| {c.kernel} | {c.shape} | {fmt_us(t['triton'])} | {fmt_us(t['eager'])} | {fmt_us(t['compile'])} | "
            f"{fmt_us(tb) + (f' ({base})' if base else '')} | {ratio(t['eager'])} | {ratio(t['compile'])} | {ratio(tb)} | "
            f"{r['achieved']} | {pct} | {target} |"
        )
    return body


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    p.add_argument("--peak-gbs", type=float, help="the GPU's memory bandwidth in GB/s (default: from its name)")
    p.add_argument("--peak-tflops", type=float, help="the GPU's dense 16-bit tensor-core TFLOP/s (default: from its name)")
    p.add_argument("--only", nargs="*", choices=["norm", "linear", "quant", "attention"], help="a subset of kernels")
    p.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("experiments/bench/kernels.py times the Triton kernels on a CUDA GPU, and this machine has none "
              "(torch.cuda.is_available() is False). Nothing was measured and BENCHMARKS.md was not touched. "
              "The kernels' correctness is tested on CPU by tests/test_kernels_triton.py (Triton interpreter).",
              file=sys.stderr)
        return 2
    if not K.triton_available():
        print("Triton is not installed: pip install triton. Nothing was measured.", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    dtype = DTYPES[args.dtype]
    name = torch.cuda.get_device_name()
    peak_gbs, peak_tflops = device_peaks(name, args.peak_gbs, args.peak_tflops)
    print(f"{name}: peak {peak_gbs or '?'} GB/s, {peak_tflops or '?'} TFLOP/s (16-bit dense), dtype {args.dtype}")
    rows = run_cases(all_cases(dtype, only=args.only), peak_gbs, peak_tflops)
    body = [
        f"Command: `{command()}`  ",
        f"GPU: {name}; torch {torch.__version__}, Triton {__import__('triton').__version__}; {args.dtype}; "
        f"peaks used: {peak_gbs or '?'} GB/s, {peak_tflops or '?'} TFLOP/s (16-bit dense, datasheet)  ",
        *table(rows),
    ]
    print("\n" + "\n".join(body))
    if not args.no_write:
        write_section(SECTION, "\n".join(body))
        print(f"wrote the section '{SECTION}' of BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
