"""Build a latency table: measure every distinct piece of a search space once (resumable), then a
few dozen whole subnets, and fit the correction.

    table = run_latency(space, cfg.latency, run_dir, device="cpu", backend="torch")

The whole subnets that fit the correction are timed by freshly spawned processes (a window of
them each), as the fidelity report, the search and the export time subnets: in the process that
had just timed the 202 pieces of the quickstart space, whole torch subnets ran 3.5% slower against
the piece sum than in a fresh process, so a correction fitted there (a ratio of 1.035) put 94%
of the fresh held-out subnets within 10% where the plain sum put 99%.

Every window of measurements (a batch of pieces, or of whole subnets) also times one fixed
subnet, the speed reference (`reference_arch`), each window in its own fresh process. The table
scales each window's times to the reference's median speed over the build (`LatencyTable.speed_factor`):
the machine's speed moves over minutes on a shared VM (a demo's calibration subnets ran 4% fast
against its pieces, so the correction learnt a ratio of 0.962 that no longer held a minute later),
and the fidelity report times the same reference to state how far the machine has moved since.
A window in which the reference's speed moved more than the tolerance is measured again
(`steady_window`): scaling cannot fix a burst that hit only part of a window (in one stressed
build, a window's reference ran 13% slow while its subnets ran about 10% slow, and the scaled
table fell to 81% within 10%; with retakes the same stress left it at 100%).

The table lives at `<run_dir>/latency/<device>-<backend>.json` and is saved every few seconds
while it is built, so an interrupted build resumes with the keys already measured.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

from hwnas.core.isolate import run_isolated
from hwnas.core.manifest import Manifest
from hwnas.core.rundir import claim_run_dir, stage_lock
from hwnas.search_space import SearchSpace
from hwnas.supernet.memory import check_fits

from .config import LatencyConfig
from .errors import FingerprintMismatchError, LatencyError
from .fingerprint import device_fingerprint, fingerprint_diff
from .keys import space_pieces
from .protocol import Measurement
from .session import (
    WINDOW_ARCHS,
    WINDOW_GROUPS,
    Measurer,
    calibration_archs,
    interleave_groups,
    make_measurer,
    measure_archs_job,
    measure_pieces_job,
    progress_bar,
    windows,
)
from .speed import reference_arch, steady_window
from .table import LatencyTable, table_path

SAVE_EVERY_S = 5.0  # a build in progress is saved at least this often


def _compatible(old: LatencyTable, new: LatencyTable) -> list[str]:
    """Why measurements of `old` cannot be reused for `new` (empty: they can)."""
    def shown(table: LatencyTable, name: str):
        value = getattr(table, name)
        return value.key() if name == "reference" and value is not None else value

    why = [f"{name}: table {shown(old, name)}, now {shown(new, name)}"
           for name in ("device", "backend", "workload", "dims", "protocol", "reference") if shown(old, name) != shown(new, name)]
    return why + fingerprint_diff(old.fingerprint, new.fingerprint, new.backend)


def open_table(path: Path, fresh: LatencyTable, strict: bool, manifest: Manifest | None = None) -> LatencyTable:
    """The table to continue: the one at `path` if its measurements still apply, else `fresh`.
    `manifest`: the folder's manifest, which must list the table as it is."""
    if not path.exists():
        return fresh
    if manifest is not None:
        manifest.verify(path.name)  # ArtifactError if damaged or not ours: never silently overwritten
    old = LatencyTable.load(path, check_device=False)  # TableError if corrupt: never silently overwritten
    why = _compatible(old, fresh)
    if not why:
        return old
    msg = f"{path}: existing latency table was measured differently ({'; '.join(why)})"
    if strict:
        raise FingerprintMismatchError(msg + "; remove it or run without --strict to re-measure")
    stale = next(p for i in range(1, 10**6) if not (p := path.with_suffix(".stale.json" if i == 1 else f".stale-{i}.json")).exists())
    path.replace(stale)  # an older stale table is kept too
    warnings.warn(f"{msg}; re-measuring (old table kept as {stale.name})", stacklevel=3)
    return fresh


