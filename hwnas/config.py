"""The experiment config: one YAML file validated into typed, frozen objects.

Every stage reads the same file. A wrong field, type or value raises `ConfigError` with one line
naming the field, the bad value and what is allowed; unknown keys are errors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from hwnas.export.config import ExportConfig
from hwnas.latency.config import LatencyConfig
from hwnas.predictors.config import PredictorsConfig
from hwnas.search.config import SearchConfig
from hwnas.search_space import ConfigError, SearchSpaceConfig
from hwnas.search_space.config import Section
from hwnas.supernet.config import TrainConfig

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class ExperimentConfig(Section):
    """Top level of an experiment YAML."""

    name: str = Field(description="run name; the run directory defaults to runs/<name>")
    run_dir: str | None = None
    seed: int = 0
    search_space: SearchSpaceConfig = SearchSpaceConfig()
    train: TrainConfig = TrainConfig()
    latency: LatencyConfig = LatencyConfig()
    predictors: PredictorsConfig = PredictorsConfig()
    search: SearchConfig = SearchConfig()
    export: ExportConfig = ExportConfig()

    @field_validator("name")
    @classmethod
    def check_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"must be letters, digits, '.', '_' or '-' (not starting with a symbol), got {v!r}")
        return v

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name

    def claim_run_dir(self, run_dir: str | Path | None = None) -> None:
        """Refuse a run directory (default: this config's) that belongs to another experiment
        before anything is written there; record this one as its owner (`search_space.rundir`)."""
        from hwnas.search_space.rundir import claim_run_dir

        claim_run_dir(run_dir or self.run_path, self.search_space.model_dump(mode="json"), self.seed, self.name)


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before", "function-plain") or str(part).startswith(("function-", "literal[", "list[")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or "config"


def _one_line(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"]) + ((err["ctx"]["field"],) if "field" in err.get("ctx", {}) else ())
    field = _loc(loc)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] in ("missing",):
        return f"{field}: required field is missing"
    bad = err.get("input")
    if err["type"].endswith("_type") or err["type"] in ("literal_error", "int_parsing", "greater_than"):
        return f"{field}: {msg.rstrip('.')} (got {bad!r})"
    return f"{field}: {msg}"


def format_validation_error(e: ValidationError, source: str = "config") -> str:
    first = _one_line(e.errors()[0])
    more = len(e.errors()) - 1
    return f"{source}: {first}" + (f" (and {more} more error{'s' * (more > 1)})" if more else "")


def parse_config(data: Any, source: str = "config") -> ExperimentConfig:
    """Validate a loaded YAML document into an `ExperimentConfig` (raises `ConfigError`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def load_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML file (raises `ConfigError`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:  # unreadable, or not text: still one line, no traceback
        raise ConfigError(f"{path}: cannot read config file: {e}") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # e.g. a ReaderError spans lines
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    return parse_config(data, str(path))
