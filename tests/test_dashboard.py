"""Every search as an Optuna study that optuna-dashboard shows (search/study.py): the pymoo engine's
candidates written as one, the optuna engine's own study named and annotated, both read back over
HTTP from the dashboard's server; a re-run replaces the study it wrote; the bulk write is what
Optuna's own `add_trials` would write."""

from __future__ import annotations

import csv
import json
import threading
import urllib.request
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import optuna
import pytest

from hwnas.search.config import SearchConfig
from hwnas.search.engines import SearchError, candidates_of
from hwnas.search.objectives import build_objectives
from hwnas.search.optuna_engine import default_storage
from hwnas.search.pareto import ParetoFront
from hwnas.search.stage import default_study_name, run_search
from hwnas.search.study import add_trials_at_once, study_trials, trial_params
from hwnas.search_space import ArchConfig, SearchSpace, SearchSpaceConfig
from tests.tiny import tiny_config

SPACE = SearchSpace(SearchSpaceConfig(**tiny_config(Path("run"), Path("text"))["search_space"]))  # the tiny run's space
OBJECTIVES, CONSTRAINTS = ["params", "flops"], ["memory <= 1MiB"]


def search(run: Path, engine: str, algorithm: str = "nsga2", budget: int = 60, **kw) -> tuple[dict, str, str]:
    """(summary, study name, storage URL) of a search on analytic objectives (seconds, no trained run)."""
    cfg = SearchConfig(objectives=OBJECTIVES, constraints=CONSTRAINTS, engine=engine, algorithm=algorithm, budget=budget,
                       population=10, validate_top=3, wandb="disabled", **kw)
    summary = run_search(SPACE.config, cfg, run, seed=0, progress=False, name="dash")
    return summary, cfg.study_name or default_study_name("dash", SPACE, cfg, run, 0), default_storage(run / "search")


def candidates_csv(run: Path) -> list[dict]:
    with (run / "search" / "candidates.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@contextmanager
def dashboard(storage: str):
    """optuna-dashboard's server on loopback (a free port, a thread); yields a JSON GET of a path."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    optuna_dashboard = pytest.importorskip("optuna_dashboard")

    class Quiet(WSGIRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = make_server("127.0.0.1", 0, optuna_dashboard.wsgi(storage), handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def get(path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}{path}", timeout=30) as r:
            return json.loads(r.read())

    try:
        yield get
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def served_study(get, name: str) -> dict:
    """The dashboard's detail of study `name` (GET /api/studies, then /api/studies/<id>)."""
    ids = {s["study_name"]: s["study_id"] for s in get("/api/studies")["study_summaries"]}
    assert name in ids, ids
    return get(f"/api/studies/{ids[name]}")


def attrs(trial: dict) -> dict[str, str]:
    return {a["key"]: a["value"] for a in trial["user_attrs"]}


@pytest.mark.parametrize("engine", ["pymoo", "optuna"])
def test_the_dashboard_shows_the_search(tmp_path, engine):
    pytest.importorskip("optuna_dashboard")
    summary, name, storage = search(tmp_path, engine, budget=60 if engine == "pymoo" else 12)
    rows = candidates_csv(tmp_path)
    front = {r["key"] for r in csv.DictReader((tmp_path / "search" / "front.csv").open(newline=""))}
    validation = json.loads((tmp_path / "search" / "validation.json").read_text())["rows"]
    with dashboard(storage) as get:
        study = served_study(get, name)
    assert study["name"] == name and study["objective_names"] == OBJECTIVES and study["directions"] == ["minimize"] * 2
    assert {a["key"]: a["value"] for a in study["user_attrs"]}["engine"] == engine
    trials = [t for t in study["trials"] if t["state"] == "Complete"]
    by_key = {attrs(t)["key"]: t for t in trials}
    assert len(by_key) == summary["candidates"] == len(rows)
    if engine == "pymoo":  # one trial per candidate, in candidates.csv's order
        assert [attrs(t)["key"] for t in trials] == [r["key"] for r in rows] and len(study["trials"]) == len(rows)
        assert {k for k, t in by_key.items() if attrs(t)["on_front"] == "True"} == front
        for row in validation:  # the validated members' measured values
            assert float(attrs(by_key[row["key"]])["measured:params"]) == row["measured:params"]
    else:  # the optuna engine's own trials (a repeated arch is one candidate), told which are on the front
        assert len(trials) == 12
        served = {a["key"]: a["value"] for a in study["user_attrs"]}
        assert sorted(json.loads(served["front_trials"])) == sorted(int(r["trial"]) for r in rows if r["key"] in front)
    for r in rows:
        assert by_key[r["key"]]["values"] == pytest.approx([float(r[n]) for n in OBJECTIVES], rel=1e-12)
    for r in rows[:5]:  # the params of an optuna trial: one categorical per active gene, as SearchSpace.suggest names them
        params, _ = trial_params(SPACE, ArchConfig.from_json(r["arch"]))
        assert {p["name"]: p["param_external_value"] for p in by_key[r["key"]]["params"]} == {k: str(v) for k, v in params.items()}
        assert all(p["distribution"]["type"] == "CategoricalDistribution" for p in by_key[r["key"]]["params"])


def row_counts(db: Path) -> dict[str, int]:
    """Rows per table of a SQLite storage."""
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(db)) as con:
        tables = [t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables}


