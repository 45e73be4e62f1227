"""Piece times refined by whole subnets: a ridge fit of one relative adjustment per piece to what
the calibration subnets' measurements say the corrected sum still misses.

A piece is timed on its own, tens of microseconds at a time, in one or two windows of the build;
a whole subnet is timed end to end and repeats far better (on the quickstart's torch decode tables,
three builds' held-out subnets agreed with each other 99-100% within 10%, Kendall tau 0.97, while
their pieces agreed only 92% within 10% and the tables predicted 85-96% within 10%). A piece that
was timed off, or that costs more in a model than alone, biases every subnet holding it, in a way
the correction's few shared coefficients cannot learn. So with `t_ik` the time of piece k in
calibration subnet i (its count times its netted time, `LatencyTable.breakdown`) and `c` the
correction's coefficient on the sum, the adjustments `d` minimise

    sum_i ((y_i - predict_i - c * sum_k t_ik d_k) / y_i)^2 + lam * sum_k d_k^2

(relative errors, as the correction's fit; ridge in its dual form, a solve in the number of
subnets), then the correction is fitted again on the refined sums. `lam` is chosen among
`RIDGE_GRID` by `FOLDS`-fold cross-validation on the calibration subnets, and the refinement is
kept only when it beats the unrefined correction by more than 10% there (the rule that picks the
correction's form): with too few or too noisy subnets the table stays as measured. A piece
seen in fewer than `MIN_SEEN` calibration subnets is not refined. Re-scored on the held-out
measurements of ten earlier tables, on their minimum and their median (the correction refitted
with and without refinement; 20 scores): a disturbed torch decode table went from 85% to 90%
within 10% on the minimum (Kendall tau 0.890 to 0.914), an ONNX Runtime prefill table on the wall
clock from 96% to 98% on the median, a long-context prefill table from 80% to 85% on the median
but from 100% to 95% on its minimum, a long-context decode table stayed at 100% with tau 0.941 to
0.954 and 0.972; 12 scores were left as they were.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

RIDGE_GRID = (1.0, 0.3, 0.1, 0.03)  # simplest (most shrinkage) first
FOLDS = 5
MIN_SEEN = 3  # calibration subnets a piece must appear in to be refined
MIN_SUBNETS = 20  # calibration subnets below which no refinement is tried (4 per fold at least)

# fit(rows, sums) -> predict(rows, sums), the correction's coefficient on the sum: a correction of one
# form fitted on the calibration subnets `rows` with their piece sums `sums`
FitForm = Callable[[np.ndarray, np.ndarray], tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], float]]


def simplest(scores: dict[str, float]) -> str:
    """The first (simplest) of `scores` (mean relative errors) within 10% of the best, or within
    0.1 points of it (below any timing's noise): a hair's edge on a few dozen noisy timings is not
    evidence."""
    best = min(scores.values())
    return next(name for name, s in scores.items() if s <= max(1.1 * best, best + 1e-3))


def ridge(Z: np.ndarray, r: np.ndarray, lam: float) -> np.ndarray:
    """argmin |Z d - r|^2 + lam |d|^2, by the dual form Z^T (Z Z^T + lam I)^-1 r."""
    return Z.T @ np.linalg.solve(Z @ Z.T + lam * np.eye(len(r)), r)


def adjust(parts: np.ndarray, base: np.ndarray, y: np.ndarray, rows: np.ndarray, fit: FitForm,
           lam: float) -> tuple[np.ndarray, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """The adjustments fitted on `rows` (indices of calibration subnets) and the correction refitted
    on their refined sums. `parts`: (subnets, pieces) netted piece times; `base`: the plain sums."""
    predict, c = fit(rows, base[rows])
    r = (y[rows] - predict(rows, base[rows])) / y[rows]
    d = ridge(c * parts[rows] / y[rows, None], r, lam)
    refined, _ = fit(rows, base[rows] + parts[rows] @ d)
    return d, refined


def refine(parts: np.ndarray, base: np.ndarray, y: np.ndarray, fit: FitForm,
           seed: int = 0) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The adjustments of the pieces (columns of `parts`) by the whole calibration subnets `y`, or
    None where refinement does not clearly help; and the cross-validation record for the table's
    `meta`."""
    n = len(y)
    if n < MIN_SUBNETS:
        return None, {}
    parts = parts * ((parts != 0).sum(axis=0) >= MIN_SEEN)  # a piece in too few subnets stays as measured
    folds = np.array_split(np.random.default_rng([seed, 5]).permutation(n), FOLDS)

    def cv_error(lam: float | None) -> float:
        errors = []
        for test in folds:
            train = np.setdiff1d(np.arange(n), test)
            if lam is None:
                predict, _ = fit(train, base[train])
                guess = predict(test, base[test])
            else:
                d, predict = adjust(parts, base, y, train, fit, lam)
                guess = predict(test, base[test] + parts[test] @ d)
            errors += list(np.abs(guess - y[test]) / y[test])
        return float(np.mean(errors))

    scores = {"none": cv_error(None)} | {str(lam): cv_error(lam) for lam in RIDGE_GRID}
    best = simplest(scores)
    record = {"refine_cv_mape_pct": {k: round(100 * v, 3) for k, v in scores.items()}, "refine_lambda": best}
    if best == "none":
        return None, record
    d, _ = adjust(parts, base, y, np.arange(n), fit, float(best))
    return d, record
