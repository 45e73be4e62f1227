"""The stages, once: the CLI's subcommands and the pipeline's steps are both read from `STAGES`.

A `Stage` knows its command line (`add_arguments`), how to run on an experiment config with those
options (`run`, in this process), what it leaves in the run directory (`outputs`, which the
pipeline checks to skip a finished stage), and returns a typed `StageResult`: its JSON record
(kept in pipeline.json) and the lines the CLI prints.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from hwnas.core.config import MAX_PICK, MAX_STEPS, MAX_WORKERS
from hwnas.core.errors import ConfigError
from hwnas.core.manifest import EXPORT_COMMAND, Manifest
from hwnas.latency.runtimes import BACKENDS

from .config import ExperimentConfig


# --- command-line types ------------------------------------------------------------------------------
def _short(text: str) -> str:
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text)} characters)"


def int_in(lo: int, hi: int):
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


def pick(text: str) -> str:
    """An argparse type: a front index, arch key or rule of reasonable length."""
    if not text.strip() or len(text) > MAX_PICK:
        raise argparse.ArgumentTypeError(f"expected a front index, arch key or rule of 1..{MAX_PICK} characters, "
                                         f"got {_short(text)}")
    return text


def add_set(parser: argparse.ArgumentParser) -> None:
    """`--set KEY=VALUE` (repeatable): a config value over the YAML's, e.g. --set train.steps=600."""
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help="override a config value (dotted key, YAML value), e.g. --set train.steps=600; repeatable")


# --- results ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StageResult:
    """What a stage returns: `record`, its JSON-able summary (pipeline.json keeps it)."""

    record: dict[str, Any]

    def lines(self, cfg: ExperimentConfig) -> list[str]:
        return []


@dataclass(frozen=True)
class TrainResult(StageResult):
    def lines(self, cfg):
        r = self.record
        if not r:  # a rank other than 0 of a data-parallel run
            return []
        return [f"trained {r['steps']} steps in {r['train_seconds']:.0f} s -> {cfg.run_path / 'train'}",
                f"validation bits/byte: largest {r['val_bpb_largest']:.3f}, smallest {r['val_bpb_smallest']:.3f} "
                f"(unigram entropy of the validation bytes: {r['unigram_entropy_bpb']:.3f})"]


@dataclass(frozen=True)
class LatencyResult(StageResult):
    shown: tuple[str, ...] = ()  # lines printed as each table finished

    def lines(self, cfg):
        return list(self.shown)


@dataclass(frozen=True)
class PredictorsResult(StageResult):
    n_fit: int = 0
    n_heldout: int = 0

    def lines(self, cfg):
        r, h = self.record, self.record["heldout"]
        out = [f"predictor {r['model']} fitted on {self.n_fit} subnets -> {cfg.run_path / 'predictors'}"]
        if h:
            out.append(f"held-out ({self.n_heldout}): Kendall tau {h['kendall_tau']:.3f}, Spearman {h['spearman']:.3f}, "
                       f"RMSE {h['rmse']:.4f}, MAPE {100 * h['mape']:.2f}%; eval {r['eval_seconds_per_subnet']:.2f} s/subnet")
        return out


@dataclass(frozen=True)
class SearchResult(StageResult):
    def lines(self, cfg):
        r = self.record
        return [f"searched {r['candidates']} candidates in {r['seconds']:.1f} s ({r['candidates_per_second']:.0f}/s); "
                f"hypervolume {r['hypervolume']:.4g}",
                *(f"{name}: the front was not re-measured here: {why}" for name, why in r.get("not_validated", {}).items())]


@dataclass(frozen=True)
class ExportResult(StageResult):
    def lines(self, cfg):
        r = self.record
        v, par = r["val_loss"], r["parity"]
        out = [f"exported front member #{r['front_index']} {r['key']} -> {r['out_dir']}",
               f"  {r['params']['total']:,} params; validation loss {v['torch']:.4f} nats/byte (int8 model {v['int8_delta']:+.4f}); "
               f"ONNX Runtime fp32 max |logit diff| {par['max_abs_diff']:.2g} (<= {par['tolerance']:g})"]
        if r["finetune"]:
            ft = r["finetune"]
            out.append(f"  fine-tuned {ft['steps']} steps: validation loss {ft['loss_before']:.4f} -> {ft['loss_after']:.4f}")
        for row in (r["latency"] or {}).get("rows", []):
            predicted = f"predicted {row['predicted_ms']:.3f} ms, " if row["predicted_ms"] else ""
            out.append(f"  latency {row['backend']}, {row['model']}: {predicted}measured {row['measured_ms']:.3f} ms")
        return out + [f"  report: {Path(r['out_dir']) / 'report.md'}"]


