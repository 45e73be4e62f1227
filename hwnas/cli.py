"""The `hwnas` command line: one subcommand per pipeline stage, each reading the experiment YAML.

Errors in user input print one line (`hwnas: error: ...`) and exit with status 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys

from hwnas.search_space import HwnasError


def _cmd_space(args: argparse.Namespace) -> int:
    from hwnas.config import load_config
    from hwnas.report import print_space_summary

    cfg = load_config(args.config)
    print_space_summary(cfg, samples=args.samples, seed=cfg.seed if args.seed is None else args.seed)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from hwnas.config import load_config
    from hwnas.supernet.train import train

    cfg = load_config(args.config)
    train_cfg = cfg.train if args.wandb is None else cfg.train.model_copy(update={"wandb": args.wandb})
    summary = train(cfg.search_space, train_cfg, cfg.run_path, seed=cfg.seed, progress=not args.no_progress)
    if summary:  # rank 0
        print(
            f"trained {summary['steps']} steps in {summary['train_seconds']:.0f} s -> {cfg.run_path / 'train'}\n"
            f"validation bits/byte: largest {summary['val_bpb_largest']:.3f}, smallest {summary['val_bpb_smallest']:.3f} "
            f"(unigram entropy of the validation bytes: {summary['unigram_entropy_bpb']:.3f})"
        )
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
    p.add_argument("-n", "--samples", type=int, default=5, help="number of random archs to show (default 5)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: the config's seed)")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except HwnasError as e:
        print(f"hwnas: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hwnas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
