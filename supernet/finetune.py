"""Train a standalone subnet (fine-tuning an extracted one, or training one from scratch) with the
supernet's optimizer recipe: AdamW, warmup + cosine, clipping, the MoE balance loss."""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.nn.functional as F

from hwnas.core.progress import progress_bar

from .config import TrainConfig
from .evaluate import evaluate
from .train import lr_at, param_groups, step_seed


def train_standalone(model: torch.nn.Module, corpus, steps: int, cfg: TrainConfig | None = None, seed: int = 0,
                     eval_tokens: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Train `model` (a `Subnet`: `model(tokens, return_aux=True)`) for `steps` steps in place;
    returns the validation loss before and after and the training time."""
    cfg = (cfg or TrainConfig()).model_copy(update={"steps": max(steps, 1), "warmup_steps": min((cfg or TrainConfig()).warmup_steps, max(steps, 1))})
    seq_len = cfg.seq_len or model.dims.block_size
    eval_tokens = eval_tokens or cfg.eval_tokens
    before = evaluate(model, None, corpus, seq_len=seq_len, max_tokens=eval_tokens)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=False)
    model.train()
    t0 = time.perf_counter()
    with progress_bar("train subnet", steps, progress, unit="step") as advance:
        for step in range(steps):
            gen = torch.Generator().manual_seed(step_seed(seed, step, 1))
            x, y = corpus.batch("train", cfg.batch_size, seq_len, gen)
            x, y = x.to(device), y.to(device)
            logits, aux = model(x, return_aux=True)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)) + cfg.balance_weight * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            for group in opt.param_groups:
                group["lr"] = lr_at(step, cfg)
            opt.step()
            advance(1)
    seconds = time.perf_counter() - t0
    model.eval()
    after = evaluate(model, None, corpus, seq_len=seq_len, max_tokens=eval_tokens)
    return {"loss_before": before["loss"], "loss_after": after["loss"], "bpb_before": before["bpb"], "bpb_after": after["bpb"],
            "steps": steps, "train_seconds": seconds}
