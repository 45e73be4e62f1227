"""Packages whose names are imported from their modules on first use (PEP 562), so that reading
one light module of a package (its `config`, say) does not load torch, ONNX or SciPy with it.

    # in a package's __init__.py
    __getattr__, __dir__, __all__ = lazy_exports(__name__, {"LatencyTable": "table", ...})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, where: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """(`__getattr__`, `__dir__`, `__all__`) for `package`: each name of `where` is imported from
    its module (relative to the package) on first use and then kept in the package's namespace."""
    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{where[name]}", package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, sorted(where)
