"""Objectives and constraints of a search, evaluated in batches of archs.

An objective maps archs to numbers to minimize: predicted validation loss (from an accuracy
predictor), latency on a device and runtime (from a latency table: `latency@cpu/onnxruntime`,
`latency@cpu/torch`; `latency@cpu` names the search's default runtime) as a statistic of its run
times (the median unless the name says `:p90`, `:p10` or `:min`), parameter count, FLOPs or
memory. Constraints are written like `latency@cpu/torch:p90 <= 5ms` or `params <= 2e6` and evaluated as values
<= 0 (the Optuna / pymoo convention). With `risk` (e.g. 0.9), objectives that know their
uncertainty report their upper `risk` bound to constraints, so a constraint must hold with that
probability.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from hwnas.core.errors import HwnasError
from hwnas.latency.protocol import STATISTICS
from hwnas.latency.runtimes import BACKENDS, DEPLOYED
from hwnas.search_space import ArchConfig, SearchSpace


class ObjectiveError(HwnasError, ValueError):
    """An objective or constraint that cannot be built (unknown name, bad expression, missing input)."""


# the runtimes a latency objective can name (the latency stage's backends); the first is the default,
# the runtime the export deploys
LATENCY_RUNTIMES = (DEPLOYED, *(b for b in BACKENDS if b != DEPLOYED))

# the statistic of the run times a latency objective names after a colon; the first, the median, is
# what a name without one means (and is never written out)
LATENCY_STATISTICS = STATISTICS  # what a table can predict of the run times


def _normal_quantile(p: float) -> float:
    """The standard normal's quantile at `p` (SciPy loaded here, not with the config that reads this module)."""
    from scipy.stats import norm

    return float(norm.ppf(p))


# what a latency objective times after a colon: a prefill (the default, never written out) or one
# decoding step, the time of each generated token (`latency.workloads`)
LATENCY_WORKLOADS = ("prefill", "decode")


def _suffixes(name: str) -> tuple[str | None, str | None]:
    """(workload, statistic) named after the colons of a latency name, each None when not named;
    `ObjectiveError` for anything else, or either named twice."""
    parts = name.split(":")[1:]
    workloads, stats = [p for p in parts if p in LATENCY_WORKLOADS], [p for p in parts if p in LATENCY_STATISTICS]
    other = [p for p in parts if p not in LATENCY_WORKLOADS and p not in LATENCY_STATISTICS]
    if other:
        raise ObjectiveError(f"{name!r}: statistic {other[0]!r} is not one of {', '.join(LATENCY_STATISTICS)} "
                             f"(nor a workload: {', '.join(LATENCY_WORKLOADS)})")
    if len(workloads) > 1 or len(stats) > 1:
        raise ObjectiveError(f"{name!r}: names {'a workload' if len(workloads) > 1 else 'a statistic'} twice; expected "
                             "latency@<device>[/<runtime>][:<workload>][:<statistic>], e.g. latency@cpu/onnxruntime:decode:p90")
    return (workloads or [None])[0], (stats or [None])[0]


def latency_statistic(name: str) -> str | None:
    """The statistic a latency name asks for (`latency@cpu/torch:p90` -> p90; none named: median);
    None for any other name. Raises `ObjectiveError` for a statistic not in `LATENCY_STATISTICS`."""
    if not name.startswith("latency@"):
        return None
    return _suffixes(name)[1] or LATENCY_STATISTICS[0]


def latency_workload(name: str) -> str | None:
    """What a latency name times (`latency@cpu/onnxruntime:decode` -> decode: one generated token;
    none named: prefill); None for any other name."""
    if not name.startswith("latency@"):
        return None
    return _suffixes(name)[0] or LATENCY_WORKLOADS[0]


def tokens_per_s(name: str, value: float) -> float | None:
    """Generated tokens per second of a decode latency `value` (ms per token) of objective `name`;
    None for any other objective."""
    return 1e3 / value if latency_workload(name) == "decode" and value > 0 else None


def decode_objectives(names: list[str]) -> list[str]:
    """The decode latencies among objective `names` (each also shown as tokens/s)."""
    return [n for n in names if latency_workload(n) == "decode"]


