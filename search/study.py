"""Every search as an Optuna study, for optuna-dashboard (`optuna-dashboard <storage URL>`).

The optuna engine's study is the search itself (search/optuna_engine.py records each trial's arch
key and predicted stds as it runs); the other engines (pymoo, LINAS, random) keep no study, so the
search stage writes their candidates as one after validating the front (`write_study`): one
COMPLETE trial per candidate, in the order they were evaluated (candidates.csv's), with the params
and distributions `SearchSpace.suggest` gives an Optuna trial, so both look alike in the dashboard.

Where: the run's Optuna storage (`search.storage`, default the SQLite file search/study.db), under
the stage's study name. Like the optuna engine's study.db, the file is Optuna's, written in place,
and not in the search folder's manifest (nothing hwnas reads comes from it). A re-run of the stage
replaces the study it wrote before (and only such a study: one an optuna search made is refused,
`check_study`, before the search runs).

Trial user attrs: `key` (the arch key), `constraints` (their values, <= 0 is feasible),
`std:<objective>` (the predictor's std, where there is one), `on_front`, and for the validated front
members `measured:<objective>`. Study user attrs: `engine`, `algorithm`, `constraints` (names).
"""

from __future__ import annotations

import datetime
import json
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwnas.search_space import ArchConfig, SearchSpace

from .config import storage_file
from .engines import SearchError
from .optuna_engine import open_storage, shown_storage, storage_url, unopenable
from .pareto import Candidate, ParetoFront

if TYPE_CHECKING:
    from .config import SearchConfig

OPTUNA_ENGINE = "optuna"


def _open(url: str, study_name: str):
    """The storage at `url`; SearchError (naming it) where it cannot be opened."""
    try:
        return open_storage(url)
    except Exception as e:  # a damaged database, a server that refuses
        raise unopenable(url, study_name, e) from None


def _held(storage, study_name: str) -> tuple[int, dict[str, Any]] | None:
    """(study id, user attrs) of the study named `study_name` in `storage`; None if there is none."""
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return None
    return study_id, storage.get_study_user_attrs(study_id)


def optuna_study_held(url: str, study_name: str, engine: str) -> SearchError:
    return SearchError(f"search.storage {shown_storage(url)}: the Optuna study {study_name!r} holds the trials of an "
                       f"optuna search; set search.study_name to another name for this {engine} search")


def written_by_stage(storage, study_id: int, attrs: dict[str, Any]) -> bool:
    """A study this module wrote (its `engine` is not optuna), or one without trials: replaceable."""
    engine = attrs.get("engine")
    return (engine is not None and engine != OPTUNA_ENGINE) or storage.get_n_trials(study_id) == 0


def check_study(cfg: SearchConfig, run_dir: Path, study_name: str) -> None:
    """Refuse, before a non-optuna search runs, a storage that cannot be opened or a study of that
    name which an optuna search made (its trials are that search's, to resume: never replaced)."""
    url = storage_url(cfg, run_dir)
    file = storage_file(url)
    if cfg.engine == OPTUNA_ENGINE or (file is not None and not (file and Path(file).exists())):
        return  # in memory, or a file not made yet: nothing to refuse (and nothing is created before the search)
    storage = _open(url, study_name)
    held = _held(storage, study_name)
    if held is not None and not written_by_stage(storage, *held):
        raise optuna_study_held(url, study_name, cfg.engine)


class _Recorder:
    """An Optuna trial stand-in for `SearchSpace.suggest`: answers each gene with the arch's value
    and records the params and distributions a real trial would hold."""

    def __init__(self, values: dict[str, Any], distributions: dict[str, Any]):
        self.values, self.cache = values, distributions
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, Any] = {}

    def suggest_categorical(self, name: str, choices: list[Any]) -> Any:
        from optuna.distributions import CategoricalDistribution

        if name not in self.cache:
            self.cache[name] = CategoricalDistribution(choices)
        self.params[name], self.distributions[name] = self.values[name], self.cache[name]
        return self.values[name]


