"""The search stage (`hwnas search`): build the objectives from the run's predictor and latency
tables, run the configured engine, save the front, validate its members for real, plot and log.

Outputs in `<run_dir>/search/`: front.csv / front.json (members, reference point, hypervolume
history), candidates.csv, validation.json (predicted vs re-measured values of front members),
choices.json (which design choices the front uses, `choices.choices_report`),
summary.json, manifest.json (their sizes and sha256: the export refuses a front this stage did not
finish writing), plots (PNG + HTML), and the W&B offline run. Every input (predictor, latency
tables and their fidelity reports, the supernet and corpus) is checked against its manifest first.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.core.io import ArtifactError, read_json
from hwnas.core.manifest import RUN_FOLDERS, Manifest
from hwnas.core.progress import progress_bar
from hwnas.core.rundir import claim_run_dir, experiment_name, recorded_space, stage_lock
from hwnas.core.tracking import check_wandb
from hwnas.latency.fingerprint import describe
from hwnas.search_space import ArchConfig, SearchSpace, SearchSpaceConfig

from .choices import choices_report
from .config import SearchConfig
from .engines import SearchError, make_engine
from .objectives import (
    LATENCY_STATISTICS,
    ObjectiveSet,
    build_objectives,
    latency_statistic,
    split_table_key,
    table_key,
)
from .pareto import SEARCH_FILES, ParetoFront, pick_spread, read_front, read_validation
from .plots import PlotContext, front_plots, hypervolume_plot, validation_plots
from .study import check_study, write_study
from .tracking import log_search


def latency_errors(run_dir: Path, device: str, backend: str, workload: str = "prefill") -> dict[str, float | None]:
    """The table's relative RMSE on held-out subnets for each statistic of the run times, from its
    fidelity report (read once): None where the report is absent, or predates per-statistic rows
    and scored another statistic."""
    from hwnas.latency.table import table_name

    path = run_dir / "latency" / f"fidelity-{table_name(device, backend, workload)}.json"
    if not path.exists():
        return dict.fromkeys(LATENCY_STATISTICS)
    Manifest.of(run_dir, "latency").verify(path.name)
    report = read_json(path, "latency fidelity report", f"run `{RUN_FOLDERS['latency']}`")
    rows = report.get("rows") or []
    out: dict[str, float | None] = {}
    for stat in LATENCY_STATISTICS:
        keys = (f"predicted_{stat}_ms", f"measured_{stat}_ms")
        if rows and keys[0] not in rows[0]:  # a report of an earlier format: only the table's own statistic
            if report.get("statistic", "median") != stat:
                out[stat] = None
                continue
            keys = ("predicted_ms", "measured_ms")
        try:
            rel = np.array([r[keys[0]] / r[keys[1]] - 1 for r in rows], dtype=float)
        except (KeyError, TypeError, ZeroDivisionError):
            rel = np.array([np.nan])
        if not np.isfinite(rel).all():
            raise ArtifactError(f"{path}: rows: {keys[0]} / {keys[1]} are not positive numbers; "
                                f"run `{RUN_FOLDERS['latency']}` to write it again")
        out[stat] = float(np.sqrt(np.mean(rel**2))) if rows else None
    return out


def default_study_name(experiment: str | None, space: SearchSpace, cfg: SearchConfig, run_dir: Path, seed: int) -> str:
    """`<experiment>-<12 hex digits>`: a hash of everything the study's trials depend on (the space,
    the seed, the objectives, constraints and risk, the algorithm and population, and by sha256
    the run's predictor and latency files). Two experiments sharing one storage get two studies, and
    a search resumed after one of those changed starts a new study instead of mixing trials."""
    import hashlib
    import json

    inputs = {f"{folder}/{name}": entry.get("sha256") for folder in ("predictors", "latency")
              for name, entry in sorted(Manifest.of(run_dir, folder).files().items())}
    deps = {"space": space.config.model_dump(mode="json"), "seed": seed, "objectives": cfg.objectives,
            "constraints": cfg.constraints, "risk": cfg.risk, "latency_backend": cfg.latency_backend,
            "algorithm": cfg.algorithm, "population": cfg.population, "inputs": inputs}
    if cfg.engine != "optuna":  # another engine's study (its candidates, for optuna-dashboard) is not one to resume
        deps["engine"] = cfg.engine
    digest = hashlib.sha256(json.dumps(deps, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{experiment or 'hwnas'}-{digest}"


def latency_tables(space: SearchSpace, cfg: SearchConfig, run_dir: Path) -> dict[str, Any]:
    """The run's latency tables of every latency the search names, by '<device>/<runtime>'."""
    from hwnas.latency.table import load_table

    return {t: load_table(run_dir, *split_table_key(t)[:2], space=space, workload=split_table_key(t)[2])
            for t in cfg.latency_targets()}


