"""Latency tables built again and again: how far the pieces and predictions of one build repeat in
the next, and each build's fidelity to latency as users measure it (issue 24).

`--builds` builds of the experiment's latency tables (torch and ONNX Runtime prefill, the config's
`latency` section and seed: the same pieces, calibration subnets and speed reference in each), one
after another, `--gap` seconds apart. During build `--neighbour` (1-based; 0: none) a process streams
memory on another core for the whole build (`latency_fidelity.HOG`), as a busy neighbour would. Then
`--n` held-out subnets (seed `--seed`, none of any build's calibration subnets) are each timed once in
a fresh process of their own with a plain wall-clock loop (`user_latency.time_heldout`), and every
build's tables are scored against those times.

Per build and runtime: when it ran, the load, the speed reference's time; how far its pieces and
its predictions of the held-out subnets lie from their median over the builds (median and 90th
percentile of |deviation|); and its fidelity on the same held-out subnets (share within +-10%,
Kendall tau, median bias) on the median and the minimum of their run times.

    python experiments/bench/repeatability.py [--config experiments/quickstart.yaml] [--builds 5] [--neighbour 5]
        [--gap 0] [--backends torch onnxruntime] [--n 100] [--seed 7] [--retest 20] [--saved] [--no-write]

Run it alone on the machine (a test run beside it moves every figure). `--saved` scores the builds and
times of the last run again (runs/bench-repeat) without measuring anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, command, git_commit, machine, write_section  # noqa: E402
from latency_fidelity import HOG, load_average  # noqa: E402
from user_latency import score, time_heldout  # noqa: E402

from hwnas.config import load_config  # noqa: E402
from hwnas.core.io import atomic_write_text  # noqa: E402
from hwnas.latency import LatencyConfig, run_latency  # noqa: E402
from hwnas.latency.session import heldout_archs  # noqa: E402
from hwnas.latency.table import load_table  # noqa: E402
from hwnas.search_space import ArchConfig, SearchSpace  # noqa: E402

BACKENDS = ("torch", "onnxruntime")  # the user-view form of each is named like the runtime (`userview.FORMS`)
STATS = ("median", "min")


def build_all(space: SearchSpace, lat: LatencyConfig, root: Path, builds: int, neighbour: int, gap: float,
              backends: list[str], keep: bool = False) -> list[dict]:
    """Build the tables `builds` times, each in root/build-<i> from scratch (`keep`: the builds already
    recorded in root/builds.json are kept): when each ran and how long it took."""
    done = json.loads((root / "builds.json").read_text()) if keep and (root / "builds.json").exists() else []
    record = [r for r in done if r["build"] <= builds]
    for i in range(len(record) + 1, builds + 1):
        if i > 1:
            time.sleep(gap)
        run_dir = root / f"build-{i}"
        shutil.rmtree(run_dir, ignore_errors=True)
        hog = subprocess.Popen([sys.executable, "-c", HOG, "86400"]) if i == neighbour else None
        try:
            started, load0 = datetime.now(timezone.utc), load_average()
            seconds = {}
            for backend in backends:
                t0 = time.perf_counter()
                run_latency(space, lat, run_dir, device="cpu", backend=backend, progress=True)
                seconds[backend] = time.perf_counter() - t0
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
        record.append({"build": i, "started": started.strftime("%H:%M"), "neighbour": i == neighbour, "seconds": seconds,
                       "load": (load0 + load_average()) / 2})
        atomic_write_text(root / "builds.json", json.dumps(record, indent=1))
        print(f"build {i}: {seconds} s, load {record[-1]['load']:.2f}", flush=True)
    return record


def deviations(values: np.ndarray) -> np.ndarray:
    """Each build's values (rows) against their median over the builds: |value / median - 1|."""
    return np.abs(values / np.median(values, axis=0) - 1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="experiments/quickstart.yaml")
    p.add_argument("--builds", type=int, default=5)
    p.add_argument("--neighbour", type=int, default=5, help="the build (1-based) with a memory-streaming neighbour; 0: none")
    p.add_argument("--gap", type=float, default=0.0, help="seconds between builds")
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=list(BACKENDS))
    p.add_argument("--n", type=int, default=100, help="held-out subnets")
    p.add_argument("--seed", type=int, default=7, help="draws the held-out subnets")
    p.add_argument("--retest", type=int, default=20, help="the first K held-out subnets timed again, each in another fresh "
                   "process: how well one such measurement repeats")
    p.add_argument("--run-dir", default=str(ROOT / "runs" / "bench-repeat"))
    p.add_argument("--saved", action="store_true", help="score the builds and times of the last run again")
    p.add_argument("--keep", action="store_true", help="keep the builds an interrupted run finished (builds.json)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    if args.builds < 2 or not 0 <= args.neighbour <= args.builds or args.n < 2 or args.retest < 0 or args.gap < 0:
        sys.exit("--builds: at least 2; --neighbour: 0 to --builds; --n: at least 2; --retest, --gap: at least 0")

    cfg = load_config(args.config)
    space = SearchSpace(cfg.search_space)
    backends = args.backends
    lat = cfg.latency.model_copy(update={"wandb": "disabled", "workloads": ["prefill"], "backends": backends})
    root = Path(args.run_dir)
    if args.saved:
        doc = json.loads((root / "repeatability.json").read_text())
        record, archs = doc["builds"], [ArchConfig.from_dict(a) for a in doc["archs"]]
        backends = [b for b in BACKENDS if b in doc["truth"][0]]
        truth, again, seconds, commit = doc["truth"], doc["again"], doc["seconds"], doc["commit"]
    else:
        record = build_all(space, lat, root, args.builds, args.neighbour, args.gap, backends, args.keep)
    tables = [{b: load_table(root / f"build-{r['build']}", "cpu", b, space=space) for b in backends} for r in record]
    if not args.saved:
        seen = {k for build in tables for t in build.values() for k in t.calibration}
        archs = heldout_archs(space, args.n, args.seed, exclude=seen)
        first = tables[0][backends[0]]
        batch, seq, threads = first.workload["batch_size"], first.workload["seq_len"], first.fingerprint.get("threads", 1)
        truth, again, seconds = time_heldout(cfg.search_space, archs, backends, batch, seq, threads, args.retest)
        commit = git_commit()
        atomic_write_text(root / "repeatability.json", json.dumps(
            {"builds": record, "archs": [a.to_dict() for a in archs], "truth": truth, "again": again, "seconds": seconds,
             "commit": commit}, indent=1))

    rows, summary = [], {}
    for b in backends:
        keys = sorted(set.intersection(*(set(t[b].entries) for t in tables)))
        pieces = deviations(np.array([[t[b].entry(k) for k in keys] for t in tables]))
        ratios = deviations(np.array([[t[b].entry(k) / t[b].speed_level() for k in keys] for t in tables]))
        preds = deviations(np.array([[t[b].predict(a) for a in archs] for t in tables]))
        fid = [{s: score(t[b], archs, truth, b, s) for s in STATS} for t in tables]
        for r, t, dp, dr, dq, f in zip(record, tables, pieces, ratios, preds, fid, strict=True):
            cells = [f"{100 * f[s]['within_10pct']:.0f}% / {f[s]['tau']:.3f} / {f[s]['median_rel_pct']:+.1f}%" for s in STATS]
            rows.append(f"| {b} | {r['build']} | {r['started']} | {'yes' if r['neighbour'] else 'no'} | {r['load']:.1f} | "
                        f"{r['seconds'][b]:.0f} | {1e3 * t[b].speed_level():.3f} | {100 * np.median(dp):.1f}% / "
                        f"{100 * np.percentile(dp, 90):.1f}% | {100 * np.median(dr):.1f}% / {100 * np.percentile(dr, 90):.1f}% | "
                        f"{100 * np.median(dq):.1f}% / {100 * np.percentile(dq, 90):.1f}% | "
                        + " | ".join(cells) + " |")
        rel = np.array([b2[b]["median"] / a[b]["median"] - 1 for a, b2 in zip(truth, again, strict=False)])
        summary[b] = (f"{b}: {len(keys)} pieces, median |deviation| {100 * np.median(pieces):.1f}% (as ratios to the speed "
                      f"reference {100 * np.median(ratios):.1f}%); builds within 10% of the "
                      f"median {min(100 * f['median']['within_10pct'] for f in fid):.0f}-"
                      f"{max(100 * f['median']['within_10pct'] for f in fid):.0f}%, tau "
                      f"{min(f['median']['tau'] for f in fid):.3f}-{max(f['median']['tau'] for f in fid):.3f}"
                      + (f"; the held-out times themselves repeat within 10% for {100 * np.mean(np.abs(rel) <= 0.10):.0f}% of "
                         f"{len(rel)} subnets retimed in another fresh process" if len(rel) else ""))
    body = [
        f"`{command()}` (times measured at commit {commit})", "",
        f"Machine: {machine().split(',')[0]}, {os.cpu_count()} cores. {len(record)} builds of the `{Path(args.config).name}` "
        f"space's prefill tables ({', '.join(backends)}; the config's `latency` section and seed: the same pieces, calibration subnets and speed "
        f"reference in each), one after another; the build marked had a process streaming memory (320 MB, over and over) "
        f"on the other core throughout. Then {len(archs)} held-out subnets (seed {args.seed}, none of any build's calibration "
        f"subnets), each timed once in a fresh process of its own with a plain wall-clock loop (30 warm-up runs, then 200), "
        f"{seconds:.0f} s in all, and every build scored against those times.", "",
        "Deviation: a piece's time (or a held-out subnet's prediction) in a build against its median over the builds, "
        "median / 90th percentile over pieces (subnets); pieces / reference: each piece's time over its build's speed "
        "reference time (what drift between builds cannot move). Fidelity cells: share within +-10% / Kendall tau / median of "
        "predicted over measured, minus 1.", "",
        "| runtime | build | started (UTC) | neighbour | load avg | build s | reference ms | pieces: deviation | "
        "pieces / reference: deviation | predictions: deviation | fidelity, median | fidelity, min |",
        "| --- |" + " --- |" * 11, *rows, "",
        *(f"- {line}." for line in summary.values()), "",
        "Target (issue 24): every build >= 95% of held-out subnets within +-10% of their median in a fresh ordinary "
        "process and tau >= 0.9, for each runtime; pieces agree across builds within 5% (median).",
    ]
    print("\n".join(body))
    if not args.no_write:
        write_section("Latency tables: repeatability across builds (quickstart space, CPU)", "\n".join(body))


if __name__ == "__main__":
    main()
