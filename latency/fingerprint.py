"""Device fingerprints: what a latency measurement depends on besides the model.

A table records the fingerprint of the machine it was measured on; loading it elsewhere compares
the fields that matter for its device and backend and warns (or, strict, raises) on a difference.
"""

from __future__ import annotations

import os
import platform
import subprocess
import warnings
from functools import cache
from pathlib import Path
from typing import Any

from .errors import FingerprintMismatchError, FingerprintWarning


@cache
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), else the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # not installed, or broken on this platform
        return None


# what nvidia-smi says of the GPU's clocks and limits (informational: a table built while the GPU was
# throttled or its clocks were locked says so, but a different clock does not refuse the table)
GPU_QUERY = ("driver_version", "clocks.sm", "clocks.max.sm", "clocks.mem", "power.limit", "persistence_mode",
             "clocks_throttle_reasons.active")


def gpu_query(index: int = 0) -> dict[str, str]:
    """`GPU_QUERY` of GPU `index` from nvidia-smi, by field ({} where nvidia-smi is missing or fails)."""
    try:
        out = subprocess.run(["nvidia-smi", f"--id={index}", f"--query-gpu={','.join(GPU_QUERY)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True)
        values = [v.strip() for v in out.stdout.strip().splitlines()[0].split(",")]
    except Exception:  # noqa: BLE001 - no nvidia-smi, or it failed: nothing to note
        return {}
    return dict(zip(GPU_QUERY, values, strict=False)) if len(values) == len(GPU_QUERY) else {}


def device_fingerprint(device: str, threads: int, dtype: str = "float32") -> dict[str, Any]:
    """Everything a latency measurement on `device` with `threads` CPU threads depends on."""
    import torch

    fp: dict[str, Any] = {
        "device": device,
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "threads": threads,
        "machine": platform.machine(),
        "torch": torch.__version__,
        "onnxruntime": _version("onnxruntime"),
        "triton": None,
        "gpu": None,
        "gpu_driver": None,
        "cuda": None,
        "dtype": dtype,
        "malloc_pinned": None,  # whether the torch backend pinned glibc's malloc thresholds (informational)
        "gpu_clocks": None,  # nvidia-smi's clocks, power limit and throttle reasons at the fingerprint (informational)
    }
    if device == "cuda" and torch.cuda.is_available():  # a CUDA table read on a machine without one records None
        smi = gpu_query(torch.cuda.current_device())
        fp.update(gpu=torch.cuda.get_device_name(), gpu_driver=smi.pop("driver_version", None), cuda=torch.version.cuda,
                  triton=_version("triton"), gpu_clocks=smi or None)
    return fp


def describe(fp: dict[str, Any]) -> str:
    """The machine of a fingerprint in a few words, for plot titles: 'AMD EPYC, 1 of 2 cores' or
    'NVIDIA H100 (CUDA 12.4)'."""
    if fp.get("device") == "cuda":
        return f"{fp.get('gpu') or 'CUDA GPU'}" + (f" (CUDA {fp['cuda']})" if fp.get("cuda") else "")
    threads, cores = fp.get("threads"), fp.get("cores")
    return f"{fp.get('cpu') or 'CPU'}, {threads} thread{'s' if threads != 1 else ''} of {cores} cores"


# fields that decide a measurement, per (device, backend); others are recorded for information
_COMMON = ("device", "cpu", "cores", "threads", "machine", "torch", "dtype")
_RELEVANT = {
    ("cpu", "torch"): _COMMON,
    ("cpu", "onnxruntime"): (*_COMMON, "onnxruntime"),
    ("cuda", "torch"): (*_COMMON, "gpu", "gpu_driver", "cuda", "triton"),
    ("cuda", "onnxruntime"): (*_COMMON, "onnxruntime", "gpu", "gpu_driver", "cuda"),
}


def fingerprint_diff(recorded: dict[str, Any], current: dict[str, Any], backend: str) -> list[str]:
    """The relevant fields that differ, as 'field: table X, here Y'."""
    fields = _RELEVANT.get((recorded.get("device"), backend), tuple(sorted(set(recorded) | set(current))))
    return [f"{f}: table {recorded.get(f)!r}, here {current.get(f)!r}" for f in fields if recorded.get(f) != current.get(f)]


def check_fingerprint(recorded: dict[str, Any], current: dict[str, Any], backend: str, strict: bool, what: str) -> list[str]:
    """Warn (`FingerprintWarning`) or, when strict, raise `FingerprintMismatchError` if `what` (a
    table) was measured on a device with another fingerprint; return the differences."""
    diff = fingerprint_diff(recorded, current, backend)
    if diff:
        msg = f"{what} was measured on another device ({'; '.join(diff)}); its latencies may not hold here"
        if strict:
            raise FingerprintMismatchError(msg)
        warnings.warn(msg, FingerprintWarning, stacklevel=3)
    return diff
