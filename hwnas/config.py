"""The experiment config: one YAML file validated into typed, frozen objects.

Every stage reads the same file. A wrong field, type or value raises `ConfigError` with one line
naming the field, the bad value and what is allowed; unknown keys and duplicate keys are errors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from yaml.constructor import ConstructorError

from hwnas.core.config import Section, Seed, field_error
from hwnas.core.errors import ConfigError
from hwnas.export.config import ExportConfig
from hwnas.latency.config import LatencyConfig
from hwnas.predictors.config import PredictorsConfig
from hwnas.search.config import SearchConfig
from hwnas.search.objectives import split_table_key
from hwnas.search_space import SearchSpaceConfig
from hwnas.supernet.config import TrainConfig

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`) and refuses a key
    given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` keys may be overridden one by one
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: the base class refuses it
                continue
            if first is not None:
                raise ConstructorError(None, None, f"duplicate key {key!r} (first given at line {first + 1})",
                                       key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # Python refuses to parse integers of more than 4300 digits
            raise ConstructorError(None, None, f"an integer of {len(node.value)} characters is too long",
                                   node.start_mark) from None


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)
MAX_NODES = 100_000  # values a config may hold once its YAML aliases are expanded (the quickstart: ~100)


def _expanded_size(root: yaml.Node) -> int:
    """How many values the document rooted at `root` holds once every alias is expanded (a shared
    node counts once per use), computed without expanding anything; a `ConstructorError` for an
    alias that contains itself."""
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in size:
            continue
        kids = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
            node.value if isinstance(node, yaml.SequenceNode) else []
        if children_done:
            size[id(node)] = 1 + sum(size[id(k)] for k in kids)
            continue
        if any(k is node for k in kids) or (id(node), None) in size:
            raise ConstructorError(None, None, "an alias that contains itself", node.start_mark)
        size[(id(node), None)] = 0  # on the path: meeting it again below is a cycle
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in size)
    return size[id(root)]
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class ExperimentConfig(Section):
    """Top level of an experiment YAML."""

    name: str = Field(max_length=100, description="run name (at most 100 characters: it names a folder); the run "
                                                  "directory defaults to runs/<name>")
    run_dir: str | None = Field(default=None, description="folder holding every stage's outputs; null: runs/<name>; a "
                                "folder another experiment (other name, space or seed) wrote to is refused")
    seed: Seed = Field(default=0, description="experiment seed: the supernet's initialization and every training "
                       "step's subnets and batches, the predictors' draws (unless predictors.seed) and the search")
    search_space: SearchSpaceConfig = Field(default=SearchSpaceConfig(), description="the searchable choices of every "
                                            "dimension and the fixed model sizes; every stage of a run reads the same")
    train: TrainConfig = Field(default=TrainConfig(), description="supernet training (`hwnas train`): data, schedule, "
                               "sandwich rule and distillation, checkpoints")
    latency: LatencyConfig = Field(default=LatencyConfig(), description="latency tables (`hwnas latency`): workload, "
                                   "devices and runtimes, measurement protocol, correction and fidelity report")
    predictors: PredictorsConfig = Field(default=PredictorsConfig(), description="accuracy predictors (`hwnas "
                                         "predictors`): which subnets are evaluated, how, and which regressors compete")
    search: SearchConfig = Field(default=SearchConfig(), description="the multi-objective search (`hwnas search`): "
                                 "objectives, constraints, engine, budget and Optuna storage")
    export: ExportConfig = Field(default=ExportConfig(), description="defaults of `hwnas export`: which front member, "
                                 "fine-tuning, the ONNX checks and the report")
    # where the config came from: the YAML file and its --set overrides (recorded in the run directory)
    _origin: dict[str, Any] = PrivateAttr(default_factory=lambda: {"file": None, "overrides": []})

    @property
    def origin(self) -> dict[str, Any]:
        return dict(self._origin)

    @field_validator("name")
    @classmethod
    def check_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"must be letters, digits, '.', '_' or '-' (not starting with a symbol), got {v!r}")
        return v

    @field_validator("run_dir")
    @classmethod
    def check_run_dir_text(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or "\0" in v):
            raise ValueError(f"must be a folder's path (omit it for runs/<name>), got {v!r}")
        return v

    @model_validator(mode="after")
    def _fits_block(self) -> ExperimentConfig:
        block = self.search_space.block_size
        for name in ("train", "latency", "predictors"):
            seq_len = getattr(self, name).seq_len
            if seq_len is not None and seq_len > block:
                raise field_error(f"{name}.seq_len", f"{seq_len} exceeds search_space.block_size {block}")
        windows = {"train": self.train.seq_len, "predictors": self.predictors.seq_len, "export": self.train.seq_len}
        for name, seq_len in windows.items():  # an evaluation reads whole windows of the sequence length
            tokens, seq_len = getattr(self, name).eval_tokens, seq_len or block
            if tokens < seq_len:
                raise field_error(f"{name}.eval_tokens", f"{tokens} is less than one validation window of {seq_len} tokens "
                                  f"({'train.seq_len' if name != 'predictors' else 'predictors.seq_len'} or "
                                  f"search_space.block_size); at least {seq_len}")
        learned = self.search_space.positions == "learned"  # (rope and none decode past the block size)
        if learned and self.latency.decode_context is not None and self.latency.decode_context >= block:
            raise field_error("latency.decode_context", f"{self.latency.decode_context} leaves no room for a new token in "
                              f"search_space.block_size {block} with learned positions (at most {block - 1}; "
                              "search_space.positions: rope or none decode past it)")
        for target in self.search.latency_targets():  # each latency the search names needs its table
            device, runtime, workload = split_table_key(target)
            if workload not in self.latency.workloads:
                raise field_error("search.objectives", f"latency@{target} needs latency.workloads to include {workload} "
                                  f"(have {self.latency.workloads})")
            if device not in self.latency.devices or runtime not in self.latency.backends:
                raise field_error("search.objectives", f"latency@{target} needs latency.devices to include {device} and "
                                  f"latency.backends to include {runtime} (have {self.latency.devices} and "
                                  f"{self.latency.backends}); or set search.latency_backend / name another runtime")
        return self

    @property
    def run_path(self) -> Path:
        return Path(self.run_dir) if self.run_dir else Path("runs") / self.name

    def check_run_dir(self, run_dir: str | Path | None = None) -> None:
        """Refuse a run directory (default: this config's) that belongs to another experiment or is
        not a run directory (`core.rundir`); writes nothing (each stage records the owner
        when it starts writing)."""
        from hwnas.core.rundir import claim_run_dir

        claim_run_dir(run_dir or self.run_path, self.search_space.model_dump(mode="json"), self.seed, self.name, write=False)


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


# errors whose message does not show the bad value: it is appended as "(got ...)"
_SHOW_INPUT = ("literal_error", "int_parsing", "greater_than", "greater_than_equal", "less_than", "less_than_equal",
               "finite_number", "string_too_short", "string_too_long")


def _show(value: Any) -> str:
    """repr of a bad value, cut short: a value of thousands of digits or characters is one line too."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value).bit_length() > 200:
        return f"an integer of about {int(abs(value).bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _one_line(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"]) + ((err["ctx"]["field"],) if "field" in err.get("ctx", {}) else ())
    field = _loc(loc)
    msg = " ".join(err["msg"].removeprefix("Value error, ").split())
    if err["type"] in ("missing",):
        return f"{field}: required field is missing"
    if err["type"].endswith("_type") or err["type"] in _SHOW_INPUT:
        return f"{field}: {msg.rstrip('.')} (got {_show(err.get('input'))})"
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