# --- stages -----------------------------------------------------------------------------------------
class Stage:
    """One step of the pipeline and one subcommand of the CLI."""

    name: ClassVar[str]
    help: ClassVar[str]
    description: ClassVar[str]

    positional: ClassVar[tuple[str, str]] = ("config", "experiment YAML, e.g. experiments/quickstart.yaml")
    arguments: ClassVar[tuple[tuple[tuple[str, ...], dict[str, Any]], ...]] = ()  # (flags, add_argument keywords)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The subcommand's arguments beyond `--no-progress`."""
        parser.add_argument(self.positional[0], help=self.positional[1])
        for flags, options in self.arguments:
            parser.add_argument(*flags, **options)

    def show(self, cfg: ExperimentConfig, result: StageResult) -> None:
        """What the CLI prints when the stage is done."""
        for line in result.lines(cfg):
            print(line)

    def run(self, cfg: ExperimentConfig, args: argparse.Namespace | None = None, progress: bool = True) -> StageResult:
        """Run the stage on `cfg` in this process; `args`: the command line's options (None: the config's)."""
        raise NotImplementedError

    def outputs(self, cfg: ExperimentConfig) -> list[tuple[Manifest, tuple[str, ...]]]:
        """The files that must be listed and intact in their manifests for the stage to count as done."""
        raise NotImplementedError


def _option(args: argparse.Namespace | None, name: str) -> Any:
    return getattr(args, name, None) if args is not None else None


class TrainStage(Stage):
    name, help = "train", "train the weight-sharing supernet (resumes an interrupted run)"
    description = ("Train the supernet with the sandwich rule and in-place distillation on the config's corpus. "
                   "Checkpoints go to <run_dir>/train; running the command again resumes from the last one. Under "
                   "`torchrun --nproc_per_node=K $(which hwnas) train CONFIG` it trains data-parallel.")

    arguments = ((("--wandb",), {"choices": ["offline", "online", "disabled"], "default": None, "help": "override train.wandb"}),)

    def run(self, cfg, args=None, progress=True):
        from hwnas.supernet.train import train

        wandb = _option(args, "wandb")
        train_cfg = cfg.train if wandb is None else cfg.train.model_copy(update={"wandb": wandb})
        return TrainResult(train(cfg.search_space, train_cfg, cfg.run_path, seed=cfg.seed, progress=progress, name=cfg.name))

    def outputs(self, cfg):
        from hwnas.supernet.data import FILES as CORPUS_FILES

        rd = cfg.run_path
        return [(Manifest.of(rd, "train"), ("checkpoint.safetensors", "summary.json")), (Manifest.of(rd, "corpus"), CORPUS_FILES)]


class LatencyStage(Stage):
    name, help = "latency", "measure latency tables on this machine and report their fidelity"
    description = ("Measure every distinct sublayer of the search space once on this device and backend (resumable), "
                   "fit the correction on whole subnets, then check the table on held-out subnets (the fidelity report).")

    arguments = (
        (("--device",), {"choices": ["cpu", "cuda"], "default": None, "help": "default: latency.devices from the config"}),
        (("--backend",), {"choices": list(BACKENDS), "default": None, "help": "default: latency.backends"}),
        (("--strict",), {"action": "store_true", "help": "fail instead of warning when a table's device fingerprint differs"}),
        (("--no-fidelity",), {"action": "store_true", "help": "skip the held-out fidelity report"}),
    )

    def run(self, cfg, args=None, progress=True):
        from hwnas.latency.stage import run_latency_stage

        shown: list[str] = []

        def show(device: str, backend: str, table, r) -> None:
            what = f"{device}/{backend}" + ("" if table.workload_kind == "prefill" else f" {table.workload_kind}")
            line = f"latency table {what}: {len(table.entries)} pieces -> {cfg.run_path / 'latency'}"
            if args is not None:  # the CLI prints each table as it finishes
                print(line)
            shown.append(line)
            if r:
                p, x = r["prediction"], r["proxies"]
                line = (f"  fidelity on {r['n']} held-out subnets: {100 * p['within_10pct']:.1f}% within +-10%, "
                        f"{100 * p['within_5pct']:.1f}% within +-5%, MAPE {p['mape_pct']:.2f}%, Kendall tau {p['kendall_tau']:.3f} "
                        f"(FLOPs {x['flops_kendall_tau']:.3f}, params {x['params_kendall_tau']:.3f})")
                if args is not None:
                    print(line)
                shown.append(line)

        device, backend = _option(args, "device"), _option(args, "backend")
        record = run_latency_stage(cfg.search_space, cfg.latency, cfg.run_path, [device] if device else None,
                                   [backend] if backend else None, strict=bool(_option(args, "strict")),
                                   fidelity=not _option(args, "no_fidelity"), progress=progress, seed=cfg.seed, name=cfg.name,
                                   on_table=show)
        return LatencyResult(record, () if args is not None else tuple(shown))

    def outputs(self, cfg):
        from hwnas.latency.table import table_name

        lat = cfg.latency
        names = [table_name(d, b, w) for d in lat.devices for b in lat.backends for w in lat.workloads]
        files = [f"{n}.json" for n in names] + ([f"fidelity-{n}.json" for n in names] if lat.n_fidelity else [])
        return [(Manifest.of(cfg.run_path, "latency"), tuple(files))]


