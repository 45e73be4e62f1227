"""Errors raised by hwnas for bad user input: each names the offending field in one line."""

from __future__ import annotations


class HwnasError(Exception):
    """Base class of every user-facing hwnas error (the CLI prints it as one line, no traceback)."""


class ConfigError(HwnasError, ValueError):
    """An experiment config (YAML) has a wrong field, type or value."""


class ArchError(HwnasError, ValueError):
    """An architecture is not in the search space; `field` names the first offending field."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")

    def __reduce__(self):  # pickles (to come back from an isolated process) as it was made
        return type(self), (self.field, self.message)