def trial_params(space: SearchSpace, arch: ArchConfig, cache: dict[str, Any] | None = None) -> tuple[dict, dict]:
    """(params, distributions) of `arch` as the optuna engine's trial holds them (`SearchSpace.suggest`:
    one categorical per active gene, by the gene's name). `cache`: distributions shared across calls."""
    vector = space.encode(arch)
    recorder = _Recorder({g.name: g.choices[int(i)] for g, i in zip(space.genes, vector, strict=True)},
                         {} if cache is None else cache)
    space.suggest(recorder)
    return recorder.params, recorder.distributions


def candidate_trial(space: SearchSpace, front: ParetoFront, c: Candidate, on_front: bool, measured: dict[str, Any],
                    cache: dict[str, Any], now: datetime.datetime):
    """The COMPLETE Optuna trial of candidate `c` (FAIL where an objective is NaN), as
    `optuna.trial.create_trial` makes it (built directly: create_trial converts and compares every
    distribution again, most of the time of 10k candidates)."""
    import optuna

    params, distributions = trial_params(space, c.arch, cache)
    attrs: dict[str, Any] = {"key": c.key, "constraints": list(c.constraints), "on_front": on_front}
    attrs |= {k: float(v) for k, v in c.extra.items() if k.startswith("std:")}
    attrs |= {k: v for k, v in measured.items() if k.startswith("measured:")}
    ok = not any(math.isnan(v) for v in c.objectives)
    states = optuna.trial.TrialState
    trial = optuna.trial.FrozenTrial(
        number=-1, trial_id=-1, state=states.COMPLETE if ok else states.FAIL, value=None, values=list(c.objectives) if ok else None,
        datetime_start=now, datetime_complete=now, params=params, distributions=distributions, user_attrs=attrs,
        system_attrs={}, intermediate_values={})
    for name, value in zip(front.constraint_names, c.constraints, strict=True):
        if not math.isnan(value):
            trial.set_constraint(name, value)  # as the optuna engine's trial.set_constraint does
    return trial


def study_trials(space: SearchSpace, front: ParetoFront, validation: list[dict[str, Any]]) -> list:
    """One trial per candidate of `front`, in the order they were evaluated."""
    on_front = {c.key for c in front.members()}
    measured = {row["key"]: row for row in validation}
    cache: dict[str, Any] = {}
    now = datetime.datetime.now()
    return [candidate_trial(space, front, c, c.key in on_front, measured.get(c.key, {}), cache, now) for c in front.candidates]


def rdb_models(storage):
    """Optuna's table models where `storage` is an RDB one laid out as hwnas expects, else None
    (then Optuna's own, slower, calls do the work)."""
    import optuna

    if not isinstance(storage, optuna.storages.RDBStorage):
        return None
    try:
        from optuna.storages._rdb import models  # the rows Optuna itself writes; no public bulk API
    except ImportError:
        return None
    names = ("TrialModel", "TrialValueModel", "TrialParamModel", "TrialUserAttributeModel", "TrialSystemAttributeModel")
    return models if all(hasattr(models, n) for n in names) else None


def clear_trials_at_once(storage, study_id: int) -> None:
    """Delete the trials of a study and every row that hangs on them, a table at a time
    (`optuna.delete_study` loads and deletes them a row at a time: 20 s for 10k candidates)."""
    from sqlalchemy import delete, select
    from sqlalchemy.orm import Session

    models = rdb_models(storage)
    if models is None:
        return
    trials = models.TrialModel.__table__
    ids = select(trials.c.trial_id).where(trials.c.study_id == study_id).scalar_subquery()
    with Session(storage.engine) as session, session.begin():
        for table in reversed(models.BaseModel.metadata.sorted_tables):  # children before trials
            if table is not trials and "trial_id" in table.c:
                session.execute(delete(table).where(table.c.trial_id.in_(ids)))
        session.execute(delete(trials).where(trials.c.study_id == study_id))


