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
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import numpy as np
import torch

from hwnas.core.isolate import run_isolated
from hwnas.core.manifest import Manifest
from hwnas.core.rundir import claim_run_dir, stage_lock
from hwnas.search_space import ArchConfig, SearchSpace
from hwnas.search_space.sampling import distinct
from hwnas.supernet.memory import check_fits

from .backends import Backend, make_backend
from .config import LatencyConfig
from .errors import FingerprintMismatchError, LatencyError, TableError
from .fingerprint import device_fingerprint, fingerprint_diff, usable_cores
from .keys import Piece, space_pieces
from .protocol import Measurement, Protocol
from .table import LatencyTable, SpeedWindow

SAVE_EVERY_S = 5.0  # a build in progress is saved at least this often
# Windows: pieces (or whole subnets) measured together, each pass over the whole window in a fresh
# order, then saved. A wide window spreads a measurement's passes over more time, so a burst of
# load from a neighbour (on the shared 2-vCPU VM, one held-out window of 10 subnets ran 10% slow
# in all three of its passes, which spanned 5 s) disturbs one pass, and the least disturbed runs
# survive; a narrow one loses less work to an interruption.
WINDOW_GROUPS = 8  # piece groups per window at most (the quickstart space's 202 pieces: two windows)
CALIBRATION_STRATA, CALIBRATION_POOL = 6, 2000  # size bins and uniform pool of the stratified calibration half
WINDOW_ARCHS = 40  # whole subnets per window at most (windows of nearly equal sizes: `windows`)
REFERENCE = "@reference"  # the speed reference's key among a window's measurements
REFERENCE_POOL = 201  # uniform draws the speed reference is the FLOPs median of


