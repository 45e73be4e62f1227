"""The correction of a latency table: a linear model, fitted on whole subnets measured end to end,
of what the sum of a subnet's pieces misses (per-layer glue, fusion across pieces, cache effects),
stored as plain numbers in the table's file (no pickle)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .refine import refine, simplest

CORRECTION_FEATURES = ("table_sum", "depth", "moe_layers", "softmax_layers", "linear_layers")
# the candidate models, simplest first: feature columns (indices into CORRECTION_FEATURES) and
# whether an intercept is fitted. "kinds" adds the attention kinds' layer counts (window layers are
# depth minus both): what a decoding step's pieces miss differs per kind (a softmax cache grows, a
# linear state does not), and on the quickstart's ONNX Runtime decode table it halved the error
CANDIDATES: dict[str, tuple[list[int], bool]] = {"ratio": ([0], False), "linear": ([0, 1, 2], True),
                                                 "kinds": ([0, 1, 2, 3, 4], True)}


@dataclass(frozen=True)
class Correction:
    """predict = intercept + sum(coef * feature), features named in `features` (seconds), the
    table sum taken over the pieces times `piece_factors` (a piece's refinement by the whole
    subnets, `refine`; a piece not named: 1)."""

    features: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float
    n_samples: int
    piece_factors: dict[str, float] = field(default_factory=dict)

    def apply(self, values: dict[str, float]) -> float:
        return self.intercept + sum(c * values[f] for f, c in zip(self.features, self.coef, strict=True))

    def refined_sum(self, parts: list[tuple[str, float]]) -> float:
        """The table sum of a breakdown (`LatencyTable.breakdown`) with the refined pieces."""
        return math.fsum(t * self.piece_factors.get(k, 1.0) for k, t in parts)

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "coef": list(self.coef), "intercept": self.intercept,
                "n_samples": self.n_samples} | ({"piece_factors": dict(sorted(self.piece_factors.items()))}
                                                if self.piece_factors else {})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Correction:
        factors = {str(k): float(v) for k, v in data.get("piece_factors", {}).items()}
        if not all(math.isfinite(v) and v > 0 for v in factors.values()):
            raise ValueError("a correction's piece factor is not a positive number")
        return cls(tuple(data["features"]), tuple(float(c) for c in data["coef"]), float(data["intercept"]),
                   int(data["n_samples"]), factors)


FACTOR_RANGE = (0.25, 4.0)  # a refined piece stays within these factors of its measured time


def fit_correction(table) -> tuple[Correction | None, dict[str, Any]]:
    """Fit the correction on the calibration subnets and keep it only if it predicts them
    clearly better than the plain sum does, by leave-one-out relative error (so a few noisy
    calibration timings cannot make the table worse). Candidates, simplest first: the plain
    sum, then `CANDIDATES`: a single ratio (y = a * sum), linear models on some of
    `CORRECTION_FEATURES` with an intercept, each fitted by relative-error weighted least squares
    (scikit-learn `LinearRegression`) when there are 3 calibration subnets per coefficient. The
    simplest candidate within 10% of the best score wins. Then the pieces are refined by the same
    subnets where that clearly helps (`refine`), and the chosen form fitted again on the refined
    sums. Returns the correction (None: the plain sum) and the choice's record for the table's `meta`."""
    n = len(table.calibration)
    candidates = {name: (cols, ic) for name, (cols, ic) in CANDIDATES.items() if n >= 3 * (len(cols) + ic)}
    if "linear" not in candidates:  # too few subnets for more than a ratio: the plain sum
        return None, {}
    from sklearn.linear_model import LinearRegression

    archs = [a for a, _ in table.calibration.values()]
    y = np.array([m.value(table.statistic) * table.speed_factor(k) for k, (_, m) in table.calibration.items()])
    breakdowns = [table.breakdown(a) for a in archs]  # each arch's pieces, once: its sum and the refinement's columns
    X = np.array([[values[f] for f in CORRECTION_FEATURES]
                  for values in (table.features(a, bd) for a, bd in zip(archs, breakdowns, strict=True))])
    w = 1.0 / y**2  # squared relative error

    def loo_mape(cols: list[int], intercept: bool) -> float:
        errs = []
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            m = LinearRegression(fit_intercept=intercept).fit(X[keep][:, cols], y[keep], sample_weight=w[keep])
            errs.append(abs(m.predict(X[i:i + 1, cols])[0] - y[i]) / y[i])
        return float(np.mean(errs))

    scores = {"sum": float(np.mean(np.abs(X[:, 0] - y) / y))}
    scores |= {name: loo_mape(cols, ic) for name, (cols, ic) in candidates.items()}
    best = simplest(scores)
    choice = {"correction_loo_mape_pct": {k: round(100 * v, 3) for k, v in scores.items()}, "correction_choice": best}
    cols, intercept = candidates.get(best, ([0], False))

    def fit(rows: np.ndarray, sums: np.ndarray):
        """The chosen form fitted on calibration subnets `rows` with piece sums `sums`: its
        prediction (rows, sums) -> seconds, and its coefficient on the sum."""
        def with_sums(r, s):
            x = X[r].copy()
            x[:, 0] = s
            return x[:, cols]

        if best == "sum":
            return (lambda r, s: s), 1.0
        model = LinearRegression(fit_intercept=intercept).fit(with_sums(rows, sums), y[rows], sample_weight=w[rows])
        return (lambda r, s: model.predict(with_sums(r, s))), float(model.coef_[0])

    keys = sorted({k for parts in breakdowns for k, _ in parts} - {"call"})
    column = {k: j for j, k in enumerate(keys)}
    parts = np.zeros((n, len(keys)))
    for i, bd in enumerate(breakdowns):
        for k, t in bd:
            if k != "call":
                parts[i, column[k]] += t
    d, record = refine(parts, X[:, 0], y, fit)
    choice |= record
    if d is None and best == "sum":
        return None, choice
    factors = {}
    if d is not None:
        scale = np.clip(1 + d, *FACTOR_RANGE)
        factors = {k: float(scale[j]) for k, j in column.items() if d[j] != 0}
        X[:, 0] += parts @ (scale - 1)  # the refined sums (`Correction.refined_sum` of each breakdown)
    if best == "sum":
        return Correction(("table_sum",), (1.0,), 0.0, len(y), factors), choice
    model = LinearRegression(fit_intercept=intercept).fit(X[:, cols], y, sample_weight=w)
    return Correction(tuple(CORRECTION_FEATURES[c] for c in cols), tuple(float(c) for c in model.coef_),
                      float(model.intercept_) if intercept else 0.0, len(y), factors), choice