def table_key(name: str) -> str | None:
    """The latency table a latency name reads: '<device>/<runtime>' (prefill) or
    '<device>/<runtime>:decode'; None for another name or one without a runtime."""
    target = latency_target(name)
    if target is None or target[1] is None:
        return None
    workload = latency_workload(name)
    return "/".join(target) + ("" if workload == LATENCY_WORKLOADS[0] else f":{workload}")


def split_table_key(key: str) -> tuple[str, str, str]:
    """'<device>/<runtime>[:<workload>]' -> (device, runtime, workload)."""
    target, _, workload = key.partition(":")
    device, _, runtime = target.partition("/")
    return device, runtime, workload or LATENCY_WORKLOADS[0]


def latency_target(name: str) -> tuple[str, str | None] | None:
    """(device, runtime or None) of a latency objective `latency@<device>[/<runtime>][:<statistic>]`;
    None for any other name. Raises `ObjectiveError` for a runtime that is not one of
    `LATENCY_RUNTIMES` or a statistic not in `LATENCY_STATISTICS`."""
    if latency_statistic(name) is None:
        return None
    device, slash, runtime = name.removeprefix("latency@").partition(":")[0].partition("/")
    if slash and runtime not in LATENCY_RUNTIMES:
        raise ObjectiveError(f"{name!r}: runtime {runtime!r} is not one of {', '.join(LATENCY_RUNTIMES)}")
    if not device:
        raise ObjectiveError(f"{name!r}: expected latency@<device>[/<runtime>][:<workload>][:<statistic>], e.g. "
                             "latency@cpu/onnxruntime:p90 or latency@cpu/onnxruntime:decode")
    return device, runtime or None


def latency_name(device: str, runtime: str | None, statistic: str | None = None, workload: str | None = None) -> str:
    """The canonical spelling: `latency@<device>[/<runtime>]`, then `:<workload>` unless prefill and
    `:<statistic>` unless the median."""
    work = "" if workload in (None, LATENCY_WORKLOADS[0]) else f":{workload}"
    stat = "" if statistic in (None, LATENCY_STATISTICS[0]) else f":{statistic}"
    return f"latency@{device}{'/' + runtime if runtime else ''}{work}{stat}"


def canonical_name(name: str, runtime: str) -> str:
    """`name` with its runtime spelled out and a median left implicit: `latency@cpu` ->
    `latency@cpu/<runtime>`, `latency@cpu:median` -> the same; other names as they are."""
    target = latency_target(name)
    return name if target is None else latency_name(target[0], target[1] or runtime, latency_statistic(name),
                                                    latency_workload(name))


def same_latency(name: str, names: Sequence[str]) -> list[str]:
    """The latency names among `names` on `name`'s device with its workload and statistic, whatever their runtime."""
    target = latency_target(name)
    if target is None:
        return []
    stat, work = latency_statistic(name), latency_workload(name)
    return [n for n in names if (t := latency_target(n)) is not None and t[0] == target[0] and latency_statistic(n) == stat
            and latency_workload(n) == work]


def resolve_name(name: str, names: Sequence[str], runtime: str | None = None) -> str | None:
    """The one of `names` that `name` means: itself, or for a latency name the same device and
    statistic with its runtime (given, else `runtime`, else the device's only one with that
    statistic); None if there is none or no single one."""
    if name in names:
        return name
    target = latency_target(name)
    if target is None:
        return None
    if target[1] is not None or runtime:
        full = latency_name(target[0], target[1] or runtime, latency_statistic(name), latency_workload(name))
        if full in names or target[1] is not None:
            return full if full in names else None
    same = same_latency(name, names)
    return same[0] if len(same) == 1 else None


# (mean, std or None) for a batch of archs
BatchFn = Callable[[Sequence[ArchConfig]], tuple[np.ndarray, np.ndarray | None]]


@dataclass(frozen=True)
class Objective:
    name: str  # "loss", "latency@cpu", "params", "flops", "memory"
    unit: str
    fn: BatchFn

    def __call__(self, archs: Sequence[ArchConfig]) -> tuple[np.ndarray, np.ndarray | None]:
        mean, std = self.fn(archs)
        return np.asarray(mean, dtype=float), (None if std is None else np.asarray(std, dtype=float))


