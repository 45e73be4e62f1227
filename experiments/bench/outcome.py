"""The outcome: does the search beat a person's design?

The standard design of the quickstart size family (pre-LN LayerNorm, GELU MLP, softmax attention,
no quantization, the largest width, depth, heads and MLP ratio) against the fastest subnet of the
found Pareto front whose inherited validation loss is at most the standard design's. Both are
fine-tuned from their inherited weights for the same number of steps; then their validation loss
and measured CPU latency (torch eager and ONNX Runtime) are reported, with the speed-up.

    python experiments/bench/outcome.py [--config experiments/quickstart.yaml] [--finetune-steps 200]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, machine, write_section  # noqa: E402

from hwnas.config import load_config  # noqa: E402
from hwnas.latency.build import make_measurer  # noqa: E402
from hwnas.search_space import ArchConfig, LayerConfig  # noqa: E402
from hwnas.supernet import extract_subnet  # noqa: E402
from hwnas.supernet.data import Corpus  # noqa: E402
from hwnas.supernet.evaluate import evaluate  # noqa: E402
from hwnas.supernet.finetune import train_standalone  # noqa: E402
from hwnas.supernet.train import load_supernet  # noqa: E402


def standard_design(space) -> ArchConfig:
    c = space.config
    layer = LayerConfig(n_heads=max(c.n_heads.choices), mlp_ratio=max(c.mlp_ratio.choices), norm="layernorm", placement="pre",
                        attention="softmax", ffn="mlp", weight_bits=16)
    arch = ArchConfig(embed_dim=max(c.embed_dim), layers=(layer,) * max(c.depth))
    space.validate(arch)
    return arch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="experiments/quickstart.yaml")
    p.add_argument("--finetune-steps", type=int, default=200)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    run = cfg.run_path
    net = load_supernet(run, cfg.search_space)
    space = net.space
    corpus = Corpus.load(run / "corpus")
    tokens = cfg.predictors.eval_tokens
    standard = standard_design(space)
    std_loss = evaluate(net, standard, corpus, max_tokens=tokens)["loss"]
    front = json.loads((run / "search" / "front.json").read_text())
    lat_name = next((n for n in front["objectives"] if n.startswith("latency@")), None)
    if lat_name is None:
        raise SystemExit("the search front has no latency objective")
    li = front["objectives"].index(lat_name)
    members = sorted(front["front"], key=lambda m: m["objectives"][li])  # fastest first (predicted)
    checked = []
    chosen = None
    for m in members:
        arch = ArchConfig.from_dict(m["arch"])
        loss = evaluate(net, arch, corpus, max_tokens=tokens)["loss"]
        checked.append((arch, loss, m["objectives"][li]))
        if loss <= std_loss:
            chosen = arch
            break
    print(f"standard design inherited loss {std_loss:.4f}; front members checked: {len(checked)}")
    measurers = {b: make_measurer(space, cfg.latency, args.device, b) for b in ("torch", "onnxruntime")}
    results = {}
    for name, arch in (("standard", standard), ("found", chosen)):
        if arch is None:
            continue
        sub = extract_subnet(net, arch)
        ft = train_standalone(sub, corpus, args.finetune_steps, cfg.train, seed=cfg.seed, eval_tokens=tokens)
        lat = {b: 1e3 * m.measure_arch(arch).median for b, m in measurers.items()}
        results[name] = {"arch": arch.key(), "params": space.params(arch)["total"], **ft, **{f"latency_{b}_ms": v for b, v in lat.items()}}
        print(f"{name:8s} loss {ft['loss_before']:.4f} -> {ft['loss_after']:.4f} after {args.finetune_steps} steps; "
              f"latency torch {lat['torch']:.3f} ms, onnxruntime {lat['onnxruntime']:.3f} ms; {arch.key()}")
    body = [f"Command: `{command()}`<br>", f"Machine: {machine()}<br>",
            f"Workload: batch {cfg.latency.batch_size} x {cfg.latency.seq_len or cfg.search_space.block_size} tokens, "
            f"prefill; both fine-tuned {args.finetune_steps} steps from their inherited weights; loss in nats/byte on "
            f"{tokens} validation tokens. Goal: >= 1.5x faster at equal or better loss (HAT 3x at equal BLEU, LTS 1.5x at equal perplexity).\n"]
    if "found" not in results:
        best = min(checked, key=lambda t: t[1])
        body.append(f"**The search did not beat the standard design**: no front member's inherited loss is at or below the "
                    f"standard design's {std_loss:.4f}; the best front loss is {best[1]:.4f} (`{best[0].key()}`). "
                    "The front trades loss for latency below the standard design's quality, so the data show no "
                    "faster subnet at equal quality in this space and training budget.")
        print(body[-1])
    else:
        s, f = results["standard"], results["found"]
        sp = {b: s[f"latency_{b}_ms"] / f[f"latency_{b}_ms"] for b in ("torch", "onnxruntime")}
        verdict = "meets" if min(sp.values()) >= 1.5 and f["loss_after"] <= s["loss_after"] else "does not meet"
        body += [
            "| design | arch | params | val loss (inherited -> fine-tuned) | latency torch ms | latency ORT ms |",
            "| --- | --- | --- | --- | --- | --- |",
            *[f"| {n} | `{r['arch']}` | {r['params']:,} | {r['loss_before']:.4f} -> {r['loss_after']:.4f} | "
              f"{r['latency_torch_ms']:.3f} | {r['latency_onnxruntime_ms']:.3f} |" for n, r in results.items()],
            f"\n**Speed-up of the found subnet: {sp['torch']:.2f}x (torch), {sp['onnxruntime']:.2f}x (ONNX Runtime)** at "
            f"fine-tuned loss {f['loss_after']:.4f} vs {s['loss_after']:.4f}: it {verdict} the 1.5x goal at equal or better loss.",
        ]
        print(body[-1])
    if not args.no_write:
        write_section("Outcome: search vs the standard design", "\n".join(body))


if __name__ == "__main__":
    main()
