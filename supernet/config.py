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
    corpus: str | None = Field(default=None, description="training text: null or 'stdlib' (the installed Python's "
                               "standard library sources, no download), a text file or folder of UTF-8 text files, or "
                               "'hf:<dataset>[:<split>]' (needs `datasets` and network); read as bytes")
    val_fraction: float = Field(default=0.05, gt=0, lt=1, description="share of the corpus held out for validation "
                                "(whole files, split by a hash of their path; a single file: its last bytes)")
    max_corpus_bytes: int | None = Field(default=None, gt=0, le=MAX_CORPUS_BYTES, description="cap, in bytes, on "
                                         "the train split (validation is capped in proportion); null: no cap, but "
                                         "2,000,000 for 'hf:' sources")
    # schedule
    steps: int = Field(default=600, gt=0, le=MAX_STEPS, description=f"optimizer steps, 1..{MAX_STEPS}; each trains "
                       "the sandwich of subnets on one batch")
    batch_size: int = Field(default=16, gt=0, le=MAX_BATCH, description=f"sequences per step, 1..{MAX_BATCH}: the "
                            "global batch, split evenly across DDP ranks (so divisible by their number)")
    seq_len: int | None = Field(default=None, gt=0, le=MAX_BLOCK, description="tokens per training sequence; "
                                "default (and at most): the space's block_size")
    lr: float = Field(default=3e-3, gt=0, description="peak AdamW learning rate, reached after warmup_steps; lower "
                      "it if training stops on non-finite losses")
    min_lr: float = Field(default=3e-4, ge=0, description="learning rate the cosine decay ends at on the last step "
                          "(at most lr)")
    warmup_steps: int = Field(default=50, ge=0, le=MAX_STEPS, description="steps of linear warmup from lr/warmup_steps "
                              "to lr (at most steps)")
    weight_decay: float = Field(default=0.1, ge=0, description="AdamW weight decay of the weight matrices and "
                                "embeddings (1-d parameters such as norm weights are not decayed)")
    beta1: float = Field(default=0.9, ge=0, lt=1, description="AdamW decay rate of the gradient's moving average")
    beta2: float = Field(default=0.99, ge=0, lt=1, description="AdamW decay rate of the squared gradient's moving "
                         "average")
    grad_clip: float = Field(default=1.0, gt=0, description="the gradient's global L2 norm is clipped to this before "
                             "each step")
    # sandwich rule and in-place distillation (BigNAS / AttentiveNAS)
    parent_fraction: float = Field(default=0.0, ge=0, lt=1, description="share of the steps, at the start, that train "
                                   "only the largest subnet (parent first, as Minitron / Nemotron Elastic start from a "
                                   "trained parent); the sandwich rule trains the rest")
    n_random: int = Field(default=2, ge=0, le=MAX_RANDOM_SUBNETS, description="random subnets per step besides the "
                          "largest and smallest (the sandwich rule); each costs one more forward and backward pass")
    random_weight: float = Field(default=1.0, gt=0, le=1, description="weight of each random subnet's loss against the "
                                "largest's and smallest's 1: below 1 they pull the shared weights less")
    distill: bool = Field(default=True, description="in-place distillation: the smallest and random subnets learn from "
                          "the largest subnet's predictions on the same batch (soft labels; see distill_weight)")
    distill_weight: float = Field(default=1.0, ge=0, le=1, description="KD share of a child's loss; the rest is "
                                  "cross-entropy (with distill)")
    complexity_aware: bool = Field(default=False, description="ElasticViT: bound the FLOPs gap between consecutive "
                                   "random subnets (flops_gap), so training does not jump across the space")
    flops_gap: float = Field(default=0.3, gt=0, description="max relative FLOPs change between consecutive random "
                             "subnets (with complexity_aware; 0.3: within 30%)")
    balance_weight: float = Field(default=0.01, ge=0, description="weight of the MoE load-balancing loss "
                                  "(Switch Transformer) added to each subnet's loss")
    ema_decay: float = Field(default=0.0, ge=0, lt=1, description="decay of an exponential moving average of the weights "
                             "(BigNAS), which evaluation, search and export then use; 0: off")
    # bookkeeping
    ckpt_every: int = Field(default=100, gt=0, le=MAX_STEPS, description="steps between checkpoints (training "
                            "resumes from the last one; the last step always saves)")
    eval_every: int = Field(default=200, gt=0, le=MAX_STEPS, description="steps between validation losses of the "
                            "largest and smallest subnets (they are also evaluated after the last step)")
    eval_tokens: int = Field(default=65536, gt=0, le=MAX_TOKENS, description="validation tokens per evaluation")
    log_every: int = Field(default=10, gt=0, le=MAX_STEPS, description="steps between logged rows of training losses, "
                           "gradient norm, lr and tokens/s (metrics.jsonl and W&B)")
    max_nonfinite: int = Field(default=5, gt=0, le=MAX_STEPS, description="consecutive non-finite losses that stop "
                               "training (each such step is skipped)")
    device: Literal["auto", "cpu", "cuda"] = Field(default="auto", description="where the supernet trains; auto: CUDA "
                                                   "when this machine has it (bf16 autocast there), else CPU")
    threads: int | None = Field(default=None, gt=0, le=MAX_THREADS, description="CPU threads (default: torch's choice)")
    wandb: Literal["offline", "online", "disabled"] = Field(default="offline", description="W&B mode of the training "
                                                            "run (offline: files in the stage folder, `wandb sync` "
                                                            "later); metrics.jsonl is written in every mode")
    wandb_project: str = Field(default="hwnas", description="W&B project the training run is logged to")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise field_error("min_lr", f"{self.min_lr} exceeds lr {self.lr}")
        if self.warmup_steps > self.steps:
            raise field_error("warmup_steps", f"{self.warmup_steps} exceeds steps {self.steps}")
        return self
