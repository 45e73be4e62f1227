"""Which design choices pay: how often the Pareto front uses each norm, placement, attention kind,
FFN kind and bit width, next to how often the whole space does, and what each choice costs in
latency at equal width (the latency tables' prediction for one fixed arch with that choice in every
layer). A choice the front uses far more often than the space earns its place; one it never uses
lost, on loss or on latency.

    report = choices_report(space, front_archs, tables)   # tables: {"cpu/onnxruntime": LatencyTable, ...}
    print(choices_markdown(report))
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.core.io import ArtifactError, read_json
from hwnas.core.manifest import RUN_FOLDERS, Manifest
from hwnas.search_space import ArchConfig, LayerConfig, SearchSpace

from .objectives import latency_workload, tokens_per_s

# the per-layer design choices reported, and how a layer names its choice (the space's gene values)
DIMS = ("norm", "placement", "attention", "ffn", "weight_bits")
SPACE_SAMPLES = 20_000  # uniform draws that estimate the space's shares (standard error < 0.4%)


def layer_choice(layer: LayerConfig, dim: str) -> str:
    return {"attention": layer.attention_choice, "ffn": layer.ffn_choice}.get(dim, str(getattr(layer, dim)))


def usage(archs: Sequence[ArchConfig]) -> dict[str, dict[str, dict[str, float]]]:
    """dim -> choice -> {"archs": share of archs with the choice in at least one layer,
    "layers": share of all their layers with it}."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    n_layers = sum(a.depth for a in archs)
    for dim in DIMS:
        per_arch = [{layer_choice(layer, dim) for layer in a.layers} for a in archs]
        per_layer = [layer_choice(layer, dim) for a in archs for layer in a.layers]
        choices = sorted(set(per_layer))
        out[dim] = {c: {"archs": sum(c in s for s in per_arch) / len(archs), "layers": per_layer.count(c) / n_layers}
                    for c in choices}
    return out


def with_choice(space: SearchSpace, arch: ArchConfig, dim: str, choice: Any) -> ArchConfig:
    """`arch` with `choice` (a gene value of `dim`) in every layer."""
    vec = space.encode(arch)
    for j, gene in enumerate(space.genes):
        if gene.dim == dim:
            vec[j] = list(gene.choices).index(choice)
    return space.decode(vec)


def choices_report(space: SearchSpace, front: Sequence[ArchConfig], tables: dict[str, Any] | None = None,
                   seed: int = 0) -> dict[str, Any]:
    """The front's and the space's shares of every choice, and each choice's predicted latency (ms,
    per table) on the space's largest arch with that choice in all its layers."""
    rng = np.random.default_rng([seed, 11])
    space_use = usage([space.sample(rng) for _ in range(SPACE_SAMPLES)])
    front_use = usage(list(front))
    base = space.largest()
    rows = []
    for dim in DIMS:
        for choice in space.choices[dim]:
            key = str(choice)
            arch = with_choice(space, base, dim, choice)
            rows.append({
                "dim": dim, "choice": key,
                "front_archs": front_use[dim].get(key, {}).get("archs", 0.0),
                "front_layers": front_use[dim].get(key, {}).get("layers", 0.0),
                "space_archs": space_use[dim].get(key, {}).get("archs", 0.0),
                "space_layers": space_use[dim].get(key, {}).get("layers", 0.0),
                "latency_ms": {t: 1e3 * table.predict(arch) for t, table in (tables or {}).items()},
            })
    return {"front_size": len(front), "space_samples": SPACE_SAMPLES, "base": base.key(), "rows": rows}


SHARES = ("front_archs", "front_layers", "space_archs", "space_layers")
HEADERS = ("dimension", "choice", "front: archs", "front: layers", "space: archs", "space: layers")


def latency_targets(report: dict[str, Any]) -> list[str]:
    return sorted({t for r in report["rows"] for t in r["latency_ms"]})


def latency_cell(target: str, ms: float) -> str:
    """A choice's latency on table `target`: ms, and for a decoding step also the tokens per second."""
    rate = tokens_per_s(f"latency@{target}", ms)
    return f"{ms:.3f}" if rate is None else f"{ms:.3f} ({rate:,.0f} tokens/s)"


def latency_headers(targets: list[str]) -> list[str]:
    return [f"latency@{t} ms/token" if latency_workload(f"latency@{t}") == "decode" else f"latency@{t} ms" for t in targets]


def row_cells(row: dict[str, Any], targets: list[str]) -> list[str]:
    """One choice as table cells: shares in percent, latency at equal width per target."""
    return [row["dim"], row["choice"], *(f"{100 * row[k]:.0f}%" for k in SHARES),
            *(latency_cell(t, row["latency_ms"][t]) if t in row["latency_ms"] else "" for t in targets)]


def choices_markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table: shares in percent, latency at equal width in ms."""
    targets = latency_targets(report)
    head = [*HEADERS, *latency_headers(targets)]
    lines = [f"Design choices on the front ({report['front_size']} members) against the space "
             f"({report['space_samples']:,} uniform samples); latency: the space's largest arch with the choice in "
             f"every layer (`{report['base']}` otherwise), from the tables.", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(row_cells(r, targets)) + " |" for r in report["rows"]]
    return "\n".join(lines)


def read_choices(search_dir: str | Path) -> dict[str, Any] | None:
    """A search folder's choices.json (None when it has none), checked against its manifest."""
    path = Path(search_dir) / "choices.json"
    if not path.exists():
        return None
    Manifest(path.parent, RUN_FOLDERS["search"]).verify(path.name)
    report = read_json(path, "design-choice report", f"run `{RUN_FOLDERS['search']}`")
    rows = report.get("rows")
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("latency_ms"), dict) for r in rows):
        raise ArtifactError(f"{path}: rows: expected a list of choices with latency_ms; run `{RUN_FOLDERS['search']}` to write it again")
    return report


__all__ = ["DIMS", "HEADERS", "SHARES", "choices_markdown", "choices_report", "latency_targets", "layer_choice", "read_choices", "row_cells", "usage", "with_choice"]
