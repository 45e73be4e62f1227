"""Plots of a search: 2-D fronts (PNG + interactive HTML with the arch on hover), the
hypervolume history, and the front's re-measured values next to the predicted ones.

Every plot reads on its own: axes carry the objectives' units, titles name the experiment and the
machine the latencies were measured on, the hypervolume plot states its reference point, and
legends sit outside the data. The HTML files inline plotly.js: they open offline."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

from hwnas.core.plotting import HTML_LEGEND, html_title, legend_below, pyplot, save_html, save_png

from .objectives import latency_workload, table_key, tokens_per_s


@dataclass(frozen=True)
class PlotContext:
    """What a plot needs to read on its own: the experiment, each objective's unit, the machine each
    latency was measured on ('cpu/torch' -> 'AMD EPYC, 1 thread of 2 cores') and the hypervolume's
    reference point."""

    experiment: str = ""
    units: dict[str, str] = field(default_factory=dict)
    measured_on: dict[str, str] = field(default_factory=dict)
    ref_point: tuple[float, ...] = ()

    @classmethod
    def of_summary(cls, summary: dict[str, Any]) -> PlotContext:
        return cls(summary.get("experiment") or "", dict(summary.get("units") or {}), dict(summary.get("measured_on") or {}),
                   tuple(summary.get("ref_point") or ()))

    def label(self, name: str) -> str:
        """An axis label: the objective and its unit, 'latency@cpu/torch (ms)'."""
        unit = self.units.get(name)
        return f"{name} ({unit})" if unit else name

    def machine(self, names: list[str]) -> str:
        """Where the latencies among `names` were measured, for a subtitle ('' when none is a latency)."""
        where = []
        for n in names:
            key = table_key(n)
            if key in self.measured_on and f"{key}: {self.measured_on[key]}" not in where:
                where.append(f"{key}: {self.measured_on[key]}")
        return "latency measured on " + "; ".join(where) if where else ""

    def title(self, what: str, names: list[str]) -> str:
        """'<experiment>: <what>' over a second line naming the machine."""
        head = f"{self.experiment}: {what}" if self.experiment else what
        where = self.machine(names)
        return f"{head}\n{where}" if where else head

    def reference(self, names: list[str]) -> str:
        if len(self.ref_point) != len(names):
            return ""
        def unit(n: str) -> str:
            return f" {self.units[n]}" if self.units.get(n, "count") != "count" else ""

        return "reference point: " + ", ".join(f"{n} = {v:.4g}{unit(n)}" for n, v in zip(names, self.ref_point, strict=True))


def flat(name: str) -> str:
    """`name` with the runtime's slash and the statistic's colon as underscores: a file name, or a W&B
    key that a slash would nest into panels."""
    return name.replace("/", "_").replace(":", "_")


def _per_second(ms):
    """ms per token -> tokens per second (and back: the map is its own inverse)."""
    import numpy as np

    ms = np.asarray(ms, dtype=float)
    return 1e3 / np.where(ms > 1e-9, ms, 1e-9)


def rate_axes(ax, x: str, y: str) -> None:
    """A tokens/s scale beside each axis that is a decoding step's ms per token (top or right)."""
    if latency_workload(x) == "decode":
        ax.secondary_xaxis("top", functions=(_per_second, _per_second)).set_xlabel("tokens/s")
    if latency_workload(y) == "decode":
        ax.secondary_yaxis("right", functions=(_per_second, _per_second)).set_ylabel("tokens/s")


def hover_text(c: dict[str, Any], names: list[str]) -> str:
    """A candidate's arch key, with the tokens/s of each decode latency among `names`."""
    rates = [f"{r:,.0f} tokens/s" for r in (tokens_per_s(n, c[n]) for n in names) if r is not None]
    return "<br>".join([c["key"], *rates])


