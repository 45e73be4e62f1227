"""The search space's own error: an arch that is not in the space."""

from __future__ import annotations

from hwnas.core.errors import HwnasError


class ArchError(HwnasError, ValueError):
    """An architecture is not in the search space; `field` names the first offending field."""

    def __init__(self, field: str, message: str):
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")

    def __reduce__(self):  # pickles (to come back from an isolated process) as it was made
        return type(self), (self.field, self.message)
