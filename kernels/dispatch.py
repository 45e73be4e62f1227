"""Which implementation a kernel call runs: the Triton kernel or its plain-torch reference twin.

`backend="auto"` (the default everywhere) picks Triton when Triton is importable, every tensor is on
a CUDA device and the environment variable `HWNAS_KERNELS` is not `reference`; the reference
otherwise (CPU, MPS, no Triton). `backend="reference"` always runs the twin. `backend="triton"`
insists on Triton and raises `KernelUnavailable` where it cannot run: on CPU tensors it needs the
Triton interpreter (`TRITON_INTERPRET=1`, set before the first kernel call of the process; that is
how the tests run the kernels on a machine without a GPU). Kernels that are forward only raise
under `backend="triton"` when autograd needs their gradient; `backend="auto"` runs the reference then.

The Triton kernels live in their own modules (`*_triton.py`), imported on first use and never at
`import hwnas.kernels`: `@triton.jit` decides between compiling and interpreting when a kernel is
defined, so deferring the import lets a test set `TRITON_INTERPRET=1` first, and a machine without
Triton imports this package fine.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from functools import cache
from types import ModuleType

import torch
from torch import Tensor

BACKENDS = ("auto", "triton", "reference")


class KernelUnavailable(RuntimeError):
    """`backend="triton"` was asked for where the Triton kernel cannot run."""


@cache
def triton_available() -> bool:
    """Whether `import triton` can work (checked without importing it)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # e.g. sys.modules["triton"] = None (blocked)
        return False


def interpreting() -> bool:
    """Whether Triton kernels run in the interpreter (on CPU tensors, numerically exact, slow)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")


def triton_module(name: str) -> ModuleType:
    """The Triton half of kernel `name` (e.g. `norm` -> `hwnas.kernels.norm_triton`), imported now."""
    if not triton_available():
        raise KernelUnavailable("Triton is not installed (pip install triton; Linux x86_64 only)")
    module = importlib.import_module(f"{__package__}.{name}_triton")
    if module.INTERPRETED != interpreting():
        was = "set" if module.INTERPRETED else "unset"
        raise KernelUnavailable(
            f"the Triton kernels of {name!r} were defined with TRITON_INTERPRET {was}, and it is not so now; "
            "set TRITON_INTERPRET before the first kernel call of the process and leave it"
        )
    return module


def use_triton(backend: str, *tensors: Tensor | None) -> bool:
    """True to run the Triton kernel for these tensors, False for the reference (see module doc)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "reference":
        return False
    devices = {t.device.type for t in tensors if t is not None}
    if backend == "auto":
        return (
            os.environ.get("HWNAS_KERNELS", "auto") != "reference"
            and devices == {"cuda"}
            and triton_available()
        )
    # backend == "triton": run it or say why not
    if not triton_available():
        raise KernelUnavailable("backend='triton': Triton is not installed (pip install triton; Linux x86_64 only)")
    if devices - {"cuda", "cpu"} or len(devices) > 1:
        raise KernelUnavailable(f"backend='triton': tensors must all be on one CUDA device (or CPU with "
                                f"TRITON_INTERPRET=1), got devices {sorted(devices)}")
    if devices == {"cpu"} and not interpreting():
        raise KernelUnavailable("backend='triton' on CPU tensors needs the Triton interpreter: set "
                                "TRITON_INTERPRET=1 before the first kernel call")
    return True


def model_backend() -> str:
    """The backend the supernet's forward asks for (`HWNAS_KERNELS`: auto, the default; triton, also on
    CPU under the Triton interpreter, as the tests run it; reference)."""
    backend = os.environ.get("HWNAS_KERNELS", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"HWNAS_KERNELS={backend!r} is not one of {', '.join(BACKENDS)}")
    return backend


def needs_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd would record an op on these tensors."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
