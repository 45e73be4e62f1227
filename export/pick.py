"""`pick_member`: choose one member of a saved Pareto front by index, arch key, or rule.

    pick_member(front, "2")                                    # the front's member #2 (front.json order)
    pick_member(front, "e64-L2:h2r2-rms-pre-lin-mlp-q8|...")   # the member with this arch key
    pick_member(front, "min loss where latency@cpu <= 5ms")    # a rule (latency@cpu: the front's CPU runtime)
    pick_member(front, "min loss where latency@cpu:p90 <= 6ms") # the front's p90 CPU latency

A rule is `min|max <objective> [where <constraint> [and <constraint> ...]]`; constraints are
written as in the search config (`search.objectives.Constraint`: `latency@cpu <= 5ms`,
`params <= 2e6`, `memory < 1MiB`) and compare the front's own objective values. Ties go to the
earlier member. Every failure is one line naming the pick (cut short if long) and what would
have been allowed; an index of any length, even beyond Python's integer-parsing limit, is refused
by its length before it is parsed.
"""

from __future__ import annotations

import operator
import re
from pathlib import Path
from typing import Any

from hwnas.core.errors import HwnasError
from hwnas.search.objectives import Constraint, ObjectiveError, latency_target, resolve_name, same_latency

RULE_FORM = "'min|max <objective> [where <constraint> [and <constraint> ...]]'"
_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
_INDEX = re.compile(r"^[+-]?\d+$")
_ARCH_KEY = re.compile(r"^e\d+-L\d+:")
MAX_INDEX_DIGITS = 18  # no front has 10**18 members


class PickError(HwnasError, ValueError):
    """A `--pick` that names no front member (bad index, unknown key or objective, no match, bad syntax)."""


def _fmt(name: str, value: float) -> str:
    if name.startswith("latency@"):
        return f"{value:.3g} ms"
    if name == "memory":
        return f"{value / 2**20:.3g} MiB"
    return f"{value:.4g}"


def _shown(text: str) -> str:
    """repr of a pick, cut short: a pick of thousands of characters still makes a one-line error."""
    return repr(text) if len(text) <= 80 else f"{text[:60]!r}... ({len(text)} characters)"


def _load(front: dict[str, Any] | str | Path) -> dict[str, Any]:
    from hwnas.search.pareto import read_front

    if isinstance(front, dict):
        return front
    path = Path(front)
    return read_front(path if path.is_dir() else path.parent)


def pick_member(front: dict[str, Any] | str | Path, pick: str | int) -> tuple[int, dict[str, Any]]:
    """(index, member) of the front member that `pick` names; `front` is the parsed front.json
    (or its path, or the folder holding it). Raises `PickError` with a one-line reason."""
    data = _load(front)
    members, names = data.get("front") or [], list(data.get("objectives") or [])
    if isinstance(pick, bool) or not isinstance(pick, (str, int)):
        raise PickError(f"pick: expected a front index, an arch key or a rule {RULE_FORM}, got {type(pick).__name__}")
    # an int pick is shown through its digits only when it has few (str() refuses past 4300 digits)
    text = pick.strip() if isinstance(pick, str) else str(pick) if pick.bit_length() <= 60 else "9" * 19
    if not members:
        raise PickError(f"pick {_shown(text)}: the front holds no members")
    n = len(members)
    if _INDEX.match(text):
        digits = len(text.lstrip("+-"))
        i = int(text) if digits <= MAX_INDEX_DIGITS else None
        if i is None or not 0 <= i < n:
            which = f"#{i}" if i is not None else f"with an index of {digits} digits"
            raise PickError(f"pick {_shown(text)}: no front member {which}; the front has {n} member{'s' * (n != 1)} "
                            f"(indices 0..{n - 1})")
        return i, members[i]
    for i, m in enumerate(members):
        if m["key"] == text:
            return i, m
    if re.match(r"^(min|max)\b", text, re.IGNORECASE):
        return _pick_by_rule(text, members, names)
    if _ARCH_KEY.match(text):
        raise PickError(f"pick {_shown(text)}: no front member has this arch key; the front has {n} member{'s' * (n != 1)} "
                        "(list them with `hwnas pareto RUN_DIR`)")
    raise PickError(f"pick {_shown(text)}: expected a front index (0..{n - 1}), an arch key, or a rule {RULE_FORM}, "
                    f"e.g. 'min {names[0] if names else 'loss'}' (objectives: {', '.join(names)})")


