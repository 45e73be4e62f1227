"""Search engines behind one interface, `engine.run(objectives, budget, front) -> ParetoFront`, in a
registry by name (`search.engine` in the config), as Optuna keeps its samplers:

- `pymoo` (`PymooEngine`): NSGA-II, NSGA-III or SMS-EMOA (hypervolume-based; AGE-MOEA needs numba)
  over the integer gene vector, with sampling, crossover and mutation done by `SearchSpace`
  itself, so every candidate is a valid arch; the whole population is evaluated in one batch, and
  the last one is cut at the budget.
- `optuna` (`OptunaEngine`, search/optuna_engine.py): NSGA-II, NSGA-III, multi-objective TPE or
  random sampling over `SearchSpace.suggest`, in a study several processes share.
- `linas` (`LinasEngine`, search/linas.py): predictor-in-the-loop search on real evaluations.
- `random` (`RandomEngine`): uniform sampling, the baseline.

A new engine subclasses `SearchEngine`, sets `name` and `algorithms`, and is decorated with
`@register_engine`; the config, the stage and the CLI then take it by name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from hwnas.core.errors import HwnasError
from hwnas.search_space import ArchConfig, SearchSpace, as_rng, legacy_seed

from .objectives import ObjectiveSet
from .pareto import Candidate, ParetoFront

if TYPE_CHECKING:
    from .config import SearchConfig

OPTUNA_ALGORITHMS = ("nsga2", "nsga3", "tpe", "random")
PYMOO_ALGORITHMS = ("nsga2", "nsga3", "smsemoa")


class SearchError(HwnasError, RuntimeError):
    """A search that cannot run as configured."""


def candidates_of(archs: list[ArchConfig], objectives: ObjectiveSet) -> list[Candidate]:
    F, G, stds = objectives.evaluate(archs)
    return [
        Candidate(a, tuple(map(float, F[i])), tuple(map(float, G[i])), {f"std:{k}": float(v[i]) for k, v in stds.items()})
        for i, a in enumerate(archs)
    ]


class SearchEngine(ABC):
    """Finds the Pareto front of `objectives` over `space` within `budget` candidate evaluations.

    `name` is the config's `search.engine`; `algorithms` the `search.algorithm`s it takes;
    `parallel` whether several worker processes can share one search."""

    name: ClassVar[str]
    algorithms: ClassVar[tuple[str, ...]]
    parallel: ClassVar[bool] = False

    def __init__(self, space: SearchSpace, seed: int = 0):
        self.space, self.seed = space, seed

    @classmethod
    def from_config(cls, space: SearchSpace, cfg: SearchConfig, run_dir: Path, seed: int, workers: int | None = None,
                    study_name: str | None = None) -> SearchEngine:
        """The engine the search stage runs for `cfg` in `run_dir` (`study_name`: for engines that keep a study)."""
        return cls(space, seed=seed)

    def prepare(self, objectives: ObjectiveSet) -> None:  # noqa: B027 (optional hook, like Optuna's callbacks)
        """Refuse, before the stage writes anything, a search that cannot run (by default there is
        nothing to check)."""

    @abstractmethod
    def run(self, objectives: ObjectiveSet, budget: int, front: ParetoFront,
            progress: Callable[[int], None] | None = None) -> ParetoFront:
        ...


_REGISTRY: dict[str, type[SearchEngine]] = {}
BUILT_IN = ("pymoo", "random", "linas", "optuna")


def register_engine(cls: type[SearchEngine]) -> type[SearchEngine]:
    """Class decorator: make `cls` available as `search.engine: <cls.name>`."""
    _REGISTRY[cls.name] = cls
    return cls


def engines() -> dict[str, type[SearchEngine]]:
    """Every registered engine by name: the built-in ones first, in a fixed order (whichever module
    was imported first), then the others as they registered."""
    from . import linas, optuna_engine  # noqa: F401  (their engines register when imported)

    order = [n for n in BUILT_IN if n in _REGISTRY] + [n for n in _REGISTRY if n not in BUILT_IN]
    return {n: _REGISTRY[n] for n in order}


def make_engine(space: SearchSpace, cfg: SearchConfig, run_dir: Path, seed: int, workers: int | None = None,
                study_name: str | None = None) -> SearchEngine:
    """The configured engine (`cfg.engine`) for the search stage."""
    return engines()[cfg.engine].from_config(space, cfg, run_dir, seed, workers, study_name)


# --- pymoo ------------------------------------------------------------------------------------
@register_engine
class PymooEngine(SearchEngine):
    name, algorithms = "pymoo", PYMOO_ALGORITHMS

    @classmethod
    def from_config(cls, space, cfg, run_dir, seed, workers=None, study_name=None) -> PymooEngine:
        return cls(space, cfg.algorithm, cfg.population, seed)

    def __init__(self, space: SearchSpace, algorithm: str = "nsga2", population: int = 100, seed: int = 0,
                 mutation_p: float = 0.15):
        super().__init__(space, seed)
        if algorithm not in PYMOO_ALGORITHMS:
            raise SearchError(f"search.algorithm: {algorithm!r} is not one of {', '.join(PYMOO_ALGORITHMS)} for the pymoo engine")
        self.algorithm, self.population, self.mutation_p = algorithm, population, mutation_p

    def _algorithm(self, n_objectives: int):
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.algorithms.moo.nsga3 import NSGA3
        from pymoo.algorithms.moo.sms import SMSEMOA
        from pymoo.util.ref_dirs import get_reference_directions

        from .operators import ArchCrossover, ArchDuplicates, ArchMutation, ArchSampling

        ops = dict(sampling=ArchSampling(self.space), crossover=ArchCrossover(self.space), mutation=ArchMutation(self.space, self.mutation_p),
                   eliminate_duplicates=ArchDuplicates())
        if self.algorithm == "nsga3":
            ref_dirs = get_reference_directions("energy", n_objectives, self.population, seed=legacy_seed(self.seed)) if n_objectives > 1 else np.array([[1.0]])
            return NSGA3(ref_dirs=ref_dirs, pop_size=self.population, **ops)
        if self.algorithm == "smsemoa":
            return SMSEMOA(pop_size=self.population, **ops)
        return NSGA2(pop_size=self.population, **ops)

    def run(self, objectives: ObjectiveSet, budget: int, front: ParetoFront, progress=None) -> ParetoFront:
        from pymoo.core.problem import Problem
        from pymoo.optimize import minimize
        from pymoo.termination import get_termination

        space, engine = self.space, self
        xl, xu = space.pymoo_bounds()
        evaluated = 0

        class ArchProblem(Problem):
            def __init__(self):
                super().__init__(n_var=space.n_genes, n_obj=len(objectives.names), n_ieq_constr=len(objectives.constraints),
                                 xl=xl, xu=xu, vtype=int)

            def _evaluate(self, X, out, *args, **kwargs):
                """A generation's candidates, within the budget: pymoo evaluates whole populations,
                so those of the last one beyond the budget are not evaluated (they get the worst
                values of the evaluated ones, and the search ends with this generation)."""
                nonlocal evaluated
                n = min(len(X), budget - evaluated)
                archs = [space.decode(np.asarray(x, dtype=np.int64)) for x in X[:n]]
                cands = candidates_of(archs, objectives)
                front.add(cands)
                evaluated += n
                F = np.array([c.objectives for c in cands]).reshape(n, -1)
                out["F"] = np.vstack([F, np.repeat(F.max(axis=0, keepdims=True), len(X) - n, axis=0)])
                if objectives.constraints:
                    G = np.array([c.constraints for c in cands]).reshape(n, -1)
                    out["G"] = np.vstack([G, np.repeat(G.max(axis=0, keepdims=True), len(X) - n, axis=0)])
                if progress:
                    progress(n)

        minimize(ArchProblem(), engine._algorithm(len(objectives.names)), get_termination("n_eval", budget),
                 seed=legacy_seed(self.seed), verbose=False)
        return front


@register_engine
class RandomEngine(SearchEngine):
    """Uniform random sampling (the baseline), evaluated in batches."""

    name, algorithms = "random", ("nsga2", "random")  # nsga2: the config's default algorithm, taken as is

    def __init__(self, space: SearchSpace, seed: int = 0, batch: int = 50):
        super().__init__(space, seed)
        self.batch = batch

    def run(self, objectives: ObjectiveSet, budget: int, front: ParetoFront, progress=None) -> ParetoFront:
        rng = as_rng(self.seed)
        done = 0
        while done < budget:
            n = min(self.batch, budget - done)
            front.add(candidates_of([self.space.sample(rng) for _ in range(n)], objectives))
            done += n
            if progress:
                progress(n)
        return front