def read_yaml(text: str) -> Any:
    """One YAML document read as a config is read: `_Loader` (1e-3 a float, no key twice), and no
    more than `MAX_NODES` values once its aliases are expanded (raises `yaml.YAMLError`)."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None and (n := _expanded_size(node)) > MAX_NODES:
            raise ConstructorError(None, None, f"it expands to {n:,} values through its aliases (at most {MAX_NODES:,})",
                                   node.start_mark)
        return loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()


def apply_overrides(data: Any, overrides: list[str] | tuple[str, ...], source: str) -> Any:
    """`data` with each `KEY=VALUE` of `overrides` set (KEY dotted, e.g. train.steps; VALUE read as a
    YAML scalar or flow list, so 600 is an integer and [1, 2] a list), before validation, so a wrong
    key or value is the same one-line error as in the file."""
    if not overrides:
        return data
    data = dict(data) if isinstance(data, dict) else {}
    for item in overrides:
        key, eq, text = item.partition("=")
        if not eq or not key.strip() or any(not part for part in key.split(".")):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted KEY, e.g. train.steps=600")
        try:
            value = read_yaml(text) if text.strip() else ""
        except (yaml.YAMLError, ValueError, RecursionError) as e:
            why = " ".join(str(getattr(e, "problem", None) or e).split())
            raise ConfigError(f"--set {key}: {_show(text)} is not a YAML value ({why})") from None
        node, parts = data, key.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[:i + 1])} is a value, not a section")
            else:
                child = node[part] = dict(child)
            node = child
        node[parts[-1]] = value
    return data


def export_overrides(overrides: list[str] | tuple[str, ...]) -> ExportConfig:
    """The `export:` section from `--set export.KEY=VALUE` alone (`hwnas export` without --config); any
    other key is refused (it would be silently ignored)."""
    data = apply_overrides({}, overrides, "--set")
    other = sorted(set(data) - {"export"})
    if other:
        raise ConfigError(f"--set {other[0]}...: without --config only export.* keys apply; pass --config EXPERIMENT.yaml "
                          "for the others")
    if not isinstance(data.get("export"), dict):
        raise ConfigError("--set export: expected export.KEY=VALUE, e.g. export.eval_tokens=16384")
    try:
        return ExportConfig.model_validate(data["export"])
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, "--set export")) from None


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """Read and validate an experiment YAML file, with `--set KEY=VALUE` overrides (raises `ConfigError`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:  # unreadable, or not text: still one line, no traceback
        raise ConfigError(f"{path}: cannot read config file: {e}") from None
    try:
        data = read_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # e.g. a ReaderError spans lines
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    except ValueError as e:  # a value YAML parses but Python cannot hold, e.g. an integer of 5000 digits
        raise ConfigError(f"{path}: not a usable YAML value: {' '.join(str(e).split())}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    cfg = parse_config(apply_overrides(data, overrides, str(path)), str(path) + (" with --set" if overrides else ""))
    cfg._origin = {"file": str(path), "overrides": list(overrides)}
    return cfg


def resolved_yaml(cfg: ExperimentConfig) -> str:
    """The config as it ran, every default filled in, headed by where it came from: the YAML file and
    its --set overrides, in order."""
    origin = cfg.origin
    head = f"# resolved by hwnas from {origin['file'] or 'a config object'}"
    head += "".join(f"\n#   --set {o}" for o in origin["overrides"]) + "\n"
    return head + yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