def build_table(space: SearchSpace, cfg: LatencyConfig, path: str | Path, device: str = "cpu", backend: str = "torch",
                strict: bool = False, progress: bool = True, measurer: Measurer | None = None,
                manifest: Manifest | None = None, workload: str = "prefill") -> LatencyTable:
    """Measure the pieces of `space` not yet in the table at `path` and the calibration subnets
    not yet measured, fit the correction, save. Returns the finished table. Without `measurer`
    every window is timed by a freshly spawned process, as the table is used (see `run_isolated`).
    `manifest`: the manifest of the table's folder, which lists every save. `workload`: prefill or
    decode (`session.workload`)."""
    path = Path(path)
    cfg = cfg.model_copy(update={"workloads": [workload]})  # what every measurer made for this table times
    if measurer is None:
        measurer = make_measurer(space, cfg, device, backend)
        time_pieces = partial(run_isolated, measure_pieces_job, space.config, cfg, device, backend)
        time_archs = partial(run_isolated, measure_archs_job, space.config, cfg, device, backend)
    else:
        time_pieces, time_archs = partial(measurer.measure_pieces, interleave=cfg.interleave), measurer.measure_archs
    be = measurer.backend
    fingerprint = device_fingerprint(device, be.threads)
    if backend == "torch" and device == "cpu":
        from .backends import steady_allocator

        fingerprint["malloc_pinned"] = steady_allocator()
    reference = reference_arch(space, cfg.seed) if cfg.speed_reference else None
    fresh = LatencyTable(device=device, backend=backend, fingerprint=fingerprint, protocol=measurer.protocol,
                         workload=measurer.work, dims=space.dims, statistic=cfg.statistic, reference=reference)
    table = open_table(path, fresh, strict, manifest)
    table.statistic = cfg.statistic  # every measurement holds every statistic: choosing one re-measures nothing
    pieces = space_pieces(space)
    todo = [p for p in pieces if p.key not in table.entries]
    exclude = [reference.key()] if reference is not None else []
    calib = calibration_archs(space, cfg.n_correction, cfg.seed, exclude=exclude)
    calib_todo = [a for a in calib if a.key() not in table.calibration]
    t_start = time.perf_counter()
    spent = dict(table.meta.get("seconds", {}))
    last_save = time.perf_counter()

    def checkpoint(force: bool = False) -> None:
        nonlocal last_save
        if force or time.perf_counter() - last_save >= SAVE_EVERY_S:
            table.meta = {**table.meta, "seconds": spent, "pieces_in_space": len(pieces), "complete": False}
            table.save(path, manifest)
            last_save = time.perf_counter()

    def steady(time_window: Callable[..., dict[str, Measurement]], items: list, stage: str) -> dict[str, Measurement]:
        """The window's measurements, taken while the machine held its speed (`steady_window`)."""
        measured, speed = steady_window(time_window, items, stage, reference, table.speed_level("min"), cfg)
        if speed is not None:
            table.add_speed_window(speed, list(measured))
        return measured

    t0 = time.perf_counter()
    groups = interleave_groups(todo, cfg.interleave, cfg.seed)
    piece_windows = [[p for g in part for p in g] for part in windows(groups, WINDOW_GROUPS)]
    with progress_bar(progress and bool(todo), f"latency table {device}/{backend}: pieces", len(todo)) as advance:
        for window in piece_windows:
            table.entries.update(steady(time_pieces, window, "pieces"))
            advance(len(window))
            checkpoint()
    spent["pieces"] = spent.get("pieces", 0.0) + time.perf_counter() - t0
    checkpoint(force=bool(todo))
    t0 = time.perf_counter()
    with progress_bar(progress and bool(calib_todo), f"latency table {device}/{backend}: whole subnets", len(calib_todo)) as advance:
        for window in windows(calib_todo, WINDOW_ARCHS):
            measured = steady(time_archs, window, "calibration")
            table.calibration.update({a.key(): (a, measured[a.key()]) for a in window})
            advance(len(window))
            checkpoint()
    spent["calibration"] = spent.get("calibration", 0.0) + time.perf_counter() - t0
    table.fit_corrections()
    table.meta = {**table.meta, "seconds": spent, "pieces_in_space": len(pieces), "complete": True,
                  "this_run_seconds": time.perf_counter() - t_start, "measured_this_run": len(todo) + len(calib_todo)}
    table.save(path, manifest)
    return table


def run_latency(space: SearchSpace, cfg: LatencyConfig, run_dir: str | Path, device: str = "cpu", backend: str = "torch",
                strict: bool = False, progress: bool = True, seed: int | None = None, name: str | None = None,
                workload: str = "prefill") -> LatencyTable:
    """The `hwnas latency` stage for one device and backend: build or resume the table in the
    run directory and return it. `seed`, `name`: the experiment's (the run directory must belong
    to it, `core.rundir`)."""
    check_stage(space, cfg, run_dir, [device], seed, name)
    with stage_lock(run_dir, "latency"):
        return build_in_run(space, cfg, run_dir, device, backend, strict, progress, workload)


def check_stage(space: SearchSpace, cfg: LatencyConfig, run_dir: str | Path, devices: list[str], seed: int | None,
                name: str | None) -> None:
    """Before anything is written: known devices, a model that fits in memory, a run directory of
    this experiment (recorded as its owner)."""
    for device in devices:
        if device not in ("cpu", "cuda"):
            raise LatencyError(f"device {device!r} is not one of cpu, cuda")
    check_fits(space.config, "latency", cfg.batch_size, cfg.seq_len or space.config.block_size, "latency.batch_size")
    size, taken = space.size(), 1 if cfg.speed_reference else 0  # distinct subnets: the reference, calibration, held-out
    for field, n in (("n_correction", cfg.n_correction), ("n_fidelity", cfg.n_fidelity)):
        if n and taken + n > size:
            raise LatencyError(f"latency.{field}: {n} distinct subnets asked, but the search space holds {size} and "
                               f"{taken} are taken (speed reference, calibration); at most {max(size - taken, 0)}")
        taken += n
    claim_run_dir(run_dir, space.config.model_dump(mode="json"), seed, name)


def build_in_run(space: SearchSpace, cfg: LatencyConfig, run_dir: str | Path, device: str, backend: str, strict: bool,
                 progress: bool, workload: str = "prefill") -> LatencyTable:
    """Build or resume the `workload` table of `device`/`backend` in the run directory (checked and
    locked by the caller)."""
    return build_table(space, cfg, table_path(run_dir, device, backend, workload), device, backend, strict, progress,
                       manifest=Manifest.of(run_dir, "latency"), workload=workload)


