"""The pipeline from Python: one function per stage, each the stage the CLI runs, in this process.

    import hwnas

    cfg = hwnas.load_config("experiments/quickstart.yaml", {"train.steps": 600})
    hwnas.train(cfg)                     # TrainResult: its .record is the stage's JSON summary
    hwnas.build_latency_tables(cfg)      # LatencyResult
    hwnas.fit_predictors(cfg)            # PredictorsResult
    hwnas.pareto_search(cfg)             # SearchResult; hwnas.front(cfg) reads the saved front
    hwnas.export_model(cfg, force=True)  # ExportResult; the record is the export's report.json
    model = hwnas.from_pretrained(cfg.run_path / "export")
    hwnas.run(cfg)                       # all of them, each in a fresh process, finished ones skipped

Every function takes a config as an experiment YAML's path or a loaded `ExperimentConfig`, and
`overrides`: `KEY=VALUE` strings or a mapping of dotted keys to values, applied as the CLI's
`--set` (before validation). Keyword options are the stage's command-line options (`--workers` is
`workers=`, `--no-fidelity` is `fidelity=False`), checked as the command line checks them. Each
stage runs in this process (`hwnas.stages.STAGES`, the same code as `hwnas <stage> CONFIG`) and
returns its typed `StageResult`; `run` is `hwnas run` (`hwnas.pipeline.Pipeline`). Bad input raises
an `HwnasError` (`ConfigError` for a config, an override or an option) with one line naming it.

The subpackages `hwnas.search` and `hwnas.export` keep their names, so the search and export
stages are `pareto_search` and `export_model` here.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwnas.core.errors import ConfigError, HwnasError

if TYPE_CHECKING:
    from hwnas.export.config import ExportConfig

    from .config import ExperimentConfig
    from .stages import ExportResult, LatencyResult, PredictorsResult, SearchResult, StageResult, TrainResult

Overrides = Sequence[str] | Mapping[str, Any] | str | None


# --- configs ----------------------------------------------------------------------------------------
def override_list(overrides: Overrides) -> tuple[str, ...]:
    """`overrides` as the CLI's `--set` strings: a mapping {dotted key: value} becomes KEY=<value as
    JSON, which YAML reads back as the same value>; one string is one override."""
    if overrides is None:
        return ()
    if isinstance(overrides, str):
        return (overrides,)
    if isinstance(overrides, Mapping):
        out = []
        for key, value in overrides.items():
            try:
                out.append(f"{key}={json.dumps(value)}")
            except (TypeError, ValueError):
                raise ConfigError(f"overrides: {key}: {type(value).__name__} is not a config value "
                                  "(numbers, strings, booleans, None, lists and mappings of them)") from None
        return tuple(out)
    if isinstance(overrides, Sequence) and all(isinstance(o, str) for o in overrides):
        return tuple(overrides)
    raise ConfigError(f"overrides: expected KEY=VALUE strings or a mapping of dotted keys to values, got {overrides!r:.80}")


def load_config(path: str | os.PathLike[str], overrides: Overrides = None) -> ExperimentConfig:
    """Read and validate an experiment YAML with `overrides` (see `override_list`); a `ConfigError` names
    the file, the field and what is allowed."""
    from .config import load_config as load

    if not isinstance(path, str | os.PathLike):
        raise ConfigError(f"config: expected an experiment YAML's path, got {type(path).__name__}")
    return load(path, override_list(overrides))


def config_of(config: Any, overrides: Overrides = None) -> tuple[ExperimentConfig, str]:
    """(the experiment config, how error messages name it) of a YAML path or an `ExperimentConfig`,
    `overrides` applied (to a loaded config too: its values, then the overrides, validated again)."""
    from .config import ExperimentConfig, apply_overrides, parse_config

    if isinstance(config, ExperimentConfig):
        source = f"experiment {config.name!r}"
        sets = override_list(overrides)
        if not sets:
            return config, source
        return parse_config(apply_overrides(config.model_dump(mode="json"), sets, source), f"{source} with --set"), source
    if isinstance(config, str | os.PathLike):
        return load_config(config, overrides), str(config)
    raise ConfigError(f"config: expected an experiment YAML's path or an ExperimentConfig, got {type(config).__name__}")


def check_folder(path: str | Path, what: str) -> None:
    """Refuse, before any work, a folder a command would write that cannot be written."""
    from hwnas.core.io import unwritable

    why = unwritable(path, folder=True)
    if why:
        raise ConfigError(f"{what} {path}: {why}")


def prepare(config: Any, overrides: Overrides = None) -> tuple[ExperimentConfig, str]:
    """`config_of`, its run directory checked to be writable and this experiment's (or new): what
    every command that writes a run checks first."""
    cfg, source = config_of(config, overrides)
    check_folder(cfg.run_path, f"{source}: run_dir")
    cfg.check_run_dir()
    return cfg, source


# --- stage options ----------------------------------------------------------------------------------
class _OptionParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print usage and exit
        raise ConfigError(f"{self.prog}: {message}")


def stage_options(stage: str, target: str, options: Mapping[str, Any]) -> argparse.Namespace:
    """The command line `hwnas <stage> TARGET --option value ...` of `options` (the argparse names,
    e.g. `no_fidelity`), parsed and checked by the stage's own parser: the values the CLI refuses
    are refused the same way, as a `ConfigError`."""
    from .stages import STAGES

    parser = _OptionParser(prog=f"hwnas {stage}", add_help=False)
    STAGES[stage].add_arguments(parser)
    known = {flags[0].removeprefix("--").replace("-", "_"): (flags[0], spec) for flags, spec in STAGES[stage].arguments}
    argv = [target]
    for name, value in options.items():
        if name not in known:
            raise ConfigError(f"hwnas {stage}: unknown option {name!r}; the options are {', '.join(known) or 'none'}")
        flag, spec = known[name]
        if spec.get("action") == "store_true":
            if not isinstance(value, bool):
                raise ConfigError(f"hwnas {stage}: {name}: expected True or False, got {value!r:.80}")
            argv += [flag] if value else []
        elif value is not None:
            argv += [flag, str(value)]
    return parser.parse_args(argv)


def in_process(stage: str, config: Any, overrides: Overrides, progress: bool, **options: Any) -> StageResult:
    """Stage `stage` of `config` in this process, as `hwnas <stage> CONFIG` runs it."""
    from .stages import STAGES

    cfg, source = prepare(config, overrides)
    given = {k: v for k, v in options.items() if v is not None and v is not False}
    args = stage_options(stage, source, given) if given else None  # None: the config's settings
    return STAGES[stage].run(cfg, args, progress=progress)


# --- the stages -------------------------------------------------------------------------------------
def train(config: Any, overrides: Overrides = None, *, wandb: str | None = None, progress: bool = True) -> TrainResult:
    """Train the supernet (`hwnas train`; resumes an interrupted training). `wandb`: over train.wandb."""
    return in_process("train", config, overrides, progress, wandb=wandb)


def build_latency_tables(config: Any, overrides: Overrides = None, *, device: str | None = None, backend: str | None = None,
                         strict: bool = False, fidelity: bool = True, progress: bool = True) -> LatencyResult:
    """Measure the latency tables and their fidelity reports (`hwnas latency`): every device and
    backend of the config's `latency` section, or the one `device` / `backend`. With an option
    given, each table's line is printed as it finishes (as the CLI does)."""
    return in_process("latency", config, overrides, progress, device=device, backend=backend, strict=strict,
                     no_fidelity=not fidelity)


