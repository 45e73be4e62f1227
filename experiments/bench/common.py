"""Helpers shared by the benchmark scripts: timing medians and writing BENCHMARKS.md sections."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "BENCHMARKS.md"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}"


def median_time(fn: Callable[[], object], repeats: int = 30, warmup: int = 5) -> float:
    """Median wall time of `fn()` in seconds over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int = 30, warmup: int = 5) -> dict[str, float]:
    """Median times of several functions timed in alternation, so drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section `## name` of BENCHMARKS.md with `body`."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# hwnas benchmarks\n\nEach section is written by the script named in it.\n"
    section = f"## {name}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    BENCHMARKS.write_text(text.rstrip() + "\n")


def supernet_steps(run: Path) -> int:
    """The steps the run's supernet trained (its train/summary.json): sections of different runs stay apart by it."""
    return json.loads((Path(run) / "train" / "summary.json").read_text())["steps"]


def git_commit() -> str:
    """The checkout's commit (short), with "+changes" when tracked files (but BENCHMARKS.md) differ from it: which code
    measured a figure, so a row measured with an option since removed can still be reproduced."""
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, check=False, cwd=ROOT).stdout.strip()
        except OSError:  # no git on this machine (a bare GPU machine): the commit is unknown
            return ""

    head = git("rev-parse", "--short=7", "HEAD") or "unknown"
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md")  # benches write that one
    return head + ("+changes" if changed else "")


def command() -> str:
    return "python " + shlex.join([str(Path(sys.argv[0]).resolve().relative_to(ROOT))] + sys.argv[1:])


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """`jobs` spawned worker processes that die with this one (a killed bench leaves no worker
    training on behind it, slowing every later measurement)."""
    from hwnas.core.isolate import die_with_parent

    return ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=die_with_parent, initargs=(os.getpid(),))


def digest(obj) -> str:
    """A short stable hash of a JSON-able object (model_dump order is fixed), to key cached runs."""
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()[:10]