def windows(items: list, most: int) -> list[list]:
    """`items` in order, cut into as few windows of at most `most` as fit, of nearly equal sizes."""
    if not items:
        return []
    n = -(-len(items) // most)
    size, extra = divmod(len(items), n)
    bounds = np.cumsum([0] + [size + (i < extra) for i in range(n)])
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def disturbance(reference: Measurement, level: float | None) -> float:
    """How far the machine's speed moved in a window, relative: the spread of the reference's
    per-pass minima, or the distance of its minimum from `level` (the minimum it ran in the windows
    before; None: none before), whichever is larger. Every measurement's minimum comes from its
    least disturbed pass, so a disturbance that can spoil one must last over all of its passes,
    and then covers a whole pass of the reference too."""
    runs = reference.pass_min
    spread = max(runs) / min(runs) - 1 if runs else 0.0
    return max(spread, abs(reference.value("min") / level - 1) if level else 0.0)


def steady_window(time_window: Callable[..., dict[str, Measurement]], items: list, stage: str,
                  reference: ArchConfig | None, level: float | None, cfg: LatencyConfig,
                  ) -> tuple[dict[str, Measurement], SpeedWindow | None]:
    """Time a window of `items` with the speed reference (`time_window(items, reference=...)`),
    again while the machine's speed moved more than `cfg.speed_tolerance` in it (`disturbance`),
    at most `cfg.speed_retakes` more times, waiting `cfg.speed_backoff_s` x the retake's number
    first (a busy neighbour stays busy for a while): the least disturbed attempt and its `SpeedWindow`."""
    if reference is None:
        return time_window(items, reference=None), None
    best, seen = None, []
    for attempt in range(cfg.speed_retakes + 1):
        time.sleep(cfg.speed_backoff_s * attempt)
        measured = time_window(items, reference=reference)
        ref = measured.pop(REFERENCE)
        seen.append(disturbance(ref, level))
        if best is None or seen[-1] < best[2]:
            best = (measured, ref, seen[-1])
        if seen[-1] <= cfg.speed_tolerance:
            break
    return best[0], SpeedWindow(stage, best[1], tuple(seen))


def table_path(run_dir: str | Path, device: str, backend: str) -> Path:
    return Path(run_dir) / "latency" / f"{device}-{backend}.json"


def workload(space: SearchSpace, cfg: LatencyConfig) -> dict[str, int]:
    seq_len = cfg.seq_len or space.config.block_size
    if seq_len > space.config.block_size:
        raise LatencyError(f"latency.seq_len: {seq_len} exceeds the search space's block_size {space.config.block_size}")
    return {"batch_size": cfg.batch_size, "seq_len": seq_len}


def calibration_archs(space: SearchSpace, n: int, seed: int, exclude: Iterable[str] = ()) -> list[ArchConfig]:
    """`n` distinct archs from the seed stream (seed, 1), none in `exclude`: half stratified by
    size (`search_space.sampling.stratified`), half uniform. The correction learns what the piece
    sum misses, which depends on size (fixed per-call costs weigh most in the smallest subnets, where
    a search's fastest front members sit and where uniform draws rarely land)."""
    from hwnas.search_space.sampling import stratified

    rng, taken = np.random.default_rng([seed, 1]), set(exclude)
    picks = stratified(space, n // 2, rng, taken, strata=CALIBRATION_STRATA, pool_size=CALIBRATION_POOL) if n >= 2 else []
    return picks + distinct(space, n - len(picks), rng, taken, tries=100 * (n - len(picks)) + 100)


def reference_arch(space: SearchSpace, seed: int) -> ArchConfig:
    """The speed reference: the subnet of median FLOPs among `REFERENCE_POOL` uniform draws of the
    seed stream (seed, 4), a subnet of middling size timed in every measurement window."""
    pool = distinct(space, REFERENCE_POOL, np.random.default_rng([seed, 4]), tries=100 * REFERENCE_POOL + 100)
    pool.sort(key=lambda a: (space.flops(a), a.key()))
    return pool[len(pool) // 2]


def heldout_archs(space: SearchSpace, n: int, seed: int, exclude: Iterable[str] = ()) -> list[ArchConfig]:
    """`n` distinct random archs from another seed stream (seed, 2), none in `exclude`."""
    return distinct(space, n, np.random.default_rng([seed, 2]), set(exclude), tries=100 * n + 100)


class Measurer:
    """Times pieces and whole subnets of one space with one backend, by one protocol."""

    def __init__(self, space: SearchSpace, backend: Backend, protocol: Protocol, work: dict[str, int], seed: int = 0):
        self.space, self.backend, self.protocol, self.work, self.seed = space, backend, protocol, work, seed
        self._supernet = None

    def measure_pieces(self, pieces: list[Piece], interleave: int = 16,
                       reference: ArchConfig | None = None) -> dict[str, Measurement]:
        """Time `pieces` in groups of one width (`interleave_groups`), each piece interleaved
        with its group, every group `protocol.passes` times over; with `reference`, that whole
        subnet too, as one more group (key `REFERENCE`)."""
        dims, (B, T) = self.space.dims, (self.work["batch_size"], self.work["seq_len"])
        groups = [{p.key: (p.build(dims), p.inputs(B, T, dims)) for p in g}
                  for g in interleave_groups(pieces, interleave, self.seed)]
        if reference is not None:
            groups.append({REFERENCE: (self.subnet(reference), (self.tokens(),))})
        return self.backend.measure_groups(groups, self.protocol, seed=self.seed)

    def subnet(self, arch: ArchConfig):
        """The extracted subnet of `arch` from a randomly initialized supernet (seeded)."""
        from hwnas.supernet import Supernet, extract_subnet

        if self._supernet is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                self._supernet = Supernet(self.space.config).eval()
        return extract_subnet(self._supernet, arch).eval()

    def tokens(self) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.seed)
        return torch.randint(0, self.space.dims.vocab_size, (self.work["batch_size"], self.work["seq_len"]), generator=gen)

    def measure_archs(self, archs: list[ArchConfig], reference: ArchConfig | None = None) -> dict[str, Measurement]:
        """Time whole subnets end to end, each in a tight loop, all `protocol.passes` times over;
        with `reference`, that subnet too (key `REFERENCE`)."""
        named = {a.key(): a for a in archs} | ({REFERENCE: reference} if reference is not None else {})
        modules = {k: (self.subnet(a), (self.tokens(),)) for k, a in named.items()}
        return self.backend.measure_each(modules, self.protocol, seed=self.seed)

    def measure_arch(self, arch: ArchConfig) -> Measurement:
        return self.measure_archs([arch])[arch.key()]


def make_measurer(space: SearchSpace, cfg: LatencyConfig, device: str, backend: str,
                  like: LatencyTable | None = None) -> Measurer:
    """A measurer by the config; `like`: with the thread count, protocol and workload of that
    table instead (what the fidelity report needs to compare like with like)."""
    threads = like.fingerprint["threads"] if like else cfg.threads or usable_cores()
    be = make_backend(backend, device, threads, **({"exporter": cfg.onnx_exporter, "int4_block_size": cfg.int4_block_size}
                                                     if backend == "onnxruntime" else {}))
    if like:
        return Measurer(space, be, like.protocol, dict(like.workload), cfg.seed)
    protocol = Protocol.from_config(cfg, clock=cfg.resolved_clock(device, threads))
    return Measurer(space, be, protocol, workload(space, cfg), cfg.seed)


def _measure_archs(space_config, cfg: LatencyConfig, device: str, backend: str, archs: list[ArchConfig],
                   like: LatencyTable | None = None, reference: ArchConfig | None = None) -> dict[str, Measurement]:
    """Whole subnets timed by a measurer made here (`make_measurer`): what a fresh process runs."""
    return make_measurer(SearchSpace(space_config), cfg, device, backend, like=like).measure_archs(archs, reference)


def _measure_pieces(space_config, cfg: LatencyConfig, device: str, backend: str, pieces: list[Piece],
                    reference: ArchConfig | None = None) -> dict[str, Measurement]:
    """A window of pieces timed by a measurer made here: what a fresh process runs."""
    return make_measurer(SearchSpace(space_config), cfg, device, backend).measure_pieces(pieces, cfg.interleave, reference)


def _measure_table_statistic(space_config, cfg: LatencyConfig, run_dir: str, device: str, backend: str,
                             archs: list[ArchConfig]) -> dict[str, float]:
    table = load_table(run_dir, device, backend)
    return {k: m.value(table.statistic) for k, m in _measure_archs(space_config, cfg, device, backend, archs, table).items()}


def measure_in_fresh_process(space_config, cfg: LatencyConfig, run_dir: str | Path, device: str, backend: str,
                             archs: list[ArchConfig]) -> dict[str, float]:
    """Seconds (the table's statistic) of each arch, timed end to end with the protocol, threads and
    workload of the run's table for `device`/`backend`, by a freshly spawned process (a process
    that has trained or evaluated models times the same subnet slower; see `core.isolate`)."""
    return run_isolated(_measure_table_statistic, space_config, cfg, str(run_dir), device, backend, list(archs))


@contextmanager
def progress_bar(enabled: bool, description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar with count, rate and ETA, redrawn only between measurements; yields
    `advance(n)`."""
    if not enabled or total == 0:
        yield lambda n=1: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task) -> Text:
            return Text(f"{task.speed:.1f}/s" if task.speed else "?/s", style="progress.data.speed")

    # no refresh thread: it would take the GIL (and a core) in the middle of timed runs
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(),
                  TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), auto_refresh=False,
                  speed_estimate_period=600) as bar:  # the rate over windows that each take a minute or so
        task = bar.add_task(description, total=total)
        bar.refresh()

        def advance(n: int = 1) -> None:
            bar.advance(task, n)
            bar.refresh()

        yield advance


def interleave_groups(pieces: list[Piece], size: int, seed: int) -> list[list[Piece]]:
    """Groups of at most `size` pieces to time together: pieces of one embedding width (the width
    of every piece of a subnet is its embedding width, so a piece's neighbours in its group are the
    kind it has inside a model: same width, other kinds), in a seeded random mix of kinds."""
    rng = np.random.default_rng([seed, 3])
    widths = sorted({p.d for p in pieces if p.d is not None})
    groups = []
    for d in widths or [None]:
        same = [p for p in pieces if p.d == d or (p.d is None and d == (widths[0] if widths else None))]
        if not same:
            continue
        order = rng.permutation(len(same))
        n_groups = -(-len(same) // size)  # as few groups as fit, of nearly equal sizes
        groups += [[same[i] for i in part] for part in np.array_split(order, n_groups) if len(part)]
    return [groups[i] for i in rng.permutation(len(groups))]  # widths in a mixed order: drift is not width-bound


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
                manifest: Manifest | None = None) -> LatencyTable:
    """Measure the pieces of `space` not yet in the table at `path` and the calibration subnets
    not yet measured, fit the correction, save. Returns the finished table. Without `measurer`
    every window is timed by a freshly spawned process, as the table is used (see `run_isolated`).
    `manifest`: the manifest of the table's folder, which lists every save."""
    path = Path(path)
    if measurer is None:
        measurer = make_measurer(space, cfg, device, backend)
        time_pieces = partial(run_isolated, _measure_pieces, space.config, cfg, device, backend)
        time_archs = partial(run_isolated, _measure_archs, space.config, cfg, device, backend)
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
                strict: bool = False, progress: bool = True, seed: int | None = None, name: str | None = None) -> LatencyTable:
    """The `hwnas latency` stage for one device and backend: build or resume the table in the
    run directory and return it. `seed`, `name`: the experiment's (the run directory must belong
    to it, `core.rundir`)."""
    check_stage(space, cfg, run_dir, [device], seed, name)
    with stage_lock(run_dir, "latency"):
        return build_in_run(space, cfg, run_dir, device, backend, strict, progress)


def check_stage(space: SearchSpace, cfg: LatencyConfig, run_dir: str | Path, devices: list[str], seed: int | None,
                name: str | None) -> None:
    """Before anything is written: known devices, a model that fits in memory, a run directory of
    this experiment (recorded as its owner)."""
    for device in devices:
        if device not in ("cpu", "cuda"):
            raise LatencyError(f"device {device!r} is not one of cpu, cuda")
    check_fits(space.config, "latency", cfg.batch_size, cfg.seq_len or space.config.block_size, "latency.batch_size")
    claim_run_dir(run_dir, space.config.model_dump(mode="json"), seed, name)


def build_in_run(space: SearchSpace, cfg: LatencyConfig, run_dir: str | Path, device: str, backend: str, strict: bool,
                 progress: bool) -> LatencyTable:
    """Build or resume the table of `device`/`backend` in the run directory (checked and locked by the caller)."""
    return build_table(space, cfg, table_path(run_dir, device, backend), device, backend, strict, progress,
                       manifest=Manifest.of(run_dir, "latency"))


def load_table(run_dir: str | Path, device: str = "cpu", backend: str = "torch", strict: bool = False,
               space: SearchSpace | None = None) -> LatencyTable:
    """The finished table of a run directory (raises `TableError` if absent, unfinished or, given
    `space`, measured for another one's model dims; `ArtifactError` if it is not the file its
    build wrote)."""
    path = table_path(run_dir, device, backend)
    if not path.exists():
        raise TableError(f"{path}: latency table not found; build it with `hwnas latency CONFIG`")
    Manifest.of(run_dir, "latency").verify(path.name)
    table = LatencyTable.load(path, strict=strict)
    if not table.meta.get("complete"):
        raise TableError(f"{table_path(run_dir, device, backend)}: the table build was interrupted; "
                         "run `hwnas latency CONFIG` again to finish it")
    if space is not None and table.dims != space.dims:
        raise TableError(f"{path}: measured for model dims {table.dims}, the search space has {space.dims}; "
                         f"delete it and run `hwnas latency CONFIG`")
    return table
