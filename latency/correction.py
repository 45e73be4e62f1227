"""The correction of a latency table: a linear model, fitted on whole subnets measured end to end,
of what the sum of a subnet's pieces misses (per-layer glue, fusion across pieces, cache effects),
stored as plain numbers in the table's file (no pickle)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

CORRECTION_FEATURES = ("table_sum", "depth", "moe_layers", "softmax_layers", "linear_layers")
# the candidate models, simplest first: feature columns (indices into CORRECTION_FEATURES) and
# whether an intercept is fitted. "kinds" adds the attention kinds' layer counts (window layers are
# depth minus both): what a decoding step's pieces miss differs per kind (a softmax cache grows, a
# linear state does not), and on the quickstart's ONNX Runtime decode table it halved the error
CANDIDATES: dict[str, tuple[list[int], bool]] = {"ratio": ([0], False), "linear": ([0, 1, 2], True),
                                                 "kinds": ([0, 1, 2, 3, 4], True)}


@dataclass(frozen=True)
class Correction:
    """predict = intercept + sum(coef * feature), features named in `features` (seconds)."""

    features: tuple[str, ...]
    coef: tuple[float, ...]
    intercept: float
    n_samples: int

    def apply(self, values: dict[str, float]) -> float:
        return self.intercept + sum(c * values[f] for f, c in zip(self.features, self.coef, strict=True))

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(self.features), "coef": list(self.coef), "intercept": self.intercept,
                "n_samples": self.n_samples}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Correction:
        return cls(tuple(data["features"]), tuple(float(c) for c in data["coef"]), float(data["intercept"]),
                   int(data["n_samples"]))


def fit_correction(table) -> tuple[Correction | None, dict[str, Any]]:
    """Fit the correction on the calibration subnets and keep it only if it predicts them
    clearly better than the plain sum does, by leave-one-out relative error (so a few noisy
    calibration timings cannot make the table worse). Candidates, simplest first: the plain
    sum, then `CANDIDATES`: a single ratio (y = a * sum), linear models on some of
    `CORRECTION_FEATURES` with an intercept, each fitted by relative-error weighted least squares
    (scikit-learn `LinearRegression`) when there are 3 calibration subnets per coefficient. The
    simplest candidate within 10% of the best score wins. Returns the correction (None: the plain
    sum) and the choice's record for the table's `meta`."""
    n = len(table.calibration)
    candidates = {name: (cols, ic) for name, (cols, ic) in CANDIDATES.items() if n >= 3 * (len(cols) + ic)}
    if "linear" not in candidates:  # too few subnets for more than a ratio: the plain sum
        return None, {}
    from sklearn.linear_model import LinearRegression

    archs = [a for a, _ in table.calibration.values()]
    y = np.array([m.value(table.statistic) * table.speed_factor(k) for k, (_, m) in table.calibration.items()])
    X = np.array([[table.features(a)[f] for f in CORRECTION_FEATURES] for a in archs])
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
    # the simplest model within 10% of the best score: a hair's edge on 40 noisy timings is not evidence
    best = next(name for name in scores if scores[name] <= 1.1 * min(scores.values()))
    choice = {"correction_loo_mape_pct": {k: round(100 * v, 3) for k, v in scores.items()}, "correction_choice": best}
    if best == "sum":
        return None, choice
    cols, intercept = candidates[best]
    model = LinearRegression(fit_intercept=intercept).fit(X[:, cols], y, sample_weight=w)
    return Correction(tuple(CORRECTION_FEATURES[c] for c in cols), tuple(float(c) for c in model.coef_),
                      float(model.intercept_) if intercept else 0.0, len(y)), choice
