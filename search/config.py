"""The `search:` section of the experiment config.

A storage URL is checked when the config loads: its SQLAlchemy driver must be installed, and a
SQLite or journal file must be writable where it points, so a typo is one line, not a traceback
after the search has started.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from hwnas.core.config import MAX_WORKERS, Section, field_error
from hwnas.core.io import unwritable

from .objectives import (
    LATENCY_RUNTIMES,
    Constraint,
    ObjectiveError,
    canonical_name,
    latency_target,
    table_key,
)

ENGINES = ("pymoo", "optuna", "linas", "random")

# Bounds: predictor evaluations take well under a millisecond each, so 10**8 candidates is a day;
# a real evaluation (linas, validate_top) takes a second or more, so 10**5 is days; populations
# beyond this are typos on any machine (worker processes: MAX_WORKERS)
MAX_BUDGET = 10**8
MAX_REAL = 10**5
MAX_POPULATION = 10**5


class LinasConfig(Section):
    initial: int = Field(default=20, gt=0, le=MAX_REAL, description="random archs evaluated for real (validation loss "
                         "on the supernet) before the first predictor fit")
    per_iteration: int = Field(default=10, gt=0, le=MAX_REAL, description="archs evaluated for real per iteration, "
                               "picked evenly along the predicted front")
    inner_budget: int = Field(default=3000, gt=0, le=MAX_BUDGET, description="predictor evaluations of each "
                              "iteration's inner NSGA-II search")


class SearchConfig(Section):
    objectives: list[str] = Field(default_factory=lambda: ["loss", "latency@cpu"],
                                  description="quantities to minimize: loss (validation loss; predicted, real for linas), "
                                  "latency@<device>[/<runtime>][:<statistic>] (ms, from the latency table), params, "
                                  "flops (per sequence of block_size tokens), memory (bytes at deploy precision); a "
                                  "latency without a runtime is latency_backend's")
    constraints: list[str] = Field(default_factory=list, description="bounds every front member must meet, "
                                   "'<quantity> <=|<|>=|> <number>[unit]' (units ms, us, s; k, m, g; b, kb, mb, gb, "
                                   "kib, mib, gib), e.g. 'latency@cpu/torch <= 5ms', 'params <= 2e6'")
    engine: str = Field(default="pymoo", description="a registered engine (search.engines): pymoo (evolutionary), "
                        "optuna (a study several workers share), linas (predictor in the loop, real losses), random")
    algorithm: str = Field(default="nsga2", description="the engine's algorithm: pymoo nsga2|nsga3|smsemoa; optuna "
                           "nsga2|nsga3|tpe|random; linas nsga2; random nsga2|random (both uniform sampling)")
    budget: int = Field(default=10000, gt=0, le=MAX_BUDGET, description="candidates evaluated (on predictors and "
                        "tables; for linas, real evaluations on the supernet, seconds each)")
    population: int = Field(default=100, gt=1, le=MAX_POPULATION, description="population size of the evolutionary "
                            "algorithms (pymoo, optuna's nsga2/nsga3; linas' inner search takes at most 50)")
    storage: str | None = Field(default=None, description="Optuna storage URL: sqlite:///<path>, "
                                "postgresql+<driver>://... (to share a study across machines) or journal:<path>; "
                                "default: SQLite file search/study.db in the run dir")
    study_name: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:@+=-]+$",
        description="Optuna study name; default: <experiment>-<hash of what the trials depend on: the space, seed, "
        "objectives, constraints, risk, algorithm, population, the run's predictor and latency files, and for an engine "
        "other than optuna the engine>; every engine's candidates end up in this study (optuna-dashboard reads it)")
    workers: int = Field(default=1, gt=0, le=MAX_WORKERS, description="Optuna worker processes sharing the study "
                         "(engine optuna only; `hwnas search --workers` overrides)")
    risk: float | None = Field(default=None, gt=0.5, lt=1, description="probability with which constraints must hold: "
                               "a quantity with a known error (predicted loss, table latency) must meet its bound at "
                               "this quantile of its prediction (the upper one for <=); null: the prediction itself")
    ref_point: list[float] | None = Field(default=None, description="hypervolume reference point, one value per "
                                          "objective in its unit; default: 1.1 x the worst value over the smallest, "
                                          "largest and 200 random archs (fix it to compare runs' hypervolumes)")
    latency_backend: Literal["onnxruntime", "torch"] = Field(
        default=LATENCY_RUNTIMES[0], description="the runtime of a latency objective that names none: onnxruntime (what "
        "the export deploys, real int8/int4 kernels) or torch (eager)")
    validate_top: int = Field(default=8, ge=0, le=MAX_REAL, description="front members (spread along it) evaluated "
                              "for real after the search: loss on the supernet, latency re-measured; 0: none")
    linas: LinasConfig = Field(default=LinasConfig(), description="settings of the linas engine (ignored by the others)")
    wandb: Literal["offline", "online", "disabled"] = Field(default="offline", description="W&B mode of the search "
                                                            "run (offline: `wandb sync` later)")
    wandb_project: str = Field(default="hwnas", description="W&B project the search is logged to")

    @field_validator("objectives")
    @classmethod
    def check_objectives(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("needs at least one objective")
        for name in v:
            if name not in ("loss", "params", "flops", "memory") and not name.startswith("latency@"):
                raise ValueError(f"{name!r} is not one of loss, latency@<device>[/<runtime>][:<statistic>], params, flops, memory")
            try:
                latency_target(name)
            except ObjectiveError as e:
                raise ValueError(str(e)) from None
        if len(set(v)) != len(v):
            raise ValueError(f"has duplicates {v}")
        return v

    @field_validator("constraints")
    @classmethod
    def check_constraints(cls, v: list[str]) -> list[str]:
        for text in v:
            c = Constraint.parse(text)  # raises with the expected form
            if not math.isfinite(c.bound):
                raise ValueError(f"{text!r}: the bound must be a finite number")
            try:
                latency_target(c.objective)
            except ObjectiveError as e:
                raise ValueError(str(e)) from None
        return v

    @field_validator("storage")
    @classmethod
    def check_storage(cls, v: str | None) -> str | None:
        why = storage_problem(v) if v is not None else None
        if why:
            raise ValueError(why)
        return v

    @field_validator("engine")
    @classmethod
    def check_engine(cls, v: str) -> str:
        from .engines import engines

        names = [repr(n) for n in engines()]
        if v not in engines():
            raise PydanticCustomError("literal_error", "Input should be {expected}",
                                      {"expected": ", ".join(names[:-1]) + f" or {names[-1]}"})
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SearchConfig:
        from .engines import engines

        allowed = engines()[self.engine].algorithms
        if self.algorithm not in allowed:
            raise field_error("algorithm", f"{self.algorithm!r} is not one of {', '.join(allowed)} for engine {self.engine!r}")
        if self.ref_point is not None and len(self.ref_point) != len(self.objectives):
            raise field_error("ref_point", f"has {len(self.ref_point)} values for {len(self.objectives)} objectives")
        why = workers_problem(self.workers, self.engine, self.storage)
        if why:
            raise field_error("workers", why)
        # every latency name carries its runtime from here on (front, plots, W&B, export)
        objectives = [canonical_name(n, self.latency_backend) for n in self.objectives]
        if len(set(objectives)) != len(objectives):
            raise field_error("objectives", f"{self.objectives} name one objective twice once latency_backend "
                              f"{self.latency_backend!r} is filled in")
        constraints = []
        for text in self.constraints:
            c = Constraint.parse(text)
            constraints.append(c.renamed(canonical_name(c.objective, self.latency_backend)).text)
        object.__setattr__(self, "objectives", objectives)
        object.__setattr__(self, "constraints", constraints)
        return self

    def quantities(self) -> set[str]:
        """Every objective and constrained quantity the search evaluates."""
        return set(self.objectives) | {Constraint.parse(c).objective for c in self.constraints}

    def latency_targets(self) -> list[str]:
        """The table every latency objective and constraint reads (whatever statistic), sorted:
        '<device>/<runtime>' (prefill) or '<device>/<runtime>:decode' (`objectives.table_key`)."""
        return sorted({k for k in map(table_key, self.quantities()) if k is not None})


def workers_problem(workers: int, engine: str, storage: str | None) -> str | None:
    """Why `workers` processes cannot share this search (None if they can): only an Optuna study
    in a storage that other processes reach is shared."""
    from .engines import engines

    if workers > 1 and not engines()[engine].parallel:
        parallel = " or ".join(repr(n) for n, e in engines().items() if e.parallel)
        return f"{workers} workers need engine {parallel} (got {engine!r})"
    if workers > 1 and storage is not None and storage_file(storage) == "":
        return f"{workers} workers cannot share an in-memory SQLite study; give storage a file (sqlite:///path/study.db)"
    return None


def storage_file(url: str) -> str | None:
    """The file of a SQLite or journal storage URL; "" for an in-memory SQLite one; None for a server's."""
    if url.startswith("journal:"):
        return url.removeprefix("journal:")
    if not url.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(url).database or ""
    return "" if database == ":memory:" or database.startswith("file::memory:") else database


