"""Experiment tracking: a local JSONL metrics file plus Weights & Biases (offline by default).

`Tracker` writes every logged row to `<run_dir>/<name>.jsonl` and, unless W&B is disabled, to a W&B
run in `<run_dir>/wandb` (mode "offline": nothing leaves the machine; sync later with `wandb sync`).
`read_wandb_history` decodes an offline run's `.wandb` file (W&B ships no reader for it), so tests
and users can check what was logged.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

from .errors import TrackingError
from .rundir import experiment_name

WANDB_MODES = ("offline", "online", "disabled")


def check_wandb(mode: str, field: str) -> None:
    """Before a stage does any work: with `mode` online, W&B must have credentials (`wandb.login`,
    which prompts at a terminal), else `TrackingError` naming the config `field`; a stage would
    otherwise fail at its first log, after its work (or, the search and export, their writes)."""
    if mode != "online":
        return
    import wandb

    try:
        wandb.login(verify=False)
    except Exception as e:  # UsageError without an API key; anything else wandb raises: one line too
        raise TrackingError(f"{field}: online, but W&B cannot log in ({' '.join(str(e).split())}); run `wandb login` or "
                            f"set WANDB_API_KEY, or set {field}: offline") from None


class Tracker:
    """Log rows of scalars locally and to W&B. `mode`: offline (default), online or disabled.

    The W&B run is named `<experiment>-<stage>` (a `part` such as a latency device appended), grouped
    by experiment, typed by stage (`job_type`) and tagged with the stage and `config-<hash>`, the hash
    of `config`: runs of one experiment sit together, and two runs of one config are found by tag.
    `experiment` defaults to the name recorded in the run directory's run.json (`core.rundir`).
    `step_metric` and `metrics`: W&B plots `metrics` (names or globs) against `step_metric` (e.g.
    losses against `step`, hypervolume against `candidates`) instead of W&B's own counter."""

    def __init__(self, run_dir: str | Path, name: str, mode: str = "offline", project: str = "hwnas",
                 config: dict[str, Any] | None = None, job_type: str | None = None, resume_step: int | None = None,
                 experiment: str | None = None, part: str | None = None, step_metric: str | None = None,
                 metrics: tuple[str, ...] = ("*",)):
        if mode not in WANDB_MODES:
            raise ValueError(f"wandb mode {mode!r} is not one of {', '.join(WANDB_MODES)}")
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / f"{name}.jsonl"
        if resume_step is not None:
            self._truncate_after(resume_step)
        self._file = self.path.open("a")
        self.step_metric = step_metric
        self.experiment = experiment or experiment_name(self.run_dir)
        self.stage = job_type or name
        self.config_hash = config_hash(config or {})
        self.wandb_run = None
        if mode != "disabled":
            self._init_wandb(mode, project, config or {}, part, metrics)

    def _init_wandb(self, mode: str, project: str, config: dict[str, Any], part: str | None, metrics: tuple[str, ...]) -> None:
        import wandb

        os.environ.setdefault("WANDB_SILENT", "true")
        name = "-".join(x for x in (self.experiment, self.stage, part) if x)
        try:
            self.wandb_run = wandb.init(
                project=project, name=name, group=self.experiment, job_type=self.stage,
                tags=[self.stage, f"config-{self.config_hash}"], dir=str(self.run_dir), mode=mode,
                config={**config, "experiment": self.experiment, "config_hash": self.config_hash}, reinit="create_new",
                settings=wandb.Settings(console="off", x_disable_stats=True),
            )
        except Exception as e:  # e.g. online without credentials: one line, not wandb's traceback
            self._file.close()
            raise TrackingError(f"W&B run {name} ({mode}) cannot start: {' '.join(str(e).split())}") from None
        if self.step_metric is not None:
            self.wandb_run.define_metric(self.step_metric)
            for glob in metrics:
                self.wandb_run.define_metric(glob, step_metric=self.step_metric)

    def _truncate_after(self, step: int) -> None:
        """Drop rows logged after `step` by an interrupted run, so a resumed run does not repeat them,
        and lines that are not a JSON row (the torn last line of a killed run)."""
        if not self.path.exists():
            return
        from .io import atomic_write_text

        kept = []
        for line in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            row = _row(line)
            if row is not None and isinstance(row.get("step", -1), int) and row.get("step", -1) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def log(self, row: dict[str, Any], step: int | None = None) -> None:
        record = dict(row) if step is None else {"step": step, **row}
        self._file.write(json.dumps(record, sort_keys=True) + "\n")
        self._file.flush()
        if self.wandb_run is not None:
            if self.step_metric is not None and step is not None:  # the x-axis its metrics are plotted against
                row = {self.step_metric: step, **row}
            self.wandb_run.log(row, step=step)

    def log_wandb(self, data: dict[str, Any]) -> None:
        """W&B-only objects (tables, plots, artifacts' files) that have no JSONL form."""
        if self.wandb_run is not None:
            self.wandb_run.log(data)

    def log_artifact(self, name: str, kind: str, paths: list[Path], description: str | None = None,
                     metadata: dict[str, Any] | None = None) -> None:
        """Files as one W&B artifact `<experiment>-<name>` of type `kind` (a model, a front, a table)."""
        if self.wandb_run is None:
            return
        import wandb

        art = wandb.Artifact(f"{self.experiment}-{name}", type=kind, description=description, metadata=metadata or {})
        for p in paths:
            art.add_file(str(p), name=Path(p).name)
        self.wandb_run.log_artifact(art)

    def summary(self, values: dict[str, Any]) -> None:
        if self.wandb_run is not None:
            self.wandb_run.summary.update(values)

    @property
    def wandb_dir(self) -> Path | None:
        return Path(self.wandb_run.dir).parent if self.wandb_run is not None else None

    def finish(self) -> None:
        self._file.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def config_hash(config: dict[str, Any]) -> str:
    """12 hex digits of SHA-256 over `config` as canonical JSON: equal configs, equal tags."""
    text = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _row(line: str) -> dict[str, Any] | None:
    """One JSONL row, or None for a line that is not a JSON object (torn or damaged)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) else None


def _wandb_records(path: Path):
    """Yield the protobuf payloads of a W&B `.wandb` log: a 7-byte file header, then leveldb-style
    32 KiB blocks of records, each with a 7-byte header (crc32 of type and payload, length, type:
    full/first/middle/last). It stops at the first record that is cut short or fails its checksum:
    the tail that wandb-core is still writing, or a damaged one, is left out rather than misread."""
    data = path.read_bytes()
    pos, block, pending = 7, 32 * 1024, b""
    while pos + 7 <= len(data):
        left = block - (pos % block)
        if left < 7:  # block trailer padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:  # zero padding
            continue
        if len(payload) < length or zlib.crc32(bytes([kind]) + payload) != crc:
            return
        if kind == 1:  # full
            yield payload
        elif kind == 2:  # first
            pending = payload
        elif kind == 3:  # middle
            pending += payload
        elif kind == 4:  # last
            yield pending + payload
            pending = b""


def read_wandb_records(run_dir: str | Path) -> list[Any]:
    """All `Record` protobufs of every offline W&B run under `run_dir`, in file order."""
    return [rec for path in sorted(Path(run_dir).rglob("*.wandb")) for rec in _parsed(path)]


def _parsed(path: Path):
    """The `Record` protobufs of one `.wandb` file."""
    from wandb.proto import wandb_internal_pb2 as pb

    for payload in _wandb_records(path):
        rec = pb.Record()
        rec.ParseFromString(payload)
        yield rec


def read_wandb_history(run_dir: str | Path) -> list[dict[str, Any]]:
    """The history rows (`wandb.log` calls) of the offline W&B runs under `run_dir`."""
    rows = []
    for rec in read_wandb_records(run_dir):
        if rec.WhichOneof("record_type") == "history":
            row = {}
            for item in rec.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json) if item.value_json else None
            rows.append(row)
    return rows


def read_wandb_runs(run_dir: str | Path) -> list[dict[str, Any]]:
    """What identifies each offline W&B run under `run_dir`: name, group, job type, tags, the metric
    definitions ({metric or glob: its step metric}) and the artifacts logged (name, type, files)."""
    runs: list[dict[str, Any]] = []
    for path in sorted(Path(run_dir).rglob("*.wandb")):
        run: dict[str, Any] = {"metrics": {}, "artifacts": [], "file": str(path)}
        for rec in _parsed(path):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                r = rec.run
                run |= {"name": r.display_name, "group": r.run_group, "job_type": r.job_type, "tags": list(r.tags)}
            elif kind == "metric":
                run["metrics"][rec.metric.name or rec.metric.glob_name] = rec.metric.step_metric or None
            elif kind == "artifact":
                a = rec.artifact
                run["artifacts"].append({"name": a.name, "type": a.type, "files": [c.path for c in a.manifest.contents]})
        runs.append(run)
    return runs
