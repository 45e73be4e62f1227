"""Which subnets to evaluate: a held-out set drawn uniformly with its own seed, and a fit set drawn
partly uniformly and partly stratified by size (equal-width bins of log FLOPs over a large uniform
pool), so that the small and large ends of the space, rare under uniform sampling, are covered.
The two sets never share an arch, and each holds distinct archs."""

from __future__ import annotations

import numpy as np

from hwnas.search_space import ArchConfig, SearchSpace
from hwnas.search_space.sampling import SamplingError, distinct, stratified


def _seeded(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, 7, stream]))


def _uniform(space: SearchSpace, n: int, rng: np.random.Generator, taken: set[str], what: str) -> list[ArchConfig]:
    out = distinct(space, n, rng, taken)
    if len(out) < n:
        raise SamplingError(f"could not draw {n} distinct {what} archs (got {len(out)}); the space is too small, "
                            f"lower predictors.n_fit / n_heldout")
    return out


def plan(space: SearchSpace, n_fit: int, n_heldout: int, seed: int, stratify: bool = True, stratify_fraction: float = 0.5,
         strata: int = 6, pool_size: int = 5000) -> tuple[list[ArchConfig], list[ArchConfig]]:
    """(fit archs, held-out archs). The held-out set depends only on (seed, n_heldout), never on the
    fit settings; the fit set avoids every held-out arch."""
    taken: set[str] = set()
    heldout = _uniform(space, n_heldout, _seeded(seed, 2), taken, "held-out")
    rng = _seeded(seed, 1)
    n_strat = round(n_fit * stratify_fraction) if stratify else 0
    fit = stratified(space, n_strat, rng, taken, strata, pool_size) if n_strat else []
    fit += _uniform(space, n_fit - n_strat, rng, taken, "fit")
    return fit, heldout
