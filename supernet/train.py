"""Supernet training: the sandwich rule with in-place distillation, resumable and data-parallel.

Each step trains the largest subnet on the labels, then the smallest and `n_random` random subnets
on a mix of the labels and the largest subnet's soft predictions (BigNAS / AttentiveNAS). The
gradients of all of them are summed into one AdamW step (warmup + cosine, clipping). Everything a
step draws (its archs, its batch) comes from generators seeded by (seed, step), so a resumed run
redoes exactly what an uninterrupted one does. Under `torchrun` the global batch is split across
ranks and gradients are averaged with one all-reduce per step (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from hwnas.core.device import resolve_device
from hwnas.core.errors import HwnasError
from hwnas.core.isolate import die_with_parent
from hwnas.core.manifest import Manifest
from hwnas.core.progress import progress_bar
from hwnas.core.rundir import claim_run_dir, recorded_space, stage_lock
from hwnas.core.tracking import Tracker, check_wandb
from hwnas.search_space import ArchConfig, SearchSpaceConfig

from .checkpoint import CheckpointError, load_checkpoint, read_meta, save_checkpoint
from .config import TrainConfig
from .data import Corpus, build_corpus
from .evaluate import evaluate
from .memory import check_fits
from .model import Supernet


class TrainingError(HwnasError, RuntimeError):
    """Training cannot go on (e.g. repeated non-finite losses, a checkpoint of another space)."""


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1). The rank dies with its
    torchrun agent: the agent starts ranks in sessions of their own, so a killed agent would leave
    them training on behind it (an agent killed even earlier leaves them no store to join)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if "TORCHELASTIC_RUN_ID" in os.environ:  # started by torchrun's agent, our parent
        die_with_parent(os.getppid())
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at the last step."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def step_seed(seed: int, step: int, stream: int) -> int:
    """A seed for step `step` of random stream `stream` (0: archs, 1: data)."""
    return int(np.random.SeedSequence([seed, step, stream]).generate_state(1)[0])


class SandwichSampler:
    """The archs of one training step: largest, smallest and `n_random` random subnets.

    With `complexity_aware`, a random subnet's FLOPs stay within `flops_gap` (relative) of the
    previous random subnet's (ElasticViT), so consecutive steps do not jump across the space."""

    def __init__(self, space, cfg: TrainConfig, seed: int):
        self.space, self.cfg, self.seed = space, cfg, seed
        self.largest, self.smallest = space.largest(), space.smallest()
        self.prev_flops: float | None = None

    def _random(self, rng: np.random.Generator) -> ArchConfig:
        if not self.cfg.complexity_aware or self.prev_flops is None:
            arch = self.space.sample(rng)
        else:
            candidates = [self.space.sample(rng) for _ in range(32)]
            gaps = [abs(self.space.flops(a) / self.prev_flops - 1) for a in candidates]
            ok = [a for a, g in zip(candidates, gaps, strict=True) if g <= self.cfg.flops_gap]
            arch = ok[0] if ok else candidates[int(np.argmin(gaps))]
        self.prev_flops = float(self.space.flops(arch))
        return arch

    def parent_only(self, step: int) -> bool:
        """Whether `step` is in the parent-first phase, which trains the largest subnet alone."""
        return step < round(self.cfg.parent_fraction * self.cfg.steps)

    def archs(self, step: int) -> list[tuple[str, ArchConfig]]:
        if self.parent_only(step):
            return [("largest", self.largest)]
        rng = np.random.default_rng(step_seed(self.seed, step, 0))
        return [("largest", self.largest), ("smallest", self.smallest)] + [
            ("random", self._random(rng)) for _ in range(self.cfg.n_random)
        ]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _allreduce_grads(model: torch.nn.Module, world: int) -> None:
    """Average gradients across ranks in one flat all-reduce (every rank runs the same archs, so
    the same parameters have gradients everywhere)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


class WeightAverage:
    """Exponential moving average of a model's floating-point state (BigNAS keeps one): after
    step t, avg = d * avg + (1 - d) * w with d = min(decay, (1 + t) / (10 + t)), so the first
    steps, far from any useful average, are not remembered for long. `stored`: a saved average
    to resume from (default: the model's current weights)."""

    def __init__(self, model: torch.nn.Module, decay: float, stored: dict[str, torch.Tensor] | None = None):
        self.decay = decay
        live = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
        stored = stored or {}
        if stored and set(stored) != set(live):
            raise TrainingError("the checkpoint's weight average does not fit this model; use another run_dir")
        self.tensors = {k: (stored[k] if stored else v.detach()).clone() for k, v in live.items()}
        self._live = list(live.values())

    @torch.no_grad()
    def update(self, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        torch._foreach_lerp_(list(self.tensors.values()), self._live, 1.0 - d)

    @contextmanager
    def swapped(self):
        """Inside the block the model holds the averaged weights; its own are restored after."""
        backup = [t.detach().clone() for t in self._live]
        with torch.no_grad():
            for t, a in zip(self._live, self.tensors.values(), strict=True):
                t.copy_(a)
        try:
            yield
        finally:
            with torch.no_grad():
                for t, b in zip(self._live, backup, strict=True):
                    t.copy_(b)


class Trainer:
    """Train the supernet of `space_cfg` in `run_dir` (resuming from its checkpoint if present)."""

    def __init__(self, space_cfg: SearchSpaceConfig, cfg: TrainConfig, run_dir: str | Path, seed: int = 0,
                 progress: bool = True, on_step_end: Callable[[int], None] | None = None, name: str | None = None):
        self.space_cfg, self.cfg, self.seed, self.name = space_cfg, cfg, seed, name
        self.run_dir = Path(run_dir)
        self.train_dir = self.run_dir / "train"
        self.ckpt_path = self.train_dir / "checkpoint.safetensors"
        self.manifest = Manifest.of(self.run_dir, "train")
        self.progress, self.on_step_end = progress, on_step_end
        kind = resolve_device(cfg.device, "train.device", TrainingError)
        self.dist = init_distributed(kind)
        self.device = torch.device(f"cuda:{self.dist.local_rank}" if kind == "cuda" else "cpu")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.seq_len = cfg.seq_len or space_cfg.block_size
        if self.seq_len > space_cfg.block_size:
            raise TrainingError(f"train.seq_len: {self.seq_len} exceeds search_space.block_size {space_cfg.block_size}")
        if cfg.batch_size % self.dist.world:
            raise TrainingError(f"train.batch_size: {cfg.batch_size} is not divisible by the {self.dist.world} ranks")
        check_fits(space_cfg, "train", cfg.batch_size // self.dist.world, self.seq_len, "train.batch_size", str(self.device),
                   ema=cfg.ema_decay > 0)

    # --- setup ------------------------------------------------------------------------------------
    def _corpus(self) -> Corpus:
        corpus_dir = self.run_dir / "corpus"
        if self.dist.is_main:
            build_corpus(self.cfg.corpus, corpus_dir, val_fraction=self.cfg.val_fraction, max_bytes=self.cfg.max_corpus_bytes)
        if self.dist.world > 1:
            dist.barrier()
        return Corpus.load(corpus_dir)

    def _build(self) -> tuple[Supernet, torch.optim.AdamW, dict[str, Any]]:
        torch.manual_seed(self.seed)
        model = Supernet(self.space_cfg).to(self.device)
        opt = torch.optim.AdamW(param_groups(model, self.cfg.weight_decay), lr=self.cfg.lr,
                                betas=(self.cfg.beta1, self.cfg.beta2), foreach=False)
        state = {"step": 0, "prev_flops": None, "nonfinite_total": 0, "train_seconds": 0.0}
        stored: dict[str, torch.Tensor] = {}
        if self.ckpt_path.exists():
            meta = read_meta(self.ckpt_path)
            if recorded_space(meta.get("space")) != self.space_cfg.model_dump(mode="json"):
                raise TrainingError(f"{self.ckpt_path}: checkpoint of a different search space; use another run_dir")
            saved = load_checkpoint(self.ckpt_path, model, opt, average=stored).get("state")
            if not isinstance(saved, dict) or set(saved) != set(state):
                raise CheckpointError(f"{self.ckpt_path}: checkpoint metadata lacks the training loop's state")
            state.update(saved)
        self.average = WeightAverage(model, self.cfg.ema_decay, stored) if self.cfg.ema_decay > 0 else None
        return model, opt, state

    def _save(self, model, opt, state: dict[str, Any]) -> None:
        if self.dist.is_main:
            save_checkpoint(self.ckpt_path, model, opt, {"state": state, "space": self.space_cfg.model_dump(mode="json"),
                                                         "train": self.cfg.model_dump(mode="json")},
                            average=self.average.tensors if self.average else None, manifest=self.manifest)

    # --- one step ---------------------------------------------------------------------------------
    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else nullcontext()

    def _step(self, model, opt, corpus: Corpus, sampler: SandwichSampler, step: int) -> dict[str, float] | None:
        cfg, d = self.cfg, self.dist
        gen = torch.Generator().manual_seed(step_seed(self.seed, step, 1))
        x, y = corpus.batch("train", cfg.batch_size, self.seq_len, gen)  # the global batch
        per_rank = cfg.batch_size // d.world
        x = x[d.rank * per_rank:(d.rank + 1) * per_rank].to(self.device)
        y = y[d.rank * per_rank:(d.rank + 1) * per_rank].to(self.device)
        opt.zero_grad(set_to_none=True)
        losses: dict[str, list[float]] = {}
        teacher = None
        finite = True
        for role, arch in sampler.archs(step):
            with self._autocast():
                logits, aux = model(x, arch, return_aux=True)
                logits = logits.float()
                ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
                loss = ce
                if role != "largest" and cfg.distill and teacher is not None:
                    kd = F.kl_div(F.log_softmax(logits, -1), teacher, reduction="none").sum(-1).mean()
                    loss = cfg.distill_weight * kd + (1 - cfg.distill_weight) * ce
                loss = loss + cfg.balance_weight * aux
                if role == "random":
                    loss = cfg.random_weight * loss
            finite &= bool(torch.isfinite(loss))
            losses.setdefault(role, []).append(ce.item())
            loss.backward()
            if role == "largest":
                teacher = F.softmax(logits.detach(), -1)
        if d.world > 1:
            flag = torch.tensor([0.0 if finite else 1.0], device=self.device)
            dist.all_reduce(flag)
            finite = flag.item() == 0
        if not finite:
            opt.zero_grad(set_to_none=True)
            return None
        if d.world > 1:
            _allreduce_grads(model, d.world)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        opt.step()
        if self.average:
            self.average.update(step)
        return {f"loss_{role}": float(np.mean(v)) for role, v in losses.items()} | {
            "grad_norm": float(grad_norm), "lr": lr_at(step, cfg)}

    # --- the loop ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train (or resume); the run directory is checked first and locked while it trains."""
        if self.dist.is_main:
            claim_run_dir(self.run_dir, self.space_cfg.model_dump(mode="json"), self.seed, self.name)
            if self.ckpt_path.exists():
                self.manifest.verify(self.ckpt_path.name)  # before anything is written: a damaged one is refused as it is
        with stage_lock(self.run_dir, "train") if self.dist.is_main else nullcontext():
            return self._run()

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        corpus = self._corpus()
        model, opt, state = self._build()
        if self.dist.is_main:
            self.manifest.forget("summary.json")  # until this run finishes, later stages see an unfinished supernet
        self.model = model
        model.train()
        sampler = SandwichSampler(model.space, cfg, self.seed)
        sampler.prev_flops = state["prev_flops"]
        start = state["step"]
        tracker = None
        if self.dist.is_main:
            tracker = Tracker(self.train_dir, "metrics", mode=cfg.wandb, project=cfg.wandb_project, job_type="train", step_metric="step",
                              config={"train": cfg.model_dump(mode="json"), "search_space": self.space_cfg.model_dump(mode="json")},
                              resume_step=start - 1 if start else -1)
        tokens_per_step = cfg.batch_size * self.seq_len
        consecutive_bad = 0
        with progress_bar("train", cfg.steps, self.progress and self.dist.is_main, unit="step", completed=start,
                          fields="loss {task.fields[loss]:.3f}  {task.fields[tps]:,.0f} tok/s",
                          initial={"loss": float("nan"), "tps": 0.0}) as advance:
            for step in range(start, cfg.steps):
                t0 = time.perf_counter()
                row = self._step(model, opt, corpus, sampler, step)
                dt = time.perf_counter() - t0
                state["train_seconds"] += dt
                if row is None:
                    consecutive_bad += 1
                    state["nonfinite_total"] += 1
                    advance(1)
                    if tracker:
                        tracker.log({"nonfinite_skipped": state["nonfinite_total"]}, step=step)
                    if consecutive_bad >= cfg.max_nonfinite:
                        raise TrainingError(
                            f"training stopped at step {step}: {consecutive_bad} consecutive non-finite losses "
                            f"(lower train.lr, now {cfg.lr}, or check the data)")
                else:
                    consecutive_bad = 0
                    row["tokens_per_s"] = tokens_per_step / dt
                    if tracker and (step % cfg.log_every == 0 or step == cfg.steps - 1):
                        tracker.log(row, step=step)
                    advance(1, loss=row["loss_largest"], tps=row["tokens_per_s"])
                state["step"], state["prev_flops"] = step + 1, sampler.prev_flops
                if (step + 1) % cfg.eval_every == 0 and step + 1 < cfg.steps and self.dist.is_main:
                    tracker.log(self._evaluate(model, corpus, sampler), step=step)
                if (step + 1) % cfg.ckpt_every == 0 or step + 1 == cfg.steps:
                    self._save(model, opt, state)
                if self.on_step_end:
                    self.on_step_end(step)
        summary: dict[str, Any] = {}
        if self.dist.is_main:
            final = self._evaluate(model, corpus, sampler)
            tracker.log(final, step=cfg.steps - 1)
            summary = {
                "steps": cfg.steps, "train_seconds": state["train_seconds"], "nonfinite_skipped": state["nonfinite_total"],
                "unigram_entropy_bpb": corpus.unigram_entropy("val"), **final,
                "largest": sampler.largest.key(), "smallest": sampler.smallest.key(), "world_size": self.dist.world,
            }
            tracker.summary(summary)
            tracker.finish()
            self.manifest.write_json("summary.json", summary)
        return summary

    def _evaluate(self, model, corpus, sampler) -> dict[str, float]:
        """Validation loss of the largest and smallest subnet, with the weights later stages use
        (the moving average where training keeps one)."""
        out = {}
        with self.average.swapped() if self.average else nullcontext():
            for role, arch in (("largest", sampler.largest), ("smallest", sampler.smallest)):
                r = evaluate(model, arch, corpus, batch_size=16, seq_len=self.seq_len, max_tokens=self.cfg.eval_tokens)
                out[f"val_loss_{role}"], out[f"val_bpb_{role}"] = r["loss"], r["bpb"]
        return out


def train(space_cfg: SearchSpaceConfig, cfg: TrainConfig, run_dir: str | Path, seed: int = 0, progress: bool = True,
          name: str | None = None) -> dict[str, Any]:
    """Train (or resume training) the supernet in `run_dir`; returns the final summary. `name`:
    the experiment's, recorded as the run directory's owner (`core.rundir`)."""
    check_wandb(cfg.wandb, "train.wandb")
    return Trainer(space_cfg, cfg, run_dir, seed=seed, progress=progress, name=name).run()


def verify_supernet(run_dir: str | Path) -> str:
    """Check that the run's training finished and its checkpoint is the one it wrote (the train
    folder's manifest); returns the checkpoint's sha256."""
    return Manifest.of(run_dir, "train").verify("checkpoint.safetensors", "summary.json")["checkpoint.safetensors"]


def load_supernet(run_dir: str | Path, space_cfg: SearchSpaceConfig, device: str = "cpu") -> Supernet:
    """The trained supernet of a run directory (weights only, no pickle): the moving average of
    its weights where training kept one. Refuses an unfinished or damaged one (`verify_supernet`)."""
    path = Path(run_dir) / "train" / "checkpoint.safetensors"
    verify_supernet(run_dir)
    model = Supernet(space_cfg).to(device)
    load_checkpoint(path, model, averaged=True)
    return model.eval()


__all__ = ["Dist", "SandwichSampler", "Trainer", "TrainingError", "load_supernet", "lr_at", "train", "verify_supernet"]
