"""Accuracy-predictor quality on held-out subnets of a trained supernet (the quickstart by default):
evaluate <= 150 fit + >= 50 held-out subnets, choose a predictor by CV Kendall tau, and report its
Kendall tau, Spearman, RMSE, MAPE and 90%-interval coverage on the held-out subnets, with the
evaluation cost per subnet. Records are reused: a second run only refits.

    hwnas train experiments/quickstart.yaml      # first, once
    python experiments/bench/predictors.py [--config experiments/quickstart.yaml] [--n-fit 150] [--n-heldout 60]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, machine, write_section  # noqa: E402

from hwnas.config import load_config  # noqa: E402
from hwnas.predictors import PredictorsConfig, run_predictors  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="experiments/quickstart.yaml")
    p.add_argument("--run-dir", default=None, help="default: the config's run directory")
    p.add_argument("--n-fit", type=int, default=150)
    p.add_argument("--n-heldout", type=int, default=60)
    p.add_argument("--eval-tokens", type=int, default=None, help="default: the config's (65536)")
    p.add_argument("--models", default=None, help="comma-separated candidates (default: all)")
    p.add_argument("--threads", type=int, default=2)
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
        f"Supernet: `{run_dir}` (checkpoint sha256 `{report['supernet_sha256'][:12]}`). Target: validation {report['target']} "
        f"(nats/byte) over {report['eval_tokens']} tokens, {report['eval_seconds_per_subnet']:.2f} s per subnet "
        f"(median {report['eval_seconds_median']:.2f} s; {report['n_fit'] + report['n_heldout']} subnets). Fit set: {report['n_fit']} "
        f"subnets, half uniform, half stratified by log FLOPs (loss range {lo:.3f}-{hi:.3f}); held-out: {report['n_heldout']} "
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
    if not args.no_write:
        write_section("Accuracy predictors (held-out subnets)", "\n".join(body))


if __name__ == "__main__":
    main()
