"""The speed reference: one fixed subnet timed in every window of measurements, so that a table
can scale each window's times to the machine's median speed over the build (a shared VM's speed
moves over minutes) and retake a window in which the speed moved (`steady_window`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hwnas.search_space import ArchConfig, SearchSpace
from hwnas.search_space.sampling import distinct

from .config import LatencyConfig
from .protocol import Measurement

REFERENCE = "@reference"  # the speed reference's key among a window's measurements
REFERENCE_POOL = 201  # uniform draws the speed reference is the FLOPs median of


@dataclass(frozen=True)
class SpeedWindow:
    """A window of measurements: its stage (pieces, calibration, heldout), the speed reference's
    time in it, and how far the machine's speed had moved in each attempt at it (`disturbance`;
    the window kept is the least disturbed attempt)."""

    stage: str
    reference: Measurement
    disturbance: tuple[float, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "measured": self.reference.to_dict(), "disturbance": list(self.disturbance)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SpeedWindow:
        return cls(data["stage"], Measurement.from_dict(data["measured"]), tuple(float(d) for d in data["disturbance"]))


def reference_arch(space: SearchSpace, seed: int) -> ArchConfig:
    """The speed reference: the subnet of median FLOPs among `REFERENCE_POOL` uniform draws of the
    seed stream (seed, 4), a subnet of middling size timed in every measurement window."""
    pool = distinct(space, REFERENCE_POOL, np.random.default_rng([seed, 4]), tries=100 * REFERENCE_POOL + 100)
    pool.sort(key=lambda a: (space.flops(a), a.key()))
    return pool[len(pool) // 2]


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
