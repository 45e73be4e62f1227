"""`ParetoFront`: the non-dominated candidates of a search, their hypervolume, and its history.

All objectives are minimized. A candidate is feasible when every constraint value is <= 0 (the
Optuna / pymoo convention); the front holds feasible candidates only.

A saved front (`front.json`) is read through `read_front`, which checks it against its folder's
manifest and checks every field a reader uses, so a damaged or edited front is refused with one
line instead of exporting the wrong member.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.core.io import ArtifactError, read_json
from hwnas.core.manifest import RUN_FOLDERS, Manifest
from hwnas.search_space import ArchConfig, ArchError

SEARCH_COMMAND = RUN_FOLDERS["search"]
FRONT_FILES = ("front.json", "front.csv", "candidates.csv")
SEARCH_FILES = (*FRONT_FILES, "validation.json", "choices.json", "summary.json")  # what a finished search stage wrote


@dataclass(frozen=True)
class Candidate:
    arch: ArchConfig
    objectives: tuple[float, ...]
    constraints: tuple[float, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # e.g. std, trial number

    @property
    def feasible(self) -> bool:
        return all(c <= 0 for c in self.constraints)

    @property
    def key(self) -> str:
        return self.arch.key()


def non_dominated(F: np.ndarray) -> np.ndarray:
    """Indices of the rows of F (n, m) that no other row dominates (minimization); duplicates of a
    point are all kept."""
    F = np.asarray(F, dtype=float)
    if len(F) == 0:
        return np.zeros(0, dtype=int)
    leq = np.all(F[:, None, :] <= F[None, :, :], axis=2)  # leq[j, i]: row j <= row i everywhere
    lt = np.any(F[:, None, :] < F[None, :, :], axis=2)
    dominated = np.any(leq & lt, axis=0)
    return np.flatnonzero(~dominated)


def hypervolume(F: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume dominated by the rows of F inside the box below the reference point `ref`."""
    from pymoo.indicators.hv import HV

    F = np.asarray(F, dtype=float)
    F = F[np.all(F < ref, axis=1)] if len(F) else F
    return float(HV(ref_point=np.asarray(ref, dtype=float))(F)) if len(F) else 0.0


