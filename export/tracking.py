"""What an export logs to W&B: its figures as the run's summary and the exported folder (weights,
ONNX files, config, report and model card) as a `model` artifact, in a run named
`<experiment>-export` of the experiment's group (`core.tracking.Tracker`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hwnas.core.rundir import experiment_name

from .config import ExportConfig


def figures(report: dict[str, Any]) -> dict[str, Any]:
    """The export's headline numbers, flat: parameters, losses, parity and latency where measured."""
    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool)

    out: dict[str, Any] = {"params": report["params"]["total"], "front_index": report["front_index"]}
    out |= {f"val_loss/{k}": v for k, v in (report.get("val_loss") or {}).items() if number(v)}
    out |= {f"parity/{k}": v for k, v in (report.get("parity") or {}).items() if number(v)}
    out |= {f"front/{k}": v for k, v in report.get("front_objectives", {}).items()}
    for row in (report.get("latency") or {}).get("rows", []):
        name = f"{row['backend']}/{row['file'] or 'table_form'}"
        out |= {f"latency_ms/{name}": row["measured_ms"], f"predicted_ms/{name}": row.get("predicted_ms")}
    return {k: v for k, v in out.items() if v is not None}


def log_export(run_dir: Path, target: Path, report: dict[str, Any], cfg: ExportConfig) -> None:
    """Log the written export at `target` (files as listed in report["files"]) to W&B, unless
    `cfg.wandb` is disabled; the local metrics row goes to `<run_dir>/export-metrics.jsonl`."""
    if cfg.wandb == "disabled":
        return
    from hwnas.core.tracking import Tracker

    experiment = experiment_name(run_dir)
    tracker = Tracker(run_dir, "export-metrics", mode=cfg.wandb, project=cfg.wandb_project, job_type="export",
                      experiment=experiment, config={"export": cfg.model_dump(mode="json"), "key": report["key"]})
    try:
        row = figures(report)
        tracker.log(row)
        tracker.summary({**row, "key": report["key"]})
        files = [target / name for name in sorted(report.get("files", {})) if (target / name).is_file()]
        files += [target / n for n in ("config.json", "report.json", "report.md", "README.md", "manifest.json")
                  if (target / n).is_file() and target / n not in files]
        tracker.log_artifact("model", "model", files, description=f"{report['key']}: exported from front member "
                             f"#{report['front_index']} ({report['pick']}); README.md is its model card",
                             metadata={"key": report["key"], "arch": report["arch"], **row})
    finally:
        tracker.finish()
