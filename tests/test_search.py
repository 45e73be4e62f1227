"""Search: Pareto utilities, objectives and constraints, the pymoo / Optuna / random / LINAS engines,
resume, concurrent workers on one study, and the W&B log of a search."""

from __future__ import annotations

import json
import multiprocessing as mp

import numpy as np
import pytest

from hwnas.search.config import SearchConfig
from hwnas.search.engines import PymooEngine, RandomEngine
from hwnas.search.linas import LinasEngine, LinasSettings
from hwnas.search.objectives import Constraint, Objective, ObjectiveError, ObjectiveSet, build_objectives
from hwnas.search.optuna_engine import OptunaEngine
from hwnas.search.pareto import Candidate, ParetoFront, hypervolume, non_dominated
from hwnas.search_space import SearchSpace, SearchSpaceConfig
from tests.tiny import page_text, wandb_when

SPACE = SearchSpace(SearchSpaceConfig())


def brute_non_dominated(F):
    return [i for i, f in enumerate(F) if not any(np.all(g <= f) and np.any(g < f) for g in F)]


def test_non_dominated_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        F = rng.integers(0, 6, size=(40, 3)).astype(float)
        assert non_dominated(F).tolist() == brute_non_dominated(F)


def test_hypervolume_of_known_fronts():
    ref = np.array([4.0, 4.0])
    assert hypervolume(np.array([[1.0, 1.0]]), ref) == pytest.approx(9.0)
    assert hypervolume(np.array([[1.0, 3.0], [3.0, 1.0]]), ref) == pytest.approx(3 + 3 - 1)
    assert hypervolume(np.array([[5.0, 1.0]]), ref) == 0.0  # outside the reference box


@pytest.mark.parametrize(
    "text,objective,op,bound",
    [("latency@cpu <= 5ms", "latency@cpu", "<=", 5.0), ("latency@cuda<0.5s", "latency@cuda", "<", 500.0),
     ("params <= 2e6", "params", "<=", 2e6), ("params <= 1.5M", "params", "<=", 1.5e6), ("memory >= 1MiB", "memory", ">=", 2**20)],
)
def test_constraint_parse(text, objective, op, bound):
    c = Constraint.parse(text)
    assert (c.objective, c.op, c.bound) == (objective, op, pytest.approx(bound))
    x = np.array([bound * 0.5, bound * 2])
    held = c.value(x) <= 0
    assert held.tolist() == ([True, False] if op in ("<=", "<") else [False, True])


@pytest.mark.parametrize("text,message", [
    ("latency@cpu << 5", "expected '<objective> <=|<|>=|> <number>\\[unit\\]'"),
    ("params <= five", "expected"),
    ("params <= 5 furlongs", "unknown unit 'furlongs'"),
])
def test_bad_constraints_raise(text, message):
    with pytest.raises(ObjectiveError, match=message):
        Constraint.parse(text)


def test_objective_set_risk_uses_upper_bound():
    mean, std = np.array([4.0, 4.0]), np.array([0.0, 1.0])
    obj = Objective("latency@cpu", "ms", lambda archs: (mean, std))
    archs = [SPACE.sample(0), SPACE.sample(1)]
    plain = ObjectiveSet([obj], [Constraint.parse("latency@cpu <= 5ms")])
    risky = ObjectiveSet([obj], [Constraint.parse("latency@cpu <= 5ms")], risk=0.9)
    assert (plain.evaluate(archs)[1][:, 0] <= 0).tolist() == [True, True]
    assert (risky.evaluate(archs)[1][:, 0] <= 0).tolist() == [True, False]  # 4 + 1.28 * 1 > 5


def test_unknown_objective_and_missing_inputs_are_clear():
    with pytest.raises(ObjectiveError, match="needs a fitted accuracy predictor"):
        build_objectives(["loss"], [], SPACE)
    with pytest.raises(ObjectiveError, match="no latency table for 'cpu/torch'"):
        build_objectives(["latency@cpu/torch"], [], SPACE, latency_tables={"cpu/onnxruntime": object()})
    with pytest.raises(ObjectiveError, match="unknown quantity 'speed'"):
        ObjectiveSet([], [Constraint.parse("speed <= 3")])


