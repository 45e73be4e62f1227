"""The outcome, judged as users and papers (HAT, LTS) judge a found architecture: by training it.

The standard design (pre-LN LayerNorm, softmax attention, GELU MLP, 16-bit, the space's largest
width, depth, heads and MLP ratio) and the `--members` front members whose predicted loss is
closest to its own (`--match inherited`: whose loss on the supernet's weights is) are trained from scratch with the experiment's `train` recipe and the same step
budget, `--seeds` times each (one thread per run, two runs at a time). So are uniform shrinks of the
standard design (fewer layers or narrower, its kinds kept), the design a person would try next: the
`--shrinks` whose table latency is nearest the members'. Every arch is timed whole in this process
on each runtime the run has a table for (ONNX Runtime, what the export deploys, and eager torch).

The outcome is the speed-up on the deployment runtime of the fastest front member whose
from-scratch loss (mean over seeds) is at or below the standard design's, with the seeds' spread;
beside it the best uniform shrink no slower than that member. The inherited view (the supernet's
weights) and the fine-tuned view (`--finetune-steps` from them) are shown too. Loss: bits/byte on
the experiment's `train.eval_tokens` validation bytes.

    python experiments/bench/outcome.py [--config experiments/quickstart.yaml] [--run-dir runs/quickstart]
        [--steps N] [--seeds 3] [--members 4] [--shrinks 3] [--finetune-steps 100] [--match predicted|inherited] [--confirm-steps N]

A short budget favours shallow archs (they learn faster early). `--confirm-steps N` trains the
standard design and every member that matched it again for N steps (`--confirm-seeds` seeds): the
verdict at a longer budget.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, git_commit, machine, supernet_steps, write_section  # noqa: E402
from weight_sharing import LN2, trained_alone  # noqa: E402

from hwnas.config import load_config  # noqa: E402
from hwnas.latency.session import make_measurer  # noqa: E402
from hwnas.latency.table import load_table, table_path  # noqa: E402
from hwnas.predictors.persist import load_predictor  # noqa: E402
from hwnas.search.pareto import read_front  # noqa: E402
from hwnas.search_space import ArchConfig, LayerConfig, SearchSpace  # noqa: E402
from hwnas.supernet import extract_subnet  # noqa: E402
from hwnas.supernet.data import Corpus  # noqa: E402
from hwnas.supernet.evaluate import evaluate  # noqa: E402
from hwnas.supernet.finetune import train_standalone  # noqa: E402
from hwnas.supernet.train import load_supernet  # noqa: E402

DEPLOY = "onnxruntime"  # the runtime the export deploys: the outcome's speed-up is measured there


def standard_design(space: SearchSpace, depth: int | None = None, width: int | None = None) -> ArchConfig:
    """The design a person writes first (at `depth` x `width`: a uniform shrink of it)."""
    c = space.config
    layer = LayerConfig(n_heads=max(c.n_heads.choices), mlp_ratio=max(c.mlp_ratio.choices), norm="layernorm", placement="pre",
                        attention="softmax", ffn="mlp", weight_bits=16)
    arch = ArchConfig(embed_dim=width or max(c.embed_dim), layers=(layer,) * (depth or max(c.depth)))
    space.validate(arch)
    return arch


def nearest(archs: list[ArchConfig], values, target: float, k: int) -> list[ArchConfig]:
    """The k archs whose value is nearest `target` (ties: front order)."""
    return [archs[i] for i in np.argsort(np.abs(np.asarray(values) - target), kind="stable")[:k]]


def pick_members(front: dict, predictor, standard: ArchConfig, k: int) -> list[ArchConfig]:
    """The k front members whose predicted loss is nearest the standard design's."""
    archs = [ArchConfig.from_dict(m["arch"]) for m in front["front"]]
    return nearest(archs, predictor.predict(archs), float(predictor.predict([standard])[0]), k)


def pick_members_inherited(front: dict, net, corpus, tokens: int, standard: ArchConfig, k: int) -> list[ArchConfig]:
    """The k front members whose inherited loss (the supernet's weights, measured) is nearest the
    standard design's: its quality by the supernet itself, not by the predictor's view of it."""
    archs = [ArchConfig.from_dict(m["arch"]) for m in front["front"]]
    losses = [evaluate(net, a, corpus, max_tokens=tokens)["bpb"] for a in archs]
    return nearest(archs, losses, evaluate(net, standard, corpus, max_tokens=tokens)["bpb"], k)


