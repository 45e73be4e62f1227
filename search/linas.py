"""Predictor-in-the-loop search (LINAS, as in DyNAS-T): search cheaply on predictors, evaluate the
most promising candidates for real, refit the predictors, repeat.

The expensive objectives (e.g. the supernet's validation loss) are the ones the caller marks as
`learned`; every iteration fits a predictor for each of them on the archs evaluated so far and
runs an evolutionary search where those objectives are predicted and the others (latency tables,
params) are computed directly. The candidates evaluated for real are picked evenly along the
predicted front, skipping archs already evaluated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from hwnas.search_space import ArchConfig, SearchSpace, as_rng

from .engines import PymooEngine, candidates_of
from .objectives import ObjectiveSet, predictor_objective
from .pareto import ParetoFront, pick_spread

# fit(archs, targets) -> an object with predict(archs[, return_std]) (e.g. a predictors/ estimator)
FitPredictor = Callable[[Sequence[ArchConfig], np.ndarray], object]


@dataclass(frozen=True)
class LinasSettings:
    initial: int = 20  # random archs evaluated for real before the first fit
    per_iteration: int = 10  # real evaluations per iteration
    inner_budget: int = 3000  # predictor evaluations of the inner search per iteration
    population: int = 50


def linas_search(space: SearchSpace, objectives: ObjectiveSet, learned: list[str], fit_predictor: FitPredictor,
                 budget: int, front: ParetoFront, settings: LinasSettings | None = None, seed: int = 0,
                 progress: Callable[[int], None] | None = None) -> ParetoFront:
    """Spend `budget` real evaluations of `objectives`; `front` receives the real values and records
    the hypervolume after each real evaluation."""
    s = settings or LinasSettings()
    rng = as_rng(seed)
    seen: set[str] = set()

    def evaluate(archs: list[ArchConfig]) -> None:
        for a in archs:  # one at a time, so the history is per real evaluation
            front.add(candidates_of([a], objectives))
            seen.add(a.key())
        if progress:
            progress(len(archs))

    initial = []
    while len(initial) < min(s.initial, budget):
        a = space.sample(rng)
        if a.key() not in seen and a.key() not in {b.key() for b in initial}:
            initial.append(a)
    evaluate(initial)
    iteration = 0
    while len(seen) < budget:
        archs = [c.arch for c in front.candidates]
        F = np.array([c.objectives for c in front.candidates])
        swapped = []
        for o in objectives.objectives:
            if o.name in learned:
                j = objectives.names.index(o.name)
                model = fit_predictor(archs, F[:, j])
                swapped.append(predictor_objective(model, o.name, o.unit))
            else:
                swapped.append(o)
        cheap = ObjectiveSet(swapped, objectives.constraints, objectives.extra, objectives.risk)
        inner = ParetoFront(objectives.names, front.ref_point, objectives.constraint_names)
        PymooEngine(space, "nsga2", population=s.population, seed=seed + 1000 + iteration).run(cheap, s.inner_budget, inner)
        picks = [c.arch for c in pick_spread(inner.members(), min(s.per_iteration, budget - len(seen)), seen)]
        if len(picks) < min(s.per_iteration, budget - len(seen)):  # front exhausted: fill with mutants of it
            pool = [c.arch for c in inner.members()] or archs
            while len(picks) < min(s.per_iteration, budget - len(seen)):
                a = space.mutate(pool[int(rng.integers(len(pool)))], rng, 0.3)
                if a.key() not in seen and a.key() not in {p.key() for p in picks}:
                    picks.append(a)
        evaluate(picks)
        iteration += 1
    return front
