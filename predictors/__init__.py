"""Accuracy predictors: evaluation records, the arch featurizer, scikit-learn predictors, their
quality report on held-out subnets, and the `hwnas predictors` stage that ties them together.

Names are imported on first use, so that reading the config (`hwnas.predictors.config`) does not
load scikit-learn."""

from __future__ import annotations

from hwnas.core.lazy import lazy_exports

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
__getattr__, __dir__, __all__ = lazy_exports(__name__, _WHERE)