def analytic(constraints=()):
    return build_objectives(["flops", "params"], list(constraints), SPACE)


@pytest.mark.parametrize("algorithm", ["nsga2", "nsga3", "smsemoa"])
def test_pymoo_engines_yield_valid_archs_and_a_true_front(algorithm):
    objectives = analytic(["memory <= 1MiB"])
    front = ParetoFront(objectives.names, [3e8, 1.2e6], objectives.constraint_names)
    PymooEngine(SPACE, algorithm, population=20, seed=1).run(objectives, 200, front)
    assert 150 <= len(front.candidates) <= 200
    for c in front.candidates:
        SPACE.validate(c.arch)
    members = front.members()
    assert members and all(c.feasible for c in members)
    F = np.array([c.objectives for c in front.candidates if c.feasible])
    best = F[non_dominated(F)]
    assert sorted(map(tuple, best)) == sorted(c.objectives for c in members)
    assert front.history[-1][1] == pytest.approx(front.hypervolume()) and front.hypervolume() > 0


@pytest.mark.parametrize("budget, population", [(210, 20), (45, 20), (5, 20), (60, 20)])
def test_pymoo_evaluates_exactly_its_budget(budget, population):
    """pymoo evaluates whole populations; the last one is cut at the budget (it was 220 for 210)."""
    objectives = analytic(["memory <= 1MiB"])
    seen = []
    front = ParetoFront(objectives.names, [3e8, 1.2e6], objectives.constraint_names)
    PymooEngine(SPACE, "nsga2", population=population, seed=2).run(objectives, budget, front, progress=seen.append)
    assert len(front.candidates) == sum(seen) == budget


def test_pymoo_beats_random_at_equal_budget():
    objectives = analytic()
    ref = [3e8, 1.2e6]
    evo, rnd = ParetoFront(objectives.names, ref), ParetoFront(objectives.names, ref)
    PymooEngine(SPACE, "nsga2", population=40, seed=0).run(objectives, 1200, evo)
    RandomEngine(SPACE, seed=0).run(objectives, 1200, rnd)
    assert evo.hypervolume() > rnd.hypervolume()


def test_optuna_study_of_other_objectives_or_constraints_is_refused(tmp_path):
    from hwnas.search.engines import SearchError

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    OptunaEngine(SPACE, "nsga2", storage, population=10, seed=0).run(analytic(), 5, ParetoFront(["flops", "params"], [3e8, 1.2e6]))
    before = (tmp_path / "study.db").read_bytes()
    other = build_objectives(["params", "flops"], [], SPACE)  # as many objectives, other values in each slot
    with pytest.raises(SearchError, match=r"holds trials of the objectives \['flops', 'params'\], this search's are \['params', 'flops'\]"):
        OptunaEngine(SPACE, "nsga2", storage, population=10, seed=0).study(other)
    assert (tmp_path / "study.db").read_bytes() == before
    with pytest.raises(SearchError, match=r"holds trials of the constraints \[\], this search's are \['params <= 1m'\]"):
        OptunaEngine(SPACE, "nsga2", storage, population=10, seed=0).study(analytic(["params <= 1m"]))
    assert (tmp_path / "study.db").read_bytes() == before
    OptunaEngine(SPACE, "nsga2", storage, population=10, seed=0).study(analytic())  # its own objectives still open it


def test_optuna_resume_continues_the_same_study(tmp_path):
    objectives = analytic()
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    first = OptunaEngine(SPACE, "nsga2", storage, population=10, seed=0)
    f1 = first.run(objectives, 15, ParetoFront(objectives.names, [3e8, 1.2e6]))
    f2 = OptunaEngine(SPACE, "nsga2", storage, population=10, seed=0).run(objectives, 25, ParetoFront(objectives.names, [3e8, 1.2e6]))
    import optuna

    study = optuna.load_study(study_name="hwnas", storage=storage)
    assert [t.number for t in study.trials] == list(range(25))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert [c.key for c in f1.candidates] == [c.key for c in f2.candidates][: len(f1.candidates)]
    for t in study.trials:  # per-layer params only for active layers
        depth = t.params["depth"]
        assert all(int(k.split("[")[1].rstrip("]")) < depth for k in t.params if "[" in k)


