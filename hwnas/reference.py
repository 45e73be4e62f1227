"""The experiment config's reference (CONFIG.md), rendered from the config models themselves: every
key, dotted, with its type, default, allowed values and description. The descriptions are the
models' `Field(description=...)`; the allowed values come from `Literal` choices, the integer
choices of `core.config.int_choice`, and the ge/gt/le/lt, length and pattern metadata. So the
reference cannot drift from what the config accepts:

    python -m hwnas.reference > CONFIG.md
"""

from __future__ import annotations

import inspect
import json
import re
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from hwnas.config import ExperimentConfig

COMMAND = "python -m hwnas.reference > CONFIG.md"
HEADER = f"<!-- generated from the config models by `{COMMAND}`: edit their descriptions, not this file -->"
INTRO = """\
# Experiment config reference

Every key of an experiment YAML (`experiments/quickstart.yaml` is one), section by section. A dotted
key is a nested mapping (`search.linas.initial` is `initial:` under `linas:` under `search:`), and is
what `--set KEY=VALUE` takes. Every key has a default except `name`; a mapping given must hold its
required keys (a per-layer dimension's `choices`). Unknown keys, wrong types (an integer key takes
integers only) and values outside the allowed range are refused when the config loads.
`hwnas config CONFIG` prints a config with every default filled in."""


# --- values -------------------------------------------------------------------------------------
def _number(x: Any) -> str:
    """A bound as a reader takes it in: 2**20 rather than 1048576, 10**8 rather than 100000000."""
    if isinstance(x, bool) or not isinstance(x, int):
        return f"{x:g}" if isinstance(x, float) else str(x)
    if x >= 2**16 and x & (x - 1) == 0:
        return f"2**{x.bit_length() - 1}"
    if x >= 2**16 and (x + 1) & x == 0:
        return f"2**{x.bit_length()}-1"
    if x >= 10**4 and re.fullmatch(r"10*", str(x)):
        return f"10**{len(str(x)) - 1}"
    return str(x)


def _value(v: Any) -> str:
    """A default as YAML reads it (JSON's spelling: null, true, "text", [1, 2])."""
    return json.dumps(v.model_dump(mode="json") if isinstance(v, BaseModel) else v)


# --- types and what they allow ------------------------------------------------------------------
def _parts(tp: Any) -> tuple[Any, list[Any]]:
    """(type, metadata) with every `Annotated` layer peeled off and its metadata collected."""
    meta: list[Any] = []
    while get_origin(tp) is Annotated:
        tp, *extra = get_args(tp)
        for m in extra:
            meta += m.metadata if isinstance(m, FieldInfo) else [m]
    return tp, meta


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def type_name(tp: Any) -> str:
    """A type as a YAML writer thinks of it: int, float, str, bool, list of ..., mapping, or null."""
    tp, _ = _parts(tp)
    if _is_union(tp):
        args = [a for a in get_args(tp) if a is not type(None)]
        return " or ".join(type_name(a) for a in args) + (" or null" if len(args) < len(get_args(tp)) else "")
    if get_origin(tp) is Literal:
        return " or ".join(dict.fromkeys(type(a).__name__ for a in get_args(tp)))
    if get_origin(tp) is list:
        return f"list of {type_name(get_args(tp)[0])}"
    if inspect.isclass(tp) and issubclass(tp, BaseModel):
        return "mapping"
    return tp.__name__ if inspect.isclass(tp) else str(tp)


def _bounds(base: Any, meta: list[Any]) -> list[str]:
    """The ge/gt/le/lt, length and pattern metadata of one value as text: 1..10**8, (0, 1), >= 0."""
    low = next(((m.ge, "[") for m in meta if isinstance(m, at.Ge)), None) or \
        next(((m.gt, "(") for m in meta if isinstance(m, at.Gt)), None)
    high = next(((m.le, "]") for m in meta if isinstance(m, at.Le)), None) or \
        next(((m.lt, ")") for m in meta if isinstance(m, at.Lt)), None)
    out = []
    if base is int and low and low[1] == "(":  # an integer > n is one >= n + 1
        low = (low[0] + 1, "[")
    if low and high:
        closed = base is int and low[1] == "[" and high[1] == "]"
        out.append(f"{_number(low[0])}..{_number(high[0])}" if closed else
                   f"{low[1]}{_number(low[0])}, {_number(high[0])}{high[1]}")
    elif low or high:
        sign = {"[": ">=", "(": ">", "]": "<=", ")": "<"}[(low or high)[1]]
        out.append(f"{sign} {_number((low or high)[0])}")
    shortest = next((m.min_length for m in meta if isinstance(m, at.MinLen)), None)
    longest = next((m.max_length for m in meta if isinstance(m, at.MaxLen)), None)
    if longest is not None:
        out.append(f"{shortest}..{longest} characters" if shortest else f"at most {longest} characters")
    out += [f"matches {m.pattern}" for m in meta if getattr(m, "pattern", None)]
    return out


