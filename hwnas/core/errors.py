"""Errors raised by hwnas for bad user input: each names the offending field in one line."""

from __future__ import annotations


class HwnasError(Exception):
    """Base class of every user-facing hwnas error (the CLI prints it as one line, no traceback)."""


class ConfigError(HwnasError, ValueError):
    """An experiment config (YAML) has a wrong field, type or value."""


class TrackingError(HwnasError, RuntimeError):
    """Experiment tracking (W&B) cannot start as configured, e.g. `wandb: online` without credentials."""