@pytest.mark.parametrize("algorithm", ["nsga3", "tpe", "random"])
def test_optuna_samplers_give_valid_archs(algorithm):
    objectives = analytic(["params <= 600k"])
    front = OptunaEngine(SPACE, algorithm, None, population=8, seed=0).run(objectives, 16, ParetoFront(objectives.names, [3e8, 1.2e6], objectives.constraint_names))
    assert len(front.candidates) >= 10
    for c in front.candidates:
        SPACE.validate(c.arch)
    assert all(c.objectives[1] <= 600_000 for c in front.members())


def _worker(args):
    storage, n, worker = args
    OptunaEngine(SPACE, "nsga2", storage, population=10, seed=0).optimize(analytic(), n, worker=worker)


def _concurrent(storage: str, n_each: int = 15):
    OptunaEngine(SPACE, "nsga2", storage, population=10, seed=0).study(analytic())  # the schema and study, once (as run_optuna does)
    with mp.get_context("spawn").Pool(2) as pool:
        pool.map(_worker, [(storage, n_each, 0), (storage, n_each, 1)])
    import optuna

    from hwnas.search.optuna_engine import open_storage

    study = optuna.load_study(study_name="hwnas", storage=open_storage(storage))
    numbers = [t.number for t in study.trials]
    assert sorted(numbers) == list(range(2 * n_each))  # none lost, none doubled
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)


def test_two_workers_share_a_journal_study(tmp_path):
    _concurrent(f"journal:{tmp_path / 'study.journal'}")


def test_two_workers_share_a_postgresql_study(postgres_url):
    _concurrent(postgres_url)


def test_linas_spends_exactly_its_budget_and_beats_random():
    """A synthetic expensive objective (an arch-dependent 'loss') learned by the loop's predictor."""
    w = np.random.default_rng(3).normal(size=SPACE.n_genes)

    def fake_loss(archs):
        return np.array([3.0 - 0.4 * np.log(SPACE.params(a)["total"]) / 10 + 0.05 * np.tanh(SPACE.encode(a) @ w) for a in archs]), None

    calls = {"n": 0}

    def counted(archs):
        calls["n"] += len(archs)
        return fake_loss(archs)

    objectives = ObjectiveSet([Objective("loss", "nats", counted), build_objectives(["flops"], [], SPACE).objectives[0]])
    from sklearn.linear_model import Ridge

    def fit(archs, y):
        X = np.array([np.r_[SPACE.encode(a), np.log(SPACE.params(a)["total"])] for a in archs])
        model = Ridge(alpha=1e-3).fit(X, y)

        class P:
            def predict(self, archs, return_std=False):
                Z = np.array([np.r_[SPACE.encode(a), np.log(SPACE.params(a)["total"])] for a in archs])
                return (model.predict(Z), None) if return_std else model.predict(Z)
        return P()

    ref = [3.0, 3e8]
    front = ParetoFront(objectives.names, ref)
    LinasEngine(SPACE, fit, LinasSettings(20, 10, 1000, 40), seed=0, learned=["loss"]).run(objectives, 60, front)
    assert calls["n"] == 60 and len(front.candidates) == 60
    assert [n for n, _ in front.history] == list(range(1, 61))
    rnd = ParetoFront(objectives.names, ref)
    RandomEngine(SPACE, seed=0).run(ObjectiveSet([Objective("loss", "nats", fake_loss), objectives.objectives[1]]), 60, rnd)
    assert front.hypervolume() > rnd.hypervolume()


