"""Accuracy predictors: scikit-learn conventions, the featurizer, evaluation records (dedup, stale
contexts, corrupt files), resuming an interrupted evaluation batch, the stage's outputs, saving
without pickle, and stratified sampling."""

from __future__ import annotations

import json
import math
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.linear_model import Ridge
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

import hwnas.supernet.evaluate as evaluate_mod
from hwnas.core.io import ArtifactError
from hwnas.core.manifest import Manifest
from hwnas.core.plotting import remote_resources
from hwnas.predictors import (
    AccuracyPredictor,
    ArchFeaturizer,
    EnsembleRegressor,
    EvalContext,
    EvalRecord,
    PredictorError,
    PredictorsConfig,
    RecordError,
    RecordStore,
    load_manifest,
    load_predictor,
    make_model,
    plan,
    quality_metrics,
    run_predictors,
    save_predictor,
)
from hwnas.search_space import SearchSpace, SearchSpaceConfig
from hwnas.supernet.config import TrainConfig
from hwnas.supernet.train import train
from tests.tiny import page_text, wandb_when

TINY = SearchSpaceConfig(
    depth=[1, 2], embed_dim=[16, 32], head_dim=8, block_size=32,
    n_heads={"choices": [1, 2]}, mlp_ratio={"choices": [2.0, 4.0]},
    attention={"choices": ["softmax", "linear", "window"], "windows": [8]},
    ffn={"choices": ["mlp", "swiglu", "moe"], "experts": [2], "top_k": [1, 2]},
)
SPACE = SearchSpace(TINY)
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
SPACE_JSON = TINY.model_dump(mode="json")


@pytest.fixture(autouse=True)
def one_blas_thread():
    """The stage fits with one BLAS thread; so do these tests (tiny matrices, busy 2-core machines)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def fast_cfg(**kw) -> PredictorsConfig:
    base = dict(n_fit=16, n_heldout=8, eval_tokens=256, eval_batch_size=8, pool_size=300, strata=3, cv_folds=3,
                models=["ridge", "ensemble"], ensemble_members=["ridge", "svr"], wandb="disabled", threads=1)
    return PredictorsConfig(**(base | kw))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A tiny supernet trained for a few steps on a few stdlib files (train/ and corpus/ only)."""
    root = tmp_path_factory.mktemp("pred")
    text = root / "text"
    text.mkdir()
    stdlib = Path(json.__file__).parent.parent
    for name in ["json/decoder.py", "json/encoder.py", "textwrap.py", "glob.py", "shlex.py"]:
        (text / Path(name).name).write_text((stdlib / name).read_text())
    cfg = TrainConfig(corpus=str(text), steps=12, warmup_steps=2, batch_size=4, ckpt_every=12, eval_every=100,
                      eval_tokens=256, log_every=4, wandb="disabled", lr=1e-2, min_lr=1e-3, val_fraction=0.2, threads=1)
    train(TINY, cfg, root / "run", progress=False)
    return root / "run"


def copy_run(run: Path, dst: Path) -> Path:
    for part in ("train", "corpus"):
        shutil.copytree(run / part, dst / part)
    shutil.copy(run / "run.json", dst / "run.json")
    return dst


def dataset(n: int, seed: int = 0) -> tuple[list, np.ndarray]:
    """Archs and a smooth synthetic target: log FLOPs plus a per-kind offset."""
    archs = [SPACE.sample(seed * 1000 + i) for i in range(n)]
    y = np.array([math.log(SPACE.flops(a)) * -0.1 + 0.05 * sum(layer.attention == "linear" for layer in a.layers) for a in archs])
    return archs, y + 3.0


# --- scikit-learn conventions -------------------------------------------------------------------------


@parametrize_with_checks([EnsembleRegressor()])
def test_ensemble_passes_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


def test_ensemble_std_combines_spread_and_member_std():
    rng = np.random.default_rng(0)
    X = rng.random((40, 3))
    y = X @ np.array([1.0, -2.0, 0.5]) + 0.05 * rng.standard_normal(40)
    ens = EnsembleRegressor([("ridge", make_model("ridge")), ("gp", make_model("gp"))]).fit(X, y)
    mean, std = ens.predict(X[:5], return_std=True)
    assert mean.shape == std.shape == (5,)
    assert np.all(std > 0)
    assert np.allclose(mean, ens.predict(X[:5]))
    members = np.stack([m.predict(X[:5]) for m in ens.estimators_])
    assert np.allclose(mean, members.mean(axis=0))
    assert np.all(std >= members.std(axis=0) - 1e-12)  # at least the spread


