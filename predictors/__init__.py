"""Accuracy predictors: evaluation records, the arch featurizer, scikit-learn predictors, their
quality report on held-out subnets, and the `hwnas predictors` stage that ties them together.

Names are imported on first use, so that reading the config (`hwnas.predictors.config`) does not
load scikit-learn."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "MODEL_NAMES": "config", "PredictorsConfig": "config",
    "ArchFeaturizer": "features", "as_archs": "features",
    "AccuracyPredictor": "models", "EnsembleRegressor": "models", "make_model": "models",
    "PredictorError": "persist", "load_manifest": "persist", "load_predictor": "persist", "save_predictor": "persist",
    "quality_metrics": "quality",
    "EvalContext": "records", "EvalRecord": "records", "RecordError": "records", "RecordStore": "records",
    "SamplingError": "sampling", "plan": "sampling",
    "run_predictors": "stage", "summary_text": "stage",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