def test_front_save_and_load_round_trip(tmp_path):
    objectives = analytic()
    front = ParetoFront(objectives.names, [3e8, 1.2e6])
    RandomEngine(SPACE, seed=0).run(objectives, 100, front)
    front.save(tmp_path)
    loaded = ParetoFront.load(tmp_path)
    assert [c.key for c in loaded.members()] == [c.key for c in front.members()]
    assert loaded.hypervolume() == pytest.approx(front.hypervolume())
    data = json.loads((tmp_path / "front.json").read_text())
    assert data["ref_point"] == [3e8, 1.2e6] and len(data["hypervolume_history"]) == len(front.history)
    assert (tmp_path / "candidates.csv").read_text().count("\n") == 101


def test_repeated_archs_count_once():
    objectives = analytic()
    front = ParetoFront(objectives.names, [3e8, 1.2e6])
    a = SPACE.sample(0)
    F = tuple(objectives.evaluate([a])[0][0])
    front.add([Candidate(a, F), Candidate(a, F)])
    assert len(front.candidates) == 1


def test_search_config_errors_name_the_field():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="algorithm"):
        SearchConfig(engine="pymoo", algorithm="tpe")
    with pytest.raises(ValidationError, match="'speed' is not one of loss, latency@<device>\\[/<runtime>\\]\\[:<statistic>\\], params, flops, memory"):
        SearchConfig(objectives=["speed"])
    with pytest.raises(ValidationError, match="workers"):
        SearchConfig(engine="pymoo", workers=2)


def test_search_stage_logs_tables_plots_and_files(tmp_path):
    """run_search on analytic objectives: front files, plots, and the W&B offline run holding the
    candidate and front tables with the right row counts."""

    from hwnas.core.plotting import remote_resources
    from hwnas.core.tracking import config_hash, read_wandb_records, read_wandb_runs
    from hwnas.search.stage import run_search

    cfg = SearchConfig(objectives=["params", "flops"], constraints=["memory <= 1MiB"], engine="random", algorithm="random",
                       budget=60, validate_top=3, wandb="offline")
    summary = run_search(SPACE.config, cfg, tmp_path, seed=0, progress=False, name="exp1")
    out = tmp_path / "search"
    for name in ["front.csv", "front.json", "candidates.csv", "validation.json", "summary.json", "hypervolume.png",
                 "hypervolume.html", "front_params_vs_flops.png", "front_params_vs_flops.html"]:
        assert (out / name).exists(), name
    front = json.loads((out / "front.json").read_text())
    assert summary["candidates"] == 60 and len(front["front"]) == summary["front_size"]
    wanted = ("search/candidates/nrows", "hypervolume", "search/html/front_")
    history = wandb_when(out, lambda h: all(any(k.startswith(w) for r in h for k in r) for w in wanted))
    rows = [r for r in history if "search/candidates/nrows" in r]
    assert rows, "no W&B row with the candidates table"
    assert rows[0]["search/candidates/nrows"] == 60
    assert rows[0]["search/front/nrows"] == summary["front_size"]
    assert rows[0]["search/candidates/_type"] == "table-file"
    choices = json.loads((out / "choices.json").read_text())  # which design choices the front uses, logged as a table
    assert rows[0]["search/choices/nrows"] == len(choices["rows"]) == sum(len(SPACE.choices[d]) for d in
                                                                          ("norm", "placement", "attention", "ffn", "weight_bits"))
    assert choices["front_size"] == summary["front_size"]
    hv = [r["hypervolume"] for r in history if "hypervolume" in r]
    assert hv and hv[-1] == pytest.approx(summary["hypervolume"])
    # plots that read on their own and open offline: units on the axes, the experiment in the title, the reference point
    front_page, hv_page = page_text(out / "front_params_vs_flops.html"), page_text(out / "hypervolume.html")
    assert remote_resources(front_page) == remote_resources(hv_page) == []
    assert "params (count)" in front_page and "flops (FLOPs)" in front_page and "exp1: Pareto front" in front_page
    assert summary["units"] == {"params": "count", "flops": "FLOPs"} and summary["experiment"] == "exp1"
    ref = f"reference point: params = {summary['ref_point'][0]:.4g}, flops = {summary['ref_point'][1]:.4g} FLOPs"
    assert ref in hv_page and "hypervolume (count × FLOPs)" in hv_page
    # the run named, grouped and tagged by experiment and stage
    assert any(r.WhichOneof("record_type") == "run" for r in read_wandb_records(out))
    (run,) = read_wandb_runs(out)
    assert (run["name"], run["group"], run["job_type"]) == ("exp1-search", "exp1", "search")
    assert f"config-{config_hash({'search': cfg.model_dump(mode='json')})}" in run["tags"]
    assert run["metrics"]["hypervolume"] == "candidates"  # hypervolume plotted against candidates evaluated
    front_art = next(a for a in run["artifacts"] if a["type"] == "pareto-front")
    assert front_art["name"] == "exp1-front" and {"candidates.csv", "front.csv", "front.json"} <= set(front_art["files"])
    tables = {a["files"][0].split("/")[-1]: a for a in run["artifacts"] if a["type"] == "run_table"}
    assert {"front.table.json", "candidates.table.json"} <= set(tables)
    assert any(k.startswith("search/html/front_") for r in history for k in r)  # the interactive plots