def add_trials_at_once(storage, study_id: int, trials: list) -> bool:
    """Add `trials` to an empty study of an RDB storage in one transaction, by bulk inserts
    (Optuna's `add_trials` commits one trial at a time, a row at a time: minutes for 10k candidates).
    False, having written nothing, where the storage is not an RDB one or Optuna's tables are not
    laid out as expected (then `Study.add_trials` must do it)."""
    from sqlalchemy import insert
    from sqlalchemy.orm import Session

    models = rdb_models(storage)
    if models is None:
        return False
    with Session(storage.engine) as session, session.begin():
        rows = [models.TrialModel(study_id=study_id, number=n, state=t.state, datetime_start=t.datetime_start,
                                  datetime_complete=t.datetime_complete) for n, t in enumerate(trials)]
        session.add_all(rows)
        session.flush()  # their trial ids
        for model, records in _child_rows(models, [(row.trial_id, t) for row, t in zip(rows, trials, strict=True)]).items():
            if records:
                session.execute(insert(model.__table__), records)
    return True


def _child_rows(models, trials: list[tuple[int, Any]]) -> dict[Any, list[dict[str, Any]]]:
    """The values, params and attrs rows of (trial id, trial) pairs, by table model."""
    from optuna.distributions import distribution_to_json

    value = models.TrialValueModel.value_to_stored_repr
    dist_json: dict[str, str] = {}
    out: dict[Any, list[dict[str, Any]]] = {models.TrialValueModel: [], models.TrialParamModel: [],
                                            models.TrialUserAttributeModel: [], models.TrialSystemAttributeModel: []}
    for trial_id, t in trials:
        for j, v in enumerate(t.values or []):
            stored, kind = value(v)
            out[models.TrialValueModel].append({"trial_id": trial_id, "objective": j, "value": stored, "value_type": kind})
        for name, v in t.params.items():
            d = t.distributions[name]
            if name not in dist_json:
                dist_json[name] = distribution_to_json(d)
            out[models.TrialParamModel].append({"trial_id": trial_id, "param_name": name, "param_value": d.to_internal_repr(v),
                                                "distribution_json": dist_json[name]})
        for model, attrs in ((models.TrialUserAttributeModel, t.user_attrs), (models.TrialSystemAttributeModel, t.system_attrs)):
            out[model] += [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
    return out


def write_study(space: SearchSpace, cfg: SearchConfig, run_dir: Path, study_name: str, front: ParetoFront,
                validation: list[dict[str, Any]]) -> None:
    """Put the search's result in the run's Optuna storage as study `study_name`: the optuna
    engine's study gets the front (study user attrs `front_trials`, `validation`); another engine's
    candidates become a study of their own, replacing the one an earlier run of the stage wrote."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = storage_url(cfg, run_dir)
    if storage_file(url) == "":
        return  # an in-memory SQLite storage: gone with the search's process
    storage = _open(url, study_name)
    if cfg.engine == OPTUNA_ENGINE:
        return annotate_optuna_study(storage, study_name, front, validation)
    held = _held(storage, study_name)
    if held is not None:
        if not written_by_stage(storage, *held):  # made meanwhile by an optuna search (check_study saw none)
            raise optuna_study_held(url, study_name, cfg.engine)
        clear_trials_at_once(storage, held[0])
        optuna.delete_study(study_name=study_name, storage=storage)
    trials = study_trials(space, front, validation)
    study = optuna.create_study(study_name=study_name, storage=storage, directions=["minimize"] * len(front.objective_names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(front.objective_names))
    for key, value in {"engine": cfg.engine, "algorithm": cfg.algorithm, "constraints": list(front.constraint_names)}.items():
        study.set_user_attr(key, value)
    if not add_trials_at_once(storage, storage.get_study_id_from_name(study_name), trials):
        study.add_trials(trials)


def annotate_optuna_study(storage, study_name: str, front: ParetoFront, validation: list[dict[str, Any]]) -> None:
    """The optuna engine's study, told which of its trials are on the front and what validation
    measured for them (a finished trial's user attrs can no longer change: study user attrs)."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    numbers = {c.key: c.extra.get("trial") for c in front.candidates}
    study.set_user_attr("front_trials", sorted(numbers[c.key] for c in front.members() if numbers.get(c.key) is not None))
    study.set_user_attr("validation", [{"trial": numbers.get(row["key"]), **row} for row in validation])
