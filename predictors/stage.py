"""The `hwnas predictors` stage: evaluate sampled subnets on the trained supernet, fit the accuracy
predictors, choose one by cross-validated Kendall tau, judge it on held-out subnets, save it.

Everything goes to `<run_dir>/predictors/`:
    records.jsonl          one EvalRecord per evaluated subnet (append-only; a re-run resumes)
    plan.json              the fit and held-out arch keys, and the settings that drew them
    report.json / .md      CV scores of every candidate, held-out quality of each, the chosen one
    pred_vs_measured.png / .html
    predictor.skops / .json   the chosen predictor (no pickle) and what it is
    manifest.json          size and sha256 of records, plan, report and predictor (`core.manifest`):
                           the search refuses a predictor this stage did not finish writing
    metrics.jsonl, wandb/  the figures, logged (W&B offline by default)
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.core.device import resolve_device
from hwnas.core.io import atomic_write_text
from hwnas.core.manifest import Manifest
from hwnas.core.rundir import claim_run_dir, experiment_name, stage_lock
from hwnas.core.tracking import check_wandb
from hwnas.search_space import ArchConfig, SearchSpace, SearchSpaceConfig, legacy_seed
from hwnas.supernet.memory import check_fits

from . import quality as q
from .config import PredictorsConfig
from .features import ArchFeaturizer
from .models import AccuracyPredictor, make_model
from .persist import MANIFEST_FILE, PREDICTOR_FILE, PredictorError, library_versions, save_predictor
from .records import EvalContext, EvalRecord, RecordStore
from .sampling import plan

OUTPUTS = ("plan.json", "report.json", PREDICTOR_FILE, MANIFEST_FILE)  # rewritten whole by every run of the stage


def eval_context(run_dir: Path, space_cfg: SearchSpaceConfig, cfg: PredictorsConfig):
    """The trained supernet's checkpoint path, the loaded corpus, and the `EvalContext` of this run
    (both checked against their manifests)."""
    from hwnas.supernet.data import Corpus
    from hwnas.supernet.train import verify_supernet

    ckpt = run_dir / "train" / "checkpoint.safetensors"
    if not ckpt.is_file():
        raise PredictorError(f"{ckpt}: no trained supernet; run `hwnas train CONFIG` first")
    ckpt_sha256 = verify_supernet(run_dir)
    corpus = Corpus.load(run_dir / "corpus")
    seq_len = cfg.seq_len or space_cfg.block_size
    if seq_len > space_cfg.block_size:
        raise PredictorError(f"predictors.seq_len: {seq_len} exceeds search_space.block_size {space_cfg.block_size}")
    return ckpt, corpus, EvalContext(ckpt_sha256, corpus.info.files_sha256, cfg.eval_tokens, seq_len)


def load_evaluated_supernet(run_dir: Path, space_cfg: SearchSpaceConfig, cfg: PredictorsConfig):
    """The run's supernet on the device the config asks for (`predictors.device`, `threads`)."""
    import torch

    from hwnas.supernet.train import load_supernet

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    return load_supernet(run_dir, space_cfg, device=resolve_device(cfg.device, "predictors.device", PredictorError))


def evaluate_archs(archs: list[ArchConfig], store: RecordStore, context: EvalContext, run_dir: Path, space_cfg: SearchSpaceConfig,
                   cfg: PredictorsConfig, corpus, progress: bool = True,
                   on_record: Callable[[int, EvalRecord], None] | None = None, model=None) -> int:
    """Evaluate the archs not yet recorded in `context`, appending a record after each one (so an
    interrupted batch resumes where it stopped), on `model` (default: the run's supernet, loaded
    here). Returns how many were evaluated."""
    done, _ = store.current(context)
    todo = [a for a in archs if a.key() not in done]
    if not todo:
        return 0
    import torch

    from hwnas.core.progress import progress_bar
    from hwnas.supernet.evaluate import evaluate

    model = model if model is not None else load_evaluated_supernet(run_dir, space_cfg, cfg)
    device = next(model.parameters()).device.type
    with progress_bar("evaluate subnets", len(archs), progress, unit="subnet", completed=len(archs) - len(todo),
                      fields="loss {task.fields[loss]:.3f}", initial={"loss": float("nan")}) as advance:
        for i, arch in enumerate(todo):
            t0 = time.perf_counter()
            metrics = evaluate(model, arch, corpus, batch_size=cfg.eval_batch_size, seq_len=context.seq_len,
                               max_tokens=context.eval_tokens)
            if device == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            record = EvalRecord.create(arch, metrics, context, dt)
            store.append(record)
            advance(1, loss=metrics["loss"])
            if on_record:
                on_record(i, record)
    return len(todo)


def _fit_quietly(fn: Callable[[], Any]) -> Any:
    """Run a fit with convergence warnings silenced and one BLAS thread: the matrices are tiny, and
    a multi-threaded BLAS spinning on a busy machine made an MLP fit 100x slower."""
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn()