def test_wandb_tables_hold_every_front_member_and_a_bounded_sample_of_candidates():
    from hwnas.search.pareto import ParetoFront
    from hwnas.search.tracking import CANDIDATE_SAMPLE, candidate_sample, front_rows
    from hwnas.search_space.sampling import distinct

    rng = np.random.default_rng(0)
    front = ParetoFront(["params", "flops"], np.array([1e9, 1e12]))
    archs = distinct(SPACE, CANDIDATE_SAMPLE + 300, rng)
    front.add([Candidate(a, (float(SPACE.params(a)["total"]), float(SPACE.flops(a))), (), {}) for a in archs])
    sample = candidate_sample(front)
    assert len(sample) == CANDIDATE_SAMPLE and len({c.key for c in sample}) == CANDIDATE_SAMPLE
    assert {c.key for c in front.members()} <= {c.key for c in sample}
    cols, rows = front_rows(SPACE, front, front.members())
    assert cols[:2] == ["key", "params"] and len(rows) == len(front.members())
    depth, genes = cols.index("depth"), dict(zip(cols, rows[0], strict=True))
    arch = front.members()[0].arch
    assert genes["key"] == arch.key() and rows[0][depth] == arch.depth and genes["embed_dim"] == arch.embed_dim
    beyond = [g.name for g in SPACE.genes if g.layer is not None and g.layer >= arch.depth]
    assert all(genes[name] is None for name in beyond)


def test_latency_objectives_name_their_runtime_and_the_bare_name_is_the_default_one():
    from pydantic import ValidationError

    default = SearchConfig(constraints=["latency@cpu <= 5ms", "latency@cpu/torch<3ms", "params <= 2e6"])
    assert default.objectives == ["loss", "latency@cpu/onnxruntime"]  # the deployment runtime, unless told otherwise
    assert default.constraints == ["latency@cpu/onnxruntime <= 5ms", "latency@cpu/torch<3ms", "params <= 2e6"]
    assert default.latency_targets() == ["cpu/onnxruntime", "cpu/torch"]
    assert SearchConfig.model_validate(default.model_dump()) == default  # canonical names stay canonical
    torch_cfg = SearchConfig(latency_backend="torch", objectives=["loss", "latency@cpu", "latency@cuda/onnxruntime"])
    assert torch_cfg.objectives == ["loss", "latency@cpu/torch", "latency@cuda/onnxruntime"]
    with pytest.raises(ValidationError, match="runtime 'tensorrt' is not one of onnxruntime, torch"):
        SearchConfig(objectives=["loss", "latency@cpu/tensorrt"])
    with pytest.raises(ValidationError, match="runtime 'tvm' is not one of onnxruntime, torch"):
        SearchConfig(constraints=["latency@cpu/tvm <= 2ms"])
    with pytest.raises(ValidationError, match="name one objective twice"):
        SearchConfig(objectives=["latency@cpu", "latency@cpu/onnxruntime"])


