"""The GPU proof in one command: on a CUDA GPU, run the CUDA tests, check the Triton kernels against their torch
references and time them, train the quickstart supernet on CUDA (tokens/s, and its loss against the
same steps on the CPU), build the CUDA latency tables with their fidelity report on held-out subnets,
and write every figure to <out>/gpu.json and BENCHMARKS.md ("GPU: one prepared run").

    python experiments/bench/gpu.py                      # on the GPU machine, from a copy of the repo
    python experiments/bench/gpu.py --dry-run --out DIR  # the same code paths on CPU, tiny sizes (the test suite runs it)

Each part runs on its own: one that fails is recorded with its error and the others still run, and
gpu.json, gpu.md and the BENCHMARKS.md section are rewritten after each part, so a run stopped at its time
limit keeps what it measured.
The script exits 1 when a part failed or a kernel differed from its reference, else 0.

Installing on a machine that cannot download: the script needs torch, Triton, ONNX Runtime, onnx,
scikit-learn, rich, PyYAML, safetensors and pydantic (the lent GPU machine has all but pydantic; optuna,
pymoo and wandb are never imported here). When `hwnas` is not importable it installs the project
itself (`pip install --no-deps -e .`) and names any of those still missing. To carry pydantic, here:
`pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d
wheels pydantic pydantic-core annotated-types typing-inspection typing-extensions`, and pass `--wheels wheels` there
(installed with `pip install --no-index --no-deps`).

Budget: about 8 minutes on one H100/H200 at the defaults (kernels ~1 min without torch.compile,
training 2 x --steps, tables with --fidelity held-out subnets).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

if "--dry-run" in sys.argv:  # the Triton interpreter must be chosen before Triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, command, git_commit, machine, write_section  # noqa: E402  (torch only: no hwnas import yet)

PARTS = ("tests", "kernels", "train", "latency")
SECTION = "GPU: one prepared run (kernels, CUDA training, CUDA latency tables)"
NEEDED = ("pydantic", "yaml", "safetensors", "onnxruntime", "onnx", "sklearn", "rich", "triton")  # what the parts import


def install(wheels: str | None) -> None:
    """Make `import hwnas` work in this interpreter from the project's own files (and the wheels in `wheels`)."""
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    if wheels:
        print(f"installing the wheels in {wheels}", flush=True)
        subprocess.run([*pip, *map(str, Path(wheels).glob("*.whl"))], check=True)
    try:
        importlib.import_module("hwnas.supernet")
    except ImportError:
        print("installing hwnas from this copy (pip install --no-deps -e .)", flush=True)
        subprocess.run([*pip, "--no-build-isolation", "-e", str(ROOT)], check=True)
    importlib.invalidate_caches()
    missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"gpu.py: these packages are missing: {', '.join(missing)}; carry their wheels and pass --wheels DIR")


# --- the parts ------------------------------------------------------------------------------------
def config(dry_run: bool, out: Path, steps: int, fidelity: int):
    """The quickstart experiment with this run's steps and folders; a tiny space on a few standard-library
    files for the dry run."""
    from hwnas.config import load_config

    sets = [f"train.steps={steps}", f"train.ckpt_every={steps}", f"train.eval_every={steps}", "train.wandb=disabled",
            "latency.wandb=disabled", f"latency.n_fidelity={fidelity}", "latency.n_user_view=0"]
    if dry_run:
        text = out / "text"
        text.mkdir(parents=True, exist_ok=True)
        for name in ("json/decoder.py", "json/encoder.py", "textwrap.py", "glob.py"):
            src = Path(json.__file__).parent.parent / name
            (text / src.name).write_text(src.read_text())
        sets += ["search_space.depth=[1, 2]", "search_space.embed_dim=[16, 32]", "search_space.head_dim=8",
                 "search_space.block_size=32", "search_space.n_heads={choices: [1, 2], per_layer: true}",
                 "search_space.mlp_ratio={choices: [2, 4], per_layer: true}", "search_space.norm_placement={choices: [pre]}",
                 "search_space.ffn={choices: [mlp, moe], experts: [2], top_k: [1], per_layer: true}",
                 "search_space.attention={choices: [softmax, linear, window], windows: [8], per_layer: true}",
                 "search_space.weight_bits={choices: [16, 8], per_layer: true}",
                 f"train.corpus={text}", "train.batch_size=2", "train.eval_tokens=256", "train.warmup_steps=1",
                 "latency.warmup=1", "latency.min_repeats=3", "latency.max_repeats=5", "latency.check_every=3",
                 "latency.max_seconds=0.2", "latency.n_correction=4", "latency.speed_retakes=0", "latency.speed_backoff_s=0"]
    return load_config(ROOT / "experiments" / "quickstart.yaml", sets + [f"run_dir={out / 'run'}"])


