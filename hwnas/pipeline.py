"""`hwnas run`: train -> latency -> predictors -> search -> export in one run directory.

A stage whose outputs are complete, intact (each listed unchanged in its folder's manifest, see
`core.manifest`) and were made from the same config section is skipped; an interrupted
stage resumes (each stage keeps its own resumable state: training checkpoints,
partial latency tables, appended evaluation records, the Optuna study). `<run_dir>/pipeline.json`
records, per finished stage, a hash of the config it ran with; changing a section re-runs that
stage and every later one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hwnas.core.errors import HwnasError
from hwnas.core.io import atomic_write_json
from hwnas.core.manifest import EXPORT_COMMAND, Manifest

from .config import ExperimentConfig

STAGES = ("train", "latency", "predictors", "search", "export")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def stage_inputs(cfg: ExperimentConfig, stage: str) -> dict[str, Any]:
    """The config a stage's outputs depend on (including the stages before it)."""
    dump = cfg.model_dump(mode="json")
    upto = STAGES[: STAGES.index(stage) + 1]
    return {"seed": cfg.seed, "search_space": dump["search_space"], **{s: dump[s] for s in upto if s in dump}}


@dataclass
class Stage:
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
    def state(self) -> dict[str, Any]:
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
            self.log(f"{self.state_path}: unreadable; re-checking every stage")
        return {"stages": {}}

    def complete(self, stage: Stage, state: dict[str, Any]) -> bool:
        done = state["stages"].get(stage.name)
        if not done or done.get("config") != _hash(stage_inputs(self.cfg, stage.name)):
            return False
        why = stage.damaged()
        if why:
            self.log(f"[{stage.name}] finished before, but its outputs are not intact: {why}")
        return why is None

    # --- the stages -------------------------------------------------------------------------------
    def stages(self) -> list[Stage]:
        from hwnas.export.stage import EXPORT_FILES
        from hwnas.predictors.stage import OUTPUTS as PREDICTOR_OUTPUTS
        from hwnas.search.pareto import SEARCH_FILES
        from hwnas.supernet.data import FILES as CORPUS_FILES

        cfg, rd = self.cfg, self.run_dir

        def runner(name: str) -> Callable[[], dict[str, Any] | None]:
            # a fresh process per stage: timings do not inherit an earlier stage's state
            from hwnas.core.isolate import run_isolated

            return lambda: run_isolated(run_stage, cfg, name, self.progress)

        export_dir = Path(cfg.export.out_dir) if cfg.export.out_dir else rd / "export"
        pairs = [(d, b) for d in cfg.latency.devices for b in cfg.latency.backends]
        latency_files = [f"{d}-{b}.json" for d, b in pairs] + ([f"fidelity-{d}-{b}.json" for d, b in pairs] if cfg.latency.n_fidelity else [])
        return [
            Stage("train", runner("train"), [(Manifest.of(rd, "train"), ("checkpoint.safetensors", "summary.json")),
                                             (Manifest.of(rd, "corpus"), CORPUS_FILES)]),
            Stage("latency", runner("latency"), [(Manifest.of(rd, "latency"), tuple(latency_files))]),
            Stage("predictors", runner("predictors"), [(Manifest.of(rd, "predictors"), ("records.jsonl", *PREDICTOR_OUTPUTS))]),
            Stage("search", runner("search"), [(Manifest.of(rd, "search"), SEARCH_FILES)]),
            Stage("export", runner("export"), [(Manifest(export_dir, EXPORT_COMMAND), EXPORT_FILES)]),
        ]

    def run(self) -> dict[str, Any]:
        self.cfg.check_run_dir()
        state = self.state()
        invalid = False
        for stage in self.stages():
            if not invalid and self.complete(stage, state):
                self.log(f"[{stage.name}] complete, skipped")
                continue
            invalid = True  # every later stage depends on this one's outputs
            self.log(f"[{stage.name}] running")
            t0 = time.perf_counter()
            result = stage.run()
            state["stages"][stage.name] = {"config": _hash(stage_inputs(self.cfg, stage.name)),
                                           "seconds": time.perf_counter() - t0, "finished": time.time(),
                                           "result": result if _jsonable(result) else None}
            atomic_write_json(self.state_path, state)
            self.log(f"[{stage.name}] done in {time.perf_counter() - t0:.0f} s")
        return state


def run_stage(cfg: ExperimentConfig, name: str, progress: bool = True) -> dict[str, Any] | None:
    """Run one stage of `cfg` in this process; returns its JSON-able summary."""
    rd = cfg.run_path
    if name == "train":
        from hwnas.supernet.train import train

        return train(cfg.search_space, cfg.train, rd, seed=cfg.seed, progress=progress, name=cfg.name)
    if name == "latency":
        from hwnas.latency.stage import run_latency_stage

        return run_latency_stage(cfg.search_space, cfg.latency, rd, progress=progress, seed=cfg.seed, name=cfg.name)
    if name == "predictors":
        from hwnas.predictors.stage import run_predictors

        r = run_predictors(cfg.search_space, cfg.predictors, rd, seed=cfg.seed, progress=progress, name=cfg.name)
        return {"model": r["model"], "heldout": r["heldout"], "eval_seconds_per_subnet": r["eval_seconds_per_subnet"]}
    if name == "search":
        from hwnas.search.stage import run_search

        return run_search(cfg.search_space, cfg.search, rd, seed=cfg.seed, latency_cfg=cfg.latency, progress=progress, name=cfg.name)
    if name == "export":
        from hwnas.export import run_export

        return run_export(rd, cfg.export.pick, force=True, finetune_steps=cfg.export.finetune_steps, cfg=cfg.export,
                          progress=progress)
    raise ValueError(f"stage {name!r} is not one of {', '.join(STAGES)}")


def _jsonable(obj: Any) -> bool:
    try:
        json.dumps(obj)
        return True
    except (TypeError, ValueError):
        return False
