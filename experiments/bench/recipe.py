"""Training recipe: hwnas's stand-alone recipe against a plain baseline written here.

The plain baseline is a nanoGPT-style byte-level LM (d128, 4 layers, 4 heads of 32, pre-LayerNorm,
GELU MLP x4, biases, an untied head, PyTorch's default initialization, AdamW at a constant 2e-3 and
no schedule); it uses no hwnas model or training code. hwnas's side is the standard design (pre-LN
LayerNorm, softmax attention, GELU MLP, no quantization, the largest width, depth, heads and MLP
ratio) built from a fresh `Supernet` by `extract_subnet` and trained by `train_standalone` with the
experiment's `train` section. Both see the same batches (the corpus's windows drawn from the same
seeds) and are scored by `evaluate` on the same validation windows; only the model and the recipe
differ. Ablation rows change one thing in hwnas's recipe (`--ablate`).

    python experiments/bench/recipe.py [--config experiments/quickstart.yaml] [--steps 600 3000] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, digest, machine, worker_pool, write_section  # noqa: E402
from outcome import standard_design  # noqa: E402

from hwnas.config import load_config  # noqa: E402
from hwnas.core.io import atomic_write_text  # noqa: E402
from hwnas.supernet import Supernet, extract_subnet  # noqa: E402
from hwnas.supernet.data import Corpus, build_corpus  # noqa: E402
from hwnas.supernet.evaluate import evaluate  # noqa: E402
from hwnas.supernet.finetune import train_standalone  # noqa: E402
from hwnas.supernet.train import step_seed  # noqa: E402


# --- the plain baseline: no hwnas model or training code -----------------------------------------
class PlainBlock(nn.Module):
    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, d = x.shape
        q, k, v = (t.view(B, T, self.n_heads, -1).transpose(1, 2) for t in self.qkv(self.ln1(x)).split(d, -1))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, d)
        x = x + self.proj(y)
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class PlainGPT(nn.Module):
    def __init__(self, vocab: int = 256, block: int = 128, d: int = 128, depth: int = 4, n_heads: int = 4):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(block, d)
        self.blocks = nn.ModuleList(PlainBlock(d, n_heads) for _ in range(depth))
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


def train_plain(corpus, steps: int, batch: int, seq_len: int, seed: int, eval_tokens: int) -> dict:
    torch.manual_seed(seed)
    model = PlainGPT(block=seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    t0 = time.perf_counter()
    for step in range(steps):
        x, y = corpus.batch("train", batch, seq_len, torch.Generator().manual_seed(step_seed(seed, step, 1)))
        loss = F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    return {"bpb": evaluate(model, None, corpus, seq_len=seq_len, max_tokens=eval_tokens)["bpb"], "seconds": seconds}


# --- hwnas's recipe, and one-change ablations of it ----------------------------------------------
@torch.no_grad()
def _old_init(model) -> None:
    """The initialization before issue 22: every projection N(0, 0.02)."""
    for name, p in model.named_parameters():
        if p.ndim >= 2 and "emb" not in name and "router" not in name:
            p.normal_(0.0, 0.02)


ABLATIONS = {
    "init 0.02 (before issue 22)": (_old_init, {}),
    "lr 5e-3 (not adopted: the supernet did worse)": (None, {"lr": 5e-3}),
    "lr 3e-3 constant, no warmup or decay": (None, {"min_lr": 3e-3, "warmup_steps": 0}),
}


def train_hwnas(cfg, corpus, steps: int, seed: int, eval_tokens: int, ablation: str | None = None) -> dict:
    torch.manual_seed(seed)
    net = Supernet(cfg.search_space)
    model = extract_subnet(net, standard_design(net.space))
    train_cfg = cfg.train
    if ablation:
        change, update = ABLATIONS[ablation]
        if change:
            change(model)
        train_cfg = train_cfg.model_copy(update=update)
    r = train_standalone(model, corpus, steps, train_cfg, seed=seed, eval_tokens=eval_tokens)
    return {"bpb": r["bpb_after"], "seconds": r["train_seconds"]}


def job(kind: str, config: str, corpus_dir: str, steps: int, seed: int, eval_tokens: int, ablation: str | None) -> dict:
    torch.set_num_threads(1)
    corpus = Corpus.load(corpus_dir)
    cfg = load_config(config)
    if kind == "plain":
        r = train_plain(corpus, steps, cfg.train.batch_size, cfg.train.seq_len or cfg.search_space.block_size, seed, eval_tokens)
    else:
        r = train_hwnas(cfg, corpus, steps, seed, eval_tokens, ablation)
    row = {"model": kind if not ablation else f"hwnas, {ablation}", "steps": steps, "seed": seed, **r}
    print(f"{row['model']:>28}  {steps:5d} steps  seed {seed}  {r['bpb']:.4f} bits/byte  ({r['seconds']:.0f} s)", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="experiments/quickstart.yaml")
    p.add_argument("--steps", type=int, nargs="+", default=[600, 3000])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds of the runs at the first --steps")
    p.add_argument("--long-seeds", type=int, nargs="+", default=[0], help="seeds of the runs at the later --steps")
    p.add_argument("--ablate", nargs="*", default=list(ABLATIONS), choices=list(ABLATIONS),
                   help="one-change ablations of hwnas's recipe, run at the first --steps only")
    p.add_argument("--eval-tokens", type=int, default=65536)
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each (bits/byte do not depend on it)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    cfg = load_config(args.config)
    corpus_dir = Path("runs") / "bench-recipe" / "corpus"  # the experiment's corpus, built apart from its run folder
    build_corpus(cfg.train.corpus, corpus_dir, val_fraction=cfg.train.val_fraction, max_bytes=cfg.train.max_corpus_bytes)
    jobs = [(kind, steps, seed, None) for i, steps in enumerate(args.steps) for seed in (args.long_seeds if i else args.seeds)
            for kind in ("plain", "hwnas")]
    jobs += [("hwnas", args.steps[0], seed, a) for a in args.ablate for seed in args.seeds]
    # finished runs are kept (keyed by everything that shapes them), so an interrupted bench goes on where it stopped
    cache_path = corpus_dir.parent / "runs.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    space_train = digest([cfg.search_space.model_dump(mode="json"), cfg.train.model_dump(mode="json"), args.eval_tokens])
    key = lambda kind, steps, seed, a: f"{space_train}/{kind}/{steps}/{seed}/{a}"  # noqa: E731
    t0 = time.perf_counter()
    with worker_pool(args.jobs) as pool:
        futures = {key(*j): pool.submit(job, j[0], args.config, str(corpus_dir), j[1], j[2], args.eval_tokens, j[3])
                   for j in jobs if key(*j) not in cache}
        for k, f in futures.items():
            cache[k] = f.result()
            atomic_write_text(cache_path, json.dumps(cache, indent=1, sort_keys=True))
    rows = [cache[key(*j)] for j in jobs]
    print(f"{len(futures)} runs in {time.perf_counter() - t0:.0f} s ({len(rows) - len(futures)} kept from earlier)")

    def cell(model: str, steps: int) -> str:
        vals = [r["bpb"] for r in rows if r["model"] == model and r["steps"] == steps]
        if not vals:
            return "-"
        spread = f" ({min(vals):.3f}-{max(vals):.3f})" if len(vals) > 1 else ""
        return f"{statistics.mean(vals):.3f}{spread}"

    models = ["plain", "hwnas"] + [f"hwnas, {a}" for a in args.ablate]
    names = {"plain": "plain baseline (nanoGPT-style, in the bench)", "hwnas": "hwnas stand-alone, standard design (this recipe)"}
    lines = ["| model | " + " | ".join(f"{s} steps" for s in args.steps) + " |", "| --- |" + " --- |" * len(args.steps)]
    for m in models:
        lines.append(f"| {names.get(m, m)} | " + " | ".join(cell(m, s) for s in args.steps) + " |")
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section("Training recipe", "\n".join([
            f"`{command()}`", "",
            f"Machine: {machine()}; each run on one thread, {args.jobs} at a time.", "",
            f"Validation bits/byte on the same {args.eval_tokens:,} validation bytes, batch {cfg.train.batch_size} x "
            f"{cfg.train.seq_len or cfg.search_space.block_size}, the same batches for every model; mean over seeds "
            f"{', '.join(map(str, args.seeds))} at {args.steps[0]} steps and {', '.join(map(str, args.long_seeds))} at more "
            f"(range in brackets). Ablation rows undo one change of issue 22 in hwnas's "
            f"recipe, at {args.steps[0]} steps (or tries one).", "", table, "",
            "The plain baseline: d128, 4 layers, 4 heads of 32 (attention width 128; the standard design's is 4 x 16 = 64), "
            "pre-LN, GELU, biases, untied head, PyTorch's default init, AdamW 2e-3 constant. hwnas's standard design: "
            "e128-L4, ln-pre-sm-mlp-q16, tied embeddings, the experiment's `train` section (warmup + cosine, weight decay 0.1).",
        ]))


if __name__ == "__main__":
    main()
