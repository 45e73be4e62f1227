"""`hwnas run`: train -> latency -> predictors -> search -> export in one run directory.

A stage whose outputs are complete, intact (each listed unchanged in its folder's manifest, see
`core.manifest`) and were made from the same config section is skipped; an interrupted
stage resumes (each stage keeps its own resumable state: training checkpoints,
partial latency tables, appended evaluation records, the Optuna study). `<run_dir>/pipeline.json`
records, per finished stage, a hash of the config it read (`stage_inputs`): changing a section re-runs
that stage and every stage that reads its outputs (`READS`: editing `train` re-runs predictors, search
and export, never the latency tables); keys that only change reporting (`wandb`) re-run nothing.
Each finished stage's entry also records that config itself (so a re-run names the key that
changed), the config file and its `--set` overrides, and `<run_dir>/config.yaml` holds the resolved
config the last stage ran with. A stage recorded before a config field existed still counts as done
while that field is at the value hwnas had before it (`core.rundir.FIELDS_ADDED`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import combinations
from typing import Any

from hwnas.core.errors import HwnasError
from hwnas.core.io import atomic_path, atomic_write_json, atomic_write_text
from hwnas.core.manifest import Manifest
from hwnas.core.rundir import FIELDS_ADDED, first_difference, lookup, recorded_config

from .config import ExperimentConfig, resolved_yaml
from .stages import STAGES


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# the stages whose outputs each stage reads (its own config section is read too)
READS: dict[str, tuple[str, ...]] = {
    "train": (),
    "latency": (),  # a randomly initialized supernet: no trained weights
    "predictors": ("train",),
    "search": ("train", "latency", "predictors"),  # validation re-measures on the supernet and as the tables time
    "export": ("train", "latency", "search"),
}
CONFIG_FILE = "config.yaml"  # the run's config as it last ran: every default, headed by its file and --set overrides
# keys that change how a stage reports, never what it writes
REPORTING = ("wandb", "wandb_project")


def stage_inputs(cfg: ExperimentConfig, stage: str) -> dict[str, Any]:
    """The config a stage's outputs depend on: the seed, the space, its own section and those of the
    stages it reads (`READS`, transitively), without the reporting keys."""
    dump = cfg.model_dump(mode="json")
    sections: set[str] = set()
    todo = [stage]
    while todo:
        name = todo.pop()
        sections.add(name)
        todo += [d for d in READS[name] if d not in sections]
    return {"seed": cfg.seed, "search_space": dump["search_space"],
            **{n: {k: v for k, v in dump[n].items() if k not in REPORTING} for n in STAGES if n in sections and n in dump}}


def _path(dotted: str) -> list[str]:
    return dotted.split(".")


def _holds(doc: dict[str, Any], dotted: str) -> bool:
    *parents, leaf = _path(dotted)
    for part in parents:
        doc = doc.get(part) if isinstance(doc, dict) else None
    return isinstance(doc, dict) and leaf in doc


def _without(doc: dict[str, Any], dotted: str) -> dict[str, Any]:
    head, *rest = _path(dotted)
    if not rest:
        return {k: v for k, v in doc.items() if k != head}
    return {**doc, head: _without(doc[head], ".".join(rest))}


def as_recorded(inputs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`inputs` as an earlier hwnas may have recorded them: as they are, then without each set of the
    fields added since (`FIELDS_ADDED`) that hold the value hwnas had before them."""
    added = [k for k, v in FIELDS_ADDED.items() if _holds(inputs, k) and lookup(inputs, k) == v]
    for n in range(len(added) + 1):
        for dropped in combinations(added, n):
            doc = inputs
            for key in dropped:
                doc = _without(doc, key)
            yield doc


def config_change(recorded: dict[str, Any], inputs: dict[str, Any]) -> str:
    """The first key whose value differs between a stage's recorded config and `inputs`, as
    "key: <recorded> when it ran, <now> now" (fields added since are read as hwnas had them before)."""
    recorded = recorded_config(recorded)
    where = first_difference(recorded, inputs)
    if where is None:
        return "its config changed since it ran"
    return f"{where}: {lookup(recorded, where)!r} when it ran, {lookup(inputs, where)!r} now"


@dataclass
class Step:
    """A stage as the pipeline runs it: in a fresh process, done when its outputs are intact."""

    name: str
    run: Callable[[], dict[str, Any] | None]
    outputs: list[tuple[Manifest, tuple[str, ...]]]  # files that must be listed and intact for the stage to count as complete

    def damaged(self) -> str | None:
        """Why the stage's outputs are not complete and intact (None: they are)."""
        return next((why for manifest, names in self.outputs if (why := manifest.check(*names))), None)


