"""experiments/screenshots.py: every HTML plot of a run, rendered by headless Chromium with no
network, is a picture (not the blank page a CDN script leaves offline). Skips without Chromium."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hwnas.search.plots import PlotContext, hypervolume_plot

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "screenshots.py"
sys.path.insert(0, str(SCRIPT.parent))

from screenshots import find_browser  # noqa: E402

needs_browser = pytest.mark.skipif(find_browser() is None, reason="no headless Chromium (apt-get install chromium)")


@needs_browser
def test_plots_render_offline_and_a_cdn_page_is_refused(tmp_path):
    import plotly.graph_objects as go

    run = tmp_path / "run"
    (run / "search").mkdir(parents=True)
    ctx = PlotContext("exp", {"loss": "nats/byte", "latency@cpu/torch": "ms"}, {"cpu/torch": "a CPU"}, (5.0, 2.0))
    hypervolume_plot([{"candidates": n, "hypervolume": 1 - 1 / n} for n in range(1, 30)], run / "search",
                     names=["loss", "latency@cpu/torch"], ctx=ctx)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(run), "--out", str(tmp_path / "shots")],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "shots/search_hypervolume.png").stat().st_size > 5000
    assert "1 HTML plots rendered, 0 failed" in proc.stdout

    go.Figure(go.Scatter(x=[1, 2], y=[2, 1])).write_html(str(run / "search/cdn.html"), include_plotlyjs="cdn")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(run), "--out", str(tmp_path / "shots")],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1
    line = next(x for x in proc.stdout.splitlines() if "cdn.html" in x)
    assert line.startswith("FAIL") and "fetches https://cdn.plot.ly/" in line and "blank" in line


def test_a_missing_run_dir_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nope")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
