"""`ParetoFront`: the non-dominated candidates of a search, their hypervolume, and its history.

All objectives are minimized. A candidate is feasible when every constraint value is <= 0 (the
Optuna / pymoo convention); the front holds feasible candidates only.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.search_space import ArchConfig
from hwnas.search_space.io import atomic_path, atomic_write_json


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
        candidates.csv into `out_dir`, atomically."""
        out_dir = Path(out_dir)
        paths = {"front_csv": out_dir / "front.csv", "front_json": out_dir / "front.json", "candidates_csv": out_dir / "candidates.csv"}
        _write_csv(paths["front_csv"], self.rows())
        _write_csv(paths["candidates_csv"], self.rows(self.candidates))
        atomic_write_json(paths["front_json"], {
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
        data = json.loads((Path(out_dir) / "front.json").read_text())
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


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r)) or ["key"]
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
