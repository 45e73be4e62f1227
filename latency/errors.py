"""Errors and warnings of the latency stage (user-facing: the CLI prints them as one line)."""

from __future__ import annotations

from hwnas.core.errors import HwnasError


class LatencyError(HwnasError):
    """A latency stage failure the user can act on (missing key, wrong backend, bad workload)."""


class TableError(LatencyError, ValueError):
    """A latency-table file that is truncated, altered, of another format, or incomplete."""


class FingerprintMismatchError(LatencyError):
    """A table measured on one device is used on another (raised in strict mode)."""


class FingerprintWarning(UserWarning):
    """A table measured on one device is used on another (non-strict mode)."""
