"""A latency table anchored to the machine's speed of the moment, where users read it: for each run
directory given, its table is loaded as the export loads it (`TableTiming`), anchored by timing its
speed reference subnet once (`TableTiming.speed_now`), and then the first N held-out subnets of its
fidelity report are timed here by the table's protocol; the table's predictions as built and
anchored are scored against those times.

    python experiments/bench/latency_anchor.py runs/bench-latency-decode-s1-60 runs/bench-latency-decode-torch3
        [--backend torch] [--workload decode] [--n 50] [--config experiments/quickstart.yaml] [--no-write]

Run the fidelity bench first (`latency_fidelity.py --run-dir RUN ...`): it builds the tables and
their reports. Each run's latency seed is read from its table's report rows (the held-out subnets),
the space from the config.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, machine, write_section  # noqa: E402

from hwnas.config import load_config  # noqa: E402
from hwnas.core.isolate import run_isolated  # noqa: E402
from hwnas.latency.fidelity import error_metrics  # noqa: E402
from hwnas.latency.session import TableTiming, make_measurer  # noqa: E402
from hwnas.latency.table import table_name  # noqa: E402
from hwnas.search_space import ArchConfig, SearchSpace  # noqa: E402


def score(predicted: np.ndarray, truth: np.ndarray) -> str:
    e = error_metrics(predicted, truth)
    return f"{100 * e['within_10pct']:.0f}% / {e['mape_pct']:.1f} / {e['kendall_tau']:.3f}"


def anchor_job(config: str, run: str, backend: str, workload: str, n: int, seed: int) -> dict:
    """One table, in a fresh process (as the export times against it): anchored, then scored."""
    cfg = load_config(config)
    space = SearchSpace(cfg.search_space)
    timing = TableTiming(run, "cpu", backend, space.config.block_size, workload=workload)
    if timing.table is None:
        return {"error": f"{run}: no {backend} {workload} table ({'; '.join(timing.notes) or 'not built'})"}
    scale = timing.speed_now(seed=seed)
    if scale is None:
        return {"error": f"{run}: the table has no speed reference (latency.speed_reference: false)"}
    report = Path(run) / "latency" / f"fidelity-{table_name('cpu', backend, timing.table.workload_kind)}.json"
    archs = [ArchConfig.from_dict(r["arch_config"]) for r in json.loads(report.read_text())["rows"][:n]]
    lat = cfg.latency.model_copy(update={"workloads": [workload], "seed": seed})
    measured = make_measurer(space, lat, "cpu", backend, like=timing.table).measure_archs(archs)
    truth = np.array([measured[a.key()].value(timing.statistic) for a in archs]) * 1e3
    return {"scale": scale, "statistic": timing.statistic, "built_at": Path(timing.path).stat().st_mtime,
            "as_built": score(np.array([timing.predict_ms(a) for a in archs]), truth),
            "anchored": score(np.array([timing.predict_ms(a, now=True) for a in archs]), truth)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--config", default="experiments/quickstart.yaml")
    p.add_argument("--backend", default="torch", choices=["torch", "onnxruntime"])
    p.add_argument("--workload", default="decode", choices=["prefill", "decode"])
    p.add_argument("--n", type=int, default=50, help="held-out subnets timed per run")
    p.add_argument("--seeds", nargs="*", type=int, default=None, help="each run's latency seed (default 0)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    lines = ["| run dir | table built | speed now / build | as built: within 10% / MAPE % / tau | "
             "anchored: within 10% / MAPE % / tau |", "| --- | --- | --- | --- | --- |"]
    stat = None
    for i, run in enumerate(args.run_dirs):
        got = run_isolated(anchor_job, args.config, run, args.backend, args.workload, args.n,
                           args.seeds[i] if args.seeds else 0)
        if "error" in got:
            sys.exit(got["error"])
        stat = got["statistic"]
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(got["built_at"]))
        row = f"| {run} | {when} UTC | {got['scale']:.3f} | {got['as_built']} | {got['anchored']} |"
        print(row, flush=True)
        lines.append(row)
    body = [f"Command: `{command()}`  ", f"Machine: {machine().split(',')[0]}; timed {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} "
            f"UTC, {args.n} held-out subnets per table (its fidelity report's first), the {args.backend} {args.workload} tables' "
            f"statistic ({stat}) of runs timed by each table's protocol, each table in a fresh process, right after its "
            "speed reference subnet was timed once (`TableTiming.speed_now`, what the export does).\n", *lines]
    print("\n".join(body))
    if not args.no_write:
        write_section(f"Latency tables anchored to the machine's speed of the moment ({args.backend}, {args.workload})",
                      "\n".join(body))


if __name__ == "__main__":
    main()
