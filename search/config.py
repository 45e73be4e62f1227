"""The `search:` section of the experiment config."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from hwnas.search_space.config import Section, field_error

from .objectives import Constraint

ENGINES = ("pymoo", "optuna", "linas", "random")


class LinasConfig(Section):
    initial: int = Field(default=20, gt=0, description="random archs evaluated for real before the first fit")
    per_iteration: int = Field(default=10, gt=0, description="real evaluations per iteration")
    inner_budget: int = Field(default=3000, gt=0, description="predictor evaluations per inner search")


class SearchConfig(Section):
    objectives: list[str] = Field(default_factory=lambda: ["loss", "latency@cpu"])
    constraints: list[str] = Field(default_factory=list, description="e.g. 'latency@cpu <= 5ms', 'params <= 2e6'")
    engine: Literal["pymoo", "optuna", "linas", "random"] = "pymoo"
    algorithm: str = Field(default="nsga2", description="pymoo: nsga2|nsga3|smsemoa; optuna: nsga2|nsga3|tpe|random")
    budget: int = Field(default=10000, gt=0, description="candidates evaluated (on predictors; real ones for linas)")
    population: int = Field(default=100, gt=1)
    storage: str | None = Field(default=None, description="Optuna storage URL; default: SQLite in the run dir; 'journal:<path>' for a journal file")
    workers: int = Field(default=1, gt=0, description="Optuna worker processes sharing the study")
    risk: float | None = Field(default=None, gt=0.5, lt=1, description="constraints must hold at this upper bound of the prediction")
    ref_point: list[float] | None = Field(default=None, description="hypervolume reference point (default: 1.1 x the worst corner)")
    latency_backend: Literal["torch", "onnxruntime"] = "torch"
    validate_top: int = Field(default=8, ge=0, description="front members evaluated for real after the search")
    linas: LinasConfig = LinasConfig()
    wandb: Literal["offline", "online", "disabled"] = "offline"

    @field_validator("objectives")
    @classmethod
    def check_objectives(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one objective")
        for name in v:
            if name not in ("loss", "params", "flops", "memory") and not name.startswith("latency@"):
                raise ValueError(f"{name!r} is not one of loss, latency@<device>, params, flops, memory")
        if len(set(v)) != len(v):
            raise ValueError(f"has duplicates {v}")
        return v

    @field_validator("constraints")
    @classmethod
    def check_constraints(cls, v: list[str]) -> list[str]:
        for text in v:
            Constraint.parse(text)  # raises with the expected form
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        from .engines import OPTUNA_ALGORITHMS, PYMOO_ALGORITHMS

        allowed = {"pymoo": PYMOO_ALGORITHMS, "optuna": OPTUNA_ALGORITHMS, "linas": ("nsga2",), "random": ("nsga2", "random")}[self.engine]
        if self.algorithm not in allowed:
            raise field_error("algorithm", f"{self.algorithm!r} is not one of {', '.join(allowed)} for engine {self.engine!r}")
        if self.ref_point is not None and len(self.ref_point) != len(self.objectives):
            raise field_error("ref_point", f"has {len(self.ref_point)} values for {len(self.objectives)} objectives")
        if self.workers > 1 and self.engine != "optuna":
            raise field_error("workers", f"{self.workers} workers need engine 'optuna' (got {self.engine!r})")
        return self