def test_a_rerun_replaces_the_study_it_wrote(tmp_path):
    summary, name, storage = search(tmp_path, "random", algorithm="random", budget=40)
    first = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    assert first == {name: summary["candidates"]}
    rows = row_counts(tmp_path / "search" / "study.db")
    search(tmp_path, "random", algorithm="random", budget=40)  # the stage again: the same study, not twice its trials
    assert {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)} == first
    assert row_counts(tmp_path / "search" / "study.db") == rows  # nothing of the old study is left behind
    _, other, _ = search(tmp_path, "pymoo", budget=40)  # another engine: a study of its own
    assert other != name and {s.study_name for s in optuna.get_all_study_summaries(storage)} == {name, other}


def test_an_optuna_study_is_never_replaced_and_not_taken_for_another_engines(tmp_path):
    _, name, storage = search(tmp_path, "optuna", budget=12, study_name="mine")
    before = (tmp_path / "search" / "summary.json").read_bytes()
    with pytest.raises(SearchError, match="'mine' holds the trials of an optuna search"):
        search(tmp_path, "pymoo", budget=20, study_name="mine")  # refused before the search: nothing written
    assert (tmp_path / "search" / "summary.json").read_bytes() == before
    assert optuna.load_study(study_name="mine", storage=storage).user_attrs["engine"] == "optuna"
    search(tmp_path, "pymoo", budget=20, study_name="theirs")
    with pytest.raises(SearchError, match="'theirs' holds the candidates of a pymoo search"):
        search(tmp_path, "optuna", budget=12, study_name="theirs")


def test_the_bulk_write_is_what_optunas_add_trials_writes(tmp_path):
    import numpy as np

    objectives = build_objectives(OBJECTIVES, CONSTRAINTS, SPACE, None, {}, {}, None)
    front = ParetoFront(objectives.names, [1e9, 1e12], objectives.constraint_names)
    cands = candidates_of([SPACE.sample(np.random.default_rng(0)) for _ in range(30)], objectives)
    front.add([replace(c, extra={"std:params": 0.5 * i}) for i, c in enumerate(cands)])  # as a predictor's std
    trials = study_trials(SPACE, front, [{"key": front.members()[0].key, "measured:params": 1.0}])
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    bulk, plain = (optuna.create_study(study_name=n, storage=storage, directions=["minimize"] * 2) for n in ("bulk", "plain"))
    assert add_trials_at_once(storage, storage.get_study_id_from_name("bulk"), trials)
    plain.add_trials(trials)
    fields = ("number", "state", "values", "params", "distributions", "user_attrs", "system_attrs", "datetime_start",
              "datetime_complete")
    got, want = bulk.get_trials(), plain.get_trials()
    assert len(got) == len(want) == len(front.candidates)
    for a, b in zip(got, want, strict=True):
        assert {f: getattr(a, f) for f in fields} == {f: getattr(b, f) for f in fields}
    assert sum(t.user_attrs["on_front"] for t in got) == len(front.members())
    assert [t.user_attrs["key"] for t in got] == [c.key for c in front.candidates]
    assert [t.user_attrs["std:params"] for t in got] == [c.extra["std:params"] for c in front.candidates]
