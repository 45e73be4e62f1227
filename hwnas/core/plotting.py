"""How every plot is saved: PNG through matplotlib's Agg backend and HTML with plotly.js inlined (the
file opens offline: no script is fetched from a CDN), both written atomically; legends below the
axes, off the data."""

from __future__ import annotations

import re
from pathlib import Path

from .io import atomic_path

# plotly: the legend in a row under the plot, off the data
HTML_LEGEND = dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0)


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    pyplot().close(fig)


def save_html(fig, path: Path) -> None:
    """A plotly figure as a standalone HTML file, plotly.js inlined."""
    with atomic_path(path) as tmp:
        fig.write_html(str(tmp), include_plotlyjs=True, full_html=True)


def legend_below(ax, ncol: int = 2) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=ncol, frameon=False)


def html_title(text: str) -> str:
    """A matplotlib title (lines split by newlines) as a plotly title: the first line, the rest smaller."""
    head, _, rest = text.partition("\n")
    return head + (f"<br><sup>{rest.replace(chr(10), '<br>')}</sup>" if rest else "")


_REMOTE = re.compile(r"""<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*["']?((?:https?:)?//[^"'\s>]+)""", re.IGNORECASE)


def remote_resources(html: str) -> list[str]:
    """The URLs an HTML page would fetch to render (scripts, stylesheets, images, frames from
    another host): empty for a page that opens offline."""
    return _REMOTE.findall(html)
