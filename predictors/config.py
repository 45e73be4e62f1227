"""The `predictors:` section of the experiment config: how many subnets to evaluate, how, and which
accuracy predictors to compare."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hwnas.core.config import MAX_BATCH, MAX_BLOCK, MAX_THREADS, MAX_TOKENS, Section, Seed, field_error

ModelName = Literal["ridge", "svr", "rf", "et", "gbr", "mlp", "gp", "ensemble"]
MODEL_NAMES: tuple[str, ...] = ("ridge", "svr", "rf", "et", "gbr", "mlp", "gp", "ensemble")
FeatureGroup = Literal["onehot", "counts", "ends", "cost"]

# Bounds: each subnet of the fit and held-out sets is evaluated for real (a second or more each), so
# 10**5 is days of work; the pool is sampled and costed in Python (10**6 takes minutes); more strata
# or folds than 1000 leave nothing in each
MAX_SUBNETS = 10**5
MAX_POOL = 10**6
MAX_BINS = 1000


class PredictorsConfig(Section):
    # which subnets are evaluated
    n_fit: int = Field(default=150, gt=1, le=MAX_SUBNETS, description="subnets evaluated on the supernet to fit the "
                       "predictors (each costs a real evaluation of eval_tokens)")
    n_heldout: int = Field(default=60, ge=0, le=MAX_SUBNETS, description="held-out subnets (own seed, never fitted) "
                           "for the quality report; 0: no held-out check")
    stratify: bool = Field(default=True, description="draw part of the fit set stratified by FLOPs, so small and large "
                           "nets are covered")
    stratify_fraction: float = Field(default=0.5, ge=0, le=1, description="share of the fit set drawn stratified "
                                     "(with stratify); the rest is uniform")
    strata: int = Field(default=6, ge=2, le=MAX_BINS, description="equal-width bins of log FLOPs for the stratified draw")
    pool_size: int = Field(default=5000, ge=100, le=MAX_POOL, description="uniform samples the strata are drawn from")
    # how one subnet is evaluated
    eval_tokens: int = Field(default=65536, gt=0, le=MAX_TOKENS, description="validation tokens per subnet (more: "
                             "less noisy targets, slower evaluations); the search's real evaluations reuse it")
    eval_batch_size: int = Field(default=16, gt=0, le=MAX_BATCH, description="sequences per evaluation batch")
    seq_len: int | None = Field(default=None, gt=0, le=MAX_BLOCK, description="tokens per evaluated sequence; "
                                "default (and at most): the space's block_size")
    target: Literal["loss", "bpb"] = Field(default="loss", description="what the predictors learn and the search's "
                                           "loss objective then is: validation loss (nats/byte) or bits per byte")
    device: Literal["auto", "cpu", "cuda"] = Field(default="cpu", description="where the subnets are evaluated; auto: "
                                                   "CUDA when this machine has it, else CPU")
    threads: int | None = Field(default=None, gt=0, le=MAX_THREADS, description="CPU threads (default: torch's choice)")
    # which predictors, and how they are chosen
    features: list[FeatureGroup] = Field(
        default_factory=lambda: ["onehot", "counts", "ends", "cost"],
        description="feature groups of an arch: onehot (every gene's choice), counts (depth, width, how many layers "
                    "take each choice), ends (the first and last layer's choices), cost (log params, FLOPs, bytes)")
    alt_features: list[list[FeatureGroup]] = Field(
        default_factory=lambda: [["onehot"]],
        description="further feature sets: every model is cross-validated on `features` and on each of these, and the "
                    "best (feature set, model) pair by CV Kendall tau is chosen")
    models: list[ModelName] = Field(
        default_factory=lambda: list(MODEL_NAMES),
        description="regressors compared: ridge, svr, rf (random forest), et (extra trees), gbr (gradient boosting), "
                    "mlp, gp (Gaussian process), ensemble (mean of ensemble_members); fewer: a faster stage")
    ensemble_members: list[ModelName] = Field(default_factory=lambda: ["ridge", "gp", "rf", "gbr"],
                                              description="the models the ensemble averages (at least two)")
    cv_folds: int = Field(default=5, ge=2, le=MAX_BINS, description="cross-validation folds for model selection (by "
                          "Kendall tau), at most n_fit")
    interval: float = Field(default=0.9, gt=0, lt=1, description="central probability the predictive std is "
                            "calibrated to cover; its held-out coverage is reported")
    seed: Seed | None = Field(default=None, description="seed of the fit and held-out draws and the models; default: "
                              "the experiment's seed")
    wandb: Literal["offline", "online", "disabled"] = Field(default="offline", description="W&B mode of the "
                                                            "predictor stage's run (offline: `wandb sync` later)")
    wandb_project: str = Field(default="hwnas", description="W&B project the predictor stage is logged to")

    @model_validator(mode="after")
    def _consistent(self) -> PredictorsConfig:
        for name in ("features", "models", "ensemble_members"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise field_error(name, f"has duplicate entries {values}")
        if not self.features:
            raise field_error("features", "needs at least one feature group")
        for i, groups in enumerate(self.alt_features):
            if not groups or len(set(groups)) != len(groups):
                raise field_error(f"alt_features.{i}", f"needs distinct feature groups, got {groups}")
        if len({tuple(sorted(g)) for g in [self.features, *self.alt_features]}) != 1 + len(self.alt_features):
            raise field_error("alt_features", "repeats a feature set")
        if not self.models:
            raise field_error("models", "needs at least one model")
        if "ensemble" in self.ensemble_members:
            raise field_error("ensemble_members", "an ensemble cannot contain itself")
        if "ensemble" in self.models and len(self.ensemble_members) < 2:
            raise field_error("ensemble_members", f"needs at least two members, got {self.ensemble_members}")
        if self.cv_folds > self.n_fit:
            raise field_error("cv_folds", f"{self.cv_folds} exceeds n_fit {self.n_fit}")
        return self
