"""Latency-table fidelity: build the quickstart space's latency table on this machine's CPU for the
torch and onnxruntime backends (timing the build), then check each on >= 100 held-out random
subnets (measured end to end) against the table's prediction and against FLOPs / parameter count.

The held-out subnets are measured in a fresh process that loads the table from its file, as the
search and the export later use it: in the process that has just built the table, run times
shifted by 2-4% against the calibration subnets timed there (see the closing note of the latency
issue), a state of that process, not a property of the table.

    python experiments/bench/latency_fidelity.py [--config experiments/quickstart.yaml] [--threads 2]
        [--n 100] [--n-correction 40] [--seed 0] [--backends torch onnxruntime] [--keep] [--no-write]
        [--workload decode [--decode-context 64]] [--statistic min]

`--workload decode`: the tables of one decoding step (one new token over a cache of the context's
tokens, `latency.workloads`), in runs/bench-latency-decode. `--statistic min` states the minimum of
each subnet's runs as the headline: a decoding step takes 0.05-1.5 ms, and on a shared 2-vCPU VM
the median of such short runs moves with the neighbours (ONNX Runtime: 75-90% of subnets retimed
within 10% of themselves) while the minimum repeats (100%); every statistic is scored either way.

Tables and reports go to runs/bench-latency/latency/ (rebuilt from scratch unless --keep).

`--disturb START SECONDS`: a neighbour that streams memory (a numpy array of 320 MB multiplied over
and over, on another core) starts START seconds into the run and stops SECONDS later, to show what
the speed reference and its retakes do about a busy neighbour; the figures go to their own section.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, command, machine, write_section  # noqa: E402

from hwnas.config import load_config  # noqa: E402
from hwnas.latency import LatencyConfig, run_latency, space_pieces  # noqa: E402
from hwnas.latency.fidelity import fidelity_report_fresh  # noqa: E402
from hwnas.latency.protocol import STATISTICS  # noqa: E402
from hwnas.search_space import SearchSpace  # noqa: E402


def workload_text(work: dict) -> str:
    if "context" in work:
        return (f"batch {work['batch_size']}, one new token per sequence over a cache of {work['context']} tokens (a "
                "decoding step: what each generated token costs)")
    return f"batch {work['batch_size']} x {work['seq_len']} tokens (prefill)"


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def speed_cells(sp: dict | None) -> str:
    if not sp:
        return "- | - | - | - | -"
    b, u, a = sp["build_ms"], sp["table_unscaled"], sp.get("at_table_speed") or {}
    at = f"{100 * a['within_10pct']:.0f}%" if a else "-"
    drift = f"{sp['drift_pct']:+.1f}%" if sp.get("drift_pct") is not None else "-"
    again = [f"{sp['retaken'][k]}/{len(sp[f'{k}_disturbance'])} ({sp['still_disturbed'][k]} still)" for k in ("build", "report")]
    return (f"{b['level']:.3f} ({min(b['windows']):.3f}-{max(b['windows']):.3f}) | {' and '.join(again)} | {drift} | "
            f"{100 * u['within_10pct']:.0f}% | {at}")


HOG = "import numpy as np, time, sys\na = np.ones(40_000_000); end = time.time() + float(sys.argv[1])\n" \
      "while time.time() < end:\n    b = a * 1.0001\n"


def disturb(start: float, seconds: float) -> threading.Timer:
    """Start the memory-streaming neighbour `start` s from now, for `seconds` s (a timer to cancel)."""
    timer = threading.Timer(start, lambda: subprocess.Popen([sys.executable, "-c", HOG, str(seconds)]))
    timer.daemon = True
    timer.start()
    return timer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="experiments/quickstart.yaml")
    p.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"], choices=["torch", "onnxruntime"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: the latency config's, else all cores)")
    p.add_argument("--n", type=int, default=None, help="held-out subnets (default: the latency config's n_fidelity)")
    p.add_argument("--n-correction", type=int, default=None)
    p.add_argument("--seed", type=int, default=None,
                   help="the latency stage's seed (default the config's): other calibration and held-out subnets, another "
                        "speed reference")
    p.add_argument("--run-dir", default=None, help="default: runs/bench-latency (prefill), runs/bench-latency-decode (decode)")
    p.add_argument("--workload", default="prefill", choices=["prefill", "decode"],
                   help="what the tables time: a prefill, or one decoding step over a cache of --decode-context tokens")
    p.add_argument("--decode-context", type=int, default=None, help="default: the latency config's (half the block size)")
    p.add_argument("--statistic", default=None, choices=list(STATISTICS),
                   help="the headline statistic of the run times (default: the latency config's); every statistic is "
                        "scored below it either way, and choosing one re-measures nothing")
    p.add_argument("--keep", action="store_true", help="resume existing tables instead of rebuilding them")
    p.add_argument("--wandb", action="store_true", help="also log the reports to W&B (offline)")
    p.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    p.add_argument("--disturb", nargs=2, type=float, metavar=("START", "SECONDS"),
                   help="a memory-streaming neighbour from START s into the run for SECONDS s")
    args = p.parse_args()
    if args.disturb:
        disturb(*args.disturb)

    cfg = load_config(args.config)
    space = SearchSpace(cfg.search_space)
    lat = getattr(cfg, "latency", None) or LatencyConfig()
    overrides = {"wandb": "offline" if args.wandb else "disabled"}
    if args.threads:
        overrides["threads"] = args.threads
    if args.n is not None:
        overrides["n_fidelity"] = args.n
    if args.n_correction is not None:
        overrides["n_correction"] = args.n_correction
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.statistic:
        overrides["statistic"] = args.statistic
    overrides |= {"workloads": [args.workload]} | ({"decode_context": args.decode_context} if args.decode_context else {})
    lat = lat.model_copy(update=overrides)
    run_dir = Path(args.run_dir or ROOT / "runs" / ("bench-latency" + ("" if args.workload == "prefill" else f"-{args.workload}")))
    if not args.keep and (run_dir / "latency").exists():
        shutil.rmtree(run_dir / "latency")
    n_pieces = len(space_pieces(space))
    results = []
    for backend in args.backends:
        load0 = load_average()
        t0 = time.perf_counter()
        table = run_latency(space, lat, run_dir, device="cpu", backend=backend, progress=True, workload=args.workload)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        report = fidelity_report_fresh(cfg.search_space, lat, run_dir, "cpu", backend, progress=True, workload=args.workload)
        report_s = time.perf_counter() - t0
        results.append((backend, table, report, build_s, report_s, (load0 + load_average()) / 2))
        pr, ts, px = report["prediction"], report["table_sum"], report["proxies"]
        print(f"{backend:12s} build {build_s:6.1f} s ({table.meta['seconds']})  within 5% {100 * pr['within_5pct']:5.1f}%  "
              f"within 10% {100 * pr['within_10pct']:5.1f}%  MAPE {pr['mape_pct']:5.2f}%  tau {pr['kendall_tau']:.3f}  "
              f"| sum only: within 10% {100 * ts['within_10pct']:5.1f}% tau {ts['kendall_tau']:.3f}  "
              f"| FLOPs tau {px['flops_kendall_tau']:.3f}  params tau {px['params_kendall_tau']:.3f}  "
              f"| retest {report.get('retest')}  | speed {speed_cells(report.get('speed'))}  "
              f"| report {report_s:.0f} s, load {load_average():.2f}", flush=True)

    threads = results[0][1].fingerprint["threads"] if results else lat.threads
    body = [
        f"Command: `{command()}`  ",
        f"Machine: {machine().split(',')[0]}, {os.cpu_count()} cores, {threads} threads timed, "
        f"{', '.join(f'{k} {v}' for k, v in results[0][1].fingerprint.items() if k in ('torch', 'onnxruntime')) if results else ''}  ",
        f"Workload: {workload_text(results[0][1].workload)}, fp32 "
        "activations; int8 layers run ONNX Runtime's DynamicQuantizeMatMul/MatMulInteger, int4 layers MatMulNBits "
        "(torch eager: dynamic int8 through `torch._int_mm`, weight-only int4 through `_weight_int4pack_mm_for_cpu`).  " if results else "",
        f"The table has {n_pieces} pieces for a space of {space.size():,} subnets; the correction is fitted on "
        f"{lat.n_correction} whole subnets; the report uses {lat.n_fidelity} other held-out random subnets, each extracted "
        f"and timed end to end (repeated runs until the median is stable; the table predicts their {lat.statistic}) in a fresh "
        "process that loads the table from its file"
        + (", on the timing thread's CPU clock (1 thread: time the OS gave to other processes is not counted)"
           if results and results[0][1].protocol.clock == "thread" else ", on the wall clock") + "."
        + (" A whole decoding step is timed as it deploys: on ONNX Runtime the exported model.decode.onnx's graph (the "
           "position an input, dynamic dims), on torch eager with the position a Python int, as `generate` runs it."
           if args.workload == "decode" else "") + "\n",
        "| backend | table build s (pieces + whole subnets) | within 5% | within 10% | MAPE % | RMSE ms | Kendall tau | "
        "tau, sum only | within 10%, sum only | FLOPs tau | params tau | retest within 10% (MAPE %) | measured ms | load avg |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for backend, table, report, build_s, _, load in results:
        pr, ts, px = report["prediction"], report["table_sum"], report["proxies"]
        sec = table.meta.get("seconds", {})
        lo, hi = report["measured_ms_range"]
        rt = report.get("retest") or {}
        retest = f"{100 * rt['within_10pct']:.0f}% ({rt['mape_pct']:.2f})" if rt else "-"
        body.append(
            f"| {backend} | {build_s:.0f} ({sec.get('pieces', 0):.0f} + {sec.get('calibration', 0):.0f}) | "
            f"{100 * pr['within_5pct']:.1f}% | {100 * pr['within_10pct']:.1f}% | {pr['mape_pct']:.2f} | {pr['rmse_ms']:.3f} | "
            f"{pr['kendall_tau']:.3f} | {ts['kendall_tau']:.3f} | {100 * ts['within_10pct']:.1f}% | "
            f"{px['flops_kendall_tau']:.3f} | {px['params_kendall_tau']:.3f} | {retest} | {lo:.2f}-{hi:.2f} | {load:.1f} |"
        )
    body += ["\nThe same tables and measurements scored on each statistic of the run times (the correction refitted "
             "on it), within 10% / Kendall tau / retest within 10%:\n",
             "| backend | " + " | ".join(STATISTICS) + " |", "| --- |" + " --- |" * len(STATISTICS)]
    for backend, _, report, *_ in results:
        cells = [f"{100 * e['prediction']['within_10pct']:.0f}% / {e['prediction']['kendall_tau']:.3f} / "
                 + (f"{100 * e['retest']['within_10pct']:.0f}%" if e.get("retest") else "-")
                 for e in (report["by_statistic"][s] for s in STATISTICS)]
        body.append(f"| {backend} | " + " | ".join(cells) + " |")
    body += ["\nMachine speed, by the reference subnet timed in every window of the build and of the report: its time "
             "at the build (median over the windows, and their range), the windows measured again in the build and in the "
             "report because the machine's speed moved more than the tolerance in them (still: in every attempt), the drift of the report's windows since, the table "
             "without scaling its windows to the reference (its correction refitted) within 10%, and the prediction within "
             "10% of the held-out times scaled to the build's speed:\n",
             "| backend | reference ms at build (range) | windows retaken, build and report | drift during report | "
             "unscaled table within 10% | at build speed within 10% |", "| --- | --- | --- | --- | --- | --- |"]
    body += [f"| {backend} | {speed_cells(report.get('speed'))} |" for backend, _, report, *_ in results]
    body.append("\nTargets: >= 95% within +-10% and Kendall tau >= 0.9, above FLOPs and parameter count (nn-Meter: "
                "99.0% within +-10% for CNNs on a mobile CPU). Plots and per-subnet rows: "
                f"`{run_dir.relative_to(ROOT) if run_dir.is_relative_to(ROOT) else run_dir}/latency/fidelity-cpu-<backend>"
                f"{'' if args.workload == 'prefill' else '-' + args.workload}.{{png,html,json}}`. `retest`: 20 of the held-out subnets "
                "measured a second time at the end against their first measurement, the ceiling for any predictor on this "
                "machine at the time. `load avg` is the 1-minute load average while measuring; above the core count, other "
                "processes shared the CPU.")
    print("\n".join(body))
    if not args.no_write:
        title = "Latency table fidelity (quickstart space, CPU)" + (
            "" if args.workload == "prefill" else f", decoding step at context {results[0][1].workload['context']}")
        if args.disturb:
            title += ", with a busy neighbour"
            body.insert(0, f"A process streaming memory on the other core ran from {args.disturb[0]:.0f} s into the run for "
                           f"{args.disturb[1]:.0f} s (`--disturb`).  ")
        write_section(title, "\n".join(body))


if __name__ == "__main__":
    main()
