"""Weight-sharing fidelity: do subnets inherited from the supernet rank like the same archs
trained from scratch? Trains N archs (spread over FLOPs, smallest and largest included) from a
fresh initialization for the supernet's token budget, then reports the Kendall tau between their
stand-alone validation loss and the supernet's inherited loss, and the loss gap.

    python experiments/bench/weight_sharing.py [--config experiments/quickstart.yaml] [--n 8] [--steps S]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, machine, write_section  # noqa: E402

from hwnas.config import load_config  # noqa: E402
from hwnas.supernet import Supernet, extract_subnet  # noqa: E402
from hwnas.supernet.data import Corpus  # noqa: E402
from hwnas.supernet.evaluate import evaluate  # noqa: E402
from hwnas.supernet.finetune import train_standalone  # noqa: E402
from hwnas.supernet.train import load_supernet  # noqa: E402


def spread_archs(space, n: int, seed: int):
    """Smallest, largest, and n-2 random archs at evenly spaced FLOPs quantiles of a pool."""
    rng = np.random.default_rng(seed)
    pool = sorted((space.sample(rng) for _ in range(2000)), key=space.flops)
    picks = [pool[int(q)] for q in np.linspace(0, len(pool) - 1, n - 2)]
    return [space.smallest(), *picks, space.largest()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="experiments/quickstart.yaml")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="training steps per arch (default: the supernet's train.steps)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    steps = args.steps or cfg.train.steps
    net = load_supernet(cfg.run_path, cfg.search_space)
    corpus = Corpus.load(cfg.run_path / "corpus")
    archs = spread_archs(net.space, args.n, cfg.seed)
    rows = []
    for i, arch in enumerate(archs):
        inherited = evaluate(net, arch, corpus, max_tokens=cfg.train.eval_tokens)["loss"]
        torch.manual_seed(cfg.seed + 100 + i)
        fresh = extract_subnet(Supernet(cfg.search_space), arch)  # the supernet's initialization, for this arch
        r = train_standalone(fresh, corpus, steps, cfg.train, seed=cfg.seed + i, eval_tokens=cfg.train.eval_tokens)
        rows.append({"key": arch.key(), "flops": net.space.flops(arch), "inherited": inherited, "standalone": r["loss_after"],
                     "seconds": r["train_seconds"]})
        print(f"{i}: inherited {inherited:.4f}  stand-alone {r['loss_after']:.4f}  ({r['train_seconds']:.0f} s)  {arch.key()}", flush=True)
    inh, sa = np.array([r["inherited"] for r in rows]), np.array([r["standalone"] for r in rows])
    tau = kendalltau(inh, sa).statistic
    gap = inh - sa
    print(f"Kendall tau (inherited vs stand-alone): {tau:.3f}; loss gap inherited - stand-alone: mean {gap.mean():+.4f}, "
          f"range [{gap.min():+.4f}, {gap.max():+.4f}] nats/byte")
    body = [
        f"Command: `{command()}`<br>",
        f"Machine: {machine()}<br>",
        f"{len(rows)} archs trained from scratch for {steps} steps x {cfg.train.batch_size} x "
        f"{cfg.train.seq_len or cfg.search_space.block_size} tokens (the supernet's budget), validation loss in nats/byte "
        f"on {cfg.train.eval_tokens} tokens. Anchors: once-for-all and MatFormer report inherited subnets matching "
        "stand-alone ones.\n",
        f"**Kendall tau {tau:.3f}**; loss gap (inherited - stand-alone) mean {gap.mean():+.4f}, range "
        f"[{gap.min():+.4f}, {gap.max():+.4f}].\n",
        "| arch | FLOPs/seq | inherited loss | stand-alone loss | gap |", "| --- | --- | --- | --- | --- |",
    ]
    body += [f"| `{r['key']}` | {r['flops']:.3g} | {r['inherited']:.4f} | {r['standalone']:.4f} | {r['inherited'] - r['standalone']:+.4f} |"
             for r in rows]
    if not args.no_write:
        write_section("Weight-sharing fidelity (inherited vs stand-alone subnets)", "\n".join(body))


if __name__ == "__main__":
    main()