def tests_part(dry_run: bool) -> dict:
    """The CUDA tests (tests/test_cuda.py: the supernet and deployed subnet on CUDA against the CPU, a bf16
    training step, CUDA-event timing) and the Triton kernels' tests, run here; on a dry run the CUDA
    tests alone (they skip without a GPU)."""
    import re

    files = ["tests/test_cuda.py"] + ([] if dry_run else ["tests/test_kernels_triton.py"])
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *files], cwd=ROOT,
                          capture_output=True, text=True)
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?)", tail)}
    print(f"tests: {tail}", flush=True)
    if proc.returncode not in (0, 5) or counts.get("failed") or counts.get("error") or counts.get("errors"):
        print(proc.stdout[-6000:], flush=True)
        raise RuntimeError(f"the CUDA tests failed: {tail}")
    return {"files": files, "summary": tail, "counts": counts}


def kernels_part(dry_run: bool) -> dict:
    """Each Triton kernel checked against its reference and timed (bf16 on CUDA; fp32, tiny, interpreted on a dry run)."""
    import torch

    import kernels as bench

    device = "cpu" if dry_run else "cuda"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU (Triton interpreter)"
    peak_gbs, peak_tflops = bench.device_peaks(name, None, None)
    cases = bench.all_cases(torch.float32 if dry_run else torch.bfloat16, bench.TINY_SHAPES if dry_run else bench.SHAPES, device)
    rows = bench.run_cases(cases, peak_gbs, peak_tflops, compile_=False)
    return {"gpu": name, "peak_gbs": peak_gbs, "peak_tflops": peak_tflops, "table": bench.table(rows),
            "rows": [{"kernel": r["case"].kernel, "shape": r["case"].shape, "us": r["t"], "achieved": r["achieved"],
                      "pct_of_peak": r["pct"], "target": r["case"].target, "met": bench.target_met(r)} for r in rows]}


def train_part(cfg, out: Path, dry_run: bool) -> dict:
    """The supernet trained the same steps, seed and batches on the GPU and on the CPU: throughput and final losses."""
    from hwnas.supernet.train import train

    tc = cfg.train
    runs = {}
    for key, device in (("cuda", "cpu" if dry_run else "cuda"), ("cpu", "cpu")):  # a dry run's "cuda" run is on the CPU too
        t0 = time.perf_counter()
        s = train(cfg.search_space, tc.model_copy(update={"device": device}), out / f"train-{key}", seed=cfg.seed,
                  progress=False, name=cfg.name)
        tokens = tc.steps * tc.batch_size * cfg.search_space.block_size
        runs[key] = {"device": device, "steps": tc.steps, "wall_s": time.perf_counter() - t0, "train_s": s["train_seconds"],
                     "batch_tokens_per_s": tokens / s["train_seconds"],
                     **{k: s[k] for k in ("val_bpb_largest", "val_bpb_smallest")}}
        print(f"train on {key} ({device}): {runs[key]['batch_tokens_per_s']:.0f} batch tokens/s, val bits/byte "
              f"largest {s['val_bpb_largest']:.3f}, smallest {s['val_bpb_smallest']:.3f}", flush=True)
    gap = {r: runs["cuda"][f"val_bpb_{r}"] - runs["cpu"][f"val_bpb_{r}"] for r in ("largest", "smallest")}
    return {"runs": runs, "bpb_cuda_minus_cpu": gap, "speedup": runs["cuda"]["batch_tokens_per_s"] / runs["cpu"]["batch_tokens_per_s"],
            "sandwich": 2 + tc.n_random}