def load_objectives(space: SearchSpace, cfg: SearchConfig, run_dir: Path) -> ObjectiveSet:
    """The search's objectives, from the run's fitted predictor and latency tables."""
    needs = cfg.quantities()
    predictor, loss_unit = None, "nats/byte"
    if "loss" in needs and cfg.engine != "linas":
        from hwnas.predictors.persist import (
            MANIFEST_FILE,
            PREDICTOR_FILE,
            PredictorError,
            load_manifest,
            load_predictor,
        )

        Manifest.of(run_dir, "predictors").verify(PREDICTOR_FILE, MANIFEST_FILE)
        fitted = load_manifest(run_dir / "predictors")
        if recorded_space(fitted.get("search_space")) != space.config.model_dump(mode="json"):
            raise PredictorError(f"{run_dir / 'predictors' / MANIFEST_FILE}: the predictor was fitted on another search space; "
                                 f"run `{RUN_FOLDERS['predictors']}`")
        predictor = load_predictor(run_dir / "predictors")
        loss_unit = "bits/byte" if fitted.get("target") == "bpb" else "nats/byte"  # what the predictor was fitted on
    tables = latency_tables(space, cfg, run_dir)
    errors = {f"{t}:{stat}": e for t in tables for stat, e in latency_errors(run_dir, *split_table_key(t)).items()}
    if "loss" in needs and cfg.engine == "linas":
        predictor = RealLoss(space, run_dir)
    return build_objectives(cfg.objectives, cfg.constraints, space, predictor, tables, errors, cfg.risk, loss_unit)


class RealLoss:
    """Validation loss measured on the trained supernet (cached per arch): the expensive objective."""

    def __init__(self, space: SearchSpace, run_dir: Path, eval_tokens: int | None = None):
        from hwnas.supernet.data import Corpus
        from hwnas.supernet.train import load_supernet

        self.space, self.run_dir = space, run_dir
        self.net = load_supernet(run_dir, space.config)
        self.corpus = Corpus.load(run_dir / "corpus")
        self.eval_tokens = eval_tokens or _predictor_eval_tokens(run_dir)
        self.cache: dict[str, float] = {}
        self.seconds = 0.0

    def predict(self, archs: list[ArchConfig], return_std: bool = False):
        from hwnas.supernet.evaluate import evaluate

        out = []
        for a in archs:
            if a.key() not in self.cache:
                t0 = time.perf_counter()
                self.cache[a.key()] = evaluate(self.net, a, self.corpus, max_tokens=self.eval_tokens)["loss"]
                self.seconds += time.perf_counter() - t0
            out.append(self.cache[a.key()])
        mean = np.array(out)
        return (mean, None) if return_std else mean


def _predictor_eval_tokens(run_dir: Path) -> int:
    path = run_dir / "predictors" / "report.json"
    if not path.exists():
        return 65536
    Manifest.of(run_dir, "predictors").verify(path.name)
    tokens = read_json(path, "predictor report", f"run `{RUN_FOLDERS['predictors']}`").get("eval_tokens", 65536)
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0:
        raise ArtifactError(f"{path}: eval_tokens: expected a positive integer, got {tokens!r}; "
                            f"run `{RUN_FOLDERS['predictors']}` to write it again")
    return tokens


