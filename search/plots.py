"""Plots of a search: 2-D fronts (PNG + interactive HTML with the arch on hover), the
hypervolume history, and the front's re-measured values next to the predicted ones."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from hwnas.core.io import atomic_path  # noqa: E402


def _save_png(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def _save_html(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)


def flat(name: str) -> str:
    """`name` with the runtime's slash and the statistic's colon as underscores: a file name, or a W&B
    key that a slash would nest into panels."""
    return name.replace("/", "_").replace(":", "_")


def front_plots(candidates: list[dict[str, Any]], front: list[dict[str, Any]], names: list[str], out_dir: Path) -> list[Path]:
    """One 2-D scatter per pair of objectives: all candidates in grey, the front highlighted."""
    import plotly.graph_objects as go

    paths = []
    pairs = list(combinations(range(len(names)), 2)) or [(0, 0)]
    for i, j in pairs:
        x, y = names[i], names[j]
        stem = flat(f"front_{x}_vs_{y}").replace("@", "_at_")
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ax.scatter([c[x] for c in candidates], [c[y] for c in candidates], s=6, c="0.75", label=f"candidates ({len(candidates)})")
        fr = sorted(front, key=lambda c: c[x])
        ax.plot([c[x] for c in fr], [c[y] for c in fr], "o-", c="C3", ms=4, label=f"Pareto front ({len(front)})")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.legend()
        ax.set_title(f"{y} vs {x}")
        _save_png(fig, out_dir / f"{stem}.png")
        hfig = go.Figure([
            go.Scattergl(x=[c[x] for c in candidates], y=[c[y] for c in candidates], mode="markers", name="candidates",
                         marker=dict(size=4, color="lightgray"), text=[c["key"] for c in candidates], hoverinfo="text+x+y"),
            go.Scatter(x=[c[x] for c in fr], y=[c[y] for c in fr], mode="lines+markers", name="Pareto front",
                       marker=dict(size=8, color="crimson"), text=[c["key"] for c in fr], hoverinfo="text+x+y"),
        ])
        hfig.update_layout(title=f"{y} vs {x} (hover: arch)", xaxis_title=x, yaxis_title=y)
        _save_html(hfig, out_dir / f"{stem}.html")
        paths += [out_dir / f"{stem}.png", out_dir / f"{stem}.html"]
    return paths


def hypervolume_plot(history: list[dict[str, float]], out_dir: Path, label: str = "candidates evaluated") -> list[Path]:
    import plotly.graph_objects as go

    xs, ys = [h["candidates"] for h in history], [h["hypervolume"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(xs, ys, "-", c="C0")
    ax.set_xlabel(label)
    ax.set_ylabel("hypervolume")
    ax.set_title("hypervolume of the front")
    _save_png(fig, out_dir / "hypervolume.png")
    hfig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines"))
    hfig.update_layout(title="hypervolume of the front", xaxis_title=label, yaxis_title="hypervolume")
    _save_html(hfig, out_dir / "hypervolume.html")
    return [out_dir / "hypervolume.png", out_dir / "hypervolume.html"]


def validation_plots(rows: list[dict[str, Any]], names: list[str], out_dir: Path) -> list[Path]:
    """Predicted vs re-measured value of each objective for the validated front members."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    measured = [n for n in names if rows and f"measured:{n}" in rows[0]]
    if not measured:
        return []
    fig, axes = plt.subplots(1, len(measured), figsize=(5 * len(measured), 4.5), squeeze=False)
    hfig = make_subplots(rows=1, cols=len(measured), subplot_titles=measured)
    for k, n in enumerate(measured):
        p, m = [r[f"predicted:{n}"] for r in rows], [r[f"measured:{n}"] for r in rows]
        ax = axes[0, k]
        ax.scatter(m, p, c="C3")
        lo, hi = min(p + m), max(p + m)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1)
        ax.set_xlabel(f"measured {n}")
        ax.set_ylabel(f"predicted {n}")
        hfig.add_trace(go.Scatter(x=m, y=p, mode="markers", text=[r["key"] for r in rows], name=n), row=1, col=k + 1)
        hfig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dash", color="black"), showlegend=False),
                       row=1, col=k + 1)
    fig.suptitle("front members: predicted vs re-measured")
    _save_png(fig, out_dir / "validation.png")
    hfig.update_layout(title="front members: predicted (y) vs re-measured (x)")
    _save_html(hfig, out_dir / "validation.html")
    return [out_dir / "validation.png", out_dir / "validation.html"]
