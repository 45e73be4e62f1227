"""Accuracy-predictor quality on held-out subnets of a trained supernet (the quickstart by default):
evaluate <= 150 fit + >= 50 held-out subnets, choose a predictor by CV Kendall tau, and report its
Kendall tau, Spearman, RMSE, MAPE and 90%-interval coverage on the held-out subnets, with the
evaluation cost per subnet. Records are reused: a second run only refits.

    hwnas train experiments/quickstart.yaml      # first, once
    python experiments/bench/predictors.py [--config experiments/quickstart.yaml] [--n-fit 150] [--n-heldout 60]
        [--noise-check 30] [--study-steps 400,1600,4800] [--train-steps 3000,6000 [--sharing per_kind,shared] [--seeds 0,1]]
        [--learning-curve 2000]

`--noise-check N` re-evaluates N held-out subnets with 4x the tokens and reports the Kendall tau
between the two measurements (how much of the ranking is measurement noise). `--study-steps`
trains small supernets (a 3-layer space on 40 stdlib files) for each step count and runs the same
predictor stage on each: how predictable subnet quality is as a function of supernet training.
`--train-steps 3000,6000` trains the config's own space for each step count (run directories
`runs/<name>-<N>`, resumed if there) and reports the predictors on each supernet in a section of
their own; `--seeds 0,1` trains each with both seeds and reports how alike the two supernets rank
the same subnets (the part of the ranking a predictor can learn from the training recipe).
`--learning-curve POOL` evaluates POOL more uniform subnets on the supernet (kept in
`predictors/pool.jsonl`, resumed if there) and fits the predictors on more and more of them, judged on
the stage's held-out subnets and the pool's last 300: how many evaluations a target tau would take.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
import typing
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, machine, write_section  # noqa: E402

from hwnas.config import load_config  # noqa: E402
from hwnas.predictors import PredictorsConfig, run_predictors  # noqa: E402
from hwnas.predictors.records import EvalContext, RecordStore  # noqa: E402
from hwnas.search_space import SearchSpaceConfig  # noqa: E402

STUDY_SPACE = dict(
    depth=[1, 2, 3], embed_dim=[16, 32], head_dim=8, block_size=32,
    n_heads={"choices": [1, 2]}, mlp_ratio={"choices": [2.0, 4.0]},
    attention={"choices": ["softmax", "linear", "window"], "windows": [8]},
    ffn={"choices": ["mlp", "swiglu", "moe"], "experts": [2], "top_k": [1, 2]},
)


def noise_check(cfg, run_dir: Path, report: dict, n: int) -> dict:
    """Kendall tau between each held-out subnet's recorded loss and a re-evaluation with 4x the tokens."""
    import json

    from scipy.stats import kendalltau

    from hwnas.search_space import ArchConfig
    from hwnas.supernet.data import Corpus
    from hwnas.supernet.evaluate import evaluate
    from hwnas.supernet.train import load_supernet

    plan = json.loads((run_dir / "predictors/plan.json").read_text())
    recs = {}
    for line in (run_dir / "predictors/records.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["context"]["supernet_sha256"] == report["supernet_sha256"] and r["context"]["eval_tokens"] == report["eval_tokens"]:
            recs[r["key"]] = r
    keys = plan["heldout"][:n]
    net = load_supernet(run_dir, cfg.search_space)
    corpus = Corpus.load(run_dir / "corpus")
    tokens = 4 * report["eval_tokens"]
    again = [evaluate(net, ArchConfig.from_dict(recs[k]["arch"]), corpus, batch_size=32, max_tokens=tokens)["loss"] for k in keys]
    first = [recs[k]["metrics"]["loss"] for k in keys]
    return {"n": len(keys), "tokens": tokens, "kendall_tau": float(kendalltau(first, again).statistic)}


def training_study(steps_list: list[int], pcfg: PredictorsConfig, threads: int, seed: int) -> list[dict]:
    """Train a small supernet for each step count and run the predictor stage on it."""
    import json
    import shutil
    import tempfile

    from hwnas.supernet.config import TrainConfig
    from hwnas.supernet.train import train

    space = SearchSpaceConfig(**STUDY_SPACE)
    root = Path(tempfile.mkdtemp(prefix="hwnas-pred-study-"))
    text = root / "text"
    text.mkdir()
    for p in sorted(Path(json.__file__).parent.parent.glob("*.py"))[:40]:
        (text / p.name).write_text(p.read_text())
    scfg = pcfg.model_copy(update={"eval_tokens": 8192, "models": ["ridge", "gp", "rf", "gbr"], "pool_size": 3000})
    rows = []
    try:
        for steps in steps_list:
            tcfg = TrainConfig(corpus=str(text), steps=steps, warmup_steps=min(20, steps), batch_size=8, ckpt_every=steps,
                               eval_every=10**9, eval_tokens=1024, log_every=50, wandb="disabled", lr=3e-3, min_lr=3e-4,
                               val_fraction=0.1, threads=threads)
            summary = train(space, tcfg, root / f"s{steps}", seed=seed, progress=False)
            r = run_predictors(space, scfg, root / f"s{steps}", seed=seed, progress=False)
            rows.append({"steps": steps, "val_loss_largest": summary["val_loss_largest"], "model": r["model"],
                         "tau": r["heldout"]["kendall_tau"], "best_tau": max(c["heldout"]["kendall_tau"] for c in r["candidates"].values()),
                         "range": r["target_range_fit"]})
            print(f"study: {steps} steps  largest val loss {summary['val_loss_largest']:.3f}  chosen {r['model']}  held-out tau "
                  f"{rows[-1]['tau']:.3f} (best candidate {rows[-1]['best_tau']:.3f})", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rows


def evaluated_losses(run_path: Path, report: dict) -> dict[str, float]:
    """Arch key -> the predictor target of every subnet the stage evaluated on this run's supernet."""
    context = EvalContext(report["supernet_sha256"], report["data_sha256"], report["eval_tokens"], report["seq_len"])
    records, _ = RecordStore(run_path / "predictors" / "records.jsonl").current(context)
    return {k: r.metrics[report["target"]] for k, r in records.items()}


def seed_agreement(losses: dict[int, dict[str, float]], heldout: list[str]) -> tuple[int, float, float]:
    """How far two supernets trained with different seeds rank the same subnets alike: (subnets,
    Kendall tau over all subnets both evaluated, over the held-out ones); the first two seeds."""
    from scipy.stats import kendalltau

    a, b = (losses[s] for s in sorted(losses)[:2])
    common = sorted(set(a) & set(b))
    held = [k for k in heldout if k in a and k in b]
    return (len(common), float(kendalltau([a[k] for k in common], [b[k] for k in common]).statistic),
            float(kendalltau([a[k] for k in held], [b[k] for k in held]).statistic))


def training_scale(cfg, pcfg: PredictorsConfig, steps_list: list[int], sharings: list[str], seeds: list[int],
                   no_write: bool) -> None:
    """The predictor stage on the config's own space trained for each step count, weight sharing
    and training seed (`longer_trained`); the fit and held-out subnets are the same for every seed."""
    rows, agreement = [], []
    for steps, sharing in itertools.product(steps_list, sharings):
        losses = {}
        for seed in seeds:
            run_cfg, summary = longer_trained(cfg, steps, sharing, seed)
            r = run_predictors(run_cfg.search_space, pcfg, run_cfg.run_path, seed=cfg.seed, progress=sys.stderr.isatty())
            losses[seed] = evaluated_losses(run_cfg.run_path, r)
            heldout = json.loads((run_cfg.run_path / "predictors" / "plan.json").read_text())["heldout"]
            h = r["heldout"]
            rows.append(f"| {steps} | {sharing} | {seed} | {summary['train_seconds']:.0f} | {summary['val_bpb_largest']:.3f} / {summary['val_bpb_smallest']:.3f} | "
                        f"{r['model']} | {h['kendall_tau']:.3f} | {h['spearman']:.3f} | "
                        f"{max(c['heldout']['kendall_tau'] for c in r['candidates'].values()):.3f} | "
                        f"{r['target_range_fit'][0]:.3f}-{r['target_range_fit'][1]:.3f} | {r['eval_seconds_per_subnet']:.2f} |")
            print(f"{steps} steps, {sharing}, seed {seed}: chosen {r['model']}  held-out tau {h['kendall_tau']:.3f}  "
                  f"Spearman {h['spearman']:.3f}", flush=True)
        if len(losses) > 1:
            n, tau_all, tau_held = seed_agreement(losses, heldout)
            agreement.append(f"| {steps} | {sharing} | {n} | {tau_all:.3f} | {tau_held:.3f} |")
            print(f"{steps} steps, {sharing}: seeds {seeds[0]} and {seeds[1]} rank {n} subnets with Kendall tau {tau_all:.3f} "
                  f"(held-out {tau_held:.3f})", flush=True)
    body = [f"Command: `{command()}`  ", f"Machine: {machine()}  ",
            f"The quickstart space and training recipe, trained for longer than the quickstart's {cfg.train.steps} steps "
            f"(run directories `runs/{cfg.name}-<steps>`, `-<sharing>` appended for a weight sharing other than the config's "
            f"{cfg.search_space.weight_sharing}, `-seed<k>` for a training seed other than the config's {cfg.seed}); then the same predictor stage ({pcfg.n_fit} fit + {pcfg.n_heldout} "
            f"uniform held-out subnets, {pcfg.eval_tokens} evaluation tokens, model and feature set chosen by CV on the fit set "
            "only). Target: held-out Kendall tau >= 0.8.\n",
            "| supernet steps | weight sharing | seed | training s | val bits/byte largest / smallest | chosen | held-out tau | held-out Spearman | "
            "best candidate's held-out tau | fit-set loss range | eval s/subnet |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |", *rows]
    if agreement:
        body += ["\nSeed against seed: the same subnets (fit and held-out) evaluated on two supernets trained alike but "
                 "for the training seed. Their Kendall tau is the part of the ranking the training recipe decides; "
                 "the rest is which seed was drawn, and a predictor can learn that part only from the same supernet's "
                 "evaluations.\n",
                 "| supernet steps | weight sharing | subnets | Kendall tau, seed vs seed | on the held-out ones |",
                 "| --- | --- | --- | --- | --- |", *agreement]
    print("\n".join(body))
    if not no_write:
        title = "Accuracy predictors: supernet seed against seed" if agreement else "Accuracy predictors vs supernet training"
        write_section(f"{title} (quickstart space)", "\n".join(body))


CURVE_TEST = 300  # pool subnets held out for the learning curve (with the stage's held-out ones)
CURVE_DRAWS = 3  # random fit sets per size (each size's tau is their mean)


def learning_curve(cfg, pcfg: PredictorsConfig, run_dir: Path, report: dict, pool_size: int,
                   models: tuple[str, ...]) -> tuple[list[int], dict[str, list[float]], int, float]:
    """Evaluate `pool_size` more uniform subnets (a seed stream of their own, never a fit or held-out
    one) and fit each of `models` (on the chosen feature set) on n of them, for n doubling from `pcfg.n_fit`. Returns (sizes, model -> mean held-out tau per size, number of
    held-out subnets, the stage's saved predictor's tau on them)."""
    import numpy as np
    from scipy.stats import kendalltau

    from hwnas.predictors.features import ArchFeaturizer
    from hwnas.predictors.models import make_model
    from hwnas.predictors.persist import load_predictor
    from hwnas.predictors.sampling import _seeded, _uniform
    from hwnas.predictors.stage import _fit_quietly, eval_context, evaluate_archs
    from hwnas.search_space import ArchConfig, SearchSpace

    if pool_size <= CURVE_TEST + pcfg.n_fit:
        raise SystemExit(f"--learning-curve: {pool_size} is too small; it needs more than {CURVE_TEST + pcfg.n_fit} "
                         f"({CURVE_TEST} held out + at least n_fit {pcfg.n_fit})")
    space = SearchSpace(cfg.search_space)
    plan = json.loads((run_dir / "predictors" / "plan.json").read_text())
    # the stage's sampler, on a stream of its own (streams 1 and 2 drew the fit and held-out sets)
    pool = _uniform(space, pool_size, _seeded(cfg.seed, 3), set(plan["fit"]) | set(plan["heldout"]), "learning-curve")
    _, corpus, context = eval_context(run_dir, cfg.search_space, pcfg)
    store = RecordStore(run_dir / "predictors" / "pool.jsonl")
    evaluate_archs(pool, store, context, run_dir, cfg.search_space, pcfg, corpus, progress=sys.stderr.isatty())
    stage, _ = RecordStore(run_dir / "predictors" / "records.jsonl").current(context)
    losses = {k: r.metrics[pcfg.target] for k, r in (store.current(context)[0] | stage).items()}
    featurizer = ArchFeaturizer(cfg.search_space.model_dump(mode="json"), features=report["features"]).fit()
    train, test = pool[:-CURVE_TEST], pool[-CURVE_TEST:] + [ArchConfig.from_dict(stage[k].arch) for k in plan["heldout"]]
    x_train, x_test = featurizer.transform(train), featurizer.transform(test)
    y_train = np.array([losses[a.key()] for a in train])
    y_test = np.array([losses[a.key()] for a in test])
    sizes = [pcfg.n_fit]
    while sizes[-1] * 2 <= len(train):
        sizes.append(sizes[-1] * 2)
    if sizes[-1] != len(train):
        sizes.append(len(train))
    taus: dict[str, list[float]] = {m: [] for m in models}
    for n in sizes:
        draws = [np.random.default_rng(d).permutation(len(train))[:n] for d in range(CURVE_DRAWS if n < len(train) else 1)]
        for m in models:
            fits = [_fit_quietly(lambda i=i, m=m: make_model(m, cfg.seed, tuple(pcfg.ensemble_members)).fit(x_train[i], y_train[i]))
                    for i in draws]
            taus[m].append(float(np.mean([kendalltau(f.predict(x_test), y_test).statistic for f in fits])))
        print(f"learning curve: {n} fit subnets  " + "  ".join(f"{m} tau {taus[m][-1]:.3f}" for m in models), flush=True)
    saved = float(kendalltau(load_predictor(run_dir / "predictors").predict(test), y_test).statistic)
    print(f"learning curve: the stage's saved predictor on the {len(test)} held-out subnets: tau {saved:.3f}", flush=True)
    return sizes, taus, len(test), saved


def _fit_mix(pcfg: PredictorsConfig) -> str:
    """How the stage draws its fit set, in words."""
    share = pcfg.stratify_fraction if pcfg.stratify else 0.0
    return f"{1 - share:.0%} uniform, {share:.0%} stratified by log FLOPs"


def _trained(run_dir: Path) -> str:
    """How the supernet in `run_dir` was trained, from its training summary."""
    s = json.loads((run_dir / "train" / "summary.json").read_text())
    return (f"{s['steps']} training steps in {s['train_seconds']:.0f} s; largest / smallest subnet "
            f"{s['val_bpb_largest']:.3f} / {s['val_bpb_smallest']:.3f} bits/byte")


def longer_trained(cfg, steps: int, sharing: str, seed: int | None = None):
    """`cfg` with its supernet (weight sharing `sharing`, training seed `seed`, default the
    config's) trained for `steps` (checkpoints and evaluations spaced to match) in
    `runs/<name>-<steps>[-<sharing>][-seed<seed>]`: trained now unless that run is complete."""
    from hwnas.supernet.train import train

    tcfg = cfg.train.model_copy(update={"steps": steps, "ckpt_every": max(100, steps // 6), "eval_every": max(200, steps // 3)})
    space = SearchSpaceConfig.model_validate(cfg.search_space.model_dump() | {"weight_sharing": sharing})
    seed = cfg.seed if seed is None else seed
    suffix = ("" if sharing == cfg.search_space.weight_sharing else f"-{sharing}") + ("" if seed == cfg.seed else f"-seed{seed}")
    cfg = cfg.model_copy(update={"name": f"{cfg.name}-{steps}{suffix}", "run_dir": None, "train": tcfg, "search_space": space,
                                 "seed": seed})
    t0 = time.perf_counter()
    summary = train(cfg.search_space, tcfg, cfg.run_path, seed=cfg.seed, progress=sys.stderr.isatty())
    print(f"supernet {cfg.run_path}: {steps} steps (training {summary['train_seconds']:.0f} s in all; this call "
          f"{time.perf_counter() - t0:.0f} s), largest val bpb {summary['val_bpb_largest']:.3f}", flush=True)
    return cfg, summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="experiments/quickstart.yaml")
    p.add_argument("--run-dir", default=None, help="default: the config's run directory")
    p.add_argument("--n-fit", type=int, default=150)
    p.add_argument("--n-heldout", type=int, default=60)
    p.add_argument("--eval-tokens", type=int, default=None, help="default: the config's (65536)")
    p.add_argument("--models", default=None, help="comma-separated candidates (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--noise-check", type=int, default=0, metavar="N", help="re-evaluate N held-out subnets with 4x the tokens")
    p.add_argument("--study-steps", default=None, help="comma-separated supernet step counts for the training study")
    p.add_argument("--train-steps", default=None,
                   help="comma-separated step counts: train the config's own space this long (own run dirs) and report "
                        "the predictors on each, in their own section")
    p.add_argument("--sharing", default=None,
                   help="with --train-steps: comma-separated weight sharings to train each step count with, e.g. "
                        "per_kind,shared (default: the config's)")
    p.add_argument("--seeds", default=None,
                   help="with --train-steps: comma-separated training seeds (default: the config's); with two, the "
                        "section also gives how alike the two supernets rank the same subnets")
    p.add_argument("--learning-curve", type=int, default=0, metavar="POOL",
                   help="evaluate POOL more uniform subnets and report held-out tau against the number of fit subnets")
    p.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    base = getattr(cfg, "predictors", None) or PredictorsConfig()
    update = {"n_fit": args.n_fit, "n_heldout": args.n_heldout, "threads": args.threads, "wandb": "disabled"}
    if args.eval_tokens:
        update["eval_tokens"] = args.eval_tokens
    if args.models:
        update["models"] = args.models.split(",")
    pcfg = PredictorsConfig.model_validate(base.model_dump() | update)
    if args.train_steps:
        sharings = args.sharing.split(",") if args.sharing else [cfg.search_space.weight_sharing]
        allowed = typing.get_args(SearchSpaceConfig.model_fields["weight_sharing"].annotation)
        if bad := [x for x in sharings if x not in allowed]:
            p.error(f"--sharing: {bad[0]!r} is not one of {list(allowed)}")
        try:
            seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else [cfg.seed]
        except ValueError:
            p.error(f"--seeds: {args.seeds!r} is not a comma-separated list of integers")
        training_scale(cfg, pcfg, [int(x) for x in args.train_steps.split(",")], sharings, seeds, args.no_write)
        return
    run_dir = Path(args.run_dir) if args.run_dir else cfg.run_path
    t0 = time.perf_counter()
    report = run_predictors(cfg.search_space, pcfg, run_dir, seed=cfg.seed, progress=sys.stderr.isatty())
    wall = time.perf_counter() - t0
    h = report["heldout"]
    print(f"chosen: {report['model']}  held-out n={h['n']}  Kendall tau {h['kendall_tau']:.3f}  Spearman {h['spearman']:.3f}  "
          f"RMSE {h['rmse']:.4f}  MAPE {100 * h['mape']:.2f}%  coverage({report['interval']:.0%}) {h['coverage']:.2f}  "
          f"eval {report['eval_seconds_per_subnet']:.2f} s/subnet  (stage wall {wall:.0f} s, {report['evaluated_now']} evaluated now)")
    for name, c in report["candidates"].items():
        print(f"  {name:9s} CV tau {c['cv']['kendall_tau']:.3f} +- {c['cv']['kendall_tau_sd']:.3f}  held-out tau "
              f"{c['heldout']['kendall_tau']:.3f}  RMSE {c['heldout']['rmse']:.4f}  coverage {c['heldout']['coverage']:.2f}  "
              f"({c['seconds']:.1f} s to cross-validate and fit)")
    lo, hi = report["target_range_fit"]
    body = [
        f"Command: `{command()}`  ",
        f"Machine: {machine()}  ",
        f"Supernet: `{run_dir}` (checkpoint sha256 `{report['supernet_sha256'][:12]}`; {_trained(run_dir)}). Target: validation {report['target']} "
        f"(nats/byte) over {report['eval_tokens']} tokens, {report['eval_seconds_per_subnet']:.2f} s per subnet "
        f"(median {report['eval_seconds_median']:.2f} s; {report['n_fit'] + report['n_heldout']} subnets). Fit set: {report['n_fit']} "
        f"subnets, {_fit_mix(pcfg)} (loss range {lo:.3f}-{hi:.3f}); held-out: {report['n_heldout']} "
        f"uniform subnets drawn with their own seed, never fitted. Features: {', '.join(report['features'])}. "
        f"Model chosen by {report['cv_folds']}-fold CV Kendall tau on the fit set only (target: held-out tau >= 0.8; "
        "DyNAS-T reports its predictors by Kendall tau).\n",
        f"**Chosen: {report['model']}: held-out Kendall tau {h['kendall_tau']:.3f}, Spearman {h['spearman']:.3f}, "
        f"RMSE {h['rmse']:.4f}, MAPE {100 * h['mape']:.2f}%, {report['interval']:.0%}-interval coverage {h['coverage']:.2f}.**\n",
        "| model | CV tau (mean +- sd over folds) | held-out tau | held-out Spearman | held-out RMSE | held-out MAPE % | 90% coverage |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in report["candidates"].items():
        ho = c["heldout"]
        body.append(f"| {name}{' (chosen)' if name == report['model'] else ''} | {c['cv']['kendall_tau']:.3f} +- "
                    f"{c['cv']['kendall_tau_sd']:.3f} | {ho['kendall_tau']:.3f} | {ho['spearman']:.3f} | {ho['rmse']:.4f} | "
                    f"{100 * ho['mape']:.2f} | {ho['coverage']:.2f} |")
    if h["kendall_tau"] < 0.8:
        body.append("\n**Below the 0.8 target.** The checks below (when run) look for the cause.")
    if args.noise_check:
        nc = noise_check(cfg, run_dir, report, args.noise_check)
        print(f"noise check: tau {nc['kendall_tau']:.3f} between {report['eval_tokens']} and {nc['tokens']} tokens on {nc['n']} subnets")
        body.append(f"\nMeasurement noise: on {nc['n']} held-out subnets, Kendall tau {nc['kendall_tau']:.3f} between the recorded "
                    f"{report['eval_tokens']}-token loss and a {nc['tokens']}-token re-evaluation; "
                    + ("the labels are nearly exact, so a predictor's remaining rank error is in what its features and model "
                       "can explain, not in the labels." if nc["kendall_tau"] >= 0.95 else
                       "the labels themselves are noisy at this many tokens: raise `predictors.eval_tokens`."))
    if args.study_steps:
        rows = training_study([int(x) for x in args.study_steps.split(",")], pcfg, args.threads, cfg.seed)
        body += [f"\nSupernet training vs predictability (a 3-layer space on 40 stdlib files, block 32, weight sharing "
                 f"{SearchSpaceConfig(**STUDY_SPACE).weight_sharing}; the same stage: "
                 f"{pcfg.n_fit} fit + {pcfg.n_heldout} held-out subnets, 8192 eval tokens, candidates ridge/gp/rf/gbr, each also on one-hot features alone):\n",
                 "| supernet steps | largest subnet val loss | chosen | held-out tau (chosen) | best candidate's held-out tau | fit-set loss range |",
                 "| --- | --- | --- | --- | --- | --- |"]
        body += [f"| {r['steps']} | {r['val_loss_largest']:.3f} | {r['model']} | {r['tau']:.3f} | {r['best_tau']:.3f} | "
                 f"{r['range'][0]:.3f}-{r['range'][1]:.3f} |" for r in rows]
    if args.learning_curve:
        chosen = report["model"].split("[")[0]  # the stage's candidates are named model[feature groups]
        models = tuple(dict.fromkeys(("ridge", "et", "gbr", chosen)))
        sizes, taus, n_test, saved = learning_curve(cfg, pcfg, run_dir, report, args.learning_curve, models)
        body += [f"\nEvaluations needed: {args.learning_curve} more uniform subnets evaluated on the same supernet; each model "
                 f"(features: {', '.join(report['features'])}) fitted on n of them (mean of {CURVE_DRAWS} random draws; one "
                 f"at the largest n) and judged on {n_test} uniform subnets never fitted (the stage's held-out ones and "
                 f"{CURVE_TEST} of the pool). Kendall tau:\n",
                 "| model | " + " | ".join(f"n = {n}" for n in sizes) + " |", "| --- |" + " --- |" * len(sizes)]
        body += [f"| {m}{' (the stage chose it)' * (m == chosen)} | " + " | ".join(f"{t:.3f}" for t in ts) + " |"
                 for m, ts in taus.items()]
        body += [f"\nThe stage's own predictor ({report['model']}, fitted on the stage's {pcfg.n_fit} fit subnets, "
                 f"{_fit_mix(pcfg)}), judged on the same {n_test} subnets: **Kendall tau {saved:.3f}**."]
    if not args.no_write:  # a supernet other than the config's own gets a section of its own
        own = run_dir.resolve() == cfg.run_path.resolve()
        write_section("Accuracy predictors (held-out subnets)" + ("" if own else f", supernet {run_dir}"), "\n".join(body))


if __name__ == "__main__":
    main()