def reference_point(space: SearchSpace, objectives: ObjectiveSet, cfg: SearchConfig, seed: int) -> np.ndarray:
    """cfg.ref_point, else 1.1 x the worst value of each objective over the smallest and largest
    arch and 200 random ones (a fixed, stated point)."""
    if cfg.ref_point is not None:
        return np.array(cfg.ref_point, dtype=float)
    rng = np.random.default_rng([seed, 7])
    probe = [space.smallest(), space.largest()] + [space.sample(rng) for _ in range(200)]
    F, _, _ = objectives.evaluate(probe)
    return 1.1 * F.max(axis=0)


def measured_elsewhere(names: list[str], tables: dict[str, Any]) -> dict[str, str]:
    """The latencies among `names` whose table (`tables`, by table key) was measured on another
    machine, with how it differs: timings taken here would not check them."""
    out = {}
    for name in names:
        table = tables.get(table_key(name)) if name.startswith("latency@") else None
        if table is not None and (diff := table.elsewhere()):
            out[name] = f"its table was measured on another machine ({'; '.join(diff)})"
    return out


def validate_front(space: SearchSpace, front: ParetoFront, cfg: SearchConfig, run_dir: Path, latency_cfg=None,
                   real_loss: RealLoss | None = None, skip: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Evaluate up to `validate_top` front members (spread along it) for real: validation loss on
    the supernet (`real_loss`, made here if None), latency measured on the extracted subnet (but
    for the latencies in `skip`: those `measured_elsewhere`)."""
    members = pick_spread(front.members(), cfg.validate_top, set())
    if not members:
        return []
    if real_loss is None and "loss" in front.objective_names:
        real_loss = RealLoss(space, run_dir)
    latency_names = [n for n in front.objective_names if n.startswith("latency@") and n not in skip]
    measured_ms: dict[str, dict[str, float]] = {}
    if latency_cfg is not None:
        from hwnas.latency.session import measure_in_fresh_process

        for name in latency_names:  # timed as the table was, by a process with no history
            device, runtime, workload = split_table_key(table_key(name))
            measured_ms[name] = {k: 1e3 * v for k, v in measure_in_fresh_process(
                space.config, latency_cfg, run_dir, device, runtime, [c.arch for c in members], workload,
                latency_statistic(name)).items()}
    rows = []
    for c in members:
        row: dict[str, Any] = {"key": c.key}
        for name, value in zip(front.objective_names, c.objectives, strict=True):
            row[f"predicted:{name}"] = value
            if name == "loss" and real_loss is not None:
                row[f"measured:{name}"] = float(real_loss.predict([c.arch])[0])
            elif name in measured_ms:
                row[f"measured:{name}"] = measured_ms[name][c.key]
            elif name in ("params", "flops", "memory"):
                row[f"measured:{name}"] = value  # analytic: exact
        rows.append(row)
    return rows


def run_search(space_cfg: SearchSpaceConfig, cfg: SearchConfig, run_dir: str | Path, seed: int = 0, latency_cfg=None,
               workers: int | None = None, progress: bool = True, name: str | None = None) -> dict[str, Any]:
    """Run the search stage in `run_dir`; returns a summary. `name`: the experiment's (the run
    directory must belong to it, `core.rundir`)."""
    run_dir = Path(run_dir)
    check_wandb(cfg.wandb, "search.wandb")
    claim_run_dir(run_dir, space_cfg.model_dump(mode="json"), seed, name)
    with stage_lock(run_dir, "search"):
        return _run_search(space_cfg, cfg, run_dir, seed, latency_cfg, workers, progress, name)


def _run_search(space_cfg: SearchSpaceConfig, cfg: SearchConfig, run_dir: Path, seed: int, latency_cfg, workers: int | None,
                progress: bool, name: str | None = None) -> dict[str, Any]:
    from hwnas.core.tracking import Tracker

    out = run_dir / "search"
    space = SearchSpace(space_cfg)
    objectives = load_objectives(space, cfg, run_dir)
    # the supernet, corpus and predictor report the validation reads: checked before anything is written
    real_loss = RealLoss(space, run_dir) if "loss" in objectives.names and cfg.validate_top else None
    study = cfg.study_name or default_study_name(name, space, cfg, run_dir, seed)
    engine = make_engine(space, cfg, run_dir, seed, workers, study_name=study)
    engine.prepare(objectives)  # e.g. an Optuna study that cannot be opened: refused before anything is written
    check_study(cfg, run_dir, study)  # the study the candidates of another engine will be written as (search/study.py)
    ref = reference_point(space, objectives, cfg, seed)
    front = ParetoFront(objectives.names, ref, objectives.constraint_names)
    t0 = time.perf_counter()
    with progress_bar(f"search ({cfg.engine}/{cfg.algorithm})", cfg.budget, progress, unit="arch") as advance:
        engine.run(objectives, cfg.budget, front, advance)
    seconds = time.perf_counter() - t0
    if not front.members():
        raise SearchError(f"no feasible candidate among {len(front.candidates)}: the constraints {cfg.constraints} exclude "
                          "everything evaluated; relax them or raise search.budget")
    # the last front stays listed (and usable) until this one is complete: from here on it is written again
    manifest = Manifest.of(run_dir, "search")
    manifest.forget(*SEARCH_FILES)
    paths = front.save(out)
    tables = latency_tables(space, cfg, run_dir)
    # objective -> why the front was not re-measured on it here
    not_validated = measured_elsewhere(objectives.names, tables) if cfg.validate_top and latency_cfg is not None else {}
    validation = validate_front(space, front, cfg, run_dir, latency_cfg, real_loss, skip=not_validated)
    manifest.write_json("validation.json", {"rows": validation})
    write_study(space, cfg, run_dir, study, front, validation)  # for optuna-dashboard
    choices = choices_report(space, [c.arch for c in front.members()], tables, seed)
    manifest.write_json("choices.json", choices)
    summary = {
        "engine": cfg.engine, "algorithm": cfg.algorithm, "candidates": len(front.candidates), "front_size": len(front.members()),
        "hypervolume": front.hypervolume(), "ref_point": ref.tolist(), "objectives": objectives.names,
        "constraints": objectives.constraint_names, "seconds": seconds, "candidates_per_second": len(front.candidates) / max(seconds, 1e-9),
        "validated": len(validation), "experiment": name or experiment_name(run_dir), "units": objectives.units(),
        "measured_on": {t: describe(table.fingerprint) for t, table in tables.items()},
        "not_validated": not_validated,
    }
    manifest.write_json("summary.json", summary)
    plots = write_plots(out)
    tracker = Tracker(out, "metrics", mode=cfg.wandb, project=cfg.wandb_project, job_type="search", experiment=name,
                      config={"search": cfg.model_dump(mode="json")}, step_metric="candidates", metrics=("hypervolume",))
    log_search(tracker, space, front, validation, paths, plots, choices)
    tracker.summary(summary)
    tracker.finish()
    return summary


def write_plots(out: Path) -> list[Path]:
    """All plots of a saved search (front pairs, hypervolume history, validation)."""
    data = read_front(out)
    names = data["objectives"]
    cands = read_candidates(out, names)
    front = [{"key": m["key"], **dict(zip(names, m["objectives"], strict=True))} for m in data["front"]]
    summary = out / "summary.json"  # units, experiment and machine; a search saved before they were recorded has none
    ctx = PlotContext.of_summary(read_json(summary, "search summary", f"run `{RUN_FOLDERS['search']}`")
                                 if summary.exists() else {"ref_point": data["ref_point"]})
    paths = front_plots(cands, front, names, out, ctx) + hypervolume_plot(data["hypervolume_history"], out, names=names, ctx=ctx)
    rows = read_validation(out)
    if rows:
        paths += validation_plots(rows, names, out, ctx)
    return paths


def read_candidates(out: Path, names: list[str]) -> list[dict[str, Any]]:
    """candidates.csv of a search folder (checked against its manifest), objectives as floats."""
    Manifest(out, RUN_FOLDERS["search"]).verify("candidates.csv")
    try:
        with (out / "candidates.csv").open(newline="") as f:
            return [{**r, **{n: float(r[n]) for n in names}} for r in csv.DictReader(f)]
    except (KeyError, TypeError, ValueError, csv.Error) as e:
        raise ArtifactError(f"{out / 'candidates.csv'}: not the candidates table of this front ({type(e).__name__}: {e}); "
                            f"run `{RUN_FOLDERS['search']}` to write it again") from None
