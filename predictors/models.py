"""Accuracy predictors as scikit-learn estimators.

- `make_model(name)`: the candidate regressors over the feature matrix (ridge, SVR, random forest,
  extremely randomized trees, gradient boosting, MLP, Gaussian process, ensemble), each a plain estimator or `Pipeline`.
- `EnsembleRegressor`: the mean of several regressors, with their spread (plus each member's own
  std where it has one, e.g. a Gaussian process) as the uncertainty.
- `AccuracyPredictor`: featurizer + regressor over archs. `predict(archs, return_std=True)` works
  for every regressor: a native std (GP, ensemble) is rescaled, and a model without one gets a
  constant std, both calibrated on out-of-fold residuals of the fit set so that the central
  `interval` (default 90%) of a normal covers that share of the truths.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from scipy.stats import norm
from sklearn.base import BaseEstimator, RegressorMixin, clone
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import ExtraTreesRegressor, GradientBoostingRegressor, RandomForestRegressor
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, DotProduct, WhiteKernel
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.model_selection import KFold
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVR
from sklearn.tree import DecisionTreeRegressor
from sklearn.utils.validation import check_is_fitted, validate_data
from threadpoolctl import threadpool_limits

from .features import ArchFeaturizer


def supports_std(estimator: Any) -> bool:
    """Whether `estimator.predict` takes `return_std` (a Pipeline: its last step's)."""
    if isinstance(estimator, Pipeline):
        estimator = estimator.steps[-1][1]
    try:
        return "return_std" in inspect.signature(estimator.predict).parameters
    except (TypeError, ValueError):
        return False


def _scaled_y(regressor: Any) -> TransformedTargetRegressor:
    """Fit `regressor` on standardized features and targets (SVR and MLP need both)."""
    return TransformedTargetRegressor(regressor=make_pipeline(StandardScaler(), regressor), transformer=StandardScaler())


def make_model(name: str, random_state: int | None = 0, ensemble_members: tuple[str, ...] = ("ridge", "gp", "rf", "gbr")) -> Any:
    """A fresh, unfitted candidate regressor by name (over the feature matrix)."""
    if name == "ridge":
        return make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 3, 13)))
    if name == "svr":
        return _scaled_y(SVR(C=3.0, epsilon=0.05, gamma="scale"))
    if name == "rf":
        return RandomForestRegressor(n_estimators=300, max_features=0.5, min_samples_leaf=2, random_state=random_state,
                                     n_jobs=1)
    if name == "et":  # random split thresholds: on one-hot genes, smoother than a forest of best splits
        return ExtraTreesRegressor(n_estimators=500, max_features=0.5, min_samples_leaf=2, random_state=random_state, n_jobs=1)
    if name == "gbr":
        return GradientBoostingRegressor(n_estimators=400, learning_rate=0.03, max_depth=3, subsample=0.8,
                                         random_state=random_state)
    if name == "mlp":
        return _scaled_y(MLPRegressor(hidden_layer_sizes=(64, 64), alpha=1.0, solver="lbfgs", max_iter=1000,
                                      random_state=random_state))
    if name == "gp":
        kernel = (ConstantKernel(1.0, (1e-3, 1e3)) * DotProduct(1.0, (1e-3, 1e3))
                  + ConstantKernel(1.0, (1e-3, 1e3)) * RBF(10.0, (1e-1, 1e4)) + WhiteKernel(1e-2, (1e-6, 1.0)))
        return make_pipeline(StandardScaler(), GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2,
                                                                        random_state=random_state))
    if name == "ensemble":
        return EnsembleRegressor([(m, make_model(m, random_state)) for m in ensemble_members])
    raise ValueError(f"unknown model {name!r}; known: ridge, svr, rf, et, gbr, mlp, gp, ensemble")