def fit_and_report(space_cfg: SearchSpaceConfig, cfg: PredictorsConfig, fit: list[ArchConfig], y_fit: np.ndarray,
                   heldout: list[ArchConfig], y_heldout: np.ndarray, seed: int) -> tuple[AccuracyPredictor, dict[str, Any]]:
    """Cross-validate every candidate (each model on each feature set: `features`, then
    `alt_features`, named `model` and `model[groups]`) on the fit set, pick the best Kendall tau,
    refit each on the whole fit set and judge it on the held-out set. Returns (chosen predictor,
    report)."""
    seed = legacy_seed(seed)  # scikit-learn takes 32-bit seeds
    sets = {"": tuple(cfg.features)} | {f"[{'+'.join(g)}]": tuple(g) for g in cfg.alt_features}
    candidates: dict[str, dict[str, Any]] = {}
    fitted: dict[str, AccuracyPredictor] = {}
    for suffix, groups in sets.items():
        featurizer = ArchFeaturizer(space_cfg.model_dump(mode="json"), features=groups)
        for model_name in cfg.models:
            name = model_name + suffix
            model = make_model(model_name, seed, tuple(cfg.ensemble_members))
            t0 = time.perf_counter()
            cv = _fit_quietly(lambda m=model, f=featurizer: q.cross_validate(f, m, fit, y_fit, cfg.cv_folds, seed))
            predictor = AccuracyPredictor(featurizer, model, cv=cfg.cv_folds, interval=cfg.interval, random_state=seed)
            fitted[name] = _fit_quietly(lambda p=predictor: p.fit(fit, y_fit))
            entry: dict[str, Any] = {"cv": cv, "seconds": time.perf_counter() - t0, "features": list(groups)}
            if heldout:
                mean, std = fitted[name].predict(heldout, return_std=True)
                entry["heldout"] = q.quality_metrics(y_heldout, mean, std, cfg.interval)
            candidates[name] = entry
    chosen = q.select({k: v["cv"] for k, v in candidates.items()})
    return fitted[chosen], {"model": chosen, "candidates": candidates, "heldout": candidates[chosen].get("heldout", {}),
                            "features": candidates[chosen]["features"]}


def run_predictors(space_cfg: SearchSpaceConfig, cfg: PredictorsConfig, run_dir: str | Path, seed: int = 0,
                   progress: bool = True, on_record: Callable[[int, EvalRecord], None] | None = None,
                   name: str | None = None) -> dict[str, Any]:
    """Run the predictor stage in `run_dir` (see the module doc); returns the report dict.

    `seed` is the experiment's seed (the config's `predictors.seed` overrides it). `on_record(i, rec)`
    is called after each newly evaluated subnet. `name`: the experiment's (the run directory must
    belong to it, `core.rundir`)."""
    run_dir = Path(run_dir)
    check_fits(space_cfg, "evaluate", cfg.eval_batch_size, cfg.seq_len or space_cfg.block_size, "predictors.eval_batch_size")
    check_wandb(cfg.wandb, "predictors.wandb")
    claim_run_dir(run_dir, space_cfg.model_dump(mode="json"), seed, name)
    with stage_lock(run_dir, "predictors"):
        return _run_predictors(space_cfg, cfg, run_dir, seed, progress, on_record)


