"""Training checkpoints in one safetensors file: weights, AdamW state, RNG state and the loop's
position as JSON metadata, and, when training keeps one, the moving average of the weights
(`average/*`, what evaluation, search and export use). Written atomically (through the train
folder's manifest, see `core.manifest`); loading never unpickles anything, and refuses
metadata that is not what hwnas wrote and tensors holding NaN or inf, naming the tensor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from hwnas.core.errors import HwnasError
from hwnas.core.io import atomic_path
from hwnas.core.manifest import Manifest

FORMAT = "hwnas-train-ckpt-1"


class CheckpointError(HwnasError, ValueError):
    """A checkpoint that cannot be read or does not fit the model."""


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any],
                    average: dict[str, torch.Tensor] | None = None, manifest: Manifest | None = None) -> None:
    """Write model weights, optimizer state, RNG state and `meta`; `average`: the moving average
    of the model's state (same keys), stored beside the live weights. `manifest`: the manifest of
    the checkpoint's folder, which then lists it."""
    from safetensors.torch import save_file

    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"average/{k}": v.detach().cpu().contiguous() for k, v in (average or {}).items()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                tensors[f"optim/{names[id(p)]}/{key}"] = value.detach().cpu().reshape(value.shape).contiguous()
    tensors["rng/torch"] = torch.get_rng_state()
    groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    metadata = {"format": FORMAT, "meta": json.dumps(meta, sort_keys=True), "param_groups": json.dumps(groups)}
    with manifest.write(Path(path).name, resume=True) if manifest else atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def _metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an hwnas training checkpoint (format {metadata.get('format')!r})")
    return metadata


def _json_field(path: str | Path, metadata: dict[str, str], key: str, kind: type) -> Any:
    try:
        value = json.loads(metadata[key])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: checkpoint metadata {key!r} is missing or not JSON ({type(e).__name__}: {e})") from None
    if not isinstance(value, kind):
        raise CheckpointError(f"{path}: checkpoint metadata {key!r} should be a JSON {kind.__name__}, got {type(value).__name__}")
    return value


def read_meta(path: str | Path) -> dict[str, Any]:
    return _json_field(path, _metadata(path), "meta", dict)


def check_finite(tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """Refuse NaN or inf in any floating-point tensor, naming the first such tensor."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{source}: tensor {name!r} holds {bad} non-finite value{'s' * (bad > 1)} (NaN or inf); "
                                  "the file is damaged or was saved from a diverged model")


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    averaged: bool = False, average: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Restore weights in place; with `optimizer`, also its state and the torch RNG (a resume).
    `averaged`: load the moving average of the weights where the checkpoint has one (for use,
    not for resuming). `average`: a dict filled with the stored average (for resuming).
    Returns the metadata."""
    from safetensors.torch import load_file

    metadata = _metadata(path)
    meta = _json_field(path, metadata, "meta", dict)
    try:
        tensors = load_file(str(path))
    except Exception as e:  # a damaged tensor section
        raise CheckpointError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    check_finite(tensors, path)
    device = next(model.parameters()).device
    prefix = "average/" if averaged and any(k.startswith("average/") for k in tensors) else "model/"
    state = {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
    if average is not None:
        average.update({k.removeprefix("average/"): v.to(device) for k, v in tensors.items() if k.startswith("average/")})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit this model ({str(e).splitlines()[0]})") from None
    if optimizer is not None:
        groups = _json_field(path, metadata, "param_groups", list)
        params = dict(model.named_parameters())
        index = {id(p): i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
        opt_state: dict[int, dict[str, torch.Tensor]] = {}
        try:
            for key, value in tensors.items():
                if key.startswith("optim/"):
                    name, _, field = key.removeprefix("optim/").rpartition("/")
                    opt_state.setdefault(index[id(params[name])], {})[field] = value.to(device) if field != "step" else value
            saved_groups = [dict(g, params=[index[id(p)] for p in cur["params"]])
                            for g, cur in zip(groups, optimizer.param_groups, strict=True)]
            optimizer.load_state_dict({"state": opt_state, "param_groups": saved_groups})
            torch.set_rng_state(tensors["rng/torch"])
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{path}: optimizer or RNG state does not fit this model ({type(e).__name__}: "
                                  f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return meta
