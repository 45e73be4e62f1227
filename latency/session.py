"""Measurement sessions: which subnets a table is calibrated and checked on, and a `Measurer` that
times pieces and whole subnets with one backend and protocol, in this process or a fresh one
(`measure_in_fresh_process`, as the search and the export time subnets), in windows."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from hwnas.core.isolate import run_isolated
from hwnas.search_space import ArchConfig, SearchSpace, SearchSpaceConfig
from hwnas.search_space.sampling import distinct

from .backends import Backend, make_backend
from .config import LatencyConfig
from .errors import LatencyError
from .fingerprint import usable_cores
from .keys import Piece
from .protocol import Measurement, Protocol, pooled, time_runs
from .speed import REFERENCE
from .table import LatencyTable, load_table, table_path

# Windows: pieces (or whole subnets) measured together, each pass over the whole window in a fresh
# order, then saved. A wide window spreads a measurement's passes over more time, so a burst of
# load from a neighbour (on the shared 2-vCPU VM, one held-out window of 10 subnets ran 10% slow
# in all three of its passes, which spanned 5 s) disturbs one pass, and the least disturbed runs
# survive; a narrow one loses less work to an interruption.
WINDOW_GROUPS = 8  # piece groups per window at most (the quickstart space's 202 pieces: two windows)
CALIBRATION_STRATA, CALIBRATION_POOL = 6, 2000  # size bins and uniform pool of the stratified calibration half
# the speed reference where a table is used (`TableTiming.speed_now`): seconds run untimed first, then
# attempts (each the table's passes) this many seconds apart, the median attempt kept
SPEED_NOW_WARM_S, SPEED_NOW_ATTEMPTS, SPEED_NOW_GAP_S = 3.0, 5, 1.0
WINDOW_ARCHS = 40  # whole subnets per window at most (windows of nearly equal sizes: `windows`)


def windows(items: list, most: int) -> list[list]:
    """`items` in order, cut into as few windows of at most `most` as fit, of nearly equal sizes."""
    if not items:
        return []
    n = -(-len(items) // most)
    size, extra = divmod(len(items), n)
    bounds = np.cumsum([0] + [size + (i < extra) for i in range(n)])
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def workload(space: SearchSpace, cfg: LatencyConfig, kind: str = "prefill") -> dict[str, int]:
    """What a table of `kind` times: a prefill of batch_size x seq_len tokens, or a decoding step (one
    new token per sequence, seq_len 1, over a cache of `context` tokens)."""
    block = space.config.block_size
    if kind == "decode":
        context = cfg.decode_context or block // 2
        if context >= block and space.config.positions == "learned":
            raise LatencyError(f"latency.decode_context: {context} leaves no room for a new token in the search space's "
                               f"block_size {block} with learned positions (at most {block - 1})")
        return {"batch_size": cfg.batch_size, "seq_len": 1, "context": context}
    seq_len = cfg.seq_len or block
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


def heldout_archs(space: SearchSpace, n: int, seed: int, exclude: Iterable[str] = ()) -> list[ArchConfig]:
    """`n` distinct random archs from another seed stream (seed, 2), none in `exclude`."""
    return distinct(space, n, np.random.default_rng([seed, 2]), set(exclude), tries=100 * n + 100)


def decode_step(model: torch.nn.Module, context: int, batch: int, position_input: bool,
                seed: int = 0) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """`model` (a subnet) as one decoding step over random caches of `context` tokens, and its inputs
    (`supernet.decode.DecodeStep`): with `position_input`, the position a tensor input, as the
    exported decoding graph takes it (traced with dynamic dims); else fixed at `context`, as eager
    generation passes it."""
    from hwnas.supernet.decode import DecodeStep

    gen = torch.Generator().manual_seed(seed)
    if position_input:
        step = DecodeStep(model).eval()
        return step, step.inputs(batch, gen, context)
    step = DecodeStep(model, context).eval()
    return step, step.inputs(batch, gen)


class Measurer:
    """Times pieces and whole subnets of one space with one backend, by one protocol."""

    def __init__(self, space: SearchSpace, backend: Backend, protocol: Protocol, work: dict[str, int], seed: int = 0):
        self.space, self.backend, self.protocol, self.work, self.seed = space, backend, protocol, work, seed
        self._supernet = None

    @property
    def context(self) -> int | None:
        """The decoding workload's cache length (None: a prefill workload)."""
        return self.work.get("context")

    def measure_pieces(self, pieces: list[Piece], interleave: int = 16,
                       reference: ArchConfig | None = None) -> dict[str, Measurement]:
        """Time `pieces` in groups of one width (`interleave_groups`), each piece interleaved
        with its group, every group `protocol.passes` times over; with `reference`, that whole
        subnet too, as one more group (key `REFERENCE`)."""
        dims, (B, T), c = self.space.dims, (self.work["batch_size"], self.work["seq_len"]), self.context
        groups = [{p.key: (p.build(dims, c), p.inputs(B, T, dims, c)) for p in g}
                  for g in interleave_groups(pieces, interleave, self.seed)]
        if reference is not None:
            groups.append({REFERENCE: self.whole(reference)})
        return self.backend.measure_groups(groups, self.protocol, seed=self.seed)

    def whole(self, arch: ArchConfig) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
        """A whole subnet as the workload runs it and its inputs: a forward of the tokens, or one
        decoding step over caches of `context` tokens as the backend deploys it (`decode_step`)."""
        if self.context is None:
            return self.subnet(arch), (self.tokens(),)
        return decode_step(self.subnet(arch), self.context, self.work["batch_size"], self.backend.position_input, self.seed)

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
        modules = {k: self.whole(a) for k, a in named.items()}
        return self.backend.measure_each(modules, self.protocol, seed=self.seed)

    def measure_arch(self, arch: ArchConfig) -> Measurement:
        return self.measure_archs([arch])[arch.key()]


