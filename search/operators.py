"""pymoo operators that let `SearchSpace` do the sampling, crossover and mutation, so every
individual is a valid arch in its canonical encoding (equal archs have equal vectors)."""

from __future__ import annotations

import numpy as np
from pymoo.core.crossover import Crossover
from pymoo.core.duplicate import ElementwiseDuplicateElimination
from pymoo.core.mutation import Mutation
from pymoo.core.sampling import Sampling

from hwnas.search_space import SearchSpace


def _rng(random_state) -> np.random.Generator:
    return random_state if isinstance(random_state, np.random.Generator) else np.random.default_rng()


class ArchSampling(Sampling):
    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space

    def _do(self, problem, n_samples, random_state=None, **kwargs):
        rng = _rng(random_state)
        return np.array([self.space.encode(self.space.sample(rng)) for _ in range(n_samples)])


class ArchCrossover(Crossover):
    """Uniform, depth-aware crossover of two parents into two children."""

    def __init__(self, space: SearchSpace):
        super().__init__(n_parents=2, n_offsprings=2)
        self.space = space

    def _do(self, problem, X, random_state=None, **kwargs):
        rng = _rng(random_state)
        _, n_matings, _ = X.shape
        Y = np.empty_like(X)
        for k in range(n_matings):
            a, b = self.space.decode(X[0, k]), self.space.decode(X[1, k])
            Y[0, k] = self.space.encode(self.space.crossover(a, b, rng))
            Y[1, k] = self.space.encode(self.space.crossover(b, a, rng))
        return Y


class ArchMutation(Mutation):
    def __init__(self, space: SearchSpace, p: float = 0.15):
        super().__init__()
        self.space, self.p = space, p

    def _do(self, problem, X, random_state=None, **kwargs):
        rng = _rng(random_state)
        return np.array([self.space.encode(self.space.mutate(self.space.decode(x), rng, self.p)) for x in X])


class ArchDuplicates(ElementwiseDuplicateElimination):
    """Individuals are duplicates when their (canonical) gene vectors are equal."""

    def is_equal(self, a, b) -> bool:
        return bool(np.array_equal(a.X, b.X))
