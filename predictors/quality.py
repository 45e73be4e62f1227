"""How good a predictor is: rank and error metrics, interval calibration, model selection by
cross-validated Kendall tau, and the predicted-vs-measured plot (PNG + HTML)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import kendalltau, norm, spearmanr
from sklearn.base import clone
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline

from hwnas.core.plotting import HTML_LEGEND, html_title, legend_below, pyplot, save_html, save_png


def quality_metrics(y_true: Any, y_pred: Any, y_std: Any | None = None, interval: float = 0.9) -> dict[str, float]:
    """Kendall tau, Spearman, RMSE, MAPE (a fraction, as scikit-learn's), and with `y_std` the share of truths inside the
    central `interval` of a normal around each prediction (ideal: `interval`)."""
    t, p = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    tau = kendalltau(t, p).statistic if len(t) > 1 else float("nan")
    rho = spearmanr(t, p).statistic if len(t) > 1 else float("nan")
    out = {
        "n": int(len(t)),
        "kendall_tau": float(tau),
        "spearman": float(rho),
        "rmse": float(np.sqrt(np.mean((t - p) ** 2))),
        "mape": float(np.mean(np.abs((t - p) / t))),
    }
    if y_std is not None:
        z = norm.ppf(0.5 + interval / 2)
        s = np.asarray(y_std, dtype=float)
        out["coverage"] = float(np.mean(np.abs(t - p) <= z * s))
        out["mean_std"] = float(np.mean(s))
    return out


def cross_validate(featurizer, model, archs: list, y: np.ndarray, folds: int, seed: int) -> dict[str, float]:
    """K-fold CV of featurizer + model on the fit set: the mean per-fold Kendall tau (the selection
    score), its spread, and tau / RMSE of the pooled out-of-fold predictions."""
    pipe = Pipeline([("features", clone(featurizer)), ("model", clone(model))])
    oof = np.empty(len(y))
    taus = []
    for train, test in KFold(folds, shuffle=True, random_state=seed).split(archs):
        est = clone(pipe).fit([archs[i] for i in train], y[train])
        oof[test] = est.predict([archs[i] for i in test])
        taus.append(kendalltau(y[test], oof[test]).statistic)
    pooled = quality_metrics(y, oof)
    return {"kendall_tau": float(np.mean(taus)), "kendall_tau_sd": float(np.std(taus)),
            "oof_kendall_tau": pooled["kendall_tau"], "oof_spearman": pooled["spearman"], "rmse": pooled["rmse"]}


def select(cv_scores: dict[str, dict[str, float]]) -> str:
    """The model with the best CV Kendall tau; ties broken by the lower RMSE."""
    return max(cv_scores, key=lambda m: (round(cv_scores[m]["kendall_tau"], 6), -cv_scores[m]["rmse"]))


def plot_png(path: Path, y_true, y_pred, y_std, title: str, label: str, interval: float = 0.9) -> None:
    t, p, s = (np.asarray(a, dtype=float) for a in (y_true, y_pred, y_std))
    z = norm.ppf(0.5 + interval / 2)
    fig, ax = pyplot().subplots(figsize=(6, 5.5))
    ax.errorbar(t, p, yerr=z * s, fmt="o", ms=4, alpha=0.75, elinewidth=0.8, capsize=0,
                label=f"held-out subnet ({interval:.0%} interval)")
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    pad = 0.03 * (hi - lo or 1)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "k--", lw=1, label="predicted = measured")
    ax.set_xlabel(f"measured {label}")
    ax.set_ylabel(f"predicted {label}")
    ax.set_title(title, fontsize=10)
    legend_below(ax)
    save_png(fig, path)


def plot_html(path: Path, y_true, y_pred, y_std, keys: list[str], title: str, label: str, interval: float = 0.9) -> None:
    """An interactive plotly scatter (hover shows each arch key), plotly.js inlined: works offline."""
    import plotly.graph_objects as go

    t, p, s = (np.asarray(a, dtype=float) for a in (y_true, y_pred, y_std))
    z = norm.ppf(0.5 + interval / 2)
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=t, y=p, mode="markers", name="held-out subnet",
                             error_y={"type": "data", "array": z * s, "visible": True, "thickness": 0.8},
                             text=[html.escape(k) for k in keys], hovertemplate="%{text}<br>measured %{x:.4f}<br>predicted %{y:.4f}"))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", name="predicted = measured", line={"dash": "dash", "color": "black"}))
    fig.update_layout(title=html_title(title), xaxis_title=f"measured {label}", yaxis_title=f"predicted {label}", width=760,
                      height=680, legend=HTML_LEGEND)
    save_html(fig, path)


def markdown(report: dict[str, Any]) -> str:
    """The quality report as markdown: the chosen model's held-out figures, then every candidate."""
    h, target = report["heldout"], report["target"]
    lines = [
        f"# Accuracy predictor quality ({target})\n",
        f"Chosen model: **{report['model']}** (best {report['cv_folds']}-fold CV Kendall tau on the fit set).  ",
        f"Fitted on {report['n_fit']} evaluated subnets; judged on {h.get('n', 0)} held-out subnets (own seed, never fitted).  ",
        f"Evaluation: {report['eval_tokens']} validation tokens per subnet, "
        f"{report['eval_seconds_per_subnet']:.2f} s per subnet on {report['device']}.\n",
    ]
    if h:
        interval = report.get("interval", 0.9)  # (reports before the field: the default's)
        lines += [
            f"| Kendall tau | Spearman | RMSE | MAPE % | {interval:.0%} interval coverage (ideal {interval:.2f}) |",
            "| --- | --- | --- | --- | --- |",
            f"| {h['kendall_tau']:.3f} | {h['spearman']:.3f} | {h['rmse']:.4f} | {100 * h['mape']:.2f} | {h['coverage']:.2f} |\n",
        ]
    lines += [
        "## Candidates\n",
        "Selection uses only the CV columns; the held-out columns are shown for each candidate refitted on the whole fit set.\n",
        f"| model | CV tau | CV tau sd | CV RMSE | held-out tau | held-out Spearman | held-out RMSE | held-out "
        f"{report.get('interval', 0.9):.0%} coverage |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, c in report["candidates"].items():
        ho = c.get("heldout", {})
        fmt = lambda k, f=".3f", ho=ho: format(ho[k], f) if k in ho else "-"  # noqa: E731
        lines.append(f"| {name}{' (chosen)' if name == report['model'] else ''} | {c['cv']['kendall_tau']:.3f} | "
                     f"{c['cv']['kendall_tau_sd']:.3f} | {c['cv']['rmse']:.4f} | {fmt('kendall_tau')} | {fmt('spearman')} | "
                     f"{fmt('rmse', '.4f')} | {fmt('coverage', '.2f')} |")
    lines.append("\nFull figures: `report.json`. Plot: `pred_vs_measured.png` / `.html`.")
    return "\n".join(lines) + "\n"


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=float)