def make_measurer(space: SearchSpace, cfg: LatencyConfig, device: str, backend: str,
                  like: LatencyTable | None = None) -> Measurer:
    """A measurer by the config; `like`: with the thread count, protocol and workload of that
    table instead (what the fidelity report needs to compare like with like)."""
    threads = like.fingerprint["threads"] if like else cfg.threads or usable_cores()
    be = make_backend(backend, device, threads, exporter=cfg.onnx_exporter, int4_block_size=cfg.int4_block_size)
    if like:
        return Measurer(space, be, like.protocol, dict(like.workload), cfg.seed)
    protocol = Protocol.from_config(cfg, clock=cfg.resolved_clock(device, threads))
    return Measurer(space, be, protocol, workload(space, cfg, cfg.workloads[0]), cfg.seed)


def measure_archs_job(space_config, cfg: LatencyConfig, device: str, backend: str, archs: list[ArchConfig],
                   like: LatencyTable | None = None, reference: ArchConfig | None = None) -> dict[str, Measurement]:
    """Whole subnets timed by a measurer made here (`make_measurer`): what a fresh process runs."""
    return make_measurer(SearchSpace(space_config), cfg, device, backend, like=like).measure_archs(archs, reference)


def measure_pieces_job(space_config, cfg: LatencyConfig, device: str, backend: str, pieces: list[Piece],
                    reference: ArchConfig | None = None) -> dict[str, Measurement]:
    """A window of pieces timed by a measurer made here: what a fresh process runs."""
    return make_measurer(SearchSpace(space_config), cfg, device, backend).measure_pieces(pieces, cfg.interleave, reference)


def table_statistic_job(space_config, cfg: LatencyConfig, run_dir: str, device: str, backend: str,
                        archs: list[ArchConfig], workload: str = "prefill", statistic: str | None = None) -> dict[str, float]:
    table = load_table(run_dir, device, backend, workload=workload)
    return {k: m.value(statistic or table.statistic)
            for k, m in measure_archs_job(space_config, cfg, device, backend, archs, table).items()}


def measure_in_fresh_process(space_config, cfg: LatencyConfig, run_dir: str | Path, device: str, backend: str,
                             archs: list[ArchConfig], workload: str = "prefill", statistic: str | None = None) -> dict[str, float]:
    """Seconds (`statistic` of the run times, default the table's own) of each arch, timed end to end
    with the protocol, threads and workload of the run's `workload` table for `device`/`backend`, by a
    freshly spawned process (a process that has trained or evaluated models times the same subnet
    slower; see `core.isolate`)."""
    return run_isolated(table_statistic_job, space_config, cfg, str(run_dir), device, backend, list(archs), workload, statistic)


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


def add_ratios(rows: list[dict]) -> list[dict]:
    """Each row's measured time over the table's prediction (`measured_over_predicted`, None without
    one) and over its anchored prediction where it has one (`measured_over_predicted_now`)."""
    for row in rows:
        row["measured_over_predicted"] = row["measured_ms"] / row["predicted_ms"] if row["predicted_ms"] else None
        if row.get("predicted_now_ms"):
            row["measured_over_predicted_now"] = row["measured_ms"] / row["predicted_now_ms"]
    return rows


