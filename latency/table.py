"""`LatencyTable`: measured piece latencies for one device and backend, a correction for what
their sum misses, and a tamper-evident JSON file.

    predict(arch) = correction(refined table_sum(arch), features(arch))
    table_sum(arch) = call + sum over the arch's other pieces of (piece - call)

Each piece and calibration time is scaled by its window's speed factor (`speed_factor`): the
median time of the speed reference subnet over the build's windows, over its time in the window
the measurement was taken in (1 for a table built without a reference).

Every piece was timed as its own forward call, so each carries the backend's fixed per-call cost
once; `call` (an empty forward) is that cost, subtracted from every piece and counted once. The
correction is a linear model fitted on whole subnets measured end to end (`fit_correction`): it
learns what the sum misses (per-layer glue, fusion across pieces, cache effects), and where the
same subnets clearly show pieces timed off, a factor per piece (`refine`); it is stored as plain
numbers in the file (no pickle).

The file: {"format", "sha256", "payload"}; `sha256` is the hash of the canonical JSON of the
payload (sorted keys, no spaces), so a truncated or edited file fails to load with `TableError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from hwnas.core.io import ArtifactError, atomic_write_text, read_json
from hwnas.core.manifest import RUN_FOLDERS, Manifest
from hwnas.search_space import ArchConfig, ModelDims, SearchSpace

from .correction import Correction, fit_correction
from .errors import TableError
from .fingerprint import check_fingerprint, device_fingerprint, fingerprint_diff
from .keys import arch_keys
from .protocol import STATISTICS, Measurement, Protocol
from .speed import SpeedWindow

FORMAT = "hwnas-latency-table-1"
_REMAKE = f"; delete the file and run `{RUN_FOLDERS['latency']}` to measure it again"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def content_hash(payload: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


@dataclass
class LatencyTable:
    """Measured latencies (seconds) of the pieces of subnets on one device and backend."""

    device: str
    backend: str
    fingerprint: dict[str, Any]
    protocol: Protocol
    workload: dict[str, int]  # batch_size, seq_len (and context: a decoding step over a cache of that many tokens)
    dims: ModelDims
    entries: dict[str, Measurement] = field(default_factory=dict)
    calibration: dict[str, tuple[ArchConfig, Measurement]] = field(default_factory=dict)  # arch key -> arch, time
    correction: Correction | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # build facts: seconds spent, keys expected, ...
    statistic: str = "median"  # which statistic of the run times the table predicts (median, p10, min)
    reference: ArchConfig | None = None  # the speed reference subnet, timed in every window
    speed_windows: list[SpeedWindow] = field(default_factory=list)  # the reference's time in each window
    window_of: dict[str, int] = field(default_factory=dict)  # piece or calibration key -> its window
    # each other statistic -> its correction (None: the plain sum); the table's own is `correction`
    corrections: dict[str, Correction | None] = field(default_factory=dict)
    # the speed reference timed where the table is used (`anchored`; never saved): None, the build's speed
    speed_now: Measurement | None = field(default=None, compare=False)
    _factors: dict[str, list[float]] = field(default_factory=dict, init=False, repr=False, compare=False)
    # `elsewhere()`, found once (by `load`, which compares the fingerprints anyway); None: not yet
    _elsewhere: list[str] | None = field(default=None, init=False, repr=False, compare=False)

    # --- speed -----------------------------------------------------------------------------------
    def add_speed_window(self, window: SpeedWindow, keys: list[str]) -> int:
        """Record a window of measurements (of `keys`) and the reference's time in it."""
        self.speed_windows.append(window)
        self.window_of.update({k: len(self.speed_windows) - 1 for k in keys})
        self._factors.clear()
        return len(self.speed_windows) - 1

    def speed_level(self, statistic: str | None = None) -> float | None:
        """Seconds: the median of the reference's times over the build's windows (None: no reference)."""
        times = [w.reference.value(statistic or self.statistic) for w in self.speed_windows]
        return statistics.median(times) if times else None

    def speed_factor(self, key: str) -> float:
        """What a time measured in `key`'s window is multiplied by to be at the build's median speed
        (the factors of all windows are worked out once per statistic: `predict` runs in the search's loop)."""
        w = self.window_of.get(key)
        if w is None:
            return 1.0
        factors = self._factors.get(self.statistic)
        if factors is None:
            level = self.speed_level()
            factors = self._factors[self.statistic] = [level / x.reference.value(self.statistic) for x in self.speed_windows]
        return factors[w]

    def anchored(self, reference: Measurement) -> LatencyTable:
        """The table predicting at the machine's speed of the moment: every prediction scaled by
        the speed reference's time now (`reference`: the reference subnet timed as the table times
        subnets, `session.TableTiming.speed_now`) over its time at the build (`speed_level`). A
        shared VM's speed moves by a few percent over hours (torch decode tables: 1-4% between a
        build and its report), which is most of a 10% error budget."""
        if self.reference is None or not self.speed_windows:
            raise TableError(f"latency table ({self.device}, {self.backend}) was built without a speed reference "
                             "(latency.speed_reference: false): it cannot be anchored to the machine's speed")
        return replace(self, speed_now=reference)

    def speed_scale(self) -> float:
        """The machine's speed now over the build's, by the reference (1: not anchored; 1.04: 4% slower now)."""
        return 1.0 if self.speed_now is None else self.speed_now.value(self.statistic) / self.speed_level()

    def entry(self, key: str) -> float:
        """Seconds of one piece, at the build's median speed."""
        return self.entries[key].value(self.statistic) * self.speed_factor(key)

    # --- prediction ------------------------------------------------------------------------------
    def missing(self, keys) -> list[str]:
        return sorted({k for k in keys if k not in self.entries})

    def breakdown(self, arch: ArchConfig) -> list[tuple[str, float]]:
        """(key, seconds) per piece of `arch` in forward order, the call cost netted out of each
        piece and listed once first; the values sum to `table_sum(arch)`."""
        keys = arch_keys(arch)
        missing = self.missing(keys)
        if missing:
            raise TableError(
                f"latency table ({self.device}, {self.backend}) has no entry for {len(missing)} piece(s) of "
                f"{arch.key()}: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; "
                "build it for this search space with `hwnas latency`"
            )
        call = self.entry("call")
        return [(k, call if k == "call" else self.entry(k) - call) for k in keys]

    def table_sum(self, arch: ArchConfig) -> float:
        """Seconds: the plain sum of the arch's pieces (no correction)."""
        return math.fsum(t for _, t in self.breakdown(arch))

    def features(self, arch: ArchConfig, parts: list[tuple[str, float]] | None = None) -> dict[str, float]:
        """The correction's features of `arch` (`parts`: its `breakdown`, when already at hand)."""
        return {
            "table_sum": math.fsum(t for _, t in parts) if parts is not None else self.table_sum(arch),
            "depth": float(arch.depth),
            "moe_layers": float(sum(layer.ffn == "moe" for layer in arch.layers)),
            "softmax_layers": float(sum(layer.attention == "softmax" for layer in arch.layers)),
            "linear_layers": float(sum(layer.attention == "linear" for layer in arch.layers)),
        }

    @property
    def workload_kind(self) -> str:
        """prefill (a forward of batch_size x seq_len tokens) or decode (one token over a cache of `context`)."""
        return "decode" if "context" in self.workload else "prefill"

    def predict(self, arch: ArchConfig) -> float:
        """Predicted seconds of one forward of `arch` (batch and sequence of the table's workload;
        the table's `statistic` of the run times, the median by default)."""
        parts = self.breakdown(arch)
        values = self.features(arch, parts)
        scale = self.speed_scale()
        if self.correction is None:
            return values["table_sum"] * scale
        plain = values["table_sum"]
        if self.correction.piece_factors:  # the pieces refined by the whole calibration subnets
            values["table_sum"] = self.correction.refined_sum(parts)
        # never below the cheapest piece sum it was fitted on would allow: a latency is positive
        return max(self.correction.apply(values), 0.25 * plain) * scale

    def predict_ms(self, arch: ArchConfig) -> float:
        return self.predict(arch) * 1e3

    def key_counts(self, arch: ArchConfig) -> Counter:
        return Counter(arch_keys(arch))

    # --- correction ------------------------------------------------------------------------------
    def fit_correction(self) -> Correction | None:
        """Fit `correction` on the calibration subnets, or drop it (`correction.fit_correction`)."""
        self.correction, choice = fit_correction(self)
        # the record of this fit only (an earlier fit's choices would otherwise linger)
        self.meta = {k: v for k, v in self.meta.items() if not k.startswith(("correction_", "refine_"))} | choice
        return self.correction

    def fit_corrections(self) -> None:
        """Fit a correction on each statistic of the calibration subnets (`fit_correction`): the
        table's own statistic's is `correction` (its fit in `meta`), the others' `corrections`."""
        self.corrections = {stat: replace(self, statistic=stat).fit_correction() for stat in STATISTICS if stat != self.statistic}
        self.fit_correction()

    def for_statistic(self, statistic: str) -> LatencyTable:
        """The table predicting `statistic` of the run times (median, p90, p10, min), with the
        correction fitted on it (fitted now when the file has none: a table of an earlier format)."""
        if statistic not in STATISTICS:
            raise TableError(f"statistic {statistic!r} is not one of {', '.join(STATISTICS)}")
        if statistic == self.statistic:
            return self
        other = replace(self, statistic=statistic, correction=None)
        if statistic in self.corrections:
            other.correction = self.corrections[statistic]
        else:
            other.fit_correction()
        return other

    # --- file ------------------------------------------------------------------------------------
    def payload(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "backend": self.backend,
            "fingerprint": self.fingerprint,
            "protocol": self.protocol.to_dict(),
            "workload": dict(self.workload),
            "dims": asdict(self.dims),
            "entries": {k: m.to_dict() for k, m in sorted(self.entries.items())},
            "calibration": [{"arch": a.to_dict(), "measured": m.to_dict()} for a, m in self.calibration.values()],
            "correction": self.correction.to_dict() if self.correction else None,
            "corrections": {k: c.to_dict() if c else None for k, c in sorted(self.corrections.items())},
            "meta": self.meta,
            "statistic": self.statistic,
            "speed": {
                "reference": self.reference.to_dict() if self.reference else None,
                "windows": [w.to_dict() for w in self.speed_windows],
                "window_of": dict(sorted(self.window_of.items())),
            },
        }

    def save(self, path: str | Path, manifest: Manifest | None = None) -> Path:
        """Write the table atomically (a crash never leaves half a file); `manifest`: the manifest
        of its folder, which then lists it."""
        payload = self.payload()
        doc = {"format": FORMAT, "sha256": content_hash(payload), "payload": payload}
        text = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n"
        if manifest is not None:
            manifest.write_text(Path(path).name, text, resume=True)
        else:
            atomic_write_text(path, text)
        return Path(path)

    @classmethod
    def from_payload(cls, payload: dict[str, Any], source: str = "table") -> LatencyTable:
        try:
            calibration = {}
            for row in payload["calibration"]:
                arch = ArchConfig.from_dict(row["arch"])
                calibration[arch.key()] = (arch, Measurement.from_dict(row["measured"]))
            speed = payload.get("speed") or {"reference": None, "windows": [], "window_of": {}}
            if any(not 0 <= w < len(speed["windows"]) for w in speed["window_of"].values()):
                raise ValueError("speed.window_of names a window the table does not have")
            return cls(
                device=payload["device"],
                backend=payload["backend"],
                fingerprint=dict(payload["fingerprint"]),
                protocol=Protocol.from_dict(payload["protocol"]),
                workload={k: int(v) for k, v in payload["workload"].items()},
                dims=ModelDims(**payload["dims"]),
                entries={k: Measurement.from_dict(v) for k, v in payload["entries"].items()},
                calibration=calibration,
                correction=Correction.from_dict(payload["correction"]) if payload["correction"] else None,
                meta=dict(payload.get("meta", {})),
                statistic=payload.get("statistic", "median"),
                reference=ArchConfig.from_dict(speed["reference"]) if speed["reference"] else None,
                speed_windows=[SpeedWindow.from_dict(w) for w in speed["windows"]],
                window_of={k: int(w) for k, w in speed["window_of"].items()},
                corrections={k: Correction.from_dict(c) if c else None for k, c in payload.get("corrections", {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise TableError(f"{source}: malformed latency table payload ({type(e).__name__}: {e}){_REMAKE}") from None

    @classmethod
    def load(cls, path: str | Path, strict: bool = False, check_device: bool = True) -> LatencyTable:
        """Read a table file. Raises `TableError` if it is missing, truncated, altered or of
        another format; warns (`FingerprintWarning`) or, strict, raises
        (`FingerprintMismatchError`) if it was measured on a device with another fingerprint."""
        path = Path(path)
        if not path.exists():
            raise TableError(f"{path}: latency table not found; build it with `{RUN_FOLDERS['latency']}`")
        try:
            doc = read_json(path, "latency table", _REMAKE.removeprefix("; "), kind=object)
        except ArtifactError as e:  # unreadable, or not JSON (truncated)
            raise TableError(str(e)) from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise TableError(f"{path}: not an hwnas latency table (format {got!r}, expected {FORMAT!r}){_REMAKE}")
        if not isinstance(doc.get("payload"), dict) or not isinstance(doc.get("sha256"), str):
            raise TableError(f"{path}: latency table lacks its payload or content hash{_REMAKE}")
        try:
            actual = content_hash(doc["payload"])
        except ValueError:  # NaN or inf, which a table never holds
            raise TableError(f"{path}: latency table holds NaN or infinity{_REMAKE}") from None
        if actual != doc["sha256"]:
            raise TableError(f"{path}: content hash mismatch (recorded {doc['sha256'][:12]}..., actual {actual[:12]}...): "
                             f"the file was altered or damaged after it was written{_REMAKE}")
        table = cls.from_payload(doc["payload"], str(path))
        if check_device:
            table._elsewhere = check_fingerprint(table.fingerprint, table.here(), table.backend, strict, f"latency table {path}")
        return table

    def here(self) -> dict[str, Any]:
        """This machine's fingerprint, taken as the table's was (its device, threads and dtype)."""
        return device_fingerprint(self.device, self.fingerprint.get("threads", 1), self.fingerprint.get("dtype", "float32"))

    def elsewhere(self) -> list[str]:
        """How the machine the table was measured on differs from this one ('field: table X, here Y'
        for each field that decides a measurement); empty: measured on a machine like this one."""
        if self._elsewhere is None:
            self._elsewhere = fingerprint_diff(self.fingerprint, self.here(), self.backend)
        return self._elsewhere


WORKLOADS = ("prefill", "decode")


def table_name(device: str, backend: str, workload: str = "prefill") -> str:
    """'cpu-torch' (prefill) or 'cpu-torch-decode': a table's file stem."""
    if workload not in WORKLOADS:
        raise TableError(f"workload {workload!r} is not one of {', '.join(WORKLOADS)}")
    return f"{device}-{backend}" + ("" if workload == "prefill" else f"-{workload}")


def table_path(run_dir: str | Path, device: str, backend: str, workload: str = "prefill") -> Path:
    return Path(run_dir) / "latency" / f"{table_name(device, backend, workload)}.json"


def load_table(run_dir: str | Path, device: str = "cpu", backend: str = "torch", strict: bool = False,
               space: SearchSpace | None = None, workload: str = "prefill") -> LatencyTable:
    """The finished table of a run directory (raises `TableError` if absent, unfinished or, given
    `space`, measured for another one's model dims; `ArtifactError` if it is not the file its
    build wrote)."""
    path = table_path(run_dir, device, backend, workload)
    if not path.exists():
        raise TableError(f"{path}: latency table not found; build it with `hwnas latency CONFIG`")
    Manifest.of(run_dir, "latency").verify(path.name)
    table = LatencyTable.load(path, strict=strict)
    if not table.meta.get("complete"):
        raise TableError(f"{path}: the table build was interrupted; "
                         "run `hwnas latency CONFIG` again to finish it")
    if space is not None and table.dims != space.dims:
        raise TableError(f"{path}: measured for model dims {table.dims}, the search space has {space.dims}; "
                         f"delete it and run `hwnas latency CONFIG`")
    return table
