"""Size-stratified sampling of a search space: as many archs from each equal-width bin of log FLOPs
as the bins allow, so the small and large ends of the space (rare under uniform sampling) are
covered. Used for the predictors' fit set and the latency tables' calibration subnets."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from hwnas.core.errors import HwnasError

from .arch import ArchConfig
from .space import SearchSpace


class SamplingError(HwnasError, ValueError):
    """The space holds too few distinct archs for the requested sets."""


def distinct(space: SearchSpace, n: int, rng: np.random.Generator, taken: set[str] | None = None,
             draw: Callable[[np.random.Generator], ArchConfig] | None = None, tries: int | None = None) -> list[ArchConfig]:
    """Up to `n` archs drawn one at a time (`draw(rng)`, by default `space.sample`), keeping each
    whose key is not in `taken` and not drawn before; `taken` (when given) receives the kept keys.
    Gives up after `tries` draws (default 200 n + 1000), so a small space returns fewer."""
    draw = draw or space.sample
    taken = taken if taken is not None else set()
    out: list[ArchConfig] = []
    for _ in range(200 * n + 1000 if tries is None else tries):
        if len(out) >= n:
            break
        arch = draw(rng)
        if arch.key() not in taken:
            taken.add(arch.key())
            out.append(arch)
    return out


def stratified(space: SearchSpace, n: int, rng: np.random.Generator, taken: set[str], strata: int = 6,
               pool_size: int = 5000) -> list[ArchConfig]:
    """`n` distinct archs, as equal a number as possible from each of `strata` equal-width bins of
    log FLOPs spanning a uniform pool of `pool_size` samples; a bin with too few archs passes its
    share on to the others."""
    pool: dict[str, ArchConfig] = {}
    for _ in range(pool_size):
        arch = space.sample(rng)
        if arch.key() not in taken:
            pool.setdefault(arch.key(), arch)
    archs = list(pool.values())
    if len(archs) < n:
        raise SamplingError(f"only {len(archs)} distinct archs in a pool of {pool_size} for {n} stratified picks; "
                            f"raise the pool size or ask for fewer")
    logf = np.array([math.log(space.flops(a)) for a in archs])
    edges = np.linspace(logf.min(), logf.max(), strata + 1)
    bins = np.clip(np.searchsorted(edges, logf, side="right") - 1, 0, strata - 1)
    members = [list(rng.permutation(np.flatnonzero(bins == b))) for b in range(strata)]
    quota = [0] * strata
    left = n
    while left:  # hand out picks one round at a time to the bins that still have archs
        open_bins = [b for b in range(strata) if quota[b] < len(members[b])]
        for b in rng.permutation(open_bins)[:left]:  # a last partial round goes to random bins
            quota[b] += 1
            left -= 1
    picks = [archs[i] for b in range(strata) for i in members[b][:quota[b]]]
    for arch in picks:
        taken.add(arch.key())
    return [picks[i] for i in rng.permutation(len(picks))]