def test_latency_names_carry_a_statistic_and_the_median_is_left_implicit():
    from pydantic import ValidationError

    from hwnas.search.objectives import latency_statistic, resolve_name

    cfg = SearchConfig(objectives=["loss", "latency@cpu:p90"], constraints=["latency@cpu/torch:min <= 3ms", "latency@cpu:median<4ms"])
    assert cfg.objectives == ["loss", "latency@cpu/onnxruntime:p90"]
    assert cfg.constraints == ["latency@cpu/torch:min <= 3ms", "latency@cpu/onnxruntime<4ms"]
    assert cfg.latency_targets() == ["cpu/onnxruntime", "cpu/torch"]  # one table serves every statistic
    assert [latency_statistic(n) for n in ("latency@cpu", "latency@cpu/torch:p10", "loss")] == ["median", "p10", None]
    with pytest.raises(ValidationError, match="statistic 'mean' is not one of median, p90, p10, min"):
        SearchConfig(objectives=["loss", "latency@cpu:mean"])
    with pytest.raises(ValidationError, match="statistic 'p99' is not one of"):
        SearchConfig(constraints=["latency@cpu/torch:p99 <= 2ms"])
    with pytest.raises(ValidationError, match="name one objective twice"):
        SearchConfig(objectives=["latency@cpu", "latency@cpu/onnxruntime:median"])
    names = ["loss", "latency@cpu/onnxruntime", "latency@cpu/onnxruntime:p90", "latency@cpu/torch:p90"]
    assert resolve_name("latency@cpu", names) == "latency@cpu/onnxruntime"  # the only median on the CPU
    assert resolve_name("latency@cpu:median", names) == "latency@cpu/onnxruntime"
    assert resolve_name("latency@cpu:p90", names) is None  # two runtimes have it
    assert resolve_name("latency@cpu:p90", names, runtime="torch") == "latency@cpu/torch:p90"
    assert resolve_name("latency@cpu/torch", names) is None and resolve_name("latency@cpu:min", names) is None


def test_each_latency_objective_reads_the_table_of_its_runtime():
    class Table:
        def __init__(self, ms, statistic="median"):
            self.ms, self.statistic = ms, statistic

        def predict(self, arch):
            return self.ms * {"median": 1.0, "p90": 1.5}[self.statistic] / 1e3

        def for_statistic(self, statistic):
            return Table(self.ms, statistic)

    tables = {"cpu/onnxruntime": Table(2.0), "cpu/torch": Table(5.0)}
    objectives = build_objectives(["latency@cpu/onnxruntime"], ["latency@cpu/torch <= 4ms"], SPACE, latency_tables=tables)
    F, G, _ = objectives.evaluate([SPACE.smallest()])
    assert F.tolist() == [[2.0]] and G.tolist() == [[1.0]]  # 5 ms on torch: 1 ms over its bound
    # each statistic from its own prediction, with the error measured on it
    objectives = build_objectives(["latency@cpu/onnxruntime", "latency@cpu/onnxruntime:p90"], ["latency@cpu/torch:p90 <= 7ms"],
                                  SPACE, latency_tables=tables, latency_errors={"cpu/onnxruntime:p90": 0.1}, risk=0.9)
    F, G, stds = objectives.evaluate([SPACE.smallest()])
    assert F.tolist() == [[2.0, 3.0]] and G.tolist() == [[0.5]]
    assert set(stds) == {"latency@cpu/onnxruntime:p90"} and stds["latency@cpu/onnxruntime:p90"][0] == pytest.approx(0.3)