class TableTiming:
    """How the run's table for `device`/`backend` times a model: its protocol, workload, thread
    count and statistic (the config's defaults where the run has no usable table). The one call the
    export (and anyone re-timing a model against a table) uses, so that what they measure is
    comparable with what the table predicts. `notes` say why a table was not used."""

    def __init__(self, run_dir: str | Path, device: str, backend: str, block_size: int, threads: int | None = None,
                 max_seconds: float | None = None, defaults: LatencyConfig | None = None, workload: str = "prefill"):
        import warnings

        defaults = defaults or LatencyConfig()
        self.device, self.backend, self.table, self.notes = device, backend, None, []
        self.now: LatencyTable | None = None  # the table anchored to the machine's speed (`speed_now`)
        self.run_dir = Path(run_dir)
        self.path = table_path(run_dir, device, backend, workload)
        if self.path.exists():
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    self.table = load_table(run_dir, device, backend, workload=workload)
                self.notes += [f"{backend} table: {w.message}" for w in caught]
            except LatencyError as e:
                self.notes.append(f"{backend} table unusable: {e}")
        t = self.table
        self.elsewhere = t.elsewhere() if t else []  # how the table's machine differs from this one
        protocol = t.protocol if t else Protocol.from_config(defaults)
        self.protocol = replace(protocol, max_seconds=min(protocol.max_seconds, max_seconds)) if max_seconds else protocol
        self.workload = dict(t.workload) if t else {"batch_size": defaults.batch_size, "seq_len": defaults.seq_len or block_size}
        self.threads = threads or (t.fingerprint.get("threads") if t else None) or usable_cores()
        self.statistic = t.statistic if t else defaults.statistic  # compare like with like: what the table predicts

    def predict_ms(self, arch: ArchConfig, statistic: str | None = None, now: bool = False) -> float | None:
        """The table's prediction for `arch` (of `statistic`, default the table's own); None without a
        table. `now`: anchored to the machine's speed measured by `speed_now` (None before it, or
        without a speed reference)."""
        table = self.now if now else self.table
        if table is None:
            return None
        return table.for_statistic(statistic or table.statistic).predict_ms(arch)

    def foreign_note(self, arch: ArchConfig) -> str | None:
        """For a table measured on another machine: a note with its prediction for `arch` there, which
        a timing here does not compare with (None: no table, or one measured on a machine like this)."""
        if self.table is None or not self.elsewhere:
            return None
        return (f"{self.backend} table: measured on another machine ({'; '.join(self.elsewhere)}); it predicts "
                f"{self.predict_ms(arch):.3f} ms there, not compared with the timing here")

    def speed_now(self, space_config=None, seed: int = 0) -> float | None:
        """Time the table's speed reference subnet here, as the table times subnets (its backend,
        protocol, workload and threads; weights drawn with `seed`: fp32 and integer kernels take
        as long whatever the values), and anchor the table to it (`LatencyTable.anchored`;
        `predict_ms(..., now=True)` then predicts at this speed): the machine's speed now over the
        build's (1.04: 4% slower now). None without a table or a speed reference. `space_config`:
        the search space the reference is a subnet of (default: the one the run's run.json records)."""
        from hwnas.core.rundir import run_search_space

        t = self.table
        space_config = space_config if space_config is not None else run_search_space(self.run_dir)
        if t is None or t.reference is None or not t.speed_windows or space_config is None:
            return None
        if isinstance(space_config, dict):
            space_config = SearchSpaceConfig.model_validate(space_config)
        backend = make_backend(self.backend, self.device, self.threads)
        measurer = Measurer(SearchSpace(space_config), backend, self.protocol, dict(self.workload), seed)
        with torch.no_grad():
            run = backend.prepare(*measurer.whole(t.reference))
        timer = backend.timer(self.protocol.clock)
        attempts = []
        with backend.session():
            # a process's first seconds of low-bit kernels ran up to 2x slow here (a fresh process's
            # first timing of the reference: 1.35-1.6x its build time, then 0.95-1.01x); the build
            # never times the reference first
            end = time.perf_counter() + SPEED_NOW_WARM_S
            while time.perf_counter() < end:
                run()
            for i in range(SPEED_NOW_ATTEMPTS):  # spread over seconds: the speed of one moment moves by a few %
                time.sleep(SPEED_NOW_GAP_S if i else 0.0)
                attempts.append(pooled([time_runs(run, self.protocol, timer) for _ in range(self.protocol.passes)]))
        attempts.sort(key=lambda m: m.value(t.statistic))
        self.now = t.anchored(attempts[len(attempts) // 2])  # the median attempt
        return self.now.speed_scale()

    def anchored_prediction(self, arch: ArchConfig) -> dict[str, float]:
        """The prediction for `arch` anchored to the machine's speed now (`speed_now`, timed once):
        {"speed_now": now over the build, "predicted_now_ms"}; empty without a speed reference."""
        speed = self.now.speed_scale() if self.now is not None else self.speed_now()
        return {} if speed is None else {"speed_now": speed, "predicted_now_ms": self.predict_ms(arch, now=True)}

    def time_module(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Measurement:
        """`module(*inputs)` timed as the backend's table times modules (torch: its deployment form)."""
        return make_backend(self.backend, self.device, self.threads).measure(module, inputs, self.protocol)

    def time_call(self, fn: Callable[[], object]) -> Measurement:
        """`fn()` (e.g. an ONNX Runtime session's run) timed by the table's protocol and thread count."""
        from .protocol import fixed_threads, measure

        with fixed_threads(self.threads):
            return measure(fn, self.protocol)
