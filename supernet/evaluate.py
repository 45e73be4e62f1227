"""`evaluate`: validation loss (nats per byte) and bits per byte of one subnet on a fixed set of
validation windows, batched."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hwnas.search_space import ArchConfig


@torch.no_grad()
def evaluate(model: torch.nn.Module, arch: ArchConfig | None, corpus, batch_size: int = 16, seq_len: int | None = None,
             max_tokens: int | None = 65536) -> dict[str, float]:
    """Mean next-byte cross-entropy of `model` over the corpus's fixed validation windows.

    `model` is a `Supernet` (run as `model(x, arch)`) or a standalone subnet (`arch=None`,
    run as `model(x)`). Returns {"loss": nats/byte, "bpb": bits/byte, "tokens": count}."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if seq_len is None:
        seq_len = model.config.block_size if hasattr(model, "config") else model.dims.block_size
    total, count = 0.0, 0
    for x, y in corpus.val_batches(batch_size, seq_len, max_tokens):
        x, y = x.to(device), y.to(device)
        logits = model(x, arch) if arch is not None else model(x)
        total += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum").item()
        count += y.numel()
    model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "bpb": loss / math.log(2), "tokens": count}