def test_design_choice_report_counts_the_front_against_the_space():
    from dataclasses import replace

    from hwnas.search.choices import choices_markdown, choices_report, usage, with_choice

    base = SPACE.largest()
    low = with_choice(SPACE, base, "weight_bits", 4)
    assert {layer.weight_bits for layer in low.layers} == {4} and low.embed_dim == base.embed_dim
    mixed = replace(low, layers=(replace(low.layers[0], norm="rmsnorm"), *low.layers[1:]))
    use = usage([low, mixed])
    assert use["weight_bits"] == {"4": {"archs": 1.0, "layers": 1.0}}
    n = 2 * low.depth
    assert use["norm"]["rmsnorm"] == {"archs": 0.5, "layers": 1 / n}

    class Table:  # predicts by the layers' bits: 4-bit layers are fastest
        def predict(self, arch):
            return sum(layer.weight_bits for layer in arch.layers) / 1e3

    report = choices_report(SPACE, [low, mixed], {"cpu/onnxruntime": Table()})
    rows = {(r["dim"], r["choice"]): r for r in report["rows"]}
    assert set(rows) == {(d, str(c)) for d in ("norm", "placement", "attention", "ffn", "weight_bits") for c in SPACE.choices[d]}
    assert rows["weight_bits", "4"]["front_layers"] == 1.0 and rows["weight_bits", "16"]["front_archs"] == 0.0
    for r in report["rows"]:  # per-layer choices are drawn uniformly: each a 1/n share of the space's layers
        assert r["space_layers"] == pytest.approx(1 / len(SPACE.choices[r["dim"]]), abs=0.02)
    assert rows["weight_bits", "4"]["latency_ms"]["cpu/onnxruntime"] == pytest.approx(4 * base.depth)
    assert rows["weight_bits", "16"]["latency_ms"]["cpu/onnxruntime"] == pytest.approx(16 * base.depth)
    text = choices_markdown(report)
    assert "| weight_bits | 4 | 100% | 100% |" in text and "latency@cpu/onnxruntime ms" in text


def test_latency_errors_come_per_statistic_from_one_fidelity_report(tmp_path):
    from hwnas.core.manifest import RUN_FOLDERS, Manifest
    from hwnas.search.stage import latency_errors

    out = tmp_path / "latency"
    out.mkdir()
    rows = [{"predicted_median_ms": 1.1, "measured_median_ms": 1.0, "predicted_p90_ms": 2.0, "measured_p90_ms": 2.0,
             "predicted_p10_ms": 0.9, "measured_p10_ms": 1.0, "predicted_min_ms": 0.8, "measured_min_ms": 1.0}] * 3
    Manifest(out, RUN_FOLDERS["latency"]).write_json("fidelity-cpu-torch.json", {"statistic": "median", "rows": rows})
    got = latency_errors(tmp_path, "cpu", "torch")
    assert got == pytest.approx({"median": 0.1, "p90": 0.0, "p10": 0.1, "min": 0.2})
    # a report of the earlier format scored only its own statistic
    old = [{"predicted_ms": 1.5, "measured_ms": 1.0}] * 2
    Manifest(out, RUN_FOLDERS["latency"]).write_json("fidelity-cpu-onnxruntime.json", {"statistic": "min", "rows": old})
    assert latency_errors(tmp_path, "cpu", "onnxruntime") == pytest.approx({"median": None, "p90": None, "p10": None, "min": 0.5})
    assert latency_errors(tmp_path, "cuda", "torch") == dict.fromkeys(("median", "p90", "p10", "min"))


def test_a_registered_engine_is_taken_by_name_and_refused_names_list_the_registry(tmp_path):
    from pydantic import ValidationError

    from hwnas.search import engines as E

    @E.register_engine
    class Extremes(E.SearchEngine):
        name, algorithms = "extremes", ("nsga2",)

        def run(self, objectives, budget, front, progress=None):
            front.add(E.candidates_of([self.space.smallest(), self.space.largest()][:budget], objectives))
            return front

    try:
        engine = E.make_engine(SPACE, SearchConfig(engine="extremes"), tmp_path, seed=0)
        assert isinstance(engine, Extremes) and not engine.parallel
        front = engine.run(analytic(), 2, ParetoFront(["flops", "params"], [3e8, 3e6]))
        assert [c.key for c in front.candidates] == [SPACE.smallest().key(), SPACE.largest().key()]
        with pytest.raises(ValidationError, match="'pymoo', 'random', 'linas', 'optuna' or 'extremes'"):
            SearchConfig(engine="nope")
        with pytest.raises(ValidationError, match="workers need engine 'optuna'"):
            SearchConfig(engine="extremes", workers=2)
    finally:
        E._REGISTRY.pop("extremes")
    assert list(E.engines()) == ["pymoo", "random", "linas", "optuna"]


