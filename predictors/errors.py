"""The predictor package's error."""

from __future__ import annotations

from hwnas.core.errors import HwnasError


class PredictorError(HwnasError, ValueError):
    """A predictor (or its inputs) that cannot be built, saved or loaded."""
