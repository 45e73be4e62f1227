"""A config's `device` field (auto, cpu or cuda) resolved the same way in every stage."""

from __future__ import annotations

from .errors import ConfigError, HwnasError


def resolve_device(value: str, field: str, error: type[HwnasError] = ConfigError) -> str:
    """"cpu" or "cuda" for `value` ("auto": cuda when this machine has one); asking for cuda
    without one raises `error` naming `field`."""
    import torch

    if value == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if value == "cuda" and not torch.cuda.is_available():
        raise error(f"{field}: 'cuda' was asked for but no CUDA device is available; use cpu or auto")
    return value
