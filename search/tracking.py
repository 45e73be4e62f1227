"""What a search logs to W&B: the front and a sample of the candidates as tables, the plots, the
hypervolume curve, and the front's files as an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .choices import latency_targets as choice_targets
from .pareto import ParetoFront
from .plots import flat


def log_search(tracker, front: ParetoFront, validation: list[dict[str, Any]], files: dict[str, Path], plots: list[Path],
               choices: dict[str, Any] | None = None) -> None:
    """W&B: tables of all candidates and of the front, front scatter plots, the hypervolume curve,
    validation rows, which design choices the front uses (`choices.choices_report`), and the front
    files as an artifact."""
    if tracker.wandb_run is None:
        return
    import wandb

    names = front.objective_names
    cols = ["key", *names, *[f"g:{c}" for c in front.constraint_names], "on_front"]
    on_front = {c.key for c in front.members()}
    rows = [[c.key, *c.objectives, *c.constraints, c.key in on_front] for c in front.candidates]
    table = wandb.Table(columns=cols, data=rows)
    front_table = wandb.Table(columns=cols, data=[r for r in rows if r[-1]])
    logs: dict[str, Any] = {"search/candidates": table, "search/front": front_table}
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            key = flat(f"front_{names[i]}_vs_{names[j]}")
            logs[f"search/{key}"] = wandb.plot.scatter(front_table, names[i], names[j],
                                                                                 title=f"front: {names[j]} vs {names[i]}")
    if choices:
        targets = choice_targets(choices)
        ccols = ["dim", "choice", "front_archs", "front_layers", "space_archs", "space_layers", *[f"latency@{t}" for t in targets]]
        logs["search/choices"] = wandb.Table(columns=ccols, data=[
            [r[c] for c in ccols[:6]] + [r["latency_ms"].get(t) for t in targets] for r in choices["rows"]])
    if validation:
        vcols = list(validation[0])
        logs["search/validation"] = wandb.Table(columns=vcols, data=[[r.get(c) for c in vcols] for r in validation])
    for p in plots:
        if p.suffix == ".png":
            logs[f"search/plot/{p.stem}"] = wandb.Image(str(p))
    tracker.log_wandb(logs)
    for n, hv in front.history:
        tracker.log({"hypervolume": hv, "candidates": n})
    art = wandb.Artifact(f"{tracker.run_dir.parent.name}-front", type="pareto-front")
    for p in files.values():
        art.add_file(str(p))
    tracker.wandb_run.log_artifact(art)
