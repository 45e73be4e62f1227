"""Training throughput: tokens/s of the sandwich step (largest + smallest + N random subnets with
in-place distillation) vs a step that trains the largest subnet alone, measured in one run on the
same model, data and optimizer, in alternating blocks.

    python experiments/bench/train_throughput.py [--config experiments/quickstart.yaml] [--steps 40]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, machine, write_section  # noqa: E402

from hwnas.config import load_config  # noqa: E402
from hwnas.supernet.train import SandwichSampler, Trainer  # noqa: E402


class LargestOnly(SandwichSampler):
    def archs(self, step: int):
        return [("largest", self.largest)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="experiments/quickstart.yaml")
    p.add_argument("--steps", type=int, default=40, help="timed steps per kind (after warm-up)")
    p.add_argument("--block", type=int, default=5, help="steps per alternating block")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    cfg = load_config(args.config)
    train_cfg = cfg.train.model_copy(update={"wandb": "disabled"})
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg.search_space, train_cfg, tmp, seed=cfg.seed, progress=False)
        corpus = trainer._corpus()
        model, opt, _ = trainer._build()
        model.train()
        samplers = {
            "sandwich": SandwichSampler(model.space, train_cfg, cfg.seed),
            "largest only": LargestOnly(model.space, train_cfg, cfg.seed),
        }
        times: dict[str, list[float]] = {k: [] for k in samplers}
        for sampler in samplers.values():  # warm-up
            for s in range(3):
                trainer._step(model, opt, corpus, sampler, s)
        step = 0
        while min(len(v) for v in times.values()) < args.steps:
            for kind, sampler in samplers.items():
                for _ in range(args.block):
                    t0 = time.perf_counter()
                    trainer._step(model, opt, corpus, sampler, step)
                    times[kind].append(time.perf_counter() - t0)
                    step += 1
    tokens = train_cfg.batch_size * (train_cfg.seq_len or cfg.search_space.block_size)
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    ratio = tps["sandwich"] / tps["largest only"]
    n_sub = 2 + train_cfg.n_random
    for k, v in tps.items():
        print(f"{k:13s} {v:10,.0f} tokens/s  (median step {1e3 * tokens / v:.1f} ms)")
    print(f"sandwich / largest-only throughput: {ratio:.3f} ({n_sub} subnets per sandwich step)")
    body = f"""Command: `{command()}`<br>
Machine: {machine()}<br>
Median step time over {args.steps} steps each, alternating blocks of {args.block}; batch {train_cfg.batch_size} x {tokens // train_cfg.batch_size} tokens.

| step | tokens/s | ms / step |
| --- | --- | --- |
| sandwich (largest + smallest + {train_cfg.n_random} random, distillation) | {tps['sandwich']:,.0f} | {1e3 * tokens / tps['sandwich']:.1f} |
| largest subnet alone | {tps['largest only']:,.0f} | {1e3 * tokens / tps['largest only']:.1f} |

Sandwich throughput is {ratio:.2f}x the largest-alone throughput: each sandwich step runs {n_sub} subnets, all
smaller than or equal to the largest, so the per-step cost of weight sharing is {1 / ratio:.2f}x one largest step."""
    if not args.no_write:
        write_section("Training throughput (sandwich step vs largest alone)", body)


if __name__ == "__main__":
    main()
