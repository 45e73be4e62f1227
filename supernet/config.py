"""The `train:` section of the experiment config: data, sandwich rule, optimizer, checkpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hwnas.core.config import (
    MAX_BATCH,
    MAX_BLOCK,
    MAX_CORPUS_BYTES,
    MAX_STEPS,
    MAX_THREADS,
    MAX_TOKENS,
    Section,
    field_error,
)

# random subnets per step: each costs a forward and backward pass of a subnet, so 64 already makes
# a step ~66x the cost of a plain one
MAX_RANDOM_SUBNETS = 64


class TrainConfig(Section):
    # data
    corpus: str | None = Field(default=None, description="None/'stdlib': the Python standard library sources; a text file or folder; 'hf:<name>'")
    val_fraction: float = Field(default=0.05, gt=0, lt=1)
    max_corpus_bytes: int | None = Field(default=None, gt=0, le=MAX_CORPUS_BYTES)
    # schedule
    steps: int = Field(default=600, gt=0, le=MAX_STEPS, description=f"optimizer steps, 1..{MAX_STEPS}")
    batch_size: int = Field(default=16, gt=0, le=MAX_BATCH, description=f"global batch (split across DDP ranks), 1..{MAX_BATCH}")
    seq_len: int | None = Field(default=None, gt=0, le=MAX_BLOCK, description="default (and at most): the space's block_size")
    lr: float = Field(default=3e-3, gt=0)
    min_lr: float = Field(default=3e-4, ge=0)
    warmup_steps: int = Field(default=50, ge=0, le=MAX_STEPS, description="at most steps")
    weight_decay: float = Field(default=0.1, ge=0)
    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.99, ge=0, lt=1)
    grad_clip: float = Field(default=1.0, gt=0)
    # sandwich rule and in-place distillation (BigNAS / AttentiveNAS)
    parent_fraction: float = Field(default=0.0, ge=0, lt=1, description="share of the steps, at the start, that train "
                                   "only the largest subnet (parent first, as Minitron / Nemotron Elastic start from a "
                                   "trained parent); the sandwich rule trains the rest")
    n_random: int = Field(default=2, ge=0, le=MAX_RANDOM_SUBNETS, description="random subnets per step besides the largest and smallest")
    random_weight: float = Field(default=1.0, gt=0, le=1, description="weight of each random subnet's loss against the "
                                "largest's and smallest's 1: below 1 they pull the shared weights less")
    distill: bool = True
    distill_weight: float = Field(default=1.0, ge=0, le=1, description="KD share of a child's loss; the rest is cross-entropy")
    complexity_aware: bool = Field(default=False, description="ElasticViT: bound the FLOPs gap between consecutive random subnets")
    flops_gap: float = Field(default=0.3, gt=0, description="max relative FLOPs change between consecutive random subnets")
    balance_weight: float = Field(default=0.01, ge=0, description="weight of the MoE load-balancing loss")
    ema_decay: float = Field(default=0.0, ge=0, lt=1, description="decay of an exponential moving average of the weights "
                             "(BigNAS), which evaluation, search and export then use; 0: off")
    # bookkeeping
    ckpt_every: int = Field(default=100, gt=0, le=MAX_STEPS)
    eval_every: int = Field(default=200, gt=0, le=MAX_STEPS)
    eval_tokens: int = Field(default=65536, gt=0, le=MAX_TOKENS, description="validation tokens per evaluation")
    log_every: int = Field(default=10, gt=0, le=MAX_STEPS)
    max_nonfinite: int = Field(default=5, gt=0, le=MAX_STEPS, description="consecutive non-finite losses that stop training")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(default=None, gt=0, le=MAX_THREADS, description="CPU threads (default: torch's choice)")
    wandb: Literal["offline", "online", "disabled"] = "offline"
    wandb_project: str = "hwnas"

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise field_error("min_lr", f"{self.min_lr} exceeds lr {self.lr}")
        if self.warmup_steps > self.steps:
            raise field_error("warmup_steps", f"{self.warmup_steps} exceeds steps {self.steps}")
        return self
