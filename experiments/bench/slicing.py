"""Slicing overhead: forward time of `supernet(tokens, arch)` over the extracted subnet's forward,
for small, medium and large archs of the quickstart space, at a small and a large input shape.

    python experiments/bench/slicing.py [--config experiments/quickstart.yaml] [--repeats 50]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, interleaved_medians, machine, write_section  # noqa: E402

from hwnas.config import load_config  # noqa: E402
from hwnas.supernet import Supernet, extract_subnet  # noqa: E402


def medium_arch(space, seed: int = 0):
    """The sample whose FLOPs are closest to the midpoint of the smallest and largest arch."""
    target = (space.flops(space.smallest()) + space.flops(space.largest())) / 2
    samples = [space.sample(seed + i) for i in range(200)]
    return min(samples, key=lambda a: abs(space.flops(a) - target))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="experiments/quickstart.yaml")
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true", help="print only; do not update BENCHMARKS.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = load_config(args.config)
    net = Supernet(cfg.search_space).eval()
    space = net.space
    archs = {"small": space.smallest(), "medium": medium_arch(space), "large": space.largest()}
    shapes = [(1, 32), (8, cfg.search_space.block_size)]
    rows = []
    with torch.inference_mode():
        for (B, T) in shapes:
            tokens = torch.randint(0, cfg.search_space.vocab_size, (B, T))
            for name, arch in archs.items():
                sub = extract_subnet(net, arch).eval()
                t = interleaved_medians(
                    {"supernet": lambda t=tokens, a=arch: net(t, a), "subnet": lambda s=sub, t=tokens: s(t)}, repeats=args.repeats
                )
                ratio = t["supernet"] / t["subnet"]
                rows.append((f"{B}x{T}", name, t["supernet"] * 1e3, t["subnet"] * 1e3, ratio, arch.key()))
                print(f"batch x seq {B}x{T} {name:6s} supernet {t['supernet'] * 1e3:8.3f} ms  subnet {t['subnet'] * 1e3:8.3f} ms  ratio {ratio:.3f}")
    body = [
        f"Command: `{command()}`  ",
        f"Machine: {machine()}  ",
        "Median forward time over interleaved repeats (inference mode, fp32); ratio = supernet / extracted subnet "
        "(target <= 1.10; whittle measured 0.99-1.04x at 8x256 and 1.22-1.27x at 1x32).\n",
        "| batch x seq | arch | supernet ms | subnet ms | ratio | arch key |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    body += [f"| {s} | {n} | {a:.3f} | {b:.3f} | {r:.3f} | `{k}` |" for s, n, a, b, r, k in rows]
    if not args.no_write:
        write_section("Slicing overhead (supernet vs extracted subnet)", "\n".join(body))


if __name__ == "__main__":
    main()
