"""The `hwnas` command line: one subcommand per pipeline stage, each reading the experiment YAML.

Errors in user input print one line (`hwnas: error: ...`) and exit with status 2, no traceback.
Numbers on the command line are bounded as the config's are (a bad flag is one line too, pointing at
`--help`, status 2), and every folder a command will write is checked before any work.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hwnas.core.config import MAX_SEED
from hwnas.core.errors import ConfigError, HwnasError

from .api import check_folder, export_run, prepare, prepare_run, search_folder
from .stages import STAGES, add_set, int_in

MAX_SAMPLES = 10**4  # random archs `hwnas space` prints, one table row each


class Parser(argparse.ArgumentParser):
    """argparse whose refusal is the one error line (no usage block above it), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _load(args: argparse.Namespace):
    """The experiment config, its run directory checked to be writable and this experiment's."""
    return prepare(args.config, args.set)[0]


def _cmd_space(args: argparse.Namespace) -> int:
    from hwnas.config import load_config
    from hwnas.report import print_space_summary

    cfg = load_config(args.config, args.set or ())
    print_space_summary(cfg, samples=args.samples, seed=cfg.seed if args.seed is None else args.seed)
    return 0


def _cmd_stage(args: argparse.Namespace) -> int:
    """`hwnas train|latency|predictors|search CONFIG`: the stage of `hwnas.stages.STAGES`."""
    stage = STAGES[args.command]
    cfg = _load(args)
    stage.show(cfg, stage.run(cfg, args, progress=not args.no_progress))
    return 0


def _cmd_pareto(args: argparse.Namespace) -> int:
    from hwnas.report import print_front
    from hwnas.search.stage import write_plots

    out = search_folder(args.run_dir)
    check_folder(out, "plots folder")
    print_front(out)
    plots = write_plots(out)
    print(f"plots: {', '.join(str(p) for p in plots)}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from hwnas.export import ExportConfig

    cfg, experiment = ExportConfig(), None
    if args.config:
        from hwnas.config import load_config

        experiment = load_config(args.config, args.set or ())
        cfg = experiment.export
    elif args.set:
        from hwnas.config import export_overrides

        cfg = export_overrides(args.set)
    STAGES["export"].show(None, export_run(args.run_dir, cfg, args, progress=not args.no_progress, experiment=experiment))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from hwnas.pipeline import Pipeline
    from hwnas.report import print_front

    cfg = prepare_run(args.config, args.set)
    if args.dry_run:
        Pipeline(cfg, progress=False).dry_run()
        return 0
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


def _cmd_config(args: argparse.Namespace) -> int:
    import json

    from hwnas.config import ExperimentConfig, load_config, resolved_yaml

    if args.schema:
        if args.config or args.set:
            raise ConfigError("config --schema: takes no experiment YAML or --set (the schema is the same for every config)")
        print(json.dumps(ExperimentConfig.model_json_schema(), indent=2))
        return 0
    if not args.config:
        raise ConfigError("config: give an experiment YAML (or --schema)")
    print(resolved_yaml(load_config(args.config, args.set or ())), end="")
    return 0


def _config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="experiment YAML")
    p.add_argument("--schema", action="store_true", help="print the JSON schema of an experiment config instead")
    add_set(p)


def _space_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML, e.g. experiments/quickstart.yaml")
    p.add_argument("-n", "--samples", type=int_in(0, MAX_SAMPLES), default=5,
                   help=f"number of random archs to show (default 5, at most {MAX_SAMPLES})")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=None, help="sampling seed (default: the config's seed)")
    add_set(p)


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="experiment YAML")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--dry-run", action="store_true", help="print which stages would run and why (the config key that "
                   "changed, a re-made input, damaged outputs) and which are complete; runs and writes nothing")
    add_set(p)


# the commands beside the stages: (help, description, arguments, function)
OTHER_COMMANDS = {
    "config": ("print an experiment config with every default filled in (or its JSON schema)",
               "Print the resolved config (the YAML, its --set overrides and every default) or, with --schema, the "
               "JSON schema of every section and key.", _config_arguments, _cmd_config),
    "space": ("summarize the search space of an experiment config",
              "Print the search space's size, its smallest and largest arch with parameters and FLOPs, and N random "
              "sample archs.", _space_arguments, _cmd_space),
    "pareto": ("print the Pareto front of a run and write its plots",
               "Print the saved front as a table and write its plots (2-D fronts as PNG and interactive HTML, the "
               "hypervolume history, predicted vs re-measured values).",
               lambda p: p.add_argument("run_dir", help="run directory, e.g. runs/quickstart"), _cmd_pareto),
    "run": ("run the whole pipeline: train, latency, predictors, search, export",
            "Run train -> latency -> predictors -> search -> export in the config's run directory. Finished stages "
            "(same config) are skipped and an interrupted one resumes, so running it again after Ctrl-C or a kill "
            "finishes the job.", _run_arguments, _cmd_run),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hwnas",
        description="Hardware-aware neural architecture search for transformers: train one weight-sharing "
        "supernet, measure latency tables, fit accuracy predictors, search Pareto-optimal subnets.",
    )
    parser.add_argument("--version", action="version", version=f"hwnas {__import__('hwnas').__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for stage in STAGES.values():
        p = sub.add_parser(stage.name, help=stage.help, description=stage.description)
        stage.add_arguments(p)
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        add_set(p)
        p.set_defaults(func=_cmd_export if stage.name == "export" else _cmd_stage)

    for name, (help_, description, add, func) in OTHER_COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=description)
        add(p)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    import warnings

    from hwnas.core.errors import warning_line

    warnings.formatwarning = warning_line  # one line each, here and in the stages' processes (`core.isolate`)
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