class EnsembleRegressor(RegressorMixin, BaseEstimator):
    """Mean of `estimators` (a list of (name, regressor)); std: the spread of the members'
    predictions, combined with the members' own std where they give one.

    Default members (None): ridge and a shallow decision tree, cheap enough for estimator checks."""

    def __init__(self, estimators: list[tuple[str, Any]] | None = None):
        self.estimators = estimators

    def _members(self) -> list[tuple[str, Any]]:
        if self.estimators is None:
            return [("ridge", Ridge(alpha=1.0)), ("tree", DecisionTreeRegressor(max_depth=4, random_state=0))]
        if len(self.estimators) < 1:
            raise ValueError("estimators must hold at least one (name, regressor) pair")
        return list(self.estimators)

    def fit(self, X: Any, y: Any) -> EnsembleRegressor:
        X, y = validate_data(self, X, y, y_numeric=True)
        self.estimators_ = [clone(est).fit(X, y) for _, est in self._members()]
        self.names_ = [name for name, _ in self._members()]
        return self

    def predict(self, X: Any, return_std: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        check_is_fitted(self, "estimators_")
        X = validate_data(self, X, reset=False)
        means, variances = [], []
        for est in self.estimators_:
            if return_std and supports_std(est):
                m, s = est.predict(X, return_std=True)
                variances.append(np.asarray(s, dtype=float) ** 2)
            else:
                m = est.predict(X)
            means.append(np.asarray(m, dtype=float).reshape(len(X)))
        stacked = np.stack(means)  # (members, n)
        mean = stacked.mean(axis=0)
        if not return_std:
            return mean
        var = stacked.var(axis=0)
        if variances:  # law of total variance: spread of the means + mean of the members' variances
            var = var + np.stack(variances).sum(axis=0) / len(self.estimators_)
        return mean, np.sqrt(var)


class AccuracyPredictor(RegressorMixin, BaseEstimator):
    """Predict a subnet's metric (e.g. validation loss) from its arch.

    `featurizer`: an `ArchFeaturizer` (None: the default space's); `model`: a regressor over its
    features (None: ridge). X is a sequence of `ArchConfig`s or a 2-d array of gene vectors.
    `cv` folds of the fit set give out-of-fold residuals that calibrate the std (see module doc)."""

    def __init__(self, featurizer: ArchFeaturizer | None = None, model: Any = None, cv: int = 5, interval: float = 0.9,
                 random_state: int | None = 0):
        self.featurizer = featurizer
        self.model = model
        self.cv = cv
        self.interval = interval
        self.random_state = random_state

    def _parts(self) -> tuple[ArchFeaturizer, Any]:
        featurizer = ArchFeaturizer() if self.featurizer is None else self.featurizer
        model = make_model("ridge") if self.model is None else self.model
        return clone(featurizer), clone(model)

    def fit(self, X: Any, y: Any) -> AccuracyPredictor:
        # one BLAS thread: the matrices are tiny, and a multi-threaded BLAS spinning on a busy
        # machine made an MLP fit 100x slower
        with threadpool_limits(limits=1, user_api="blas"):
            return self._fit(X, y)

    def _fit(self, X: Any, y: Any) -> AccuracyPredictor:
        featurizer, model = self._parts()
        y = np.asarray(y, dtype=float).reshape(-1)
        F = featurizer.fit(X).transform(X)
        if len(F) != len(y):
            raise ValueError(f"X has {len(F)} archs but y has {len(y)} targets")
        self.featurizer_, self.model_ = featurizer, model.fit(F, y)
        self.n_fit_ = len(y)
        self.native_std_ = supports_std(model)
        self._calibrate(F, y)
        return self

    def _calibrate(self, F: np.ndarray, y: np.ndarray) -> None:
        """Scale of the std from out-of-fold residuals: the `interval` quantile of |residual| / std
        over z, so that mean +- z * std covers that share of the fit set's held-out folds."""
        z = norm.ppf(0.5 + self.interval / 2)
        folds = min(self.cv, len(y))
        if folds < 2:
            self.std_scale_, self.residual_std_ = 1.0, float(np.std(y)) if len(y) else 0.0
            return
        resid, spread = np.empty(len(y)), np.ones(len(y))
        for train, test in KFold(folds, shuffle=True, random_state=self.random_state).split(F):
            est = clone(self.model).fit(F[train], y[train])
            if self.native_std_:
                m, s = est.predict(F[test], return_std=True)
                spread[test] = np.maximum(np.asarray(s, dtype=float), 1e-12)
            else:
                m = est.predict(F[test])
            resid[test] = y[test] - np.asarray(m, dtype=float).reshape(-1)
        self.cv_residuals_ = resid
        if self.native_std_:
            floor = np.median(spread) * 1e-2
            self.std_scale_ = float(np.quantile(np.abs(resid) / np.maximum(spread, floor), self.interval) / z)
            self.residual_std_ = 0.0
        else:
            self.std_scale_ = 1.0
            self.residual_std_ = float(np.quantile(np.abs(resid), self.interval) / z)

    def features(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.featurizer_.transform(X)

    def predict(self, X: Any, return_std: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        with threadpool_limits(limits=1, user_api="blas"):
            return self._predict(X, return_std)

    def _predict(self, X: Any, return_std: bool) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        F = self.features(X)
        if not return_std:
            return np.asarray(self.model_.predict(F), dtype=float).reshape(-1)
        if self.native_std_:
            mean, std = self.model_.predict(F, return_std=True)
            return np.asarray(mean, dtype=float).reshape(-1), self.std_scale_ * np.asarray(std, dtype=float)
        mean = np.asarray(self.model_.predict(F), dtype=float).reshape(-1)
        return mean, np.full(len(mean), self.residual_std_)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # archs, not numbers
        tags.input_tags.categorical = True
        return tags
