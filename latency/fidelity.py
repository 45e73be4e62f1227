"""The fidelity report: how right a latency table is on subnets it has never seen.

N held-out random subnets (none of them among the table's calibration subnets) are extracted and
timed end to end with the table's backend and protocol; the table predicts each. Reported: the
share within +-5% and +-10%, MAPE, RMSE and Kendall tau of prediction vs measurement, the same
for the plain (uncorrected) table sum, and the Kendall tau of the analytic proxies (FLOPs,
parameter count) against the same measurements. Written to `<run_dir>/latency/` as JSON,
Markdown, PNG and HTML; logged to W&B (offline) when asked.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from hwnas.core.io import atomic_write_json, atomic_write_text
from hwnas.core.manifest import RUN_FOLDERS, Manifest
from hwnas.core.plotting import HTML_LEGEND, html_title, legend_below, pyplot, save_html, save_png
from hwnas.search_space import ArchConfig, SearchSpace

from .config import LatencyConfig
from .fingerprint import describe
from .protocol import STATISTICS, Measurement
from .session import WINDOW_ARCHS, Measurer, heldout_archs, make_measurer, progress_bar, windows
from .speed import SpeedWindow, steady_window
from .table import LatencyTable, table_name


def error_metrics(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """Share within +-5% / +-10%, MAPE (%), RMSE and Kendall tau of predicted vs measured (in ms)."""
    from scipy.stats import kendalltau

    rel = np.abs(predicted - measured) / measured
    return {
        "within_5pct": float(np.mean(rel <= 0.05)),
        "within_10pct": float(np.mean(rel <= 0.10)),
        "mape_pct": float(100 * np.mean(rel)),
        "max_ape_pct": float(100 * np.max(rel)),
        "rmse_ms": float(np.sqrt(np.mean((predicted - measured) ** 2))),
        "kendall_tau": float(kendalltau(predicted, measured).statistic),
    }


def _load() -> tuple[float, float]:
    """(1-minute load average, runnable tasks now) from /proc/loadavg; NaN if unavailable."""
    try:
        fields = Path("/proc/loadavg").read_text().split()
        return float(fields[0]), float(fields[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return math.nan, math.nan


def fidelity_report(space: SearchSpace, cfg: LatencyConfig, table: LatencyTable, run_dir: str | Path,
                    n: int | None = None, progress: bool = True, wandb: str | bool | None = None,
                    measurer: Measurer | None = None, retest_n: int = 20) -> dict[str, Any]:
    """Measure `n` (default `cfg.n_fidelity`) held-out subnets with the table's backend, compare
    with `table.predict`, write the report files and return the report (a JSON-able dict).
    `retest_n` of them are measured a second time at the end: the agreement of the two
    measurements (`report["retest"]`) is the best any prediction can show on this machine now.
    `wandb`: a W&B mode (offline, online, disabled), True (offline), False (disabled) or None
    (the config's)."""
    n = cfg.n_fidelity if n is None else n
    run_dir = Path(run_dir)
    out_dir = run_dir / "latency"
    stem = f"fidelity-{table_name(table.device, table.backend, table.workload_kind)}"
    measurer = measurer or make_measurer(space, cfg, table.device, table.backend, like=table)
    exclude = list(table.calibration) + ([table.reference.key()] if table.reference else [])
    archs = heldout_archs(space, n, cfg.seed, exclude=exclude)
    cache_path = out_dir / f"{stem}-measured.json"
    cache, speed = _read_cache(cache_path, table)
    loads = []
    t0 = time.perf_counter()
    todo = [a for a in archs if a.key() not in cache]
    with progress_bar(progress, f"fidelity {table.device}/{table.backend}: held-out subnets", len(archs)) as advance:
        advance(len(archs) - len(todo))
        for window in windows(todo, WINDOW_ARCHS):
            loads.append(_load())
            measured, window_speed = steady_window(measurer.measure_archs, window, "heldout", table.reference,
                                                   table.speed_level("min"), cfg)
            if window_speed is not None:
                speed.append((window_speed, list(measured)))
            cache.update(measured)
            _write_cache(cache_path, table, cache, speed)
            advance(len(window))
    by_stat = {stat: table.for_statistic(stat) for stat in STATISTICS}
    rows = [_row(space, table, arch, cache[arch.key()], by_stat) for arch in archs]
    # the same subnets measured again, under the same guard against a moving machine (a retake
    # while the reference's speed moved): how repeatable the measurements are here
    again, retest_speed = (steady_window(measurer.measure_archs, archs[:retest_n], "retest", table.reference,
                                         table.speed_level("min"), cfg) if retest_n and archs else ({}, None))
    seconds = time.perf_counter() - t0
    report = summarize(rows, table, seconds, loads)
    report["by_statistic"] = by_statistic(by_stat, archs, cache, again)
    report["retest"] = report["by_statistic"][table.statistic].get("retest")
    report["speed"] = speed_report(table, archs, cache, speed, cfg.speed_tolerance, retest_speed)
    if cfg.n_user_view and table.device == "cpu" and table.workload_kind == "prefill":  # users time forwards
        report["user_view"] = user_view(space, table, by_stat, archs[:cfg.n_user_view], progress)
    write_report(report, out_dir, stem)
    mode = cfg.wandb if wandb is None else {True: "offline", False: "disabled"}.get(wandb, wandb)
    if mode != "disabled":
        log_wandb(report, run_dir, stem, out_dir, mode, cfg.wandb_project)
    return report


def _report_from_file(space_config, cfg: LatencyConfig, run_dir: str, device: str, backend: str, progress: bool,
                      wandb: str | bool | None, workload: str = "prefill") -> dict[str, Any]:
    from .table import load_table

    return fidelity_report(SearchSpace(space_config), cfg, load_table(run_dir, device, backend, workload=workload), run_dir,
                           progress=progress, wandb=wandb)


def fidelity_report_fresh(space_config, cfg: LatencyConfig, run_dir: str | Path, device: str = "cpu", backend: str = "torch",
                          progress: bool = True, wandb: str | bool | None = None, workload: str = "prefill") -> dict[str, Any]:
    """`fidelity_report` on the run's finished table, by a freshly spawned process that loads it
    from its file, as the search and the export later use it: the process that has just built the
    table times subnets a few percent off (2-4% on the build machine), a state of that process."""
    from hwnas.core.isolate import run_isolated

    return run_isolated(_report_from_file, space_config, cfg, str(run_dir), device, backend, progress, wandb, workload)


def _row(space: SearchSpace, table: LatencyTable, arch: ArchConfig, measured: Measurement,
         by_stat: dict[str, LatencyTable]) -> dict[str, Any]:
    """One held-out subnet: measured and predicted ms on the table's statistic, and on each
    (`by_stat`: the table for each statistic, `LatencyTable.for_statistic`)."""
    seq = table.workload["seq_len"]
    return {
        "arch": arch.key(),
        "measured_ms": measured.value(table.statistic) * 1e3,
        **{f"measured_{stat}_ms": measured.value(stat) * 1e3 for stat in STATISTICS},
        "stable": measured.stable,
        "predicted_ms": table.predict(arch) * 1e3,
        **{f"predicted_{stat}_ms": t.predict(arch) * 1e3 for stat, t in by_stat.items()},
        "table_sum_ms": table.table_sum(arch) * 1e3,
        "flops": table.workload["batch_size"] * space.flops(arch, seq),
        "params": space.params(arch)["total"],
        "arch_config": arch.to_dict(),
    }


def summarize(rows: list[dict[str, Any]], table: LatencyTable, seconds: float = 0.0,
              loads: list[tuple[float, float]] = ()) -> dict[str, Any]:
    from scipy.stats import kendalltau

    measured = np.array([r["measured_ms"] for r in rows])
    predicted = np.array([r["predicted_ms"] for r in rows])
    plain = np.array([r["table_sum_ms"] for r in rows])
    load = np.array(loads, dtype=float).reshape(-1, 2)
    return {
        "device": table.device,
        "backend": table.backend,
        "fingerprint": table.fingerprint,
        "workload": table.workload,
        "statistic": table.statistic,
        "n": len(rows),
        "prediction": error_metrics(predicted, measured),
        "table_sum": error_metrics(plain, measured),
        "proxies": {
            "flops_kendall_tau": float(kendalltau([r["flops"] for r in rows], measured).statistic),
            "params_kendall_tau": float(kendalltau([r["params"] for r in rows], measured).statistic),
        },
        "correction": table.correction.to_dict() if table.correction else None,
        "stable_share": float(np.mean([r["stable"] for r in rows])),
        "measured_ms_range": [float(measured.min()), float(measured.max())],
        "table_build_seconds": table.meta.get("seconds", {}),
        "report_seconds": seconds,
        "load_1min_mean": float(np.nanmean(load[:, 0])) if len(load) else None,
        "runnable_tasks_mean": float(np.nanmean(load[:, 1])) if len(load) else None,
        "cores": os.cpu_count(),
        "rows": rows,
    }


def by_statistic(by_stat: dict[str, LatencyTable], archs: list[ArchConfig], measured: dict[str, Measurement],
                 again: dict[str, Measurement]) -> dict[str, dict[str, Any]]:
    """The table scored on each statistic of the run times (`by_stat`: the table for each, with
    the correction fitted on that statistic of the calibration subnets) against the same statistic
    of the held-out measurements; with `again` (second measurements of some of them) the retest on it."""
    out = {}
    for stat, t in by_stat.items():
        truth = np.array([measured[a.key()].value(stat) for a in archs]) * 1e3
        entry: dict[str, Any] = {"prediction": error_metrics(np.array([t.predict_ms(a) for a in archs]), truth)}
        if again:
            keys = list(again)
            first = np.array([measured[k].value(stat) for k in keys]) * 1e3
            entry["retest"] = {"n": len(keys), **error_metrics(np.array([again[k].value(stat) for k in keys]) * 1e3, first)}
        out[stat] = entry
    return out


def user_view(space: SearchSpace, table: LatencyTable, by_stat: dict[str, LatencyTable], archs: list[ArchConfig],
              progress: bool = True) -> dict[str, Any]:
    """The table against `archs` timed as a user times them (`userview.user_latency`: each in a
    fresh process of its own, a plain wall-clock loop, the deployment form in an ordinary process),
    on each statistic; a quarter of them timed again in other fresh processes (`retest`: how well
    one such measurement repeats, the ceiling for any prediction of it)."""
    from .userview import user_latency

    form = "onnxruntime" if table.backend == "onnxruntime" else "torch"
    B, T, threads = table.workload["batch_size"], table.workload["seq_len"], table.fingerprint.get("threads", 1)
    space_json = space.config.model_dump(mode="json")
    retest = archs[:len(archs) // 4]
    times = []
    with progress_bar(progress, f"fidelity {table.device}/{table.backend}: as a user times them", len(archs) + len(retest)) as advance:
        for i, arch in enumerate(archs + retest):
            times.append(user_latency(space_json, arch.to_dict(), [form], B, T, threads, seed=i)[form])
            advance(1)
    first, again = times[:len(archs)], times[len(archs):]
    out: dict[str, Any] = {"n": len(archs), "form": form, "threads": threads, "by_statistic": {}}
    for stat, t in by_stat.items():
        truth = np.array([m[stat] for m in first])
        entry: dict[str, Any] = {"prediction": error_metrics(np.array([t.predict_ms(a) for a in archs]), truth)}
        if again:
            entry["retest"] = {"n": len(again), **error_metrics(np.array([m[stat] for m in again]), truth[:len(again)])}
        out["by_statistic"][stat] = entry
    out["rows"] = [{"arch": a.key(), **{f"{stat}_ms": m[stat] for stat in by_stat}} for a, m in zip(archs, first, strict=True)]
    return out


def speed_report(table: LatencyTable, archs: list[ArchConfig], measured: dict[str, Measurement],
                 speed: list[tuple[SpeedWindow, list[str]]], tolerance: float,
                 retest: SpeedWindow | None = None) -> dict[str, Any] | None:
    """How far the machine's speed has moved since the table was built, by the reference subnet
    timed in every window of both; the windows of each that stayed disturbed beyond `tolerance` in
    every attempt; the prediction against the held-out times scaled to the table's speed; and the
    table without its speed scaling (its correction refitted), against the same times as
    measured. `retest`: the reference in the retest's window (its disturbance in each attempt is
    counted with the report's). None for a table built without a speed reference."""
    if table.reference is None or not table.speed_windows:
        return None
    stat, level = table.statistic, table.speed_level()
    factor = {k: level / w.reference.value(stat) for w, keys in speed for k in keys}
    truth = np.array([measured[a.key()].value(stat) for a in archs]) * 1e3
    predicted = np.array([table.predict_ms(a) for a in archs])
    unscaled = replace(table, window_of={})
    unscaled.fit_correction()
    report_ms = [w.reference.value(stat) * 1e3 for w, _ in speed]
    out: dict[str, Any] = {
        "reference": table.reference.key(),
        "build_ms": {"level": level * 1e3, "windows": [w.reference.value(stat) * 1e3 for w in table.speed_windows],
                     "stages": [w.stage for w in table.speed_windows]},
        "build_disturbance": [list(w.disturbance) for w in table.speed_windows],
        "report_ms": report_ms,
        "report_disturbance": [list(w.disturbance) for w, _ in speed] + ([list(retest.disturbance)] if retest else []),
        "drift_pct": 100 * (float(np.median(report_ms)) / (level * 1e3) - 1) if report_ms else None,
        "table_unscaled": error_metrics(np.array([unscaled.predict_ms(a) for a in archs]), truth),
        "tolerance": tolerance,
    }
    out["retaken"] = {k: sum(len(d) > 1 for d in out[f"{k}_disturbance"]) for k in ("build", "report")}
    out["still_disturbed"] = {k: sum(min(d) > tolerance for d in out[f"{k}_disturbance"]) for k in ("build", "report")}
    if all(a.key() in factor for a in archs):
        out["at_table_speed"] = error_metrics(predicted, truth * np.array([factor[a.key()] for a in archs]))
    return out


def _read_cache(path: Path, table: LatencyTable) -> tuple[dict[str, Measurement], list[tuple[SpeedWindow, list[str]]]]:
    """Held-out measurements of an earlier (interrupted) report with the same device, protocol and
    speed reference, and the reference's time in each of its windows."""
    try:
        doc = json.loads(path.read_text())
        reference = table.reference.key() if table.reference else None
        if doc.get("fingerprint") != table.fingerprint or doc.get("protocol") != table.protocol.to_dict() \
                or doc.get("workload") != table.workload or doc.get("reference") != reference:
            return {}, []
        speed = [(SpeedWindow.from_dict(w["window"]), list(w["keys"])) for w in doc.get("speed", [])]
        return {k: Measurement.from_dict(v) for k, v in doc.get("measured", {}).items()}, speed
    except (OSError, ValueError, KeyError, TypeError, AttributeError):  # a damaged cache: measure again
        return {}, []


def _write_cache(path: Path, table: LatencyTable, cache: dict[str, Measurement],
                 speed: list[tuple[SpeedWindow, list[str]]]) -> None:
    atomic_write_json(path, {"fingerprint": table.fingerprint, "protocol": table.protocol.to_dict(),
                             "workload": table.workload, "reference": table.reference.key() if table.reference else None,
                             "measured": {k: m.to_dict() for k, m in cache.items()},
                             "speed": [{"window": w.to_dict(), "keys": keys} for w, keys in speed]})


# --- outputs --------------------------------------------------------------------------------------
def markdown(report: dict[str, Any]) -> str:
    p, s, x = report["prediction"], report["table_sum"], report["proxies"]
    lines = [
        f"# Latency fidelity: {report['device']} / {report['backend']}",
        "",
        f"{report['n']} held-out subnets, batch {report['workload']['batch_size']} x {report['workload']['seq_len']} tokens, "
        f"{report.get('statistic', 'median')} run time, "
        f"measured {report['measured_ms_range'][0]:.3f}-{report['measured_ms_range'][1]:.3f} ms; "
        f"threads {report['fingerprint'].get('threads')}, {report['fingerprint'].get('cpu')}.",
        "",
        "| predictor | within 5% | within 10% | MAPE % | max APE % | RMSE ms | Kendall tau |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, m in (("table + correction", p), ("table sum only", s)):
        lines.append(f"| {name} | {100 * m['within_5pct']:.1f}% | {100 * m['within_10pct']:.1f}% | {m['mape_pct']:.2f} | "
                     f"{m['max_ape_pct']:.1f} | {m['rmse_ms']:.4f} | {m['kendall_tau']:.3f} |")
    lines += ["", f"Kendall tau of proxies vs measured: FLOPs {x['flops_kendall_tau']:.3f}, parameters {x['params_kendall_tau']:.3f}."]
    if report.get("retest"):
        r = report["retest"]
        lines += ["", f"Repeatability: {r['n']} of the subnets measured again at the end agree with their first measurement "
                      f"{100 * r['within_5pct']:.0f}% within 5%, {100 * r['within_10pct']:.0f}% within 10% (MAPE "
                      f"{r['mape_pct']:.2f}%, tau {r['kendall_tau']:.3f}): the ceiling for any predictor on this machine now."]
    if report.get("speed"):
        lines += ["", speed_markdown(report["speed"])]
    if report.get("by_statistic"):
        lines += ["", "Each statistic of the run times (the correction refitted on it; the retest on the same statistic):", "",
                  "| statistic | within 5% | within 10% | MAPE % | Kendall tau | retest within 10% |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for stat, e in report["by_statistic"].items():
            m, r = e["prediction"], e.get("retest")
            retest = f"{100 * r['within_10pct']:.0f}%" if r else "-"
            mark = " (the table's)" if stat == report.get("statistic") else ""
            lines.append(f"| {stat}{mark} | {100 * m['within_5pct']:.0f}% | {100 * m['within_10pct']:.0f}% | "
                         f"{m['mape_pct']:.2f} | {m['kendall_tau']:.3f} | {retest} |")
    if report.get("user_view"):
        u = report["user_view"]
        lines += ["", f"As a user times them: {u['n']} of the subnets, each built in a fresh process of its own and timed "
                      f"with a plain wall-clock loop ({u['form']}, {u['threads']} thread(s); `latency.userview`), against "
                      "the table's prediction of each statistic:", "",
                  "| statistic | within 5% | within 10% | MAPE % | Kendall tau | retest within 10% |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for stat, e in u["by_statistic"].items():
            m, r = e["prediction"], e.get("retest")
            retest = f"{100 * r['within_10pct']:.0f}%" if r else "-"
            lines.append(f"| {stat} | {100 * m['within_5pct']:.0f}% | {100 * m['within_10pct']:.0f}% | {m['mape_pct']:.2f} | "
                         f"{m['kendall_tau']:.3f} | {retest} |")
    if report.get("load_1min_mean") is not None:
        lines += ["", f"System load during the measurements: 1-min load average {report['load_1min_mean']:.2f} "
                      f"on {report['cores']} cores."]
    return "\n".join(lines) + "\n"


def speed_markdown(sp: dict[str, Any]) -> str:
    b, u = sp["build_ms"], sp["table_unscaled"]
    text = (f"Machine speed: the reference subnet took {b['level']:.3f} ms at the table build (median of {len(b['windows'])} "
            f"windows, {min(b['windows']):.3f}-{max(b['windows']):.3f} ms), and a table not scaled to it would be "
            f"{100 * u['within_10pct']:.0f}% within 10% (MAPE {u['mape_pct']:.2f}%).")
    if sp.get("drift_pct") is not None:
        text += (f" During this report it took {min(sp['report_ms']):.3f}-{max(sp['report_ms']):.3f} ms: the machine ran "
                 f"{abs(sp['drift_pct']):.1f}% {'slower' if sp['drift_pct'] > 0 else 'faster'} than at the build.")
    again = sp["retaken"]
    if any(again.values()):
        text += (f" Windows measured again because the machine's speed moved more than {100 * sp['tolerance']:.0f}% in "
                 f"them: {again['build']} of {len(sp['build_disturbance'])} in the build, {again['report']} of "
                 f"{len(sp['report_disturbance'])} in this report.")
    still = sp.get("still_disturbed") or {}
    if any(still.values()):
        text += (f" **Disturbed**: {still['report']} of the report's windows and {still['build']} of the build's moved more than "
                 f"{100 * sp['tolerance']:.0f}% in every attempt: measured on a busy machine (the retest shows how far it "
                 "repeats itself); run again when it is quieter.")
    if sp.get("at_table_speed"):
        a = sp["at_table_speed"]
        text += (f" With the held-out times scaled to the build's speed, the prediction is {100 * a['within_10pct']:.0f}% "
                 f"within 10% (MAPE {a['mape_pct']:.2f}%).")
    return text


def write_report(report: dict[str, Any], out_dir: Path, stem: str) -> dict[str, Path]:
    """The report as JSON (listed in the folder's manifest: the search reads it), markdown and plots."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{stem}.json", "md": out_dir / f"{stem}.md", "png": out_dir / f"{stem}.png",
             "html": out_dir / f"{stem}.html"}
    Manifest(out_dir, RUN_FOLDERS["latency"]).write_json(paths["json"].name, report)
    atomic_write_text(paths["md"], markdown(report))
    plot_png(report, paths["png"])
    plot_html(report, paths["html"])
    return paths


def _title(report: dict[str, Any]) -> str:
    p = report["prediction"]
    return (f"Latency table {report['device']}/{report['backend']} on {report['n']} held-out subnets: "
            f"{100 * p['within_10pct']:.0f}% within 10%, MAPE {p['mape_pct']:.1f}%, tau {p['kendall_tau']:.3f}\n"
            f"measured on {describe(report['fingerprint'])} ({report.get('statistic', 'median')} ms)")


def plot_png(report: dict[str, Any], path: Path) -> None:
    m = np.array([r["measured_ms"] for r in report["rows"]])
    p = np.array([r["predicted_ms"] for r in report["rows"]])
    lo, hi = 0.9 * min(m.min(), p.min()), 1.1 * max(m.max(), p.max())
    fig, ax = pyplot().subplots(figsize=(6, 5.5))
    line = np.linspace(lo, hi, 50)
    ax.fill_between(line, 0.9 * line, 1.1 * line, color="tab:green", alpha=0.15, label="+-10%")
    ax.plot(line, line, color="black", lw=0.8)
    ax.scatter(m, p, s=12, color="tab:blue", label="held-out subnet")
    ax.set(xlabel="measured latency (ms)", ylabel="predicted latency (ms)", xlim=(lo, hi), ylim=(lo, hi), title=_title(report))
    ax.title.set_fontsize(9)
    legend_below(ax, ncol=2)
    save_png(fig, path)


def plot_html(report: dict[str, Any], path: Path) -> None:
    import plotly.graph_objects as go

    rows = report["rows"]
    m = [r["measured_ms"] for r in rows]
    p = [r["predicted_ms"] for r in rows]
    lo, hi = 0.9 * min(m + p), 1.1 * max(m + p)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[lo, hi, hi, lo], y=[0.9 * lo, 0.9 * hi, 1.1 * hi, 1.1 * lo], mode="lines", fill="toself",
                             fillcolor="rgba(0,160,0,0.12)", line={"width": 0}, name="+-10%", hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"color": "black", "width": 1}, name="y = x"))
    fig.add_trace(go.Scatter(x=m, y=p, mode="markers", name="held-out subnet", text=[r["arch"] for r in rows],
                             hovertemplate="measured %{x:.3f} ms<br>predicted %{y:.3f} ms<br>%{text}<extra></extra>"))
    fig.update_layout(title=html_title(_title(report)), xaxis_title="measured latency (ms)", yaxis_title="predicted latency (ms)",
                      width=760, height=700, legend=HTML_LEGEND)
    save_html(fig, path)


def log_wandb(report: dict[str, Any], run_dir: Path, stem: str, out_dir: Path, mode: str = "offline",
              project: str = "hwnas") -> None:
    """Log the metrics (also to `<run_dir>/<stem>.jsonl`), the per-subnet table and the plot to a
    W&B run in the run dir (offline: sync later with `wandb sync`)."""
    from hwnas.core.tracking import Tracker

    config = {k: report[k] for k in ("device", "backend", "workload", "fingerprint", "correction", "n")}
    tracker = Tracker(run_dir, stem, mode=mode, project=project, config=config, job_type="latency", part=stem)
    try:
        row = {f"latency/{k}": v for k, v in report["prediction"].items()}
        row |= {f"latency/table_sum_{k}": v for k, v in report["table_sum"].items()}
        row |= {f"latency/{k}": v for k, v in report["proxies"].items()}
        row |= {f"latency/retest_{k}": v for k, v in (report.get("retest") or {}).items()}
        speed = report.get("speed") or {}
        if speed.get("drift_pct") is not None:
            row["latency/speed_drift_pct"] = speed["drift_pct"]
        row |= {f"latency/at_table_speed_{k}": v for k, v in (speed.get("at_table_speed") or {}).items()}
        tracker.log(row)
        tracker.summary(row)
        if tracker.wandb_run is not None:
            import wandb

            cols = ["arch", "measured_ms", "predicted_ms", "table_sum_ms", "flops", "params"]
            tracker.log_wandb({
                "latency/heldout": wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in report["rows"]]),
                "latency/predicted_vs_measured": wandb.Image(str(out_dir / f"{stem}.png")),
            })
    finally:
        tracker.finish()