_UNITS = {
    "ms": 1.0, "us": 1e-3, "s": 1e3,  # latency in ms
    "k": 1e3, "m": 1e6, "g": 1e9,  # counts
    "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30,  # bytes
}
_UNIT_KIND = {u: "latency" if u in ("ms", "us", "s") else "count" if u in ("k", "m", "g") else "bytes" for u in _UNITS}
_KIND = {"loss": "loss", "params": "count", "flops": "count", "memory": "bytes"}  # and latency@...: latency
QUANTITIES = "loss, latency@<device>[/<runtime>][:<statistic>], params, flops, memory"


def _quantity_kind(name: str) -> str | None:
    """What a constrained quantity measures (latency, loss, count, bytes; its units follow), None if unknown."""
    return "latency" if name.startswith("latency@") else _KIND.get(name)
_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][\w@./:-]*)\s*(<=|>=|<|>)\s*([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


@dataclass(frozen=True)
class Constraint:
    """`objective op bound`; `value(x)` is <= 0 exactly when the constraint holds."""

    objective: str
    op: str
    bound: float
    text: str

    @classmethod
    def parse(cls, text: str) -> Constraint:
        m = _CONSTRAINT.match(text)
        if not m:
            raise ObjectiveError(f"constraint {text!r}: expected '<objective> <=|<|>=|> <number>[unit]', e.g. 'latency@cpu <= 5ms'")
        name, op, number, unit = m.groups()
        kind = _quantity_kind(name)
        if kind is None:
            raise ObjectiveError(f"constraint {text!r}: unknown quantity {name!r}; allowed: {QUANTITIES}")
        scale = 1.0
        if unit:
            fits = sorted(u for u, k in _UNIT_KIND.items() if k == kind)
            if unit.lower() not in _UNITS:
                raise ObjectiveError(f"constraint {text!r}: unknown unit {unit!r}; allowed for {name}: "
                                     + (", ".join(fits) + " or none" if fits else "none"))
            if _UNIT_KIND[unit.lower()] != kind:
                allowed = f"allowed: {', '.join(fits)} or none" if fits else "it takes no unit"
                raise ObjectiveError(f"constraint {text!r}: unit {unit!r} does not fit {name} ({kind}); {allowed}")
            scale = _UNITS[unit.lower()]
        try:
            bound = float(number) * scale
        except ValueError:  # e.g. "1.2.3"
            raise ObjectiveError(f"constraint {text!r}: {number!r} is not a number") from None
        if not math.isfinite(bound):
            raise ObjectiveError(f"constraint {text!r}: the bound must be a finite number")
        if bound < 0:
            raise ObjectiveError(f"constraint {text!r}: the bound must be >= 0 ({name} is never negative)")
        return cls(objective=name, op=op, bound=bound, text=text.strip())

    def value(self, x: np.ndarray) -> np.ndarray:
        return x - self.bound if self.op in ("<=", "<") else self.bound - x

    def renamed(self, objective: str) -> Constraint:
        """The same constraint on `objective` (its text rewritten to match)."""
        return Constraint(objective, self.op, self.bound, objective + self.text[len(self.objective):])


class ObjectiveSet:
    """The objectives to minimize and the constraints to meet, evaluated together in batches."""

    def __init__(self, objectives: list[Objective], constraints: list[Constraint] | None = None,
                 extra: dict[str, Objective] | None = None, risk: float | None = None):
        self.objectives = objectives
        self.constraints = constraints or []
        self.extra = extra or {}  # constrained quantities that are not objectives
        self.risk = risk
        known = {o.name for o in objectives} | set(self.extra)
        for c in self.constraints:
            if c.objective not in known:
                raise ObjectiveError(f"constraint {c.text!r}: unknown quantity {c.objective!r}; known: {', '.join(sorted(known))}")

    def units(self) -> dict[str, str]:
        """Each objective's unit ('ms', 'nats/byte', 'FLOPs', ...), by name."""
        return {o.name: o.unit for o in self.objectives}

    @property
    def names(self) -> list[str]:
        return [o.name for o in self.objectives]

    @property
    def constraint_names(self) -> list[str]:
        return [c.text for c in self.constraints]

    def evaluate(self, archs: Sequence[ArchConfig]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """F (n, n_objectives), G (n, n_constraints), and the std of each objective that has one."""
        values, stds = {}, {}
        for o in [*self.objectives, *self.extra.values()]:
            values[o.name], std = o(archs)
            if std is not None:
                stds[o.name] = std
        F = np.stack([values[o.name] for o in self.objectives], axis=1) if self.objectives else np.zeros((len(archs), 0))
        z = _normal_quantile(self.risk) if self.risk else 0.0
        G = np.zeros((len(archs), len(self.constraints)))
        for j, c in enumerate(self.constraints):
            x = values[c.objective]
            if self.risk and c.objective in stds:  # the upper risk bound must meet the budget
                x = x + z * stds[c.objective] if c.op in ("<=", "<") else x - z * stds[c.objective]
            G[:, j] = c.value(x)
        return F, G, stds


# --- the standard objectives ----------------------------------------------------------------------
def analytic_objective(name: str, space: SearchSpace) -> Objective:
    """params, flops (per sequence at the block size) or memory (bytes at deploy precision)."""
    fns = {
        "params": (lambda a: space.params(a)["total"], "count"),
        "flops": (lambda a: space.flops(a), "FLOPs"),
        "memory": (lambda a: space.memory(a)["total"], "bytes"),
    }
    if name not in fns:
        raise ObjectiveError(f"objective {name!r}: not one of {', '.join(fns)}")
    f, unit = fns[name]
    return Objective(name, unit, lambda archs: (np.array([f(a) for a in archs], dtype=float), None))


def predictor_objective(predictor, name: str = "loss", unit: str = "nats/byte") -> Objective:
    """A predicted quantity (default: validation loss); with its std when the predictor gives one."""

    def fn(archs):
        try:
            mean, std = predictor.predict(list(archs), return_std=True)
        except TypeError:
            mean, std = predictor.predict(list(archs)), None
        return mean, std

    return Objective(name, unit, fn)


def latency_objective(table, name: str, rel_error: float | None = None, unit: str = "ms") -> Objective:
    """Predicted latency in ms from a latency table (`table.predict`: the statistic `name` asks
    for); its std is `rel_error` x the prediction (the table's measured relative error on held-out
    subnets, on that statistic), when known."""

    def fn(archs):
        ms = np.array([1e3 * table.predict(a) for a in archs], dtype=float)
        return ms, (None if rel_error is None else ms * rel_error)

    return Objective(name, unit, fn)


def build_objectives(names: list[str], constraints: list[str], space: SearchSpace, predictor=None,
                     latency_tables: dict | None = None, latency_errors: dict | None = None,
                     risk: float | None = None, loss_unit: str = "nats/byte") -> ObjectiveSet:
    """Objectives and constraints by name: 'loss', 'latency@<device>/<runtime>', 'params', 'flops',
    'memory'. `latency_tables` are keyed by `table_key` ('<device>/<runtime>[:decode]'), `latency_errors` by
    '<table key>:<statistic>'. `loss_unit`: what the predictor predicts (nats/byte, or bits/byte
    for a predictor fitted on bpb), shown on the plots' axes."""
    latency_tables, latency_errors = latency_tables or {}, latency_errors or {}

    def make(name: str) -> Objective:
        if name == "loss":
            if predictor is None:
                raise ObjectiveError("objective 'loss': needs a fitted accuracy predictor (run `hwnas predictors` first)")
            return predictor_objective(predictor, unit=loss_unit)
        target = latency_target(name)
        if target is not None:
            key = table_key(name) or target[0]
            if target[1] is None or key not in latency_tables:
                raise ObjectiveError(f"objective {name!r}: no latency table for {key!r} (run `hwnas latency` with device "
                                     f"{target[0]}, backend {target[1] or '<runtime>'} and workload {latency_workload(name)}); "
                                     f"have: {', '.join(latency_tables) or 'none'}")
            stat = latency_statistic(name)
            unit = "ms" if latency_workload(name) == "prefill" else "ms/token"  # a decoding step: one generated token
            return latency_objective(latency_tables[key].for_statistic(stat), name, latency_errors.get(f"{key}:{stat}"), unit)
        return analytic_objective(name, space)

    objectives = [make(n) for n in names]
    parsed = [Constraint.parse(c) for c in constraints]
    extra = {c.objective: make(c.objective) for c in parsed if c.objective not in names}
    return ObjectiveSet(objectives, parsed, extra, risk)
