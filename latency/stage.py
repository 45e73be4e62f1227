"""The `hwnas latency` stage: the table of every device and backend of the config, each followed by
its fidelity report on held-out subnets, with the run directory locked for the whole stage."""

from __future__ import annotations

from collections.abc import Callable
from itertools import product
from pathlib import Path
from typing import Any

from hwnas.core.rundir import stage_lock
from hwnas.core.tracking import check_wandb
from hwnas.search_space import SearchSpace, SearchSpaceConfig

from .build import build_in_run, check_stage
from .config import LatencyConfig
from .fidelity import fidelity_report_fresh
from .table import LatencyTable


def run_latency_stage(space_cfg: SearchSpaceConfig, cfg: LatencyConfig, run_dir: str | Path, devices: list[str] | None = None,
                      backends: list[str] | None = None, strict: bool = False, fidelity: bool = True, progress: bool = True,
                      seed: int | None = None, name: str | None = None,
                      on_table: Callable[[str, str, LatencyTable, dict[str, Any] | None], None] | None = None) -> dict[str, Any]:
    """Build (or resume) each table (`devices` x `backends`, default: the config's, x `cfg.workloads`) and, with
    `fidelity` and `cfg.n_fidelity`, its fidelity report; `on_table(device, backend, table, report)`
    after each. Returns each report's prediction figures and proxies by "device/backend"."""
    space = SearchSpace(space_cfg)
    devices, backends = devices or cfg.devices, backends or cfg.backends
    check_stage(space, cfg, run_dir, devices, seed, name)
    check_wandb(cfg.wandb, "latency.wandb")
    out: dict[str, Any] = {}
    with stage_lock(run_dir, "latency"):
        for device, backend, workload in product(devices, backends, cfg.workloads):
            table = build_in_run(space, cfg, run_dir, device, backend, strict, progress, workload)
            report = None
            if fidelity and cfg.n_fidelity:
                report = fidelity_report_fresh(space_cfg, cfg, run_dir, device, backend, progress=progress, workload=workload)
                out[f"{device}/{backend}" + ("" if workload == "prefill" else f":{workload}")] = \
                    report["prediction"] | {"proxies": report["proxies"]}
            if on_table:
                on_table(device, backend, table, report)
    return out