class PredictorsStage(Stage):
    name, help = "predictors", "evaluate sampled subnets and fit accuracy predictors"
    description = ("Evaluate subnets of the trained supernet (uniform and stratified by size; resumable), fit the "
                   "predictor family, pick one by cross-validated Kendall tau and report its quality on held-out subnets.")

    def run(self, cfg, args=None, progress=True):
        from hwnas.predictors.stage import run_predictors

        r = run_predictors(cfg.search_space, cfg.predictors, cfg.run_path, seed=cfg.seed, progress=progress, name=cfg.name)
        keep = ("model", "heldout", "eval_seconds_per_subnet")
        return PredictorsResult({k: r[k] for k in keep}, r["n_fit"], r["n_heldout"])

    def outputs(self, cfg):
        from hwnas.predictors.stage import OUTPUTS

        return [(Manifest.of(cfg.run_path, "predictors"), ("records.jsonl", *OUTPUTS))]


class SearchStage(Stage):
    name, help = "search", "multi-objective search for Pareto-optimal subnets"
    description = ("Search the space on the fitted predictors and latency tables with Optuna or pymoo (or the "
                   "predictor-in-the-loop driver), save the Pareto front, re-measure its members and log everything to W&B.")

    arguments = ((("--workers",), {"type": int_in(1, MAX_WORKERS), "default": None,
                                   "help": "Optuna worker processes sharing the study (default: search.workers)"}),)

    def run(self, cfg, args=None, progress=True):
        from hwnas.search.config import workers_problem
        from hwnas.search.stage import run_search

        workers = _option(args, "workers")
        why = workers_problem(workers, cfg.search.engine, cfg.search.storage) if workers else None
        if why:
            raise ConfigError(f"--workers: {why} (search.engine in {args.config})")
        return SearchResult(run_search(cfg.search_space, cfg.search, cfg.run_path, seed=cfg.seed, latency_cfg=cfg.latency,
                                       workers=workers, progress=progress, name=cfg.name))

    def show(self, cfg, result):
        from .report import print_front

        super().show(cfg, result)
        print_front(cfg.run_path / "search")

    def outputs(self, cfg):
        from hwnas.search.pareto import SEARCH_FILES

        return [(Manifest.of(cfg.run_path, "search"), SEARCH_FILES)]


class ExportStage(Stage):
    name, help = "export", "export a Pareto-front member as a standalone, verified model"
    description = ("Pick a front member (index, arch key, or a rule like \"min loss where latency@cpu <= 5ms\") and write "
                   "config.json, model.safetensors, model.onnx, model.int8.onnx and report.md, checking ONNX Runtime against torch.")

    positional = ("run_dir", "run directory, e.g. runs/quickstart")
    arguments = (
        (("--pick",), {"type": pick, "default": None, "help": "front index, arch key or rule (default: export.pick, 'min loss')"}),
        (("--out",), {"default": None, "help": "export directory (default: <run_dir>/export)"}),
        (("--force",), {"action": "store_true", "help": "replace an existing export directory"}),
        (("--finetune-steps",), {"type": int_in(0, MAX_STEPS), "default": None,
                                 "help": "fine-tune the subnet for N steps before exporting"}),
        (("--config",), {"default": None, "help": "experiment YAML whose export: section gives the defaults"}),
    )

    def run(self, cfg, args=None, progress=True):
        return self.run_on(cfg.run_path, cfg.export, args, progress)

    def run_on(self, run_dir: str | Path, export_cfg, args: argparse.Namespace | None = None, progress: bool = True
               ) -> ExportResult:
        """Export from `run_dir` with `export_cfg` (an experiment's `export:` section), the command
        line's options over it."""
        from hwnas.export import run_export
        from hwnas.export.stage import check_own_export

        e = export_cfg
        pick, out, steps = _option(args, "pick"), _option(args, "out"), _option(args, "finetune_steps")
        if args is None:  # the pipeline replaces its own run's earlier export, never another's
            check_own_export(Path(out or e.out_dir or Path(run_dir) / "export"), Path(run_dir))
        return ExportResult(run_export(run_dir, e.pick if pick is None else pick, out_dir=out,
                                       force=bool(_option(args, "force")) if args is not None else True,
                                       finetune_steps=e.finetune_steps if steps is None else steps, cfg=e, progress=progress))

    def outputs(self, cfg):
        from hwnas.export.stage import EXPORT_FILES

        out = Path(cfg.export.out_dir) if cfg.export.out_dir else cfg.run_path / "export"
        return [(Manifest(out, EXPORT_COMMAND), EXPORT_FILES)]


STAGES: dict[str, Stage] = {s.name: s for s in (TrainStage(), LatencyStage(), PredictorsStage(), SearchStage(), ExportStage())}
