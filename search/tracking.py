"""What a search logs to W&B: the front and a sample of the candidates as tables, the plots, the
hypervolume curve, and the front's files as an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from hwnas.search_space import ArchConfig, SearchSpace

from .choices import latency_targets as choice_targets
from .objectives import decode_objectives, tokens_per_s
from .pareto import Candidate, ParetoFront
from .plots import flat

CANDIDATE_SAMPLE = 2000  # candidates logged as a W&B table; all of them go into the artifact (candidates.csv)


def choice_columns(space: SearchSpace, arch: ArchConfig) -> dict[str, Any]:
    """The arch's value of every gene of `space` ("depth", "norm[2]", ...): a column per design
    choice; None for the layers beyond its depth."""
    vec = space.encode(arch)
    return {g.name: g.choices[v] if g.layer is None or g.layer < arch.depth else None
            for g, v in zip(space.genes, vec, strict=True)}


def front_rows(space: SearchSpace, front: ParetoFront, members: list[Candidate]) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows of a candidates table: arch key, objectives, constraints, front flag, genes."""
    names = front.objective_names
    on_front = {c.key for c in front.members()}
    genes = [g.name for g in space.genes]
    decode = [names.index(n) for n in decode_objectives(names)]  # decode latencies: also tokens/s
    cols = ["key", *names, *[f"{names[i]} tokens/s" for i in decode], *[f"g:{c}" for c in front.constraint_names], "on_front",
            *genes]
    rows = [[c.key, *c.objectives, *[tokens_per_s(names[i], c.objectives[i]) for i in decode], *c.constraints, c.key in on_front,
             *choice_columns(space, c.arch).values()] for c in members]
    return cols, rows


def candidate_sample(front: ParetoFront, seed: int = 0) -> list[Candidate]:
    """At most CANDIDATE_SAMPLE candidates, the front's members always among them, the rest an even
    random draw: W&B tables hold about 10k rows, a search evaluates more."""
    members = front.members()
    keys = {c.key for c in members}
    rest = [c for c in front.candidates if c.key not in keys]
    room = max(CANDIDATE_SAMPLE - len(members), 0)
    if len(rest) > room:
        idx = np.random.default_rng(seed).choice(len(rest), size=room, replace=False)
        rest = [rest[i] for i in sorted(idx)]
    return members + rest


def log_search(tracker, space: SearchSpace, front: ParetoFront, validation: list[dict[str, Any]], files: dict[str, Path],
               plots: list[Path], choices: dict[str, Any] | None = None) -> None:
    """W&B: the front in full and a sample of the candidates as tables (arch key, objectives, a
    column per design choice), a scatter per objective pair, the plots (PNG as images, HTML as
    interactive panels), the hypervolume against candidates evaluated, the validation rows, which
    design choices the front uses (`choices.choices_report`), and the front's files (all candidates
    among them) as an artifact."""
    if tracker.wandb_run is None:
        return
    import wandb

    names = front.objective_names
    cols, rows = front_rows(space, front, front.members())
    front_table = wandb.Table(columns=cols, data=rows, allow_mixed_types=True)
    sample = candidate_sample(front)
    logs: dict[str, Any] = {
        "search/front": front_table,
        "search/candidates": wandb.Table(columns=cols, data=front_rows(space, front, sample)[1], allow_mixed_types=True),
    }
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            key = flat(f"front_{names[i]}_vs_{names[j]}")
            logs[f"search/{key}"] = wandb.plot.scatter(front_table, names[i], names[j], title=f"front: {names[j]} vs {names[i]}")
    if choices:
        targets = choice_targets(choices)
        ccols = ["dim", "choice", "front_archs", "front_layers", "space_archs", "space_layers", *[f"latency@{t}" for t in targets]]
        logs["search/choices"] = wandb.Table(columns=ccols, data=[
            [r[c] for c in ccols[:6]] + [r["latency_ms"].get(t) for t in targets] for r in choices["rows"]])
    if validation:
        vcols = list(validation[0])
        logs["search/validation"] = wandb.Table(columns=vcols, data=[[r.get(c) for c in vcols] for r in validation])
    for p in plots:
        kind = {".png": wandb.Image, ".html": wandb.Html}.get(p.suffix)
        if kind is not None:
            logs[f"search/{p.suffix[1:]}/{p.stem}"] = kind(str(p))
    tracker.log_wandb(logs)
    for n, hv in front.history:
        tracker.log({"hypervolume": hv, "candidates": n})
    tracker.summary({"candidates_logged": len(sample), "candidates_evaluated": len(front.candidates)})
    tracker.log_artifact("front", "pareto-front", list(files.values()),
                         description=f"Pareto front of {', '.join(names)}: {len(front.members())} members of "
                                     f"{len(front.candidates)} candidates (all in candidates.csv)")