def latency_part(cfg, dry_run: bool) -> dict:
    """The latency tables on the GPU (torch with its Triton kernels; ONNX Runtime where its CUDA provider is
    installed) and each one's fidelity on held-out subnets."""
    import onnxruntime

    from hwnas.latency.stage import run_latency_stage

    device = "cpu" if dry_run else "cuda"
    backends = ["torch"] + (["onnxruntime"] if "CUDAExecutionProvider" in onnxruntime.get_available_providers() and not dry_run
                            else [])
    t0 = time.perf_counter()
    reports = run_latency_stage(cfg.search_space, cfg.latency, cfg.run_path, [device], backends, fidelity=True,
                                progress=not dry_run, seed=cfg.seed, name=cfg.name)
    return {"device": device, "backends": backends, "seconds": time.perf_counter() - t0, "reports": reports,
            "n_fidelity": cfg.latency.n_fidelity,
            "onnxruntime_providers": onnxruntime.get_available_providers()}


# --- the record -----------------------------------------------------------------------------------
def section(result: dict) -> str:
    """The BENCHMARKS.md section: the machine, each part's figures or its error."""
    lines = [f"Command: `{command()}`  ", f"Machine: {result['machine']}; commit {result['commit']}  "]
    if result["dry_run"]:
        lines.append("Dry run: the GPU run's code paths on the CPU at tiny sizes (Triton interpreted); its times measure nothing.")
    tests = result["parts"].get("tests", {})
    if tests:
        lines.append(f"\nTests on this machine ({', '.join(tests.get('files', []))}): {tests.get('summary') or tests.get('error')}")
    k = result["parts"].get("kernels", {})
    if "error" in k:
        lines.append(f"\nKernels: failed: {k['error']}")
    elif k:
        met = [r["met"] for r in k["rows"] if r["met"] is not None]
        lines += [f"\n### Kernels on {k['gpu']}: {sum(met)} of {len(met)} targets met\n", *k["table"]]
    t = result["parts"].get("train", {})
    if "error" in t:
        lines.append(f"\nTraining: failed: {t['error']}")
    elif t:
        lines += ["\n### The quickstart supernet trained on the GPU and on the CPU (same steps, seed and batches)\n",
                  f"Each step trains a sandwich of {t['sandwich']} subnets on one batch; tokens/s counts the batch's tokens.\n",
                  "| device | steps | train s | batch tokens/s | val bits/byte largest | smallest |", "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['device']} | {r['steps']} | {r['train_s']:.1f} | {r['batch_tokens_per_s']:.0f} | {r['val_bpb_largest']:.3f} | "
                  f"{r['val_bpb_smallest']:.3f} |" for r in t["runs"].values()]
        g = t["bpb_cuda_minus_cpu"]
        lines.append(f"\nGPU vs CPU: {t['speedup']:.1f}x the tokens/s; bits/byte GPU minus CPU {g['largest']:+.3f} (largest), "
                     f"{g['smallest']:+.3f} (smallest); the GPU trains in bf16 autocast.")
    lat = result["parts"].get("latency", {})
    if "error" in lat:
        lines.append(f"\nLatency tables: failed: {lat['error']}")
    elif lat:
        lines += [f"\n### Latency tables on {lat['device']} ({', '.join(lat['backends'])}), built in {lat['seconds']:.0f} s\n",
                  "| table | held-out subnets | within 10% | within 5% | MAPE % | Kendall tau | FLOPs tau |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, p in lat["reports"].items():
            lines.append(f"| {name} | {lat['n_fidelity']} | {100 * p['within_10pct']:.0f}% | {100 * p['within_5pct']:.0f}% | "
                         f"{p['mape_pct']:.1f} | {p['kendall_tau']:.3f} | {p['proxies']['flops_kendall_tau']:.3f} |")
        if "onnxruntime" not in lat["backends"]:
            lines.append(f"\nONNX Runtime has no CUDA provider here (providers: {', '.join(lat['onnxruntime_providers'])}).")
    return "\n".join(lines)


def main() -> int:
    first = argparse.ArgumentParser(add_help=False)  # --wheels first: the rest of the parser needs hwnas installed
    first.add_argument("--wheels", default=None)
    install(first.parse_known_args()[0].wheels)
    from hwnas.core.config import MAX_STEPS
    from hwnas.core.errors import HwnasError
    from hwnas.latency.config import MAX_SUBNETS
    from hwnas.stages import int_in

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, Triton interpreter, tiny sizes: proves the code paths")
    p.add_argument("--out", default=str(ROOT / "runs" / "gpu"), help="folder of gpu.json and the runs (default runs/gpu)")
    p.add_argument("--steps", type=int_in(1, MAX_STEPS), default=None, help="training steps on each device (default 200; dry run 3)")
    p.add_argument("--fidelity", type=int_in(0, MAX_SUBNETS), default=None, help="held-out subnets of each table's report (default 100; dry run 4)")
    p.add_argument("--parts", nargs="*", choices=PARTS, default=list(PARTS))
    p.add_argument("--wheels", default=None, help="a folder of wheels to install the project's requirements from (offline)")
    p.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md (gpu.json and gpu.md are written)")
    args = p.parse_args()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("gpu.py: torch sees no CUDA GPU here; nothing was measured (--dry-run runs the same code on CPU)", file=sys.stderr)
        return 2
    out = Path(args.out)
    steps = args.steps if args.steps is not None else (3 if args.dry_run else 200)
    try:
        cfg = config(args.dry_run, out, steps, args.fidelity if args.fidelity is not None else (4 if args.dry_run else 100))
    except HwnasError as e:
        print(f"gpu.py: error: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    result = {"dry_run": args.dry_run, "machine": machine() + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
              "commit": git_commit(), "parts": {}}
    run = {"tests": lambda: tests_part(args.dry_run), "kernels": lambda: kernels_part(args.dry_run), "train": lambda: train_part(cfg, out, args.dry_run),
           "latency": lambda: latency_part(cfg, args.dry_run)}
    failed = False
    for part in args.parts:
        t0 = time.perf_counter()
        print(f"[{part}] running", flush=True)
        try:
            result["parts"][part] = run[part]()
        except Exception as e:  # noqa: BLE001 - record the part's failure and go on with the others
            traceback.print_exc()
            result["parts"][part] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]}
            failed = True
        result["parts"][part]["part_seconds"] = time.perf_counter() - t0
        print(f"[{part}] done in {time.perf_counter() - t0:.0f} s", flush=True)
        text = record(result, out, write=not args.no_write and not args.dry_run)  # after each part: a stopped run keeps it
    print("\n" + text)
    return 1 if failed else 0


def record(result: dict, out: Path, write: bool) -> str:
    """gpu.json, gpu.md and (with `write`) the BENCHMARKS.md section, as the parts so far have them; the section."""
    from hwnas.core.io import atomic_write_json, atomic_write_text

    text = section(result)
    atomic_write_json(out / "gpu.json", result)
    atomic_write_text(out / "gpu.md", text + "\n")
    if write:
        write_section(SECTION, text)
    return text


if __name__ == "__main__":
    sys.exit(main())
