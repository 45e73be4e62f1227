"""The measurement protocol: warm up, then time single runs until the median is stable (or a cap).

`measure` times one function in a tight loop: the steady state of running one model again and
again, which is how a whole subnet is measured. `measure_many` times several functions in
interleaved rounds (a fresh random order each round), which is how table pieces are measured:
inside a model a piece never runs right after itself, but after other pieces that took the
caches, and a piece timed in a tight loop is much faster than it is in context (on the 2-core
Xeon this was built on, tight-loop piece times summed to 30-45% less than the whole subnet took;
an embedding lookup ran 3x faster alone than between other pieces). The build times each piece
among pieces of its own width, the company it keeps inside a model (`build.interleave_groups`).
Interleaving also spreads drift and background load over all pieces alike.

Passes: the build and the fidelity report time a batch of modules (a window of table pieces, or of
whole subnets) `passes` times over, in a fresh order each pass, and pool the runs: the load of a
shared machine changes over seconds, and a single pass samples only one moment of it (repeating
the same subnet in two passes 10 s apart differed by 4% (sd) under a load average of 4.5).

Clocks: on CPU a run is timed with `time.perf_counter` (`clock: wall`) or, when the work runs on
one thread, with that thread's CPU time (`clock: thread`, `time.thread_time`): on an idle core the
two agree, but on a shared machine the CPU clock does not count the time the OS gave to other
processes, so a busy neighbour does not inflate the table (on the 2-core build machine, under a
load average of 6.6: wall median 7.3 ms, thread CPU median 3.4 ms for a subnet that takes 3.4 ms on
a quiet machine). On CUDA a run is timed with a pair of CUDA events around it and a
synchronization after it, so the time is the GPU's, not the launch's. The thread count is fixed by
the caller (`fixed_threads`).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Protocol:
    warmup: int = 10
    min_repeats: int = 20
    max_repeats: int = 300
    max_seconds: float = 2.0
    check_every: int = 10
    tolerance: float = 0.005
    clock: str = "wall"  # wall | thread (CPU time of the calling thread; single-threaded work only)
    passes: int = 1  # measurements of a batch of modules repeated this often, spread over time, pooled

    @classmethod
    def from_config(cls, cfg, clock: str = "wall") -> Protocol:
        return cls(**{f.name: getattr(cfg, f.name) for f in fields(cls) if f.name != "clock" and hasattr(cfg, f.name)},
                   clock=clock)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Protocol:
        return cls(**data)


STATISTICS = ("median", "p90", "p10", "min")  # what a table can predict of the run times (and a latency objective name)


@dataclass(frozen=True)
class Measurement:
    """Seconds per run over `n` timed runs: median and 90th percentile (reported), 10th percentile
    and minimum (the least disturbed runs); `stable` is False when the protocol stopped at its cap
    before the median settled; `pass_min`: the minimum of each pass, when the runs came in passes
    spread over time (how the machine's speed moved while it was measured)."""

    median: float
    p90: float
    n: int
    stable: bool
    p10: float | None = None
    min: float | None = None
    pass_min: tuple[float, ...] = ()

    def value(self, statistic: str = "median") -> float:
        """The run time by `statistic` (median, p90, p10 or min; a measurement without p10 or min:
        the median)."""
        if statistic not in STATISTICS:
            raise ValueError(f"statistic {statistic!r} is not one of {', '.join(STATISTICS)}")
        v = getattr(self, statistic)
        return self.median if v is None else v

    def to_dict(self) -> dict[str, Any]:  # seconds as exact floats: an exact round trip
        out = {"median_s": self.median, "p90_s": self.p90, "n": self.n, "stable": self.stable}
        out |= {"pass_min_s": list(self.pass_min)} if self.pass_min else {}
        return out | ({"p10_s": self.p10, "min_s": self.min} if self.p10 is not None else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        """The measurement `to_dict` wrote; ValueError unless every time is a positive finite number."""
        opt = {k: float(data[f"{k}_s"]) for k in ("p10", "min") if data.get(f"{k}_s") is not None}
        m = cls(median=float(data["median_s"]), p90=float(data["p90_s"]), n=int(data["n"]), stable=bool(data["stable"]),
                pass_min=tuple(float(t) for t in data.get("pass_min_s", ())), **opt)
        times = [m.median, m.p90, *opt.values(), *m.pass_min]
        if not all(math.isfinite(t) and t > 0 for t in times) or m.n < 1:
            raise ValueError(f"a measurement holds a time that is not a positive number, or no runs ({data!r:.120})")
        return m

    @classmethod
    def of(cls, times: list[float], stable: bool, pass_min: tuple[float, ...] = ()) -> Measurement:
        p10, p90 = np.percentile(times, [10, 90])
        return cls(float(statistics.median(times)), float(p90), len(times), stable, float(p10), float(min(times)),
                   tuple(pass_min))


Timer = Callable[[Callable[[], object]], float]


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "thread": time.thread_time}


def cpu_timer(clock: Callable[[], float] = time.perf_counter) -> Timer:
    def time_once(fn: Callable[[], object]) -> float:
        t0 = clock()
        fn()
        return clock() - t0

    return time_once


def cuda_timer() -> Timer:
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def time_once(fn: Callable[[], object]) -> float:
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e-3

    return time_once


Samples = tuple[list[float], bool]  # the timed runs (seconds) and whether the median settled


def time_runs(fn: Callable[[], object], protocol: Protocol, timer: Timer | None = None,
              clock: Callable[[], float] = time.perf_counter) -> Samples:
    """One pass of the protocol on `fn` in a tight loop: the run times and whether they settled."""
    timer = timer or cpu_timer(CLOCKS[protocol.clock])
    for _ in range(protocol.warmup):
        timer(fn)
    times: list[float] = []
    last_median = None
    start = clock()
    while True:
        times.append(timer(fn))
        n = len(times)
        if n >= protocol.min_repeats and n % protocol.check_every == 0:
            median = statistics.median(times)
            if last_median is not None and abs(median - last_median) <= protocol.tolerance * median:
                return times, True
            last_median = median
        if n >= protocol.max_repeats or clock() - start >= protocol.max_seconds:
            return times, False


def time_runs_interleaved(fns: dict[str, Callable[[], object]], protocol: Protocol, timer: Timer | None = None,
                          rng: np.random.Generator | int | None = 0, clock: Callable[[], float] = time.perf_counter,
                          ) -> dict[str, Samples]:
    """One pass on several functions: each runs once per round, in a random order each round,
    until each one's median is stable (checked every `check_every` rounds after `min_repeats`),
    or `max_repeats` rounds, or `max_seconds` per function in all. A stable function keeps
    running (as context for the others) but takes no more samples."""
    timer = timer or cpu_timer(CLOCKS[protocol.clock])
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    keys = list(fns)
    for _ in range(protocol.warmup):
        for k in keys:
            timer(fns[k])
    times: dict[str, list[float]] = {k: [] for k in keys}
    done: set[str] = set()
    last_median: dict[str, float] = {}
    start, budget = clock(), protocol.max_seconds * len(keys)
    rounds = 0
    while len(done) < len(keys):
        for i in rng.permutation(len(keys)):
            k = keys[i]
            t = timer(fns[k])
            if k not in done:
                times[k].append(t)
        rounds += 1
        if rounds >= protocol.min_repeats and rounds % protocol.check_every == 0:
            for k in keys:
                if k in done:
                    continue
                median = statistics.median(times[k])
                if k in last_median and abs(median - last_median[k]) <= protocol.tolerance * median:
                    done.add(k)
                last_median[k] = median
        if rounds >= protocol.max_repeats or clock() - start >= budget:
            break
    return {k: (times[k], k in done) for k in keys}


def pooled(passes: list[Samples]) -> Measurement:
    """One measurement from several passes: the statistics of all their runs, the minimum of each
    pass (with more than one); stable if every pass settled."""
    return Measurement.of([t for times, _ in passes for t in times], stable=all(ok for _, ok in passes),
                          pass_min=tuple(min(times) for times, _ in passes) if len(passes) > 1 else ())


def measure(fn: Callable[[], object], protocol: Protocol, timer: Timer | None = None,
            clock: Callable[[], float] = time.perf_counter) -> Measurement:
    """Time `fn()` by the protocol, one pass in a tight loop. `timer` times one run (default: a
    CPU timer on the protocol's clock); `clock` bounds the total timing time (`max_seconds`)."""
    return pooled([time_runs(fn, protocol, timer, clock)])


def measure_many(fns: dict[str, Callable[[], object]], protocol: Protocol, timer: Timer | None = None,
                 rng: np.random.Generator | int | None = 0, clock: Callable[[], float] = time.perf_counter,
                 ) -> dict[str, Measurement]:
    """Time several functions interleaved (`time_runs_interleaved`), one pass."""
    return {k: pooled([v]) for k, v in time_runs_interleaved(fns, protocol, timer, rng, clock).items()}


@contextmanager
def fixed_threads(n: int) -> Iterator[None]:
    """Run torch on exactly `n` intra-op threads inside the block (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def plain_loop(fn: Callable[[], object], warmup: int = 30, runs: int = 200, max_seconds: float = 20.0) -> Measurement:
    """Time `fn()` the way a user's own timing code does: `warmup` untimed runs, then `runs` timed
    with `time.perf_counter` (wall clock) one after another, no interleaving, no CPU-time clock, no
    stopping rule (at most `max_seconds` of timed runs); `stable` is False when the cap cut it short."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < runs and time.perf_counter() - start < max_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Measurement.of(times, stable=len(times) == runs)
