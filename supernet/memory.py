"""Will it fit? The memory a stage needs for the supernet, checked before anything is allocated.

A config whose sizes all pass their bounds (hwnas.search_space.config) can still describe a
supernet far larger than this machine: `embed_dim: [65536]` with `depth: [1024]` is about 10**14
parameters. Every stage that builds the supernet (train, latency, predictors, export) calls
`check_fits` first, so such a config is one line naming the sizes, not an allocation failure (or
a machine swapping) minutes into the run.

The estimate is a lower bound of what the stage holds at once, so a config it refuses cannot run:
- the supernet's parameters, counted analytically as `Supernet` makes them (one set of projections
  per attention / FFN kind with `weight_sharing: per_kind`; tests compare with the real module);
- bytes per parameter (`BYTES_PER_PARAM`): fp32 weights; training adds the gradient and AdamW's two
  moments (and the moving average), and the checkpoint is serialized whole beside them when it is
  saved; evaluation reads the whole checkpoint (weights and moments) beside the model;
- activations: the logits of one batch, plus (training) one residual stream per layer kept for the
  backward pass, at 2 bytes per value (bf16; CPU keeps fp32).
"""

from __future__ import annotations

import os
from pathlib import Path

from hwnas.core.errors import HwnasError
from hwnas.search_space import SearchSpaceConfig
from hwnas.search_space.kinds import NORMS

# bytes per parameter a stage keeps at once (fp32 weights = 4)
BYTES_PER_PARAM = {
    "train": 4 + 12 + 12,  # weights, gradient and 2 AdamW moments, and the checkpoint being saved
    "evaluate": 4 + 12,  # weights, and the checkpoint read whole (weights and moments)
    "latency": 4,  # a randomly initialized supernet, no checkpoint
}
EMA_BYTES = 4 + 4  # training with ema_decay > 0: the average, and its copy in the checkpoint
ACTIVATION_BYTES = 2


class TooLargeError(HwnasError, ValueError):
    """A config whose supernet (or batch) cannot fit in this machine's memory."""


def supernet_params(cfg: SearchSpaceConfig) -> int:
    """Parameters of `Supernet(cfg)`, without building it."""
    d, layers = max(cfg.embed_dim), max(cfg.depth)
    attn = max(cfg.n_heads.choices) * cfg.head_dim
    hidden = int(round(max(cfg.mlp_ratio.choices) * d))
    per_kind = cfg.weight_sharing == "per_kind"
    attn_sets = len(cfg.attention.choices) if per_kind else 1
    ffn_sets = len(cfg.ffn.choices) if per_kind else 1
    norms = sum(NORMS[kind].n_params(d) for kind in set(cfg.norm.choices))  # one ElasticNorms
    block = (attn_sets * 4 * attn * d  # q, k, v and output projections
             + ffn_sets * 2 * hidden * d + hidden * d  # up and down per set, one SwiGLU gate
             + sum(cfg.ffn.experts) * d  # a router per expert count
             + 4 * norms)  # input and output norm of both sublayers
    return (cfg.vocab_size + cfg.block_size) * d + layers * block + norms


def machine_memory(device: str = "cpu") -> int:
    """Bytes of memory of `device`: the GPU's, or this machine's RAM (a cgroup limit if lower)."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            total = min(total, int(Path(limit_file).read_text().strip()))
        except (OSError, ValueError):  # absent, or "max"
            continue
    return total


def _size(n: float) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
    unit = 0
    while n >= 1024 and unit < len(units) - 1:
        n, unit = n / 1024, unit + 1
    return f"{n:,.1f} {units[unit]}"


def needed_memory(cfg: SearchSpaceConfig, job: str, batch: int, seq_len: int, ema: bool = False) -> tuple[int, int]:
    """(bytes for parameters, bytes for activations) that `job` ("train", "evaluate", "latency")
    keeps at least on a batch of `batch` x `seq_len` tokens."""
    per_param = BYTES_PER_PARAM[job] + (EMA_BYTES if ema and job == "train" else 0)
    width = max(cfg.vocab_size, max(cfg.embed_dim))
    if job == "train":
        width = cfg.vocab_size + max(cfg.depth) * max(cfg.embed_dim)
    return supernet_params(cfg) * per_param, batch * seq_len * width * ACTIVATION_BYTES


def check_fits(cfg: SearchSpaceConfig, job: str, batch: int, seq_len: int, batch_field: str, device: str = "cpu",
               ema: bool = False) -> None:
    """Raise `TooLargeError` (one line naming the sizes) when `job` on the supernet of `cfg` with
    batches of `batch` x `seq_len` tokens (`batch_field` names the batch size) needs more memory
    than `device` has."""
    params, activations = needed_memory(cfg, job, batch, seq_len, ema)
    have = machine_memory(device)
    if params + activations <= have:
        return
    what = {"train": "training", "evaluate": "evaluating", "latency": "timing"}[job]
    where = "this GPU has" if str(device).startswith("cuda") else "this machine has"
    if params >= activations:
        n = supernet_params(cfg)
        raise TooLargeError(
            f"search_space: the supernet has {n:,} parameters (embed_dim up to {max(cfg.embed_dim)}, depth up to "
            f"{max(cfg.depth)}, vocab_size {cfg.vocab_size}, mlp_ratio up to {max(cfg.mlp_ratio.choices):g}); {what} it "
            f"needs about {_size(params + activations)} ({params // n} bytes per parameter) but {where} "
            f"{_size(have)}; choose smaller sizes")
    raise TooLargeError(
        f"{batch_field}: {what} a batch of {batch} sequences of {seq_len} tokens needs about {_size(activations)} for "
        f"activations alone (vocab_size {cfg.vocab_size}, embed_dim up to {max(cfg.embed_dim)}) but {where} "
        f"{_size(have)}; choose a smaller batch or seq_len")