def fit_predictors(config: Any, overrides: Overrides = None, *, progress: bool = True) -> PredictorsResult:
    """Evaluate sampled subnets and fit the accuracy predictors (`hwnas predictors`)."""
    return in_process("predictors", config, overrides, progress)


def pareto_search(config: Any, overrides: Overrides = None, *, workers: int | None = None,
                  progress: bool = True) -> SearchResult:
    """Search the Pareto front (`hwnas search`); the record is search/summary.json, `front(config)`
    reads the front it saved. `workers`: Optuna processes sharing the study (over search.workers)."""
    return in_process("search", config, overrides, progress, workers=workers)


def export_run(run_dir: str | Path, export_cfg: ExportConfig, args: argparse.Namespace | None, progress: bool = True,
               experiment: ExperimentConfig | None = None) -> ExportResult:
    """`hwnas export RUN_DIR`: the run directory must exist (and be `experiment`'s, when given and the
    run records its owner), the export folder must be writable; then the export stage."""
    from .stages import STAGES

    if experiment is not None and (Path(run_dir) / "run.json").exists():  # the config must be the run's own
        experiment.check_run_dir(run_dir)
    if not Path(run_dir).is_dir():
        raise HwnasError(f"{run_dir}: not a run directory (no such folder)")
    out_option = args.out if args is not None else None
    out = out_option if out_option is not None else export_cfg.out_dir
    check_folder(out if out is not None else Path(run_dir) / "export", "--out" if out_option is not None else "export folder")
    return STAGES["export"].run_on(run_dir, export_cfg, args, progress)