class Pipeline:
    def __init__(self, cfg: ExperimentConfig, progress: bool = True, log: Callable[[str], None] = print):
        self.cfg, self.progress, self.log = cfg, progress, log
        self.run_dir = cfg.run_path
        self.state_path = self.run_dir / "pipeline.json"

    # --- state --------------------------------------------------------------------------------
    def state(self, dry: bool = False) -> dict[str, Any]:
        """The finished stages' records (pipeline.json). An unreadable record is kept beside the
        new one as `.damaged` (not with `dry`: a dry run writes nothing)."""
        if self.state_path.exists() and not self.state_path.is_file():
            raise HwnasError(f"{self.state_path}: exists and is not a file (hwnas records the finished stages there); "
                             "move it away")
        if self.state_path.exists():
            try:
                state = json.loads(self.state_path.read_text())
                if isinstance(state, dict) and isinstance(state.get("stages"), dict) and all(
                        isinstance(v, dict) for v in state["stages"].values()):
                    return state
            except (OSError, ValueError):
                pass
            kept = self.state_path.with_name(self.state_path.name + ".damaged")
            if dry:
                self.log(f"{self.state_path}: unreadable; a run would keep it as {kept.name} and re-check every stage")
                return {"stages": {}}
            with atomic_path(kept) as tmp:  # the damaged record stays readable beside the new one
                shutil.copyfile(self.state_path, tmp)
            self.log(f"{self.state_path}: unreadable (kept as {kept.name}); re-checking every stage, each resuming from "
                     "its outputs")
        return {"stages": {}}

    def why_run(self, stage: Step, state: dict[str, Any], ran: set[str]) -> str | None:
        """Why `stage` must run (None: it is complete and is skipped)."""
        done = state["stages"].get(stage.name)
        if not done:
            return "not run before"
        if ran & set(READS[stage.name]):
            return f"it reads the outputs of {', '.join(s for s in READS[stage.name] if s in ran)}, made again in this run"
        inputs = stage_inputs(self.cfg, stage.name)
        if str(done.get("config")) not in {_hash(doc) for doc in as_recorded(inputs)}:  # str: a damaged entry
            recorded = done.get("inputs")
            return config_change(recorded, inputs) if isinstance(recorded, dict) else "its config changed since it ran"
        why = stage.damaged()
        return f"it finished before, but its outputs are not intact: {why}" if why else None

    # --- the stages -------------------------------------------------------------------------------
    def stages(self) -> list[Step]:
        def runner(name: str) -> Callable[[], dict[str, Any] | None]:
            # a fresh process per stage: timings do not inherit an earlier stage's state
            from hwnas.core.isolate import run_isolated

            return lambda: run_isolated(run_stage, self.cfg, name, self.progress)

        return [Step(name, runner(name), stage.outputs(self.cfg)) for name, stage in STAGES.items()]

    def plan(self, state: dict[str, Any]) -> list[tuple[Step, str | None]]:
        """Each stage with why it runs (None: it is complete and skipped), in order: a stage that runs
        makes the stages reading its outputs run too."""
        ran: set[str] = set()
        out = []
        for stage in self.stages():
            why = self.why_run(stage, state, ran)
            if why is not None:
                ran.add(stage.name)
            out.append((stage, why))
        return out

    def dry_run(self) -> list[tuple[str, str | None]]:
        """What `run` would do, logged and returned as (stage, why it runs or None), writing nothing."""
        self.cfg.check_run_dir()
        plan = [(stage.name, why) for stage, why in self.plan(self.state(dry=True))]
        for name, why in plan:
            self.log(f"[{name}] complete, would be skipped" if why is None else f"[{name}] would run ({why})")
        return plan

    def run(self) -> dict[str, Any]:
        self.cfg.check_run_dir()
        state = self.state()
        for stage, why in self.plan(state):
            if why is None:
                self.log(f"[{stage.name}] complete, skipped")
                continue
            self.log(f"[{stage.name}] running ({why})")
            t0 = time.perf_counter()
            result = stage.run()
            inputs = stage_inputs(self.cfg, stage.name)
            state["stages"][stage.name] = {"config": _hash(inputs), "inputs": inputs,
                                           "seconds": time.perf_counter() - t0, "finished": time.time(),
                                           "config_file": self.cfg.origin["file"], "overrides": self.cfg.origin["overrides"],
                                           "result": result if _jsonable(result) else None}
            atomic_write_json(self.state_path, state)
            atomic_write_text(self.run_dir / CONFIG_FILE, resolved_yaml(self.cfg))
            self.log(f"[{stage.name}] done in {time.perf_counter() - t0:.0f} s")
        return state


def run_stage(cfg: ExperimentConfig, name: str, progress: bool = True) -> dict[str, Any] | None:
    """Run one stage of `cfg` in this process; returns its JSON-able record."""
    if name not in STAGES:
        raise ValueError(f"stage {name!r} is not one of {', '.join(STAGES)}")
    return STAGES[name].run(cfg, None, progress).record


def _jsonable(obj: Any) -> bool:
    try:
        json.dumps(obj)
        return True
    except (TypeError, ValueError):
        return False