def test_two_experiments_on_one_storage_keep_their_own_studies(tiny_run, tmp_path):
    """The study name is the experiment's plus a hash of what its trials depend on: a second
    experiment on the same storage searches for itself (it used to get the first one's trials), and
    a changed dependency starts a new study instead of resuming the old one."""
    import shutil

    import optuna

    from hwnas.config import load_config
    from hwnas.search.stage import run_search

    config, run = tiny_run
    cfg = load_config(config)
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    search = cfg.search.model_copy(update={"engine": "optuna", "algorithm": "nsga2", "storage": storage, "budget": 12,
                                           "population": 6, "validate_top": 0, "wandb": "disabled"})
    other = tmp_path / "other"
    shutil.copytree(run, other)
    (other / "run.json").write_text(json.dumps(json.loads((other / "run.json").read_text()) | {"name": "tiny-b"}))
    run_search(cfg.search_space, search, run, seed=0, name="tiny", progress=False)
    run_search(cfg.search_space, search, other, seed=0, name="tiny-b", progress=False)
    studies = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(storage)}
    assert sorted(n.rsplit("-", 1)[0] for n in studies) == ["tiny", "tiny-b"], studies
    assert list(studies.values()) == [12, 12]  # each study holds its own experiment's trials only
    run_search(cfg.search_space, search.model_copy(update={"population": 4}), run, seed=0, name="tiny", progress=False)
    assert len(optuna.get_all_study_summaries(storage)) == 3
    named = search.model_copy(update={"study_name": "mine"})
    run_search(cfg.search_space, named, run, seed=0, name="tiny", progress=False)
    assert "mine" in {s.study_name for s in optuna.get_all_study_summaries(storage)}


def test_a_table_measured_on_another_machine_is_not_re_timed_here(tiny_run):
    """A latency folder copied from the target machine: the search predicts that machine's latency
    and does not compare the front against timings taken here, where they would not hold; it says
    so. The loss is still validated."""
    import warnings

    from hwnas.core.manifest import Manifest
    from hwnas.latency.errors import FingerprintWarning
    from hwnas.latency.table import FORMAT, LatencyTable, content_hash
    from tests.tiny import hwnas

    config, run = tiny_run
    path = run / "latency/cpu-torch.json"
    doc = json.loads(path.read_text())
    doc["payload"]["fingerprint"] |= {"cpu": "Imagined ARM board", "machine": "aarch64"}
    path.write_text(json.dumps({"format": FORMAT, "sha256": content_hash(doc["payload"]), "payload": doc["payload"]}))
    Manifest.of(run, "latency").add(path.name)  # copied with its folder's manifest, as a whole latency/ folder is
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FingerprintWarning)
        assert LatencyTable.load(path).elsewhere()[0].startswith("cpu: table 'Imagined ARM board', here ")
    proc = hwnas("search", str(config), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"hwnas: warning: latency table {path} was measured on another device (cpu: table 'Imagined ARM board'" in proc.stderr
    assert "LatencyTable.load(" not in proc.stderr  # one line, no source line under it
    assert "latency@cpu/torch: the front was not re-measured here: its table was measured on another machine (cpu: table " \
           "'Imagined ARM board', here " in proc.stdout
    summary = json.loads((run / "search/summary.json").read_text())
    assert list(summary["not_validated"]) == ["latency@cpu/torch"]
    assert "machine: table 'aarch64', here " in summary["not_validated"]["latency@cpu/torch"]
    rows = json.loads((run / "search/validation.json").read_text())["rows"]
    assert len(rows) == 2 and all("measured:loss" in r and "measured:latency@cpu/torch" not in r for r in rows)
    assert "Imagined ARM board" in summary["measured_on"]["cpu/torch"]