class ParetoFront:
    """The feasible non-dominated set of all candidates seen, with a hypervolume history."""

    def __init__(self, objective_names: list[str], ref_point: list[float] | np.ndarray, constraint_names: list[str] | None = None):
        self.objective_names = list(objective_names)
        self.constraint_names = list(constraint_names or [])
        self.ref_point = np.asarray(ref_point, dtype=float)
        self.candidates: list[Candidate] = []
        self._seen: set[str] = set()
        self._members: list[Candidate] = []  # the current front, updated as candidates arrive
        self.history: list[tuple[int, float]] = []  # (candidates seen, hypervolume)

    def add(self, candidates: list[Candidate], record: bool = True) -> None:
        """Add candidates (a repeated arch key is ignored) and record the hypervolume after them."""
        new = []
        for c in candidates:
            if c.key not in self._seen:
                self._seen.add(c.key)
                self.candidates.append(c)
                new.append(c)
        pool = self._members + [c for c in new if c.feasible]
        if pool:
            idx = non_dominated(np.array([c.objectives for c in pool]))
            self._members = [pool[i] for i in idx]
        if record:
            self.history.append((len(self.candidates), self.hypervolume()))

    def members(self) -> list[Candidate]:
        """The feasible non-dominated candidates, sorted by their objectives."""
        return sorted(self._members, key=lambda c: c.objectives)

    def hypervolume(self) -> float:
        members = self.members()
        return hypervolume(np.array([c.objectives for c in members]), self.ref_point) if members else 0.0

    # --- files ------------------------------------------------------------------------------------
    def rows(self, candidates: list[Candidate] | None = None) -> list[dict[str, Any]]:
        out = []
        for c in candidates if candidates is not None else self.members():
            row: dict[str, Any] = {"key": c.key}
            row.update(dict(zip(self.objective_names, c.objectives, strict=True)))
            row.update({f"g:{n}": v for n, v in zip(self.constraint_names, c.constraints, strict=True)})
            row.update({k: v for k, v in c.extra.items() if isinstance(v, int | float | str)})
            row["arch"] = c.arch.to_json()
            out.append(row)
        return out

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Write front.csv, front.json (front, reference point, hypervolume history) and
        candidates.csv into `out_dir`, atomically, and list them in its manifest."""
        out_dir = Path(out_dir)
        manifest = Manifest(out_dir, SEARCH_COMMAND)
        paths = {"front_csv": out_dir / "front.csv", "front_json": out_dir / "front.json", "candidates_csv": out_dir / "candidates.csv"}
        _write_csv(manifest, "front.csv", self.rows())
        _write_csv(manifest, "candidates.csv", self.rows(self.candidates))
        manifest.write_json("front.json", {
            "objectives": self.objective_names, "constraints": self.constraint_names,
            "ref_point": self.ref_point.tolist(), "hypervolume": self.hypervolume(),
            "hypervolume_history": [{"candidates": n, "hypervolume": hv} for n, hv in self.history],
            "front": [{"key": c.key, "arch": c.arch.to_dict(), "objectives": list(c.objectives),
                       "constraints": list(c.constraints), "extra": {k: v for k, v in c.extra.items() if _jsonable(v)}}
                      for c in self.members()],
            "n_candidates": len(self.candidates),
        })
        return paths

    @classmethod
    def load(cls, out_dir: str | Path) -> ParetoFront:
        """The front saved by `save` (front members and history; not every candidate)."""
        data = read_front(out_dir)
        front = cls(data["objectives"], data["ref_point"], data["constraints"])
        front.add([Candidate(ArchConfig.from_dict(m["arch"]), tuple(m["objectives"]), tuple(m["constraints"]), m.get("extra", {}))
                   for m in data["front"]], record=False)
        front.history = [(h["candidates"], h["hypervolume"]) for h in data["hypervolume_history"]]
        return front


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def _write_csv(manifest: Manifest, name: str, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r)) or ["key"]
    with manifest.write(name) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


# --- reading a saved search -------------------------------------------------------------------------
def _numbers(value: Any, n: int | None = None) -> bool:
    """A list of finite numbers (of length `n`)."""
    return isinstance(value, list) and (n is None or len(value) == n) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)


def check_front(data: dict[str, Any], source: str | Path) -> dict[str, Any]:
    """`data` (a parsed front.json) if every field a reader uses is there and well-formed; else
    `ArtifactError` naming the file and the field."""
    def bad(field: str, why: str) -> ArtifactError:
        return ArtifactError(f"{source}: {field}: {why}; run `{SEARCH_COMMAND}` to write it again")

    names = data.get("objectives")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise bad("objectives", f"expected a list of objective names, got {names!r}")
    if not isinstance(data.get("constraints", []), list):
        raise bad("constraints", "expected a list of constraint names")
    if not _numbers(data.get("ref_point"), len(names)):
        raise bad("ref_point", f"expected {len(names)} finite numbers, got {data.get('ref_point')!r}")
    for number in ("hypervolume", "n_candidates"):
        if not _numbers([data.get(number)]):
            raise bad(number, f"expected a finite number, got {data.get(number)!r}")
    history = data.get("hypervolume_history")
    if not isinstance(history, list) or not all(isinstance(h, dict) and _numbers([h.get("candidates"), h.get("hypervolume")])
                                                 for h in history):
        raise bad("hypervolume_history", "expected a list of {candidates, hypervolume} numbers")
    members = data.get("front")
    if not isinstance(members, list):
        raise bad("front", f"expected a list of members, got {type(members).__name__}")
    for i, m in enumerate(members):
        if not isinstance(m, dict):
            raise bad(f"front[{i}]", f"expected an object, got {type(m).__name__}")
        if not isinstance(m.get("key"), str):
            raise bad(f"front[{i}].key", f"missing or not a string ({m.get('key')!r})")
        try:
            arch = ArchConfig.from_dict(m.get("arch"))
        except (ArchError, TypeError, ValueError, AttributeError) as e:
            raise bad(f"front[{i}].arch", f"not an architecture ({e})") from None
        if arch.key() != m["key"]:
            raise bad(f"front[{i}].key", f"{m['key']!r} is not the key of its arch ({arch.key()!r})")
        if not _numbers(m.get("objectives"), len(names)):
            raise bad(f"front[{i}].objectives", f"expected {len(names)} finite numbers, got {m.get('objectives')!r}")
        if not _numbers(m.get("constraints", [])):
            raise bad(f"front[{i}].constraints", f"expected finite numbers, got {m.get('constraints')!r}")
    return data


def read_front(search_dir: str | Path) -> dict[str, Any]:
    """The saved front of a search folder (front.json), checked against the folder's manifest and
    by `check_front`."""
    search_dir = Path(search_dir)
    Manifest(search_dir, SEARCH_COMMAND).verify("front.json")
    path = search_dir / "front.json"
    return check_front(read_json(path, "Pareto front", f"run `{SEARCH_COMMAND}`"), path)


def read_validation(search_dir: str | Path) -> list[dict[str, Any]]:
    """The re-measured front members of a search folder (validation.json; [] when absent), checked
    against the folder's manifest."""
    search_dir = Path(search_dir)
    path = search_dir / "validation.json"
    if not path.exists():
        return []
    Manifest(search_dir, SEARCH_COMMAND).verify(path.name)
    rows = read_json(path, "front validation", f"run `{SEARCH_COMMAND}`").get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("key"), str) for r in rows):
        raise ArtifactError(f"{path}: rows: expected a list of objects with a key; run `{SEARCH_COMMAND}` to write it again")
    return rows


def pick_spread(front: list, k: int, skip: set[str]) -> list:
    """Up to k front members spread evenly along the front (sorted by the first objective)."""
    fresh = [c for c in sorted(front, key=lambda c: c.objectives) if c.key not in skip]
    if len(fresh) <= k:
        return fresh
    idx = np.unique(np.round(np.linspace(0, len(fresh) - 1, k)).astype(int))
    return [fresh[i] for i in idx]
