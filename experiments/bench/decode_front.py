"""Which attention kinds win when the cost is each generated token rather than the prompt: on a
finished run (the predictor and its tables), the same search (engine, budget, seed) under
[loss, prefill latency] and under [loss, decode latency] at several cache lengths, and the share of
each attention kind on each front against the space's.

A decoding step's attention reads every cached key with softmax (its cost grows with the context),
at most window-1 with a sliding window, and a fixed-size state with linear attention; a prefill runs
the whole prompt. Decode tables for context lengths other than the run's own are built first, each
in a run directory of its own (`<run>-decode-<context>`, ONNX Runtime, no fidelity report).

    python experiments/bench/decode_front.py [--config experiments/longcontext.yaml] [--contexts 64 960]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, git_commit, machine, write_section  # noqa: E402

import hwnas  # noqa: E402
from hwnas.latency.table import load_table, table_path  # noqa: E402
from hwnas.predictors.persist import load_manifest, load_predictor  # noqa: E402
from hwnas.search.choices import usage  # noqa: E402
from hwnas.search.engines import make_engine  # noqa: E402
from hwnas.search.objectives import build_objectives  # noqa: E402
from hwnas.search.pareto import ParetoFront  # noqa: E402
from hwnas.search.stage import latency_errors, reference_point  # noqa: E402
from hwnas.search_space import SearchSpace  # noqa: E402

RUNTIME = "onnxruntime"


def decode_table_dir(cfg, run: Path, context: int) -> Path:
    """The run directory holding the decode table at `context` (the run's own, or one built here)."""
    if context == cfg.latency.decode_context and table_path(run, "cpu", RUNTIME, "decode").exists():
        return run
    out = run.parent / f"{run.name}-decode-{context}"
    if not table_path(out, "cpu", RUNTIME, "decode").exists():
        print(f"building the decode table at context {context} in {out}", flush=True)
        hwnas.build_latency_tables(cfg, {"run_dir": str(out), "latency.workloads": ["decode"], "latency.backends": [RUNTIME],
                                         "latency.decode_context": context, "latency.n_fidelity": 0}, progress=False)
    return out


def search_front(space: SearchSpace, cfg, run: Path, predictor, loss_unit: str, objective: str, table_dir: Path,
                 workload: str) -> list:
    """The front of the run's search config with [loss, `objective`] (its table from `table_dir`)."""
    key = f"cpu/{RUNTIME}" + (":decode" if workload == "decode" else "")
    table = load_table(table_dir, "cpu", RUNTIME, space=space, workload=workload)
    errors = {f"{key}:{stat}": e for stat, e in latency_errors(table_dir, "cpu", RUNTIME, workload).items()}
    scfg = cfg.search.model_copy(update={"objectives": ["loss", objective], "constraints": [], "validate_top": 0})
    objectives = build_objectives(scfg.objectives, [], space, predictor, {key: table}, errors, scfg.risk, loss_unit)
    front = ParetoFront(objectives.names, reference_point(space, objectives, scfg, cfg.seed), objectives.constraint_names)
    engine = make_engine(space, scfg, run, cfg.seed)
    engine.prepare(objectives)
    engine.run(objectives, scfg.budget, front)
    return front.members()


def kind_shares(archs) -> dict[str, float]:
    """Share of all layers with each attention choice (softmax, linear, window:<w>)."""
    return {k: v["layers"] for k, v in usage(archs)["attention"].items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="experiments/longcontext.yaml")
    p.add_argument("--run-dir", default=None, help="default: the config's run directory")
    p.add_argument("--contexts", type=int, nargs="*", default=[64, 960],
                   help="decode cache lengths besides the run's latency.decode_context")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    cfg = hwnas.load_config(args.config)
    run = Path(args.run_dir) if args.run_dir else cfg.run_path
    cfg = hwnas.load_config(args.config, {"run_dir": str(run)})
    space = SearchSpace(cfg.search_space)
    predictor = load_predictor(run / "predictors")
    loss_unit = "bits/byte" if load_manifest(run / "predictors").get("target") == "bpb" else "nats/byte"
    contexts = sorted({cfg.latency.decode_context, *args.contexts})
    rows = [("prefill", f"{cfg.latency.seq_len or cfg.search_space.block_size} tokens", "ms",
             search_front(space, cfg, run, predictor, loss_unit, f"latency@cpu/{RUNTIME}", run, "prefill"))]
    for context in contexts:
        rows.append(("decode", f"{context} cached tokens", "ms/token",
                     search_front(space, cfg, run, predictor, loss_unit, f"latency@cpu/{RUNTIME}:decode",
                                  decode_table_dir(cfg, run, context), "decode")))
    kinds = list(space.choices["attention"])
    rng = np.random.default_rng([cfg.seed, 11])
    space_share = kind_shares([space.sample(rng) for _ in range(20_000)])
    header = ["front of [loss, latency]", "workload", "members", "latency range", "tokens/s range",
              *[f"{k} layers" for k in kinds]]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines.append("| the space (20,000 uniform draws) | | | | | " + " | ".join(f"{space_share.get(k, 0):.0%}" for k in kinds) + " |")
    for workload, what, unit, members in rows:
        shares = kind_shares([m.arch for m in members])
        ms = np.array([m.objectives[1] for m in members])
        tps = f"{1e3 / ms.max():,.0f}-{1e3 / ms.min():,.0f}" if workload == "decode" else ""
        cells = [f"{workload} ({RUNTIME})", what, str(len(members)), f"{ms.min():.3f}-{ms.max():.3f} {unit}", tps,
                 *[f"{shares.get(k, 0):.0%}" for k in kinds]]
        lines.append("| " + " | ".join(cells) + " |")
        print(workload, what, len(members), {k: round(shares.get(k, 0), 3) for k in kinds}, flush=True)
    text = "\n".join(lines)
    print(text)
    if args.no_write:
        return
    body = [f"`{command()}` on {machine()} (commit {git_commit()}; run {run}: {cfg.search_space.block_size}-byte block, "
            f"positions {cfg.search_space.positions}, {cfg.train.steps} supernet steps; search {cfg.search.engine}/"
            f"{cfg.search.algorithm}, budget {cfg.search.budget}, seed {cfg.seed}, the run's predictor for loss).", "",
            "Each front comes from the same search with a different latency objective (ONNX Runtime tables of this "
            "machine, batch 1, 1 thread): the prefill of a whole block, or one generated token over a cache of the stated "
            "length. Cells: the share of all the front's layers using each attention kind. The loss axis is the run's "
            f"accuracy predictor (fitted on {cfg.predictors.n_fit} subnets of the supernet), the same for every front: the "
            "fronts differ only by the latency they trade it against.", "", text]
    write_section("Decode fronts: which attention kinds win as the context grows", "\n".join(body))


if __name__ == "__main__":
    main()
