"""The `hwnas` command line: one subcommand per pipeline stage, each reading the experiment YAML.

Errors in user input print one line (`hwnas: error: ...`) and exit with status 2, no traceback.
Numbers on the command line are bounded as the config's are (argparse prints usage and exits 2),
and every folder a command will write is checked before any work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hwnas.core.config import MAX_PICK, MAX_SEED, MAX_STEPS, MAX_WORKERS
from hwnas.core.errors import ConfigError, HwnasError

MAX_SAMPLES = 10**4  # random archs `hwnas space` prints, one table row each


def _short(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text)} characters)"


def _int_in(lo: int, hi: int):
    """An argparse type: an integer in lo..hi."""
    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:  # not a number, or more digits than Python converts
            raise argparse.ArgumentTypeError(f"expected an integer in {lo}..{hi}, got {_short(text)}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be an integer in {lo}..{hi}, got {_short(text)}")
        return value
    return integer


def _pick(text: str) -> str:
    """An argparse type: a front index, arch key or rule of reasonable length."""
    if not text.strip() or len(text) > MAX_PICK:
        raise argparse.ArgumentTypeError(f"expected a front index, arch key or rule of 1..{MAX_PICK} characters, "
                                         f"got {_short(text)}")
    return text


def _check_folder(path: str | Path, what: str) -> None:
    """Refuse, before any work, a folder a command would write that cannot be written."""
    from hwnas.core.io import unwritable

    why = unwritable(path, folder=True)
    if why:
        raise ConfigError(f"{what} {path}: {why}")


def _load(args: argparse.Namespace):
    """The experiment config, its run directory checked to be writable."""
    from hwnas.config import load_config

    cfg = load_config(args.config)
    _check_folder(cfg.run_path, f"{args.config}: run_dir")
    cfg.check_run_dir()
    return cfg


def _cmd_space(args: argparse.Namespace) -> int:
    from hwnas.config import load_config
    from hwnas.report import print_space_summary

    cfg = load_config(args.config)
    print_space_summary(cfg, samples=args.samples, seed=cfg.seed if args.seed is None else args.seed)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from hwnas.supernet.train import train

    cfg = _load(args)
    train_cfg = cfg.train if args.wandb is None else cfg.train.model_copy(update={"wandb": args.wandb})
    summary = train(cfg.search_space, train_cfg, cfg.run_path, seed=cfg.seed, progress=not args.no_progress, name=cfg.name)
    if summary:  # rank 0
        print(
            f"trained {summary['steps']} steps in {summary['train_seconds']:.0f} s -> {cfg.run_path / 'train'}\n"
            f"validation bits/byte: largest {summary['val_bpb_largest']:.3f}, smallest {summary['val_bpb_smallest']:.3f} "
            f"(unigram entropy of the validation bytes: {summary['unigram_entropy_bpb']:.3f})"
        )
    return 0


def _cmd_latency(args: argparse.Namespace) -> int:
    from hwnas.latency.stage import run_latency_stage

    cfg = _load(args)

    def show(device: str, backend: str, table, r) -> None:
        print(f"latency table {device}/{backend}: {len(table.entries)} pieces -> {cfg.run_path / 'latency'}")
        if r:
            p, x = r["prediction"], r["proxies"]
            print(f"  fidelity on {r['n']} held-out subnets: {100 * p['within_10pct']:.1f}% within +-10%, "
                  f"{100 * p['within_5pct']:.1f}% within +-5%, MAPE {p['mape_pct']:.2f}%, Kendall tau {p['kendall_tau']:.3f} "
                  f"(FLOPs {x['flops_kendall_tau']:.3f}, params {x['params_kendall_tau']:.3f})")

    run_latency_stage(cfg.search_space, cfg.latency, cfg.run_path, [args.device] if args.device else None,
                      [args.backend] if args.backend else None, strict=args.strict, fidelity=not args.no_fidelity,
                      progress=not args.no_progress, seed=cfg.seed, name=cfg.name, on_table=show)
    return 0


def _cmd_predictors(args: argparse.Namespace) -> int:
    from hwnas.predictors.stage import run_predictors

    cfg = _load(args)
    r = run_predictors(cfg.search_space, cfg.predictors, cfg.run_path, seed=cfg.seed, progress=not args.no_progress, name=cfg.name)
    h = r["heldout"]
    print(f"predictor {r['model']} fitted on {r['n_fit']} subnets -> {cfg.run_path / 'predictors'}")
    if h:
        print(f"held-out ({r['n_heldout']}): Kendall tau {h['kendall_tau']:.3f}, Spearman {h['spearman']:.3f}, "
              f"RMSE {h['rmse']:.4f}, MAPE {100 * h['mape']:.2f}%; eval {r['eval_seconds_per_subnet']:.2f} s/subnet")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from hwnas.report import print_front
    from hwnas.search.config import workers_problem
    from hwnas.search.stage import run_search

    cfg = _load(args)
    why = workers_problem(args.workers, cfg.search.engine, cfg.search.storage) if args.workers else None
    if why:
        raise ConfigError(f"--workers: {why} (search.engine in {args.config})")
    summary = run_search(cfg.search_space, cfg.search, cfg.run_path, seed=cfg.seed, latency_cfg=cfg.latency,
                         workers=args.workers, progress=not args.no_progress, name=cfg.name)
    print(f"searched {summary['candidates']} candidates in {summary['seconds']:.1f} s "
          f"({summary['candidates_per_second']:.0f}/s); hypervolume {summary['hypervolume']:.4g}")
    print_front(cfg.run_path / "search")
    return 0


def _cmd_pareto(args: argparse.Namespace) -> int:
    from hwnas.report import print_front
    from hwnas.search.stage import write_plots

    out = Path(args.run_dir) / "search"
    if not (out / "front.json").exists():
        raise HwnasError(f"{out / 'front.json'}: no search results; run `hwnas search CONFIG` first")
    _check_folder(out, "plots folder")
    print_front(out)
    plots = write_plots(out)
    print(f"plots: {', '.join(str(p) for p in plots)}")
    return 0


def _export_summary(report: dict) -> None:
    v, par = report["val_loss"], report["parity"]
    print(f"exported front member #{report['front_index']} {report['key']} -> {report['out_dir']}")
    print(f"  {report['params']['total']:,} params; validation loss {v['torch']:.4f} nats/byte (int8 model {v['int8_delta']:+.4f}); "
          f"ONNX Runtime fp32 max |logit diff| {par['max_abs_diff']:.2g} (<= {par['tolerance']:g})")
    if report["finetune"]:
        ft = report["finetune"]
        print(f"  fine-tuned {ft['steps']} steps: validation loss {ft['loss_before']:.4f} -> {ft['loss_after']:.4f}")
    for row in (report["latency"] or {}).get("rows", []):
        predicted = f"predicted {row['predicted_ms']:.3f} ms, " if row["predicted_ms"] else ""
        print(f"  latency {row['backend']}, {row['model']}: {predicted}measured {row['measured_ms']:.3f} ms")
    print(f"  report: {Path(report['out_dir']) / 'report.md'}")


def _cmd_export(args: argparse.Namespace) -> int:
    from hwnas.export import ExportConfig, run_export

    cfg = ExportConfig()
    if args.config:
        from hwnas.config import load_config

        experiment = load_config(args.config)
        if (Path(args.run_dir) / "run.json").exists():  # the config must be the run's own
            experiment.check_run_dir(args.run_dir)
        cfg = experiment.export
    if not Path(args.run_dir).is_dir():
        raise HwnasError(f"{args.run_dir}: not a run directory (no such folder)")
    out = args.out if args.out is not None else cfg.out_dir
    _check_folder(out if out is not None else Path(args.run_dir) / "export", "--out" if args.out is not None else "export folder")
    report = run_export(args.run_dir, args.pick if args.pick is not None else cfg.pick, out_dir=args.out, force=args.force,
                        finetune_steps=cfg.finetune_steps if args.finetune_steps is None else args.finetune_steps, cfg=cfg,
                        progress=not args.no_progress)
    _export_summary(report)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from hwnas.pipeline import Pipeline
    from hwnas.report import print_front

    cfg = _load(args)
    if cfg.export.out_dir:
        _check_folder(cfg.export.out_dir, f"{args.config}: export.out_dir")
    Pipeline(cfg, progress=not args.no_progress).run()
    rd = cfg.run_path
    print_front(rd / "search")
    plots = sorted(str(p) for p in (rd / "search").glob("*.png"))
    print(f"plots: {', '.join(plots)} (and .html)")
    wandb_runs = sorted(str(p) for p in rd.rglob("offline-run-*") if p.is_dir())
    print(f"W&B offline runs ({len(wandb_runs)}): {rd}/**/wandb (sync with `wandb sync <dir>`)")
    from hwnas.export import load

    export_dir = Path(cfg.export.out_dir) if cfg.export.out_dir else rd / "export"
    model = load(export_dir)
    sample = model.generate(cfg.export.sample_prompt, max_new_tokens=max(cfg.export.sample_tokens, 1), seed=cfg.seed)
    print(f"exported model: {export_dir} ({model.arch.key()})")
    print("sample: " + repr(sample.replace(chr(10), " ")[:160]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hwnas",
        description="Hardware-aware neural architecture search for transformers: train one weight-sharing "
        "supernet, measure latency tables, fit accuracy predictors, search Pareto-optimal subnets.",
    )
    parser.add_argument("--version", action="version", version=f"hwnas {__import__('hwnas').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "space",
        help="summarize the search space of an experiment config",
        description="Print the search space's size, its smallest and largest arch with parameters and "
        "FLOPs, and N random sample archs.",
    )
    p.add_argument("config", help="experiment YAML, e.g. experiments/quickstart.yaml")
    p.add_argument("-n", "--samples", type=_int_in(0, MAX_SAMPLES), default=5,
                   help=f"number of random archs to show (default 5, at most {MAX_SAMPLES})")
    p.add_argument("--seed", type=_int_in(0, MAX_SEED), default=None, help="sampling seed (default: the config's seed)")
    p.set_defaults(func=_cmd_space)

    p = sub.add_parser(
        "train",
        help="train the weight-sharing supernet (resumes an interrupted run)",
        description="Train the supernet with the sandwich rule and in-place distillation on the config's corpus. "
        "Checkpoints go to <run_dir>/train; running the command again resumes from the last one. Under "
        "`torchrun --nproc_per_node=K $(which hwnas) train CONFIG` it trains data-parallel.",
    )
    p.add_argument("config", help="experiment YAML, e.g. experiments/quickstart.yaml")
    p.add_argument("--wandb", choices=["offline", "online", "disabled"], default=None, help="override train.wandb")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "latency",
        help="measure latency tables on this machine and report their fidelity",
        description="Measure every distinct sublayer of the search space once on this device and backend (resumable), "
        "fit the correction on whole subnets, then check the table on held-out subnets (the fidelity report).",
    )
    p.add_argument("config", help="experiment YAML")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: latency.devices from the config")
    p.add_argument("--backend", choices=["torch", "onnxruntime"], default=None, help="default: latency.backends")
    p.add_argument("--strict", action="store_true", help="fail instead of warning when a table's device fingerprint differs")
    p.add_argument("--no-fidelity", action="store_true", help="skip the held-out fidelity report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_latency)

    p = sub.add_parser(
        "predictors",
        help="evaluate sampled subnets and fit accuracy predictors",
        description="Evaluate subnets of the trained supernet (uniform and stratified by size; resumable), fit the "
        "predictor family, pick one by cross-validated Kendall tau and report its quality on held-out subnets.",
    )
    p.add_argument("config", help="experiment YAML")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_predictors)

    p = sub.add_parser(
        "search",
        help="multi-objective search for Pareto-optimal subnets",
        description="Search the space on the fitted predictors and latency tables with Optuna or pymoo (or the "
        "predictor-in-the-loop driver), save the Pareto front, re-measure its members and log everything to W&B.",
    )
    p.add_argument("config", help="experiment YAML")
    p.add_argument("--workers", type=_int_in(1, MAX_WORKERS), default=None,
                   help="Optuna worker processes sharing the study (default: search.workers)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_search)

    p = sub.add_parser(
        "pareto",
        help="print the Pareto front of a run and write its plots",
        description="Print the saved front as a table and write its plots (2-D fronts as PNG and interactive HTML, "
        "the hypervolume history, predicted vs re-measured values).",
    )
    p.add_argument("run_dir", help="run directory, e.g. runs/quickstart")
    p.set_defaults(func=_cmd_pareto)

    p = sub.add_parser(
        "export",
        help="export a Pareto-front member as a standalone, verified model",
        description="Pick a front member (index, arch key, or a rule like \"min loss where latency@cpu <= 5ms\") and write "
        "config.json, model.safetensors, model.onnx, model.int8.onnx and report.md, checking ONNX Runtime against torch.",
    )
    p.add_argument("run_dir", help="run directory, e.g. runs/quickstart")
    p.add_argument("--pick", type=_pick, default=None, help="front index, arch key or rule (default: export.pick, 'min loss')")
    p.add_argument("--out", default=None, help="export directory (default: <run_dir>/export)")
    p.add_argument("--force", action="store_true", help="replace an existing export directory")
    p.add_argument("--finetune-steps", type=_int_in(0, MAX_STEPS), default=None,
                   help="fine-tune the subnet for N steps before exporting")
    p.add_argument("--config", default=None, help="experiment YAML whose export: section gives the defaults")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "run",
        help="run the whole pipeline: train, latency, predictors, search, export",
        description="Run train -> latency -> predictors -> search -> export in the config's run directory. Finished "
        "stages (same config) are skipped and an interrupted one resumes, so running it again after Ctrl-C or a kill "
        "finishes the job.",
    )
    p.add_argument("config", help="experiment YAML")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except HwnasError as e:
        print(f"hwnas: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine refused (a full disk, a permission, a path that is a folder): still one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"hwnas: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hwnas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