def _pick_by_rule(rule: str, members: list[dict[str, Any]], names: list[str]) -> tuple[int, dict[str, Any]]:
    have = ", ".join(names)
    sense, _, rest = rule.partition(" ")
    sense, rest = sense.lower(), rest.strip()
    objective, _, tail = rest.partition(" ")
    if not objective:
        raise PickError(f"pick {_shown(rule)}: expected an objective after {sense!r} (the front has: {have}); form: {RULE_FORM}")
    objective = _resolved(rule, objective, names)
    tail = tail.strip()
    constraints: list[Constraint] = []
    if tail:
        word, _, cond = tail.partition(" ")
        if word.lower() != "where":
            raise PickError(f"pick {_shown(rule)}: expected 'where <constraint>' after {objective!r}, got {_shown(tail)}; form: {RULE_FORM}")
        parts = re.split(r"\s+and\s+", cond.strip(), flags=re.IGNORECASE) if cond.strip() else []
        if not parts or any(not p.strip() for p in parts):
            raise PickError(f"pick {_shown(rule)}: expected a constraint after 'where'/'and', e.g. 'latency@cpu <= 5ms'")
        for part in parts:
            try:
                c = Constraint.parse(part)
            except ObjectiveError as e:
                raise PickError(f"pick {_shown(rule)}: {e}") from None
            constraints.append(c.renamed(_resolved(rule, c.objective, names, c.text)))
    col = {name: [float(m["objectives"][j]) for m in members] for j, name in enumerate(names)}

    def holds(c: Constraint, i: int) -> bool:
        return _OPS[c.op](col[c.objective][i], c.bound)

    ok = [i for i in range(len(members)) if all(holds(c, i) for c in constraints)]
    if not ok:
        raise PickError(f"pick {_shown(rule)}: {_why_none(constraints, col, holds, len(members))}")
    values = col[objective]
    best = min(ok, key=lambda i: (values[i] if sense == "min" else -values[i], i))
    return best, members[best]


def _resolved(rule: str, name: str, names: list[str], within: str | None = None) -> str:
    """The front's objective that `name` means (`latency@cpu` is the front's only CPU latency),
    else a `PickError` naming the front's objectives."""
    where = f" in {_shown(within)}" if within else ""
    try:
        found = resolve_name(name, names)
        target = latency_target(name)
    except ObjectiveError as e:
        raise PickError(f"pick {_shown(rule)}: {e}") from None
    if found:
        return found
    if target and target[1] is None and same_latency(name, names):
        raise PickError(f"pick {_shown(rule)}: {name!r}{where} is ambiguous, the front has latency on several runtimes: "
                        f"name one ({', '.join(same_latency(name, names))})")
    raise PickError(f"pick {_shown(rule)}: unknown objective {_shown(name)}{where}; the front has: {', '.join(names)}")


def _why_none(constraints: list[Constraint], col: dict[str, list[float]], holds, n: int) -> str:
    """Why no member meets all constraints: the first one no member meets alone (with the closest
    value), else that they hold only apart."""
    for c in constraints:
        if not any(holds(c, i) for i in range(n)):
            lower = c.op in ("<=", "<")
            v = min(col[c.objective]) if lower else max(col[c.objective])
            if c.objective.startswith("latency@"):
                which = "fastest" if lower else "slowest"
            else:
                which = "lowest" if lower else "highest"
            return f"no front member has {c.text} (the {which} has {_fmt(c.objective, v)})"
    alone = "; ".join(f"{c.text} alone: {sum(holds(c, i) for i in range(n))} of {n}" for c in constraints)
    return f"no front member meets {' and '.join(c.text for c in constraints)} together ({alone})"