def storage_problem(url: str) -> str | None:
    """Why the Optuna storage `url` cannot be opened here (None if it can): a journal file or SQLite
    database that cannot be written where it points, a URL SQLAlchemy cannot parse, or a driver
    that is not installed. The URL itself is not repeated (it may hold a password)."""
    if url.startswith("journal:"):
        path = url.removeprefix("journal:")
        if not path.strip():
            return "'journal:' needs a file path, e.g. journal:runs/NAME/study.log"
        why = unwritable(path, folder=False)
        return f"journal file {path}: {why}" if why else None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as e:
        return (f"not a storage URL ({' '.join(str(e).split())}); expected journal:<path>, sqlite:///<path>, "
                "postgresql+<driver>://... or another SQLAlchemy URL")
    try:
        dialect = parsed.get_dialect()
    except NoSuchModuleError:
        return f"no SQLAlchemy dialect or driver {parsed.drivername!r} is installed (e.g. sqlite, postgresql+psycopg2)"
    try:
        dialect.import_dbapi()
    except ImportError as e:
        return f"the driver of {parsed.drivername!r} is not installed ({e}); pip install it or use another URL"
    file = storage_file(url) if parsed.get_backend_name() == "sqlite" else None
    if file:
        why = unwritable(file, folder=False)
        return f"SQLite file {file}: {why}" if why else None
    return None