def front_plots(candidates: list[dict[str, Any]], front: list[dict[str, Any]], names: list[str], out_dir: Path,
                ctx: PlotContext | None = None) -> list[Path]:
    """One 2-D scatter per pair of objectives: all candidates in grey, the front highlighted."""
    import plotly.graph_objects as go

    ctx = ctx or PlotContext()
    paths = []
    for i, j in list(combinations(range(len(names)), 2)) or [(0, 0)]:
        x, y = names[i], names[j]
        stem = flat(f"front_{x}_vs_{y}").replace("@", "_at_")
        title = ctx.title(f"Pareto front: {y} vs {x}", [x, y])
        fr = sorted(front, key=lambda c: c[x])
        fig, ax = pyplot().subplots(figsize=(6.5, 5))
        ax.scatter([c[x] for c in candidates], [c[y] for c in candidates], s=6, c="0.75", label=f"candidates ({len(candidates)})")
        ax.plot([c[x] for c in fr], [c[y] for c in fr], "o-", c="C3", ms=4, label=f"Pareto front ({len(front)})")
        ax.set(xlabel=ctx.label(x), ylabel=ctx.label(y))
        rate_axes(ax, x, y)
        ax.set_title(title, fontsize=10)
        legend_below(ax)
        save_png(fig, out_dir / f"{stem}.png")
        hfig = go.Figure([
            go.Scattergl(x=[c[x] for c in candidates], y=[c[y] for c in candidates], mode="markers",
                         name=f"candidates ({len(candidates)})", marker=dict(size=4, color="lightgray"),
                         text=[hover_text(c, [x, y]) for c in candidates], hoverinfo="text+x+y"),
            go.Scatter(x=[c[x] for c in fr], y=[c[y] for c in fr], mode="lines+markers", name=f"Pareto front ({len(front)})",
                       marker=dict(size=8, color="crimson"), text=[hover_text(c, [x, y]) for c in fr],
                       hoverinfo="text+x+y"),
        ])
        hfig.update_layout(title=html_title(title + " — hover: arch"), xaxis_title=ctx.label(x), yaxis_title=ctx.label(y),
                           legend=HTML_LEGEND)
        save_html(hfig, out_dir / f"{stem}.html")
        paths += [out_dir / f"{stem}.png", out_dir / f"{stem}.html"]
    return paths


def hypervolume_plot(history: list[dict[str, float]], out_dir: Path, label: str = "candidates evaluated",
                     names: list[str] | None = None, ctx: PlotContext | None = None) -> list[Path]:
    """The front's hypervolume (in the product of the objectives' units) against candidates evaluated,
    the reference point it is measured from stated under the title."""
    import plotly.graph_objects as go

    ctx, names = ctx or PlotContext(), names or []
    units = [ctx.units.get(n) for n in names]
    ylabel = f"hypervolume ({' × '.join(units)})" if names and all(units) else "hypervolume"
    title = ctx.title("Hypervolume of the Pareto front", names)
    ref = ctx.reference(names)
    xs, ys = [h["candidates"] for h in history], [h["hypervolume"] for h in history]
    fig, ax = pyplot().subplots(figsize=(6.5, 4.5))
    ax.plot(xs, ys, "-", c="C0")
    ax.set(xlabel=label, ylabel=ylabel)
    ax.set_title(title + (f"\n{ref}" if ref else ""), fontsize=10)
    save_png(fig, out_dir / "hypervolume.png")
    hfig = go.Figure(go.Scatter(x=xs, y=ys, mode="lines", name="hypervolume"))
    hfig.update_layout(title=html_title(title + (f"\n{ref}" if ref else "")), xaxis_title=label, yaxis_title=ylabel)
    save_html(hfig, out_dir / "hypervolume.html")
    return [out_dir / "hypervolume.png", out_dir / "hypervolume.html"]


def validation_plots(rows: list[dict[str, Any]], names: list[str], out_dir: Path, ctx: PlotContext | None = None) -> list[Path]:
    """Predicted vs re-measured value of each objective for the validated front members."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    ctx = ctx or PlotContext()
    measured = [n for n in names if rows and f"measured:{n}" in rows[0]]
    if not measured:
        return []
    title = ctx.title(f"Front members: predicted vs re-measured ({len(rows)} validated)", measured)
    fig, axes = pyplot().subplots(1, len(measured), figsize=(5 * len(measured), 5), squeeze=False)
    hfig = make_subplots(rows=1, cols=len(measured), subplot_titles=[ctx.label(n) for n in measured])
    for k, n in enumerate(measured):
        p, m = [r[f"predicted:{n}"] for r in rows], [r[f"measured:{n}"] for r in rows]
        ax = axes[0, k]
        lo, hi = min(p + m), max(p + m)
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="predicted = measured")
        ax.scatter(m, p, c="C3", label="front member")
        ax.set(xlabel=f"measured {ctx.label(n)}", ylabel=f"predicted {ctx.label(n)}")
        legend_below(ax)
        hfig.add_trace(go.Scatter(x=m, y=p, mode="markers", text=[r["key"] for r in rows], name=f"front member: {n}"),
                       row=1, col=k + 1)
        hfig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dash", color="black"),
                                  name="predicted = measured", showlegend=k == 0), row=1, col=k + 1)
        hfig.update_xaxes(title_text=f"measured {ctx.label(n)}", row=1, col=k + 1)
        hfig.update_yaxes(title_text=f"predicted {ctx.label(n)}", row=1, col=k + 1)
    fig.suptitle(title, fontsize=10)
    save_png(fig, out_dir / "validation.png")
    hfig.update_layout(title=html_title(title), legend=HTML_LEGEND)
    save_html(hfig, out_dir / "validation.html")
    return [out_dir / "validation.png", out_dir / "validation.html"]