def pick_shrinks(space: SearchSpace, table, members: list[ArchConfig], k: int) -> list[ArchConfig]:
    """The k uniform shrinks of the standard design whose table latency is nearest the members' median."""
    full = standard_design(space)
    shrinks = [standard_design(space, d, w) for d in space.config.depth for w in space.config.embed_dim]
    shrinks = [a for a in shrinks if a != full]
    target = float(np.median([table.predict(a) for a in members]))
    return sorted(shrinks, key=lambda a: abs(table.predict(a) - target))[:k]


def spread(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1) if len(values) > 1 else 0:.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="experiments/quickstart.yaml")
    p.add_argument("--run-dir", default=None, help="a finished run (default: the config's)")
    p.add_argument("--steps", type=int, default=None, help="from-scratch steps (default: the config's train.steps)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--shrinks", type=int, default=3)
    p.add_argument("--finetune-steps", type=int, default=100)
    p.add_argument("--match", choices=["predicted", "inherited"], default="predicted",
                   help="front members nearest the standard design's predicted loss, or its inherited (measured) loss")
    p.add_argument("--confirm-steps", type=int, default=0, help="train the standard and the members that matched it this long too")
    p.add_argument("--confirm-seeds", type=int, default=2)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    if args.seeds < 1 or args.members < 1 or args.confirm_seeds < 1 or min(args.shrinks, args.finetune_steps, args.confirm_steps) < 0:
        sys.exit("--seeds, --members and --confirm-seeds: at least 1; --shrinks, --finetune-steps and --confirm-steps: at least 0")
    cfg = load_config(args.config)
    run = Path(args.run_dir) if args.run_dir else cfg.run_path
    steps = args.steps or cfg.train.steps
    space = SearchSpace(cfg.search_space)
    front = read_front(run / "search")
    runtimes = [b for b in cfg.latency.backends if table_path(run, "cpu", b).exists()]
    if DEPLOY not in runtimes:
        sys.exit(f"{run}: no cpu/{DEPLOY} latency table; the outcome is measured on the deployment runtime")
    deploy_table = load_table(run, "cpu", DEPLOY, space=space)
    standard = standard_design(space)
    net = load_supernet(run, space.config)
    corpus = Corpus.load(run / "corpus")
    tokens = cfg.train.eval_tokens
    members = (pick_members(front, load_predictor(run / "predictors"), standard, args.members) if args.match == "predicted" else
               pick_members_inherited(front, net, corpus, cfg.predictors.eval_tokens, standard, args.members))
    shrinks = pick_shrinks(space, deploy_table, members, args.shrinks)
    roles = {standard.key(): "standard", **{a.key(): "front member" for a in members}, **{a.key(): "uniform shrink" for a in shrinks}}
    archs = [standard, *members, *shrinks]

    print(f"training {len(archs)} archs x {args.seeds} seeds from scratch, {steps} steps each", flush=True)
    seeds = [cfg.seed * 1000 + 700 + j for j in range(args.seeds)]
    bpb = trained_alone(args.config, cfg, steps, run / "corpus", [(a, s) for a in archs for s in seeds], args.jobs)
    scratch = {a.key(): bpb[i * len(seeds):(i + 1) * len(seeds)] for i, a in enumerate(archs)}

    torch.set_num_threads(cfg.latency.threads or 1)
    latency = {b: {k: 1e3 * m.median for k, m in make_measurer(space, cfg.latency, "cpu", b).measure_archs(archs).items()}
               for b in runtimes}
    inherited, tuned = {}, {}
    for a in (standard, *members):
        inherited[a.key()] = evaluate(net, a, corpus, max_tokens=tokens)["bpb"]
        if args.finetune_steps:
            ft = train_standalone(extract_subnet(net, a), corpus, args.finetune_steps, cfg.train, seed=cfg.seed, eval_tokens=tokens)
            tuned[a.key()] = ft["loss_after"] / LN2

    def mean(k: str) -> float:
        return float(np.mean(scratch[k]))

    std_key = standard.key()
    winners = [a for a in members if mean(a.key()) <= mean(std_key)]
    found = min(winners, key=lambda a: latency[DEPLOY][a.key()]) if winners else None
    rows = ["| role | arch | params | from scratch: bits/byte (mean ± sd over seeds) | inherited | fine-tuned | "
            + " | ".join(f"{b} ms" for b in runtimes) + " |", "|" + " --- |" * (6 + len(runtimes))]
    for a in sorted(archs, key=lambda a: latency[DEPLOY][a.key()]):
        k = a.key()
        cells = [roles[k] + (" (found)" if found is not None and k == found.key() else ""), f"`{k}`", f"{space.params(a)['total']:,}",
                 f"{spread(scratch[k])} ({', '.join(f'{v:.3f}' for v in scratch[k])})",
                 f"{inherited[k]:.3f}" if k in inherited else "", f"{tuned[k]:.3f}" if k in tuned else "",
                 *(f"{latency[b][k]:.3f}" for b in runtimes)]
        rows.append("| " + " | ".join(cells) + " |")
    if found is None:
        verdict = (f"**No front member matched the standard design from scratch**: its loss {spread(scratch[std_key])}; the "
                   f"members' {', '.join(spread(scratch[a.key()]) for a in members)}. The search found no faster subnet at equal quality.")
    else:
        fk = found.key()
        ups = {b: latency[b][std_key] / latency[b][fk] for b in runtimes}
        sd = math.hypot(np.std(scratch[fk], ddof=1), np.std(scratch[std_key], ddof=1)) if args.seeds > 1 else 0.0
        goal = "meets the 2x goal" if ups[DEPLOY] >= 2 else "meets the 1.5x floor, not the 2x goal" if ups[DEPLOY] >= 1.5 else "misses the 1.5x floor"
        near = [a for a in shrinks if latency[DEPLOY][a.key()] <= latency[DEPLOY][fk] * 1.05]
        shrink = min(near, key=lambda a: mean(a.key())) if near else None
        versus = (f" The best uniform shrink no slower than it, `{shrink.key()}`, reaches {spread(scratch[shrink.key()])}"
                  f" ({'better' if mean(shrink.key()) < mean(fk) else 'worse'} than the found subnet)." if shrink else
                  " No uniform shrink of the standard design is as fast.")
        verdict = (f"**Speed-up of the found subnet from scratch: {ups[DEPLOY]:.2f}x on {DEPLOY}** "
                   + ", ".join(f"{ups[b]:.2f}x on {b}" for b in runtimes if b != DEPLOY)
                   + f", at {spread(scratch[fk])} bits/byte against the standard design's {spread(scratch[std_key])} "
                   f"(difference {mean(fk) - mean(std_key):+.3f}, seeds' combined sd {sd:.3f}): it {goal}." + versus)
    if winners and args.confirm_steps:  # every member that matched at the short budget, fastest first
        pair = [standard, *sorted(winners, key=lambda a: latency[DEPLOY][a.key()])]
        n = args.confirm_seeds
        long = trained_alone(args.config, cfg, args.confirm_steps, run / "corpus", [(a, s) for a in pair for s in seeds[:n]], args.jobs)
        std_long = long[:n]
        verdict += f"\n\nAt {args.confirm_steps} steps ({n} seeds): the standard design {spread(std_long)} bits/byte"
        held = None
        for i, a in enumerate(pair[1:], 1):
            mine = long[i * n:(i + 1) * n]
            verdict += (f"; `{a.key()}` {spread(mine)} ({np.mean(mine) - np.mean(std_long):+.3f}, "
                        f"{latency[DEPLOY][std_key] / latency[DEPLOY][a.key()]:.2f}x on {DEPLOY})")
            if held is None and np.mean(mine) <= np.mean(std_long):
                held = a
        verdict += (f". **At the longer budget the fastest member at or below the standard design's loss is "
                    f"{latency[DEPLOY][std_key] / latency[DEPLOY][held.key()]:.2f}x faster on {DEPLOY}** (`{held.key()}`)." if held else
                    ". At the longer budget no member is at or below the standard design's loss.")
    print("\n".join(rows) + "\n\n" + verdict)
    if args.no_write:
        return
    body = [f"`{command()}` (commit {git_commit()}; run {run})", "",
            f"Machine: {machine()}. From scratch: the `train` recipe, {steps} steps, {args.seeds} seeds, from the supernet's "
            f"initialization. Latency: whole subnets, batch {cfg.latency.batch_size} x "
            f"{cfg.latency.seq_len or space.config.block_size} tokens, median of the latency protocol's runs. Front members: "
            f"the {args.members} whose {args.match} loss is nearest the standard design's; fine-tuned: {args.finetune_steps} steps "
            f"from the inherited weights.", "", *rows, "", verdict]
    matched = "" if args.match == "predicted" else ", members matched by inherited loss"
    write_section(f"Outcome: search vs the standard design, trained from scratch (supernet of {supernet_steps(run)} steps{matched})",
                  "\n".join(body))


if __name__ == "__main__":
    main()