def _int_choices(meta: list[Any]) -> tuple[Any, ...] | None:
    """The integers a `core.config.int_choice` validator allows (held by its closure as `allowed`)."""
    for m in meta:
        code = getattr(getattr(m, "func", None), "__code__", None)
        if code is not None and "allowed" in code.co_freevars:
            return m.func.__closure__[code.co_freevars.index("allowed")].cell_contents
    return None


def allowed(tp: Any, metadata: list[Any] | tuple[Any, ...] = ()) -> list[str]:
    """What a value of type `tp` (with the field's `metadata`) may be, as short phrases."""
    tp, meta = _parts(tp)
    meta = [*metadata, *meta]
    if _is_union(tp):
        return [rule for a in get_args(tp) if a is not type(None) for rule in allowed(a, meta)]
    if get_origin(tp) is Literal:
        return ["one of " + ", ".join(map(str, get_args(tp)))]
    if get_origin(tp) is list:
        inner = allowed(get_args(tp)[0])  # (a list of lists: each entry's rule once)
        return [rule if rule.startswith("each ") else f"each {rule}" for rule in inner] + _bounds(list, meta)
    choices = _int_choices(meta)
    if choices is not None:
        return ["one of " + ", ".join(map(str, choices))]
    return _bounds(tp, meta)


# --- the walk -----------------------------------------------------------------------------------
def _section_type(tp: Any) -> type[BaseModel] | None:
    tp, _ = _parts(tp)
    return tp if inspect.isclass(tp) and issubclass(tp, BaseModel) else None


def rows(model: type[BaseModel], prefix: str = "", instance: BaseModel | None = None) -> list[dict[str, str]]:
    """One row per key of `model` (nested mappings' keys after their own row), dotted under
    `prefix`. `instance`: the default the parent gives this mapping, whose values stand in for
    the keys that have no default of their own."""
    out = []
    for name, field in model.model_fields.items():
        key = prefix + name
        sub = _section_type(field.annotation)
        if field.default is not PydanticUndefined:
            default = field.default
        elif field.default_factory is not None:
            default = field.default_factory()
        else:
            default = getattr(instance, name, PydanticUndefined)
        if sub is not None:
            shown = "see below"
        elif default is PydanticUndefined:
            shown = "required"
        elif field.is_required():  # required when the mapping is written out; its value when it is omitted
            shown = f"`{_value(default)}` (required in a written mapping)"
        else:
            shown = f"`{_value(default)}`"
        out.append({"key": key, "type": type_name(field.annotation), "default": shown,
                    "allowed": "; ".join(allowed(field.annotation, field.metadata)),
                    "description": field.description or ""})
        if sub is not None:
            out += rows(sub, key + ".", default if isinstance(default, BaseModel) else None)
    return out


def cell(text: str) -> str:
    """Table-cell text: pipes escaped everywhere; outside code spans, < > as entities (so <name>
    shows instead of being read as an HTML tag) and * escaped."""
    pieces = text.replace("|", "\\|").split("`")
    for i in range(0, len(pieces), 2):
        pieces[i] = pieces[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
    return "`".join(pieces)


def _table(items: list[dict[str, str]]) -> str:
    lines = ["| key | type | default | allowed | description |", "| --- | --- | --- | --- | --- |"]
    for r in items:
        rule = f"`{r['allowed']}`" if r["allowed"] else ""
        lines.append(f"| `{r['key']}` | {cell(r['type'])} | {cell(r['default'])} | {cell(rule)} | "
                     f"{cell(r['description'])} |")
    return "\n".join(lines)


def _docstring(model: type[BaseModel]) -> str:
    doc = model.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if doc else ""


def config_reference() -> str:
    """CONFIG.md: the header, then the top-level keys and one section per config section."""
    top = {n: f for n, f in ExperimentConfig.model_fields.items() if _section_type(f.annotation) is None}
    parts = [HEADER, INTRO, "## Top level", _table([r for r in rows(ExperimentConfig) if r["key"] in top])]
    for name, field in ExperimentConfig.model_fields.items():
        sub = _section_type(field.annotation)
        if sub is None:
            continue
        parts.append(f"## `{name}`")
        lead = field.description or ""
        parts += [cell(text) for text in (lead[:1].upper() + lead[1:] + "." * bool(lead), _docstring(sub)) if text]
        parts.append(_table(rows(sub, name + ".", field.default)))
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    print(config_reference(), end="")
