"""Evaluation records: one measured subnet per line of an append-only JSONL file in the run dir.

An `EvalRecord` holds the arch (and its canonical key), its metrics (validation loss in nats per
byte, bits per byte, tokens), what it was measured with (the supernet checkpoint's sha256, the
corpus file-list hash, the evaluation budget), how long it took, and when. `RecordStore` keeps the
file: every append rewrites it atomically (temp file + rename), so a crash never leaves half a line;
a key already measured in the same context is never written twice. Appends hold an advisory lock
(`records.jsonl.lock`) and re-read the file first, so two processes filling one store lose nothing. Records of another checkpoint,
corpus or budget stay in the file but are not mixed in: `RecordStore.current` skips them and says
how many it skipped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hwnas.core.errors import HwnasError
from hwnas.core.io import atomic_write_text, file_lock
from hwnas.core.manifest import Manifest
from hwnas.search_space import ArchConfig, ArchError

RECORD_FORMAT = 1


class RecordError(HwnasError, ValueError):
    """A record file that cannot be read; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class EvalContext:
    """What a measurement depends on besides the arch: two records are comparable iff these match."""

    supernet_sha256: str
    data_sha256: str
    eval_tokens: int
    seq_len: int


@dataclass(frozen=True)
class EvalRecord:
    key: str
    arch: dict[str, Any]
    metrics: dict[str, float]  # loss (nats/byte), bpb, tokens
    context: EvalContext
    seconds: float  # wall time of the evaluation
    time: str  # UTC, ISO 8601
    format: int = field(default=RECORD_FORMAT)

    @classmethod
    def create(cls, arch: ArchConfig, metrics: dict[str, float], context: EvalContext, seconds: float) -> EvalRecord:
        return cls(key=arch.key(), arch=arch.to_dict(), metrics={k: float(v) for k, v in metrics.items()},
                   context=context, seconds=float(seconds), time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def arch_config(self) -> ArchConfig:
        return ArchConfig.from_dict(self.arch)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> EvalRecord:
        """Parse one line; raises ValueError saying what is wrong."""
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        want = {"key", "arch", "metrics", "context", "seconds", "time", "format"}
        if set(d) != want:
            missing, extra = sorted(want - set(d)), sorted(set(d) - want)
            raise ValueError(f"fields do not match a record (missing {missing}, unknown {extra})")
        if d["format"] != RECORD_FORMAT:
            raise ValueError(f"record format {d['format']!r}, this version reads {RECORD_FORMAT}")
        ctx = d["context"]
        ctx_fields = {"supernet_sha256": str, "data_sha256": str, "eval_tokens": int, "seq_len": int}
        if not isinstance(ctx, dict) or set(ctx) != set(ctx_fields) or not all(isinstance(ctx[k], t) for k, t in ctx_fields.items()):
            raise ValueError(f"context must hold {sorted(ctx_fields)} with the right types, got {ctx!r}")
        metrics = d["metrics"]
        if not isinstance(metrics, dict) or not {"loss", "bpb"} <= set(metrics) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in metrics.values()):
            raise ValueError(f"metrics must be finite numbers including loss and bpb, got {metrics!r}")
        if not isinstance(d["seconds"], int | float) or not isinstance(d["time"], str) or not isinstance(d["key"], str):
            raise ValueError("key, seconds or time has the wrong type")
        try:
            arch = ArchConfig.from_dict(d["arch"])
        except (ArchError, TypeError) as e:
            raise ValueError(f"arch is not an architecture ({e})") from None
        if arch.key() != d["key"]:
            raise ValueError(f"key {d['key']!r} does not match its arch (whose key is {arch.key()!r})")
        return cls(key=d["key"], arch=d["arch"], metrics={k: float(v) for k, v in metrics.items()},
                   context=EvalContext(**ctx), seconds=float(d["seconds"]), time=d["time"], format=d["format"])


class RecordStore:
    """The append-only record file `path` (JSONL). Reads it on creation; raises `RecordError` if
    any line is not a valid record. `manifest`: the manifest of the file's folder, which must
    list the file as it is (checked on creation) and lists every append."""

    def __init__(self, path: str | Path, manifest: Manifest | None = None):
        self.path, self.manifest = Path(path), manifest
        if manifest is not None and self.path.exists():
            manifest.verify(self.path.name)
        self._read()

    def _locked(self):
        return file_lock(self.path.with_name(self.path.name + ".lock"))

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns  # an atomic rewrite is a new inode

    def _read(self) -> None:
        self.records: list[EvalRecord] = []
        self._lines: list[str] = []
        self._seen = self._stamp()
        if self._seen is None:
            return
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise RecordError(f"{self.path}: cannot read the record file ({e})") from None
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = EvalRecord.from_json(line)
            except ValueError as e:
                raise RecordError(
                    f"{self.path}: line {n}: corrupt evaluation record: {e}. Repair or delete that line "
                    f"(or move the file away) and run again; the remaining subnets are re-evaluated") from None
            self.records.append(rec)
            self._lines.append(line)

    def __len__(self) -> int:
        return len(self.records)

    def current(self, context: EvalContext) -> tuple[dict[str, EvalRecord], int]:
        """Records measured in `context`, by key (the first of duplicates wins), and how many records
        of other contexts (another checkpoint, corpus or budget) were skipped."""
        out: dict[str, EvalRecord] = {}
        stale = 0
        for rec in self.records:
            if rec.context != context:
                stale += 1
            else:
                out.setdefault(rec.key, rec)
        return out, stale

    def append(self, record: EvalRecord) -> bool:
        """Add `record` unless its key is already recorded in its context; True if it was written.
        The file is rewritten atomically, so it always holds whole records."""
        with self._locked():
            if self._stamp() != self._seen:
                self._read()  # another process appended since
            if any(r.key == record.key and r.context == record.context for r in self.records):
                return False
            line = record.to_json()
            text = "".join(x + "\n" for x in [*self._lines, line])
            if self.manifest is not None:
                self.manifest.write_text(self.path.name, text, resume=True)
            else:
                atomic_write_text(self.path, text)
            self.records.append(record)
            self._lines.append(line)
            self._seen = self._stamp()
        return True
