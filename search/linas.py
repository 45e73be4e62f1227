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
from hwnas.search_space.sampling import distinct

from .engines import PymooEngine, SearchEngine, SearchError, candidates_of, register_engine
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


@register_engine
class LinasEngine(SearchEngine):
    """Spends `budget` real evaluations of `objectives`; the front receives the real values and
    records the hypervolume after each real evaluation. `learned`: the objectives fitted by
    `fit_predictor` each iteration (default: loss, when it is one)."""

    name, algorithms = "linas", ("nsga2",)

    def __init__(self, space: SearchSpace, fit_predictor: FitPredictor, settings: LinasSettings | None = None, seed: int = 0,
                 learned: Sequence[str] | None = None):
        super().__init__(space, seed)
        self.fit_predictor, self.settings, self.learned = fit_predictor, settings or LinasSettings(), learned

    @classmethod
    def from_config(cls, space, cfg, run_dir, seed, workers=None, study_name=None) -> LinasEngine:
        settings = LinasSettings(cfg.linas.initial, cfg.linas.per_iteration, cfg.linas.inner_budget, min(cfg.population, 50))
        return cls(space, fit_predictor_factory(space), settings, seed)

    def run(self, objectives: ObjectiveSet, budget: int, front: ParetoFront,
            progress: Callable[[int], None] | None = None) -> ParetoFront:
        space, s, seed = self.space, self.settings, self.seed
        learned = self.learned if self.learned is not None else [n for n in objectives.names if n == "loss"]
        rng = as_rng(seed)
        seen: set[str] = set()

        def evaluate(archs: list[ArchConfig]) -> None:
            for a in archs:  # one at a time, so the history is per real evaluation
                front.add(candidates_of([a], objectives))
                seen.add(a.key())
            if progress:
                progress(len(archs))

        evaluate(distinct(space, min(s.initial, budget), rng))
        iteration = 0
        while len(seen) < budget:
            inner = ParetoFront(objectives.names, front.ref_point, objectives.constraint_names)
            cheap = self._cheap(objectives, learned, front)
            PymooEngine(space, "nsga2", population=s.population, seed=seed + 1000 + iteration).run(cheap, s.inner_budget, inner)
            want = min(s.per_iteration, budget - len(seen))
            picks = [c.arch for c in pick_spread(inner.members(), want, seen)]
            if len(picks) < want:  # front exhausted: fill with mutants of it
                pool = [c.arch for c in inner.members()] or [c.arch for c in front.candidates]
                picks += distinct(space, want - len(picks), rng, seen | {p.key() for p in picks},
                                  draw=lambda r, pool=pool: space.mutate(pool[int(r.integers(len(pool)))], r, 0.3))
            if not picks:
                raise SearchError(f"LINAS found no arch it has not evaluated after {len(seen)}; the space is smaller "
                                  "than search.budget")
            evaluate(picks)
            iteration += 1
        return front

    def _cheap(self, objectives: ObjectiveSet, learned: Sequence[str], front: ParetoFront) -> ObjectiveSet:
        """`objectives` with each learned one swapped for a predictor fitted on the real evaluations so far."""
        archs = [c.arch for c in front.candidates]
        F = np.array([c.objectives for c in front.candidates])
        swapped = []
        for o in objectives.objectives:
            if o.name in learned:
                model = self.fit_predictor(archs, F[:, objectives.names.index(o.name)])
                swapped.append(predictor_objective(model, o.name, o.unit))
            else:
                swapped.append(o)
        return ObjectiveSet(swapped, objectives.constraints, objectives.extra, objectives.risk)


def fit_predictor_factory(space: SearchSpace) -> FitPredictor:
    """LINAS refits: the predictor stage's model family (ridge on the arch features by default)."""
    from hwnas.predictors.features import ArchFeaturizer
    from hwnas.predictors.models import AccuracyPredictor, make_model

    def fit(archs, y):
        return AccuracyPredictor(ArchFeaturizer(space.config.model_dump(mode="json")), make_model("ridge")).fit(list(archs), y)

    return fit