def export_model(config: Any, overrides: Overrides = None, *, pick: str | int | None = None, out: str | Path | None = None,
                 force: bool = False, finetune_steps: int | None = None, progress: bool = True) -> ExportResult:
    """Export a front member (`hwnas export`): `pick` (default export.pick) into `out` (default
    export.out_dir, else <run_dir>/export), replacing an earlier export there only with `force`.
    `config` may also be a run directory (the `export:` defaults, as `hwnas export RUN_DIR`). The
    record is the export's report (report.json); the folder holds the model card, README.md."""
    options = {"pick": None if pick is None else str(pick), "out": None if out is None else str(out), "force": force,
               "finetune_steps": finetune_steps}
    if isinstance(config, str | os.PathLike) and Path(config).is_dir():
        if override_list(overrides):
            raise ConfigError(f"overrides: {config} is a run directory; overrides need an experiment config "
                              "(or use pick=, out=, finetune_steps=)")
        from hwnas.export.config import ExportConfig

        return export_run(config, ExportConfig(), stage_options("export", str(config), options), progress)
    cfg, _ = config_of(config, overrides)
    return export_run(cfg.run_path, cfg.export, stage_options("export", str(cfg.run_path), options), progress, cfg)


def run(config: Any, overrides: Overrides = None, *, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The whole pipeline (`hwnas run`): each stage in a fresh process, finished ones skipped, an
    interrupted one resumed. Returns the pipeline's state (pipeline.json): per stage, the config it
    read and its hash, its seconds and its JSON record."""
    from .pipeline import Pipeline

    return Pipeline(prepare_run(config, overrides), progress=progress, log=log).run()


def prepare_run(config: Any, overrides: Overrides = None) -> ExperimentConfig:
    """`prepare`, and the export folder the pipeline will write checked too: what `hwnas run` checks first."""
    cfg, source = prepare(config, overrides)
    if cfg.export.out_dir:
        check_folder(cfg.export.out_dir, f"{source}: export.out_dir")
    return cfg


# --- results ----------------------------------------------------------------------------------------
def search_folder(run_dir: str | Path) -> Path:
    """<run_dir>/search, refused in one line when no search has saved a front there."""
    out = Path(run_dir) / "search"
    if not (out / "front.json").exists():
        raise HwnasError(f"{out / 'front.json'}: no search results; run `hwnas search CONFIG` first")
    return out


def front(config: Any, overrides: Overrides = None) -> dict[str, Any]:
    """The Pareto front the search saved (front.json, checked against its manifest): `objectives`,
    `front` (members with `key`, `arch`, `objectives`), `hypervolume`, ... `config`: an experiment
    (YAML path or `ExperimentConfig`) or its run directory."""
    from hwnas.search.pareto import read_front

    if isinstance(config, str | os.PathLike) and Path(config).is_dir():
        return read_front(search_folder(config))
    return read_front(search_folder(config_of(config, overrides)[0].run_path))