@pytest.mark.parametrize("name", ["ridge", "svr", "rf", "et", "gbr", "mlp", "gp", "ensemble"])
def test_every_candidate_fits_in_a_pipeline_and_clones(name):
    archs, y = dataset(30)
    pipe = Pipeline([("features", ArchFeaturizer(SPACE_JSON)), ("model", make_model(name, 0, ("ridge", "svr")))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = cross_val_score(pipe, archs, y, cv=3)
    assert np.all(np.isfinite(scores))
    assert clone(pipe).get_params()["model"] is not pipe.get_params()["model"]


def test_featurizer_is_a_transformer_over_archs_and_gene_vectors():
    f = ArchFeaturizer(SPACE_JSON)
    assert f.get_params() == {"space_config": SPACE_JSON, "features": ("onehot", "counts", "ends", "cost")}
    with pytest.raises(NotFittedError):
        f.transform([SPACE.sample(0)])
    archs = [SPACE.sample(i) for i in range(10)]
    assert f.fit(archs) is f
    X = f.transform(archs)
    names = f.get_feature_names_out()
    assert X.shape == (10, len(names)) and X.dtype == np.float64
    vectors = np.stack([SPACE.encode(a) for a in archs])
    assert np.array_equal(f.transform(vectors), X)
    assert np.array_equal(f.transform([a.to_dict() for a in archs]), X)
    # a layer beyond the depth contributes no one-hot at all (not its "choice 0")
    shallow = next(a for a in archs if a.depth == 1)
    row = dict(zip(names, f.transform([shallow])[0], strict=True))
    assert sum(v for k, v in row.items() if k.startswith("norm[1]=")) == 0
    assert sum(v for k, v in row.items() if k.startswith("norm[0]=")) == 1
    assert row["depth"] == 1 and row["log_flops"] == pytest.approx(math.log(SPACE.flops(shallow)))
    assert row[f"first_norm={shallow.layers[0].norm}"] == row[f"last_norm={shallow.layers[0].norm}"] == 1
    only_cost = ArchFeaturizer(SPACE_JSON, features=("cost",)).fit(archs)
    assert list(only_cost.get_feature_names_out()) == ["log_params", "log_params_non_embedding", "log_flops", "log_weight_bytes"]
    with pytest.raises(ValueError, match="features must be"):
        ArchFeaturizer(SPACE_JSON, features=("nope",)).fit(archs)


def test_accuracy_predictor_conventions_and_calibrated_std():
    archs, y = dataset(60)
    for model in (make_model("ridge"), make_model("gp")):
        est = AccuracyPredictor(ArchFeaturizer(SPACE_JSON), model, cv=4)
        with pytest.raises(NotFittedError):
            est.predict(archs[:2])
        assert est.fit(archs[:40], y[:40]) is est
        assert {"featurizer_", "model_", "std_scale_", "residual_std_", "native_std_"} <= set(vars(est))
        mean, std = est.predict(archs[40:], return_std=True)
        assert mean.shape == std.shape == (20,) and np.all(std > 0)
        assert np.allclose(mean, est.predict(archs[40:]))
        assert est.score(archs[40:], y[40:]) > 0.8  # R^2 on a smooth target
        cloned = clone(est)
        assert not hasattr(cloned, "model_") and cloned.get_params()["cv"] == 4
    q = quality_metrics([1.0, 2.0, 3.0, 4.0], [1.1, 1.9, 3.2, 3.9], [0.2] * 4)
    assert q["kendall_tau"] == 1.0 and q["coverage"] == 1.0 and q["mape"] == pytest.approx(np.mean([0.1, 0.05, 0.2 / 3, 0.025]))


# --- records -----------------------------------------------------------------------------------------

CTX = EvalContext("a" * 64, "b" * 64, 256, 32)


def record(seed: int, ctx: EvalContext = CTX, loss: float = 2.0) -> EvalRecord:
    return EvalRecord.create(SPACE.sample(seed), {"loss": loss, "bpb": loss / math.log(2), "tokens": 256}, ctx, 0.1)


def test_records_round_trip_dedup_and_skip_other_contexts(tmp_path):
    store = RecordStore(tmp_path / "records.jsonl")
    assert store.append(record(0))
    assert not store.append(record(0, loss=9.0))  # same key, same context: never written twice
    other = EvalContext("c" * 64, "b" * 64, 256, 32)  # another checkpoint
    assert store.append(record(0, other, loss=5.0))
    assert store.append(record(1))
    assert len((tmp_path / "records.jsonl").read_text().splitlines()) == 3
    again = RecordStore(tmp_path / "records.jsonl")
    assert again.records == store.records
    current, stale = again.current(CTX)
    assert stale == 1 and set(current) == {SPACE.sample(0).key(), SPACE.sample(1).key()}
    assert current[SPACE.sample(0).key()].metrics["loss"] == 2.0
    assert current[SPACE.sample(0).key()].arch_config == SPACE.sample(0)
    assert not list(tmp_path.glob(".records.jsonl.*"))  # no temp files left behind


def test_two_stores_on_one_file_lose_no_records(tmp_path):
    a, b = RecordStore(tmp_path / "records.jsonl"), RecordStore(tmp_path / "records.jsonl")
    assert a.append(record(0)) and b.append(record(1))  # b had not seen a's record
    assert not b.append(record(0))  # ... but it does now
    assert a.append(record(2))
    assert [r.key for r in RecordStore(tmp_path / "records.jsonl").records] == [record(i).key for i in range(3)]


@pytest.mark.parametrize("bad, problem", [
    ("{not json", "not valid JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"key": "x"}', "fields do not match a record"),
    ("KEYSWAP", "does not match its arch"),
    ("NANLOSS", "metrics must be finite numbers"),
    ("TRUNCATED", "not valid JSON"),
])
def test_corrupt_record_file_gives_a_clear_error(tmp_path, bad, problem):
    path = tmp_path / "records.jsonl"
    good = [record(0).to_json(), record(1).to_json()]
    if bad == "KEYSWAP":
        d = json.loads(good[1])
        d["key"] = record(0).key
        bad = json.dumps(d)
    elif bad == "NANLOSS":
        bad = good[1].replace('"loss": 2.0', '"loss": NaN')
    elif bad == "TRUNCATED":
        bad = good[1][: len(good[1]) // 2]
    path.write_text(good[0] + "\n" + bad + "\n")
    with pytest.raises(RecordError, match=rf"records.jsonl: line 2: corrupt evaluation record: .*{problem}") as e:
        RecordStore(path)
    assert "\n" not in str(e.value)


# --- sampling ----------------------------------------------------------------------------------------


def test_plan_is_deterministic_disjoint_and_stratified_covers_both_ends():
    space = SearchSpace(SearchSpaceConfig())  # the default space: wide FLOPs range
    fit, heldout = plan(space, 60, 30, seed=3, stratify=True, stratify_fraction=1.0, strata=5, pool_size=3000)
    fit2, heldout2 = plan(space, 60, 30, seed=3, stratify=True, stratify_fraction=1.0, strata=5, pool_size=3000)
    assert [a.key() for a in fit] == [a.key() for a in fit2] and [a.key() for a in heldout] == [a.key() for a in heldout2]
    keys_fit, keys_held = {a.key() for a in fit}, {a.key() for a in heldout}
    assert len(keys_fit) == 60 and len(keys_held) == 30 and not keys_fit & keys_held
    # the held-out set does not depend on how the fit set is drawn
    _, heldout3 = plan(space, 40, 30, seed=3, stratify=False)
    assert [a.key() for a in heldout3] == [a.key() for a in heldout]
    uniform, _ = plan(space, 60, 30, seed=3, stratify=False)
    logf = lambda archs: np.log([space.flops(a) for a in archs])  # noqa: E731
    pool = logf([space.sample(i) for i in range(3000)])
    edges = np.linspace(pool.min(), pool.max(), 6)
    strat_counts = np.histogram(logf(fit), edges)[0]
    uni_counts = np.histogram(logf(uniform), edges)[0]
    assert strat_counts[0] + strat_counts[-1] > uni_counts[0] + uni_counts[-1]  # more small and large nets
    assert np.all(strat_counts >= 6)


# --- the stage ---------------------------------------------------------------------------------------


class Interrupt(Exception):
    pass


def test_interrupted_evaluation_batch_resumes_where_it_stopped(tmp_path, trained_run, monkeypatch):
    cfg = fast_cfg()
    full = run_predictors(TINY, cfg, copy_run(trained_run, tmp_path / "full"), progress=False)
    cut = copy_run(trained_run, tmp_path / "cut")

    def stop(i: int, rec: EvalRecord) -> None:
        if i == 6:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_predictors(TINY, cfg, cut, progress=False, on_record=stop)
    assert len(RecordStore(cut / "predictors/records.jsonl")) == 7
    calls = []
    real = evaluate_mod.evaluate
    monkeypatch.setattr(evaluate_mod, "evaluate", lambda *a, **k: calls.append(a[1].key()) or real(*a, **k))
    resumed = run_predictors(TINY, cfg, cut, progress=False)
    assert resumed["evaluated_now"] == len(calls) == 16 + 8 - 7
    done = [r.key for r in RecordStore(cut / "predictors/records.jsonl").records]
    assert not set(calls) & set(done[:7]) and len(done) == len(set(done)) == 24
    full_records = {r.key: r.metrics for r in RecordStore(tmp_path / "full/predictors/records.jsonl").records}
    assert {r.key: r.metrics for r in RecordStore(cut / "predictors/records.jsonl").records} == full_records
    assert resumed["heldout"] == full["heldout"] and resumed["model"] == full["model"]
    # a finished batch evaluates nothing on the next run
    calls.clear()
    assert run_predictors(TINY, cfg, cut, progress=False)["evaluated_now"] == 0 and not calls


def test_stage_writes_report_plots_and_a_loadable_predictor_logged_to_wandb(tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path / "run")
    cfg = fast_cfg(models=["ridge", "gp", "ensemble"], wandb="offline")
    report = run_predictors(TINY, cfg, run, progress=False)
    out = run / "predictors"
    for name in ["records.jsonl", "plan.json", "report.json", "report.md", "pred_vs_measured.png", "pred_vs_measured.html",
                 "predictor.skops", "predictor.json", "metrics.jsonl"]:
        assert (out / name).is_file(), name
    assert (out / "pred_vs_measured.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = page_text(out / "pred_vs_measured.html")
    unit = "loss (nats/byte)" if cfg.target == "loss" else "bits/byte"
    assert remote_resources(page) == [] and f"measured {unit}" in page and f"{cfg.target} predictor" in page
    plan_json = json.loads((out / "plan.json").read_text())
    assert len(plan_json["fit"]) == 16 and len(plan_json["heldout"]) == 8 and not set(plan_json["fit"]) & set(plan_json["heldout"])
    names = {m + s for m in ("ridge", "gp", "ensemble") for s in ("", "[onehot]")}  # each model on each feature set
    assert set(report["candidates"]) == names and report["model"] in names
    assert report["features"] == report["candidates"][report["model"]]["features"]
    assert report["candidates"]["gp[onehot]"]["features"] == ["onehot"]
    best = max(c["cv"]["kendall_tau"] for c in report["candidates"].values())
    assert report["candidates"][report["model"]]["cv"]["kendall_tau"] == best  # chosen by CV tau, not held-out
    h = report["heldout"]
    assert h["n"] == 8 and set(h) >= {"kendall_tau", "spearman", "rmse", "mape", "coverage"}
    assert report["eval_seconds_per_subnet"] > 0 and "Kendall tau" in (out / "report.md").read_text()

    predictor = load_predictor(out)
    manifest = load_manifest(out)
    assert manifest["model"] == report["model"] and manifest["versions"]["scikit-learn"]
    assert manifest["features"] == report["features"] and list(predictor.featurizer.features) == report["features"]
    assert manifest["supernet_sha256"] == report["supernet_sha256"]
    records, _ = RecordStore(out / "records.jsonl").current(
        EvalContext(report["supernet_sha256"], report["data_sha256"], cfg.eval_tokens, TINY.block_size))
    heldout = [records[k].arch_config for k in plan_json["heldout"]]
    mean, std = predictor.predict(heldout, return_std=True)
    truth = [records[k].metrics["loss"] for k in plan_json["heldout"]]
    assert quality_metrics(truth, mean, std)["kendall_tau"] == pytest.approx(h["kendall_tau"])
    assert np.allclose(predictor.predict(np.stack([SPACE.encode(a) for a in heldout])), mean)

    history = wandb_when(out, lambda h: any("heldout/kendall_tau" in row for row in h))
    assert any(row.get("heldout/kendall_tau") == pytest.approx(h["kendall_tau"]) for row in history)


def test_records_of_another_checkpoint_are_skipped_with_a_warning(tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path / "run")
    cfg = fast_cfg(n_fit=6, n_heldout=3, models=["ridge"])
    foreign = EvalRecord.create(SPACE.sample(123), {"loss": 0.0, "bpb": 0.0, "tokens": 256}, EvalContext("f" * 64, "0" * 64, 256, 32), 0.1)
    RecordStore(run / "predictors/records.jsonl", Manifest.of(run, "predictors")).append(foreign)  # as an earlier run would
    with pytest.warns(UserWarning, match="skipping 1 records measured with another supernet checkpoint"):
        report = run_predictors(TINY, cfg, run, progress=False)
    assert report["stale_records_skipped"] == 1 and report["evaluated_now"] == 9
    assert report["target_range_fit"][0] > 0.5  # the foreign loss of 0 was not mixed in


def test_corrupt_record_file_stops_the_stage_before_evaluating(tmp_path, trained_run):
    run = copy_run(trained_run, tmp_path / "run")
    (run / "predictors").mkdir()
    (run / "predictors/records.jsonl").write_text(record(0).to_json() + "\n}{\n")
    with pytest.raises(ArtifactError, match="records.jsonl: no .*manifest.json lists it .*; delete it and run `hwnas predictors CONFIG`"):
        run_predictors(TINY, fast_cfg(), run, progress=False)
    Manifest.of(run, "predictors").add("records.jsonl")  # listed, yet not records: the lines are checked too
    with pytest.raises(RecordError, match="line 2: corrupt evaluation record"):
        run_predictors(TINY, fast_cfg(), run, progress=False)
    assert not (run / "predictors/plan.json").exists()  # refused before anything was written


def test_stage_without_a_trained_supernet_says_so(tmp_path):
    with pytest.raises(PredictorError, match="no trained supernet; run `hwnas train CONFIG` first"):
        run_predictors(TINY, fast_cfg(), tmp_path, progress=False)


# --- saving without pickle ---------------------------------------------------------------------------


class Smuggled:
    """A type that is not scikit-learn's, numpy's, scipy's or hwnas.predictors'."""


def test_saved_predictor_round_trips_and_foreign_types_are_refused(tmp_path):
    archs, y = dataset(40)
    est = AccuracyPredictor(ArchFeaturizer(SPACE_JSON), make_model("ensemble", 0, ("ridge", "gp")), cv=3).fit(archs, y)
    save_predictor(est, tmp_path / "ok", {"model": "ensemble"})
    loaded = load_predictor(tmp_path / "ok" / "predictor.skops")
    m1, s1 = est.predict(archs[:7], return_std=True)
    m2, s2 = loaded.predict(archs[:7], return_std=True)
    assert np.allclose(m1, m2) and np.allclose(s1, s2)
    assert "_space_cache" not in vars(load_predictor(tmp_path / "ok").featurizer_)

    bad = AccuracyPredictor(ArchFeaturizer(SPACE_JSON), Ridge()).fit(archs, y)
    bad.smuggled_ = Smuggled()
    save_predictor(bad, tmp_path / "bad")
    with pytest.raises(PredictorError, match=r"refused: \['[\w.]*Smuggled'\]"):
        load_predictor(tmp_path / "bad")
    (tmp_path / "bad" / "predictor.skops").write_bytes(b"not a zip")
    with pytest.raises(PredictorError, match="not a readable skops file"):
        load_predictor(tmp_path / "bad")
    with pytest.raises(PredictorError, match="no saved predictor"):
        load_predictor(tmp_path / "nowhere")


def test_config_is_strict():
    with pytest.raises(ValidationError, match="unknown key"):
        PredictorsConfig(n_fits=3)
    with pytest.raises(ValidationError, match="an ensemble cannot contain itself"):
        PredictorsConfig(ensemble_members=["ridge", "ensemble"])
    with pytest.raises(ValidationError, match="exceeds n_fit"):
        PredictorsConfig(n_fit=3, cv_folds=5)
    with pytest.raises(ValidationError):
        PredictorsConfig(models=["xgboost"])
    with pytest.raises(ValidationError, match="repeats a feature set"):
        PredictorsConfig(features=["onehot", "cost"], alt_features=[["cost", "onehot"]])
    with pytest.raises(ValidationError, match="needs distinct feature groups"):
        PredictorsConfig(alt_features=[[]])
    with pytest.raises(ValidationError):
        PredictorsConfig(alt_features=[["onehot", "zerocost"]])
    assert PredictorsConfig().n_fit <= 150 and PredictorsConfig().n_heldout >= 50


def test_the_report_names_the_configured_interval():
    from hwnas.predictors.quality import markdown

    metrics = {"kendall_tau": 0.8, "spearman": 0.9, "rmse": 0.01, "mape": 0.01, "coverage": 0.77, "n": 30}
    report = {"target": "loss", "model": "gp", "cv_folds": 5, "n_fit": 80, "heldout": metrics, "eval_tokens": 8192,
              "eval_seconds_per_subnet": 1.0, "device": "cpu", "interval": 0.8,
              "candidates": {"gp": {"cv": {"kendall_tau": 0.8, "kendall_tau_sd": 0.05, "rmse": 0.01}, "heldout": metrics}}}
    text = markdown(report)
    assert "| 80% interval coverage (ideal 0.80) |" in text and "held-out 80% coverage" in text and "90%" not in text