def _run_predictors(space_cfg: SearchSpaceConfig, cfg: PredictorsConfig, run_dir: Path, seed: int, progress: bool,
                    on_record: Callable[[int, EvalRecord], None] | None) -> dict[str, Any]:
    out = run_dir / "predictors"
    ckpt, corpus, context = eval_context(run_dir, space_cfg, cfg)
    manifest = Manifest.of(run_dir, "predictors")
    store = RecordStore(out / "records.jsonl", manifest)  # checked before anything here is written
    seed = cfg.seed if cfg.seed is not None else seed
    space = SearchSpace(space_cfg)
    fit, heldout = plan(space, cfg.n_fit, cfg.n_heldout, seed, cfg.stratify, cfg.stratify_fraction, cfg.strata, cfg.pool_size)
    done, _ = store.current(context)
    # the supernet is loaded (and a damaged one refused) before anything is written
    model = load_evaluated_supernet(run_dir, space_cfg, cfg) if any(a.key() not in done for a in fit + heldout) else None
    manifest.forget(*OUTPUTS)
    manifest.write_json("plan.json", {"seed": seed, "n_fit": cfg.n_fit, "n_heldout": cfg.n_heldout, "stratify": cfg.stratify,
                                      "stratify_fraction": cfg.stratify_fraction, "strata": cfg.strata,
                                      "fit": [a.key() for a in fit], "heldout": [a.key() for a in heldout]})
    _, stale = store.current(context)
    if stale:
        warnings.warn(f"{store.path}: skipping {stale} records measured with another supernet checkpoint, corpus or "
                      f"evaluation budget (this run: checkpoint sha256 {context.supernet_sha256[:12]}..., "
                      f"{context.eval_tokens} tokens); they are not mixed in", stacklevel=2)
    n_new = evaluate_archs(fit + heldout, store, context, run_dir, space_cfg, cfg, corpus, progress, on_record, model)
    records, _ = store.current(context)
    y_fit = np.array([records[a.key()].metrics[cfg.target] for a in fit])
    y_heldout = np.array([records[a.key()].metrics[cfg.target] for a in heldout])
    seconds = [records[a.key()].seconds for a in fit + heldout]

    predictor, result = fit_and_report(space_cfg, cfg, fit, y_fit, heldout, y_heldout, seed)
    report: dict[str, Any] = {
        **result, "target": cfg.target, "n_fit": len(fit), "n_heldout": len(heldout), "cv_folds": cfg.cv_folds,
        "interval": cfg.interval, "eval_tokens": cfg.eval_tokens, "seq_len": context.seq_len,
        "eval_seconds_per_subnet": float(np.mean(seconds)), "eval_seconds_median": float(np.median(seconds)),
        "evaluated_now": n_new, "stale_records_skipped": stale, "device": _device_name(cfg),
        "supernet_sha256": context.supernet_sha256, "data_sha256": context.data_sha256, "seed": seed,
        "target_range_fit": [float(y_fit.min()), float(y_fit.max())],
        "versions": library_versions(),
    }
    manifest.write_json("report.json", report)
    atomic_write_text(out / "report.md", q.markdown(report))
    if heldout:
        mean, std = predictor.predict(heldout, return_std=True)
        h = report["heldout"]
        title = (f"{experiment_name(out)}: {cfg.target} predictor ({report['model']}) on {len(heldout)} held-out subnets\n"
                 f"Kendall tau {h['kendall_tau']:.3f}, RMSE {h['rmse']:.4f}; measured with the supernet's weights on {report['device']}")
        label = "loss (nats/byte)" if cfg.target == "loss" else "bits/byte"
        q.plot_png(out / "pred_vs_measured.png", y_heldout, mean, std, title, label, cfg.interval)
        q.plot_html(out / "pred_vs_measured.html", y_heldout, mean, std, [a.key() for a in heldout], title, label, cfg.interval)
    save_predictor(predictor, out, {
        "model": report["model"], "target": cfg.target, "features": report["features"], "n_fit": len(fit),
        "search_space": space_cfg.model_dump(mode="json"), "supernet_sha256": context.supernet_sha256,
        "data_sha256": context.data_sha256, "eval_tokens": cfg.eval_tokens, "seq_len": context.seq_len,
        "heldout": report["heldout"], "interval": cfg.interval,
    })
    manifest.add(PREDICTOR_FILE, MANIFEST_FILE)
    _log(out, cfg, report, y_heldout, heldout, predictor)
    return report


def _device_name(cfg: PredictorsConfig) -> str:
    import torch

    if resolve_device(cfg.device, "predictors.device", PredictorError) == "cuda":
        return torch.cuda.get_device_name()
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'s' if n != 1 else ''})"


def _log(out: Path, cfg: PredictorsConfig, report: dict[str, Any], y_heldout, heldout, predictor) -> None:
    from hwnas.core.tracking import Tracker

    tracker = Tracker(out, "metrics", mode=cfg.wandb, project=cfg.wandb_project, job_type="predictors",
                      config={"predictors": cfg.model_dump(mode="json")})
    row = {f"heldout/{k}": v for k, v in report["heldout"].items()}
    row |= {f"cv/{name}/kendall_tau": c["cv"]["kendall_tau"] for name, c in report["candidates"].items()}
    row |= {f"heldout/{name}/kendall_tau": c["heldout"]["kendall_tau"] for name, c in report["candidates"].items() if "heldout" in c}
    row |= {"eval_seconds_per_subnet": report["eval_seconds_per_subnet"], "n_fit": report["n_fit"], "n_heldout": report["n_heldout"]}
    tracker.log(row)
    if tracker.wandb_run is not None and heldout:
        import wandb

        mean, std = predictor.predict(heldout, return_std=True)
        table = wandb.Table(columns=["arch", "measured", "predicted", "std"],
                            data=[[a.key(), float(t), float(m), float(s)] for a, t, m, s in zip(heldout, y_heldout, mean, std, strict=True)])
        tracker.log_wandb({"heldout_predictions": table, "pred_vs_measured": wandb.Image(str(out / "pred_vs_measured.png"))})
    tracker.summary({"model": report["model"], **row})
    tracker.finish()


def summary_text(report: dict[str, Any], out: str | Path | None = None) -> str:
    """A short human summary of a report (for the CLI)."""
    h = report["heldout"]
    text = (f"chosen predictor: {report['model']} (CV Kendall tau {report['candidates'][report['model']]['cv']['kendall_tau']:.3f}, "
            f"fitted on {report['n_fit']} subnets; evaluation {report['eval_seconds_per_subnet']:.2f} s/subnet)")
    if h:
        text += (f"\nheld-out ({h['n']} subnets): Kendall tau {h['kendall_tau']:.3f}, Spearman {h['spearman']:.3f}, "
                 f"RMSE {h['rmse']:.4f}, MAPE {100 * h['mape']:.2f}%, {report['interval']:.0%} interval coverage {h['coverage']:.2f}")
    if out is not None:
        text += f"\n-> {out}"
    return text
