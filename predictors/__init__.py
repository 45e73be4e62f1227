"""Accuracy predictors: evaluation records, the arch featurizer, scikit-learn predictors, their
quality report on held-out subnets, and the `hwnas predictors` stage that ties them together."""

from .config import MODEL_NAMES, PredictorsConfig
from .features import ArchFeaturizer, as_archs
from .models import AccuracyPredictor, EnsembleRegressor, make_model
from .persist import PredictorError, load_manifest, load_predictor, save_predictor
from .quality import quality_metrics
from .records import EvalContext, EvalRecord, RecordError, RecordStore
from .sampling import SamplingError, plan
from .stage import run_predictors, summary_text

__all__ = [
    "MODEL_NAMES", "AccuracyPredictor", "ArchFeaturizer", "EnsembleRegressor", "EvalContext", "EvalRecord",
    "PredictorError", "PredictorsConfig", "RecordError", "RecordStore", "SamplingError", "as_archs", "load_manifest",
    "load_predictor", "make_model", "plan", "quality_metrics", "run_predictors", "save_predictor", "summary_text",
]
