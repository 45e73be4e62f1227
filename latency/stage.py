"""The `hwnas latency` stage: the table of every device and backend of the config, each followed by
its fidelity report on held-out subnets, with the run directory locked for the whole stage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from hwnas.search_space import SearchSpace, SearchSpaceConfig
from hwnas.search_space.rundir import claim_run_dir, stage_lock
from hwnas.supernet.memory import check_fits

from .build import run_latency
from .config import LatencyConfig
from .fidelity import fidelity_report_fresh
from .table import LatencyTable


def run_latency_stage(space_cfg: SearchSpaceConfig, cfg: LatencyConfig, run_dir: str | Path, devices: list[str] | None = None,
                      backends: list[str] | None = None, strict: bool = False, fidelity: bool = True, progress: bool = True,
                      seed: int | None = None, name: str | None = None,
                      on_table: Callable[[str, str, LatencyTable, dict[str, Any] | None], None] | None = None) -> dict[str, Any]:
    """Build (or resume) each table (`devices` x `backends`, default: the config's) and, with
    `fidelity` and `cfg.n_fidelity`, its fidelity report; `on_table(device, backend, table, report)`
    after each. Returns each report's prediction figures and proxies by "device/backend"."""
    space = SearchSpace(space_cfg)
    check_fits(space_cfg, "latency", cfg.batch_size, cfg.seq_len or space_cfg.block_size, "latency.batch_size")  # before any write
    claim_run_dir(run_dir, space_cfg.model_dump(mode="json"), seed, name)
    out: dict[str, Any] = {}
    with stage_lock(run_dir, "latency"):
        for device in devices or cfg.devices:
            for backend in backends or cfg.backends:
                table = run_latency(space, cfg, run_dir, device, backend, strict, progress, seed, name)
                report = None
                if fidelity and cfg.n_fidelity:
                    report = fidelity_report_fresh(space_cfg, cfg, run_dir, device, backend, progress=progress)
                    out[f"{device}/{backend}"] = report["prediction"] | {"proxies": report["proxies"]}
                if on_table:
                    on_table(device, backend, table, report)
    return out
