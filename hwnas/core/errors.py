"""Errors raised by hwnas for bad user input: each names the offending field in one line."""

from __future__ import annotations


class HwnasError(Exception):
    """Base class of every user-facing hwnas error (the CLI prints it as one line, no traceback)."""


class ConfigError(HwnasError, ValueError):
    """An experiment config (YAML) has a wrong field, type or value."""


class TrackingError(HwnasError, RuntimeError):
    """Experiment tracking (W&B) cannot start as configured, e.g. `wandb: online` without credentials."""


def warning_line(message, category: type[Warning], filename: str, lineno: int, line: str | None = None) -> str:
    """A warning as the CLI prints it: one line, `hwnas: warning: ...`, without the source line
    Python shows by default; a warning of another package names its category (install with
    `warnings.formatwarning = warning_line`)."""
    text = " ".join(str(message).split())
    if category is UserWarning or category.__module__.startswith("hwnas"):
        return f"hwnas: warning: {text}\n"
    return f"hwnas: warning: {text} ({category.__name__})\n"
