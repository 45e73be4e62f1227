"""Latency as users measure it: the run's latency tables against held-out subnets timed the way a
user's own code times them, each in a fresh process of its own.

For each of `--n` held-out random subnets (a seed stream of their own, none of the tables'
calibration subnets) a freshly spawned process builds the subnet and times it the way a user's code
does (`hwnas.latency.userview`: a plain `time.perf_counter` loop, 30 warm-up runs then 200, at the
tables' workload and thread count) in each form: torch (the deployment form in a process that
changed no setting), onnxruntime (the form its table times) and torch pinned (after glibc malloc's
thresholds are pinned, as the tables' process and `hwnas.export.load` do).

Each table then predicts each subnet's median, p90 and min (`LatencyTable.for_statistic`), and the
bench reports the share within +-10% and Kendall tau against the same statistic of those runs.

    python experiments/bench/user_latency.py [--run-dir runs/bench-latency] [--n 100] [--seed 7] [--retest 20] [--saved] [--no-write]

Run it alone on the machine (a test run or a build beside it moves every figure).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, git_commit, machine, write_section  # noqa: E402

from hwnas.core.io import atomic_write_text  # noqa: E402
from hwnas.latency.userview import FORMS, user_latency  # noqa: E402
from hwnas.search_space import ArchConfig, SearchSpace, SearchSpaceConfig  # noqa: E402

STATS = ("median", "p90", "min")


def time_heldout(space_cfg: SearchSpaceConfig, archs: list[ArchConfig], forms: list[str], batch: int, seq: int, threads: int,
                 retest: int = 0) -> tuple[list[dict], list[dict], float]:
    """Each arch timed as a user times it (`user_latency`), each in a fresh process of its own, in each of
    `forms`; then the first `retest` again, each in another fresh process: (times, retimes, seconds in all)."""
    from hwnas.core.progress import progress_bar

    times: list[dict] = []
    t0 = time.perf_counter()
    todo = archs + archs[:retest]
    with progress_bar("held-out subnets, each in a fresh process", len(todo), unit="subnet") as advance:
        for i, arch in enumerate(todo):
            times.append(user_latency(space_cfg.model_dump(mode="json"), arch.to_dict(), forms, batch, seq, threads, i))
            advance(1)
    return times[:len(archs)], times[len(archs):], time.perf_counter() - t0


def score(table, archs: list[ArchConfig], truth: list[dict], form: str, stat: str) -> dict[str, float]:
    """The table's prediction of `stat` against that statistic of the `form` times in `truth`: the share
    within +-10%, Kendall tau, and the median of predicted over measured, minus 1, in %."""
    from scipy.stats import kendalltau

    t = table.for_statistic(stat)
    pred = np.array([t.predict_ms(a) for a in archs])
    meas = np.array([m[form][stat] for m in truth])
    rel = pred / meas - 1
    return {"within_10pct": float(np.mean(np.abs(rel) <= 0.10)), "tau": float(kendalltau(pred, meas).statistic),
            "median_rel_pct": float(100 * np.median(rel))}


def main() -> None:
    from hwnas.latency.session import heldout_archs
    from hwnas.latency.table import load_table, table_path

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run-dir", default="runs/bench-latency", help="a run directory holding cpu-torch and cpu-onnxruntime tables")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--seed", type=int, default=7, help="draws the held-out subnets (the fidelity report's are seed 0's)")
    p.add_argument("--retest", type=int, default=20, help="the first K subnets timed again at the end, each in another "
                   "fresh process: how well one such measurement repeats, the ceiling of any prediction")
    p.add_argument("--saved", action="store_true", help="score the times of the last run (<run-dir>/user-latency.json) "
                   "instead of timing again")
    p.add_argument("--built", default="", metavar="TEXT", help="how the tables were built, when not quietly (e.g. 'with a "
                   "memory-streaming neighbour'): named in the section's title, so each such run keeps a section of its own")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()

    run_dir = Path(args.run_dir)
    space_cfg = SearchSpaceConfig(**json.loads((run_dir / "run.json").read_text())["search_space"])
    space = SearchSpace(space_cfg)
    tables = {b: load_table(run_dir, "cpu", b, space=space) for b in ("torch", "onnxruntime") if table_path(run_dir, "cpu", b).exists()}
    if not tables:
        sys.exit(f"{run_dir}: no cpu-torch or cpu-onnxruntime latency table; build them first (experiments/bench/latency_fidelity.py)")
    forms = [f for f in FORMS if (f if f == "onnxruntime" else "torch") in tables]
    first = next(iter(tables.values()))
    batch, seq, threads = first.workload["batch_size"], first.workload["seq_len"], first.fingerprint.get("threads", 1)
    seen = {k for t in tables.values() for k in t.calibration}
    archs = heldout_archs(space, args.n, args.seed, exclude=seen)
    saved = run_dir / "user-latency.json"
    if args.saved:
        doc = json.loads(saved.read_text())
        archs = [ArchConfig.from_dict(a) for a in doc["archs"]]
        truth, again, seconds, commit = doc["truth"], doc["again"], doc["seconds"], doc["commit"]
    else:
        truth, again, seconds = time_heldout(space_cfg, archs, forms, batch, seq, threads, args.retest)
        commit = git_commit()
        atomic_write_text(saved, json.dumps({"archs": [a.to_dict() for a in archs], "truth": truth, "again": again,
                                             "seconds": seconds, "commit": commit}, indent=1))

    forms = [f for f in forms if f in truth[0]]  # a saved run: the forms it timed
    rows, results = [], {}
    for form in forms:
        table = tables["onnxruntime" if form == "onnxruntime" else "torch"]
        for stat in STATS:
            results[(form, stat)] = score(table, archs, truth, form, stat)
    spread = {form: float(np.median([m[form]["p90"] / m[form]["median"] for m in truth])) for form in forms}

    def repeat(form: str, stat: str) -> str:  # the second measurement against the first, within 10%
        if not again:
            return "-"
        rel = np.array([b[form][stat] / a[form][stat] - 1 for a, b in zip(truth, again, strict=False)])
        return f"{100 * np.mean(np.abs(rel) <= 0.10):.0f}%"

    for form in forms:
        cells = " | ".join(f"{100 * results[(form, s)]['within_10pct']:.0f}% / {results[(form, s)]['tau']:.3f} / "
                           f"{results[(form, s)]['median_rel_pct']:+.1f}% / {repeat(form, s)}" for s in STATS)
        rows.append(f"| {form} | {cells} | {spread[form]:.2f} |")
    stamp = {k: first.fingerprint.get(k) for k in ("torch", "onnxruntime")}
    body = [
        f"`{command()}` (times measured at commit {commit})", "",
        f"Machine: {machine().split(',')[0]}, {os.cpu_count()} cores; {stamp}. Tables: `{run_dir}/latency/cpu-<backend>.json` "
        f"(headline statistic {first.statistic}, clock {first.protocol.clock}; built by `experiments/bench/latency_fidelity.py "
        f"--run-dir {run_dir}`, the wall clock with `latency: {{clock: wall}}` in its `--config`). {len(archs)} held-out subnets (seed {args.seed}, "
        f"none of the tables' calibration subnets), each timed in a fresh process of its own with a plain wall-clock loop "
        f"(30 warm-up runs, then 200) at batch {batch} x {seq} tokens, {threads} thread(s); {seconds:.0f} s in all.", "",
        "Each cell: share of subnets within +-10% of that statistic of their run times / Kendall tau / median of "
        f"predicted over measured, minus 1 / the first {len(again)} subnets timed again in another fresh process, the share "
        "within 10% of their first time (how well one such measurement repeats: the ceiling of any prediction).", "",
        "| form timed | median | p90 | min | measured p90 / median (median over subnets) |",
        "| --- | --- | --- | --- | --- |",
        *rows, "",
        "torch: the deployment form in a process that changed no setting; torch pinned: the same after "
        "`steady_allocator()` (what the tables' process and `hwnas.export.load` apply); onnxruntime: the form its table "
        "times, in a plain session. Target (issue 24): >= 95% within 10% of the median, tau >= 0.9.",
    ]
    print("\n".join(body))
    if not args.no_write:
        write_section(f"Latency as users measure it (fresh process, plain wall-clock loop), tables on the {first.protocol.clock} clock"
                      + (f", built {args.built}" if args.built else ""),
                      "\n".join(body))


if __name__ == "__main__":
    main()
