"""Weight sharing: the tax and the rank fidelity of the supernet's inherited subnets.

Trains a supernet with the experiment's `train` section (`--steps` and `--set key=value` change it;
the run goes to runs/bench-ws/<variant>, so the experiment's own run is untouched) and N archs from
a fresh initialization with the same recipe and the same number of steps: the smallest, the
largest, and N-2 drawn one from each of N-2 equal FLOPs strata of a large sample of the space.
Then reports

- the tax: the supernet's largest and smallest subnets (inherited weights) against the same archs
  trained alone, in bits/byte on the same validation bytes;
- the rank fidelity: Kendall tau between inherited and stand-alone loss over all N archs, with a
  bootstrap 90% interval (archs resampled with replacement); the stand-alone loss is the mean over
  `--alone-seeds` training seeds, and with two or more the Kendall tau of one seed's ranking
  against another's is reported too: stand-alone training's own noise, the ceiling of any fidelity;
- what each dimension costs: the largest arch with one choice changed, inherited.

Stand-alone runs depend only on the arch, the seed and the stand-alone recipe (not on `--set`,
which changes the supernet's sandwich), so they are cached in runs/bench-ws/alone.json and shared
by variants. Every variant's summary is kept in runs/bench-ws/results.json; BENCHMARKS.md shows
them all, with the details of the latest.

    python experiments/bench/weight_sharing.py [--config experiments/quickstart.yaml] [--steps 600] [--n 20]
        [--alone-seeds 2] [--set random_weight=0.1 --set parent_fraction=0.3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml
from pydantic import ValidationError
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, digest, git_commit, machine, worker_pool, write_section  # noqa: E402

from hwnas.config import format_validation_error, load_config  # noqa: E402
from hwnas.core.errors import HwnasError  # noqa: E402
from hwnas.core.io import atomic_write_text  # noqa: E402
from hwnas.search_space import ArchConfig  # noqa: E402
from hwnas.supernet import Supernet, extract_subnet  # noqa: E402
from hwnas.supernet.config import TrainConfig  # noqa: E402
from hwnas.supernet.data import Corpus  # noqa: E402
from hwnas.supernet.evaluate import evaluate  # noqa: E402
from hwnas.supernet.finetune import train_standalone  # noqa: E402
from hwnas.supernet.train import load_supernet, train, verify_supernet  # noqa: E402

LN2 = float(np.log(2))
ROOT = Path("runs") / "bench-ws"
# the train fields that only shape the sandwich (a stand-alone run ignores them)
SANDWICH_ONLY = {"n_random", "random_weight", "parent_fraction", "distill", "distill_weight", "complexity_aware", "flops_gap",
                 "ema_decay", "ckpt_every", "eval_every", "log_every", "wandb", "wandb_project", "threads", "device"}


# the search_space fields that only shape the supernet (stand-alone runs start from the config's)
SPACE_ONLY = {"weight_sharing"}


# the per-layer choices of a layer's kind (its sizes, heads and MLP ratio, are left per layer)
KIND_FIELDS = ("norm", "attention", "window", "ffn", "n_experts", "top_k", "weight_bits")


def uniform_kinds(arch: ArchConfig) -> ArchConfig:
    """`arch` with every layer of its first layer's kinds: norm, attention, FFN and bits."""
    first = {f: getattr(arch.layers[0], f) for f in KIND_FIELDS}
    return replace(arch, layers=tuple(replace(layer, **first) for layer in arch.layers))


def largest_kinds(space, arch: ArchConfig) -> ArchConfig:
    """`arch`'s sizes with the space's largest arch's kinds in every layer (placement and bits too)."""
    kinds = {f: getattr(space.largest().layers[0], f) for f in (*KIND_FIELDS, "placement")}
    return replace(arch, layers=tuple(replace(layer, **kinds) for layer in arch.layers))


def stratified_archs(space, n: int, seed: int, pool_size: int = 4000, uniform: bool = False,
                     sizes_only: bool = False) -> list[ArchConfig]:
    """Smallest, largest, and one arch drawn at random from each of n-2 equal-count FLOPs strata
    of `pool_size` samples (so small, middle and large subnets are all represented). `uniform`:
    each sample takes one set of kinds for all its layers (`uniform_kinds`); `sizes_only`: every
    arch, the smallest too, takes the largest's kinds (`largest_kinds`), so only sizes differ."""
    rng = np.random.default_rng(seed)
    draw = (lambda: uniform_kinds(space.sample(rng))) if uniform else (lambda: space.sample(rng))
    if sizes_only:
        draw = lambda: largest_kinds(space, space.sample(rng))  # noqa: E731
    pool = sorted({draw() for _ in range(pool_size)}, key=lambda a: (space.flops(a), a.key()))
    edges = np.linspace(0, len(pool), n - 1).astype(int)
    picks = [pool[int(rng.integers(lo, hi))] for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    smallest = largest_kinds(space, space.smallest()) if sizes_only else space.smallest()
    return [smallest, *picks, space.largest()]


def one_change_archs(space) -> dict[str, ArchConfig]:
    """The largest arch with one choice changed to each other value the space offers."""
    c, big = space.config, space.largest()
    out = {"largest": big}
    for depth in sorted(set(c.depth) - {big.depth}):
        out[f"depth {depth}"] = replace(big, layers=big.layers[:depth])
    for d in sorted(set(c.embed_dim) - {big.embed_dim}):
        out[f"embed_dim {d}"] = replace(big, embed_dim=d)
    layer = big.layers[0]
    for field, choices in (("n_heads", c.n_heads.choices), ("mlp_ratio", c.mlp_ratio.choices), ("norm", c.norm.choices),
                           ("placement", c.norm_placement.choices), ("attention", c.attention.choices),
                           ("ffn", c.ffn.choices), ("weight_bits", c.weight_bits.choices)):
        for v in choices:
            if v == getattr(layer, field):
                continue
            extra = {"window": min(c.attention.windows)} if v == "window" else {}
            if v == "moe":
                extra = {"n_experts": min(c.ffn.experts), "top_k": min(c.ffn.top_k)}
            arch = replace(big, layers=tuple(replace(layer_, **{field: v}, **extra) for layer_ in big.layers))
            try:
                space.validate(arch)
            except HwnasError:
                continue
            out[f"{field} {v}"] = arch
    return out


def bootstrap_tau(x: np.ndarray, y: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """The 5th and 95th percentiles of Kendall tau over resamples of the pairs."""
    rng = np.random.default_rng(seed)
    taus = []
    for _ in range(n):
        i = rng.integers(0, len(x), len(x))
        if len(set(i)) > 2:
            t = kendalltau(x[i], y[i]).statistic
            if np.isfinite(t):
                taus.append(t)
    return float(np.percentile(taus, 5)), float(np.percentile(taus, 95))


def alone(config: str, train_json: str, key_json: str, steps: int, seed: int, corpus_dir: str, eval_tokens: int) -> dict:
    """Train one arch from the supernet's initialization for `steps` steps; one thread."""
    torch.set_num_threads(1)
    cfg = load_config(config)
    torch.manual_seed(seed)
    model = extract_subnet(Supernet(cfg.search_space), ArchConfig.from_json(key_json))
    r = train_standalone(model, Corpus.load(corpus_dir), steps, TrainConfig.model_validate_json(train_json), seed=seed,
                         eval_tokens=eval_tokens)
    return {"alone": r["loss_after"] / LN2, "seconds": r["train_seconds"]}


def trained_alone(config: str, cfg, steps: int, corpus_dir: Path, runs: list[tuple[ArchConfig, int]], jobs: int = 2) -> list[float]:
    """Validation bits/byte of each (arch, seed) trained alone from the supernet's initialization with
    `cfg.train` for `steps` steps, `jobs` at a time (one thread each). Cached in runs/bench-ws/alone.json
    by (space, stand-alone recipe, steps, seed, arch): a run depends on nothing else."""
    base = cfg.train.model_copy(update={"steps": steps, "warmup_steps": min(cfg.train.warmup_steps, steps)})
    alone_cfg = TrainConfig.model_validate({k: v for k, v in base.model_dump().items() if k not in SANDWICH_ONLY})
    tokens = cfg.train.eval_tokens
    cache_path = ROOT / "alone.json"
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    # the digest leaves the sandwich's fields out, so a new one does not void the cache
    recipe = digest([cfg.search_space.model_dump(mode="json"),
                     {k: v for k, v in alone_cfg.model_dump(mode="json").items() if k not in SANDWICH_ONLY}, steps, tokens])
    key = {(a, s): f"{recipe}/{s}/{a.key()}" for a, s in runs}
    todo = list(dict.fromkeys(r for r in runs if key[r] not in cache))
    if todo:
        ROOT.mkdir(parents=True, exist_ok=True)
        with worker_pool(jobs) as pool:
            futures = {r: pool.submit(alone, config, alone_cfg.model_dump_json(), r[0].to_json(), steps, r[1], str(corpus_dir), tokens)
                       for r in todo}
            for (a, s), f in futures.items():
                cache[key[a, s]] = out = f.result()
                atomic_write_text(cache_path, json.dumps(cache, indent=1, sort_keys=True))
                print(f"seed {s}: alone {out['alone']:.3f} bits/byte ({out['seconds']:.0f} s)  {a.key()}", flush=True)
    return [cache[key[r]]["alone"] for r in runs]


def parse_sets(sets: list[str]) -> dict:
    out = {}
    for s in sets:
        key, sep, value = s.partition("=")
        if not sep or key not in set(TrainConfig.model_fields) | SPACE_ONLY:
            sys.exit(f"--set: expected key=value with key one of the train fields or {', '.join(sorted(SPACE_ONLY))}, "
                     f"got {s!r}")
        out[key] = yaml.safe_load(value)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="experiments/quickstart.yaml")
    p.add_argument("--steps", type=int, default=None, help="supernet and stand-alone steps (default: the config's train.steps)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a train field of the supernet's run, or search_space's weight_sharing")
    p.add_argument("--n", type=int, default=20, help="archs, smallest and largest included (>= 3)")
    p.add_argument("--seed", type=int, default=0, help="draws the archs and the stand-alone runs' seeds")
    p.add_argument("--alone-seeds", type=int, default=2, help="stand-alone runs per arch (their mean is the reference; "
                   "two or more also give the seed-against-seed tau, the ceiling of any fidelity)")
    p.add_argument("--sizes-only", action="store_true", help="draw archs that all have the largest arch's kinds (norm, "
                   "placement, attention, FFN, bits), only their sizes differing: how well the supernet ranks sizes")
    p.add_argument("--uniform-kinds", action="store_true", help="draw archs whose layers all share one set of kinds "
                   "(norm, attention, FFN, bits), sizes still per layer: how much of the ranking per-layer mixing costs")
    p.add_argument("--finetune", type=int, default=0, metavar="K", help="score each arch after K steps of training its "
                   "inherited weights alone (the same train section, lr --finetune-lr, warmup a tenth): a second signal, "
                   "ranked against stand-alone training in place of the inherited loss")
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--proxy", type=int, default=0, metavar="K", help="also rank the archs by K steps of stand-alone training "
                   "from scratch (one seed not among the reference's): the baseline a K-step fine-tune of inherited weights "
                   "has to beat")
    p.add_argument("--jobs", type=int, default=2, help="stand-alone runs in parallel, one thread each")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    if args.alone_seeds < 1:
        sys.exit("--alone-seeds: must be at least 1")
    if args.n < 3:
        sys.exit("--n: must be at least 3 (smallest, largest and one stratum)")
    cfg = load_config(args.config)
    steps = args.steps or cfg.train.steps
    sets = parse_sets(args.set)
    base = cfg.train.model_copy(update={"steps": steps, "warmup_steps": min(cfg.train.warmup_steps, steps)})
    train_sets = {k: v for k, v in sets.items() if k not in SPACE_ONLY}
    try:
        sup_cfg = TrainConfig.model_validate(base.model_dump() | train_sets | {"wandb": "disabled", "eval_every": steps,
                                                                             "ckpt_every": 100})
        sup_space = type(cfg.search_space).model_validate(
            cfg.search_space.model_dump() | {k: v for k, v in sets.items() if k in SPACE_ONLY})
    except ValidationError as e:
        sys.exit(format_validation_error(e, "--set"))
    label = ", ".join(f"{k}={v}" for k, v in sets.items()) or "the config's recipe"
    if args.sizes_only and args.uniform_kinds:
        sys.exit("--sizes-only and --uniform-kinds: choose one")
    arch_set = "sizes only" if args.sizes_only else "uniform kinds" if args.uniform_kinds else "per-layer kinds"
    sup_json = sup_space.model_dump(mode="json")
    variant = f"{steps}-{digest([sup_json, sup_cfg.model_dump(mode='json'), cfg.seed])}"
    run_dir = ROOT / variant
    corpus_dir = run_dir / "corpus"  # built by training; every variant's is the same bytes, so cached runs stay valid
    try:
        verify_supernet(run_dir)
    except HwnasError:
        print(f"training the supernet ({label}, {steps} steps) in {run_dir}", flush=True)
        train(sup_space, sup_cfg, run_dir, seed=cfg.seed, name=f"bench-ws-{variant}")
    torch.set_num_threads(2)
    net = load_supernet(run_dir, sup_space)
    corpus = Corpus.load(corpus_dir)
    tokens = cfg.train.eval_tokens
    archs = stratified_archs(net.space, args.n, args.seed, uniform=args.uniform_kinds, sizes_only=args.sizes_only)
    inherited = [evaluate(net, a, corpus, max_tokens=tokens)["bpb"] for a in archs]
    if args.finetune:
        ft_cfg = base.model_copy(update={"lr": args.finetune_lr, "min_lr": min(base.min_lr, args.finetune_lr),
                                         "warmup_steps": max(1, args.finetune // 10)})
        t0 = time.perf_counter()
        inherited = [train_standalone(extract_subnet(net, a), corpus, args.finetune, ft_cfg, seed=cfg.seed,
                                      eval_tokens=tokens)["bpb_after"] for a in archs]
        label += f"; each arch then trained {args.finetune} steps alone (lr {args.finetune_lr:g})"
        variant += f"-ft{args.finetune}-{args.finetune_lr:g}"
        print(f"fine-tuned {len(archs)} archs {args.finetune} steps each in {time.perf_counter() - t0:.0f} s", flush=True)
    changes = {name: evaluate(net, a, corpus, max_tokens=tokens)["bpb"] for name, a in one_change_archs(net.space).items()}

    # runs[j][i]: arch i trained alone with its j-th seed
    runs = [[(archs[i], args.seed * 1000 + 100 + i + 10_000 * j) for i in range(len(archs))] for j in range(args.alone_seeds)]
    t0 = time.perf_counter()
    alone_bpb = trained_alone(args.config, cfg, steps, corpus_dir, [r for row in runs for r in row], args.jobs)
    inh = np.array(inherited)
    per_seed = np.array(alone_bpb).reshape(len(runs), len(archs))  # (seeds, archs)
    sa = per_seed.mean(axis=0)  # the reference: the mean over seeds
    tau = float(kendalltau(inh, sa).statistic)
    lo, hi = bootstrap_tau(inh, sa, seed=args.seed)
    # the ceiling: how well stand-alone training ranks the archs against itself, seed against seed
    seed_tau = float(np.mean([kendalltau(per_seed[a], per_seed[b]).statistic
                              for a in range(len(runs)) for b in range(a + 1, len(runs))])) if len(runs) > 1 else None
    gap = inh - sa
    proxy = None
    if args.proxy:
        t1 = time.perf_counter()
        # seeds of their own: a short run with a reference run's seed shares its initialization and first batches
        fresh = [(a, s + 10_000 * args.alone_seeds) for a, s in runs[0]]
        short = np.array(trained_alone(args.config, cfg, args.proxy, corpus_dir, fresh, args.jobs))
        proxy = {"steps": args.proxy, "tau": float(kendalltau(short, sa).statistic), "tau_90": list(bootstrap_tau(short, sa, seed=args.seed)),
                 "seconds": time.perf_counter() - t1}
        print(f"{args.proxy} steps from scratch (one other seed): Kendall tau {proxy['tau']:.3f} (90% {proxy['tau_90'][0]:.3f} to "
              f"{proxy['tau_90'][1]:.3f})", flush=True)
    summary = json.loads((run_dir / "train" / "summary.json").read_text())
    result = {"variant": variant, "label": label, "steps": steps, "n": len(archs), "tau": tau, "tau_90": [lo, hi], "archs": arch_set,
              "alone_seeds": len(runs), "seed_tau": seed_tau,
              "tax_largest": float(gap[-1]), "tax_smallest": float(gap[0]), "mid_gap": float(gap[1:-1].mean()),
              "train_seconds": summary["train_seconds"], "commit": git_commit(), **({"proxy": proxy} if proxy else {})}
    print(f"{label}, {arch_set}: tax largest {gap[-1]:+.3f}, smallest {gap[0]:+.3f} bits/byte; Kendall tau {tau:.3f} on {len(archs)} archs "
          f"(90% bootstrap {lo:.3f} to {hi:.3f}); stand-alone seed vs seed "
          f"{'n/a' if seed_tau is None else f'{seed_tau:.3f}'}; stand-alone runs {time.perf_counter() - t0:.0f} s")
    results_path = ROOT / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results[f"{variant}/{args.seed}/{args.n}/{len(runs)}" + ("/uniform" if args.uniform_kinds else "/sizes" if args.sizes_only else "")] = result
    atomic_write_text(results_path, json.dumps(results, indent=1, sort_keys=True))
    if args.no_write:
        return
    body = [
        f"`{command()}` (every variant of the first table by the same command with its `--set`)", "",
        f"Machine: {machine()}. Supernets: the experiment's space and `train` section, {steps} steps, with the changes named; "
        f"stand-alone runs: one thread each, the same `train` section and steps from the supernet's initialization. "
        f"Bits/byte on {tokens:,} validation bytes; the tax is inherited minus alone.", "",
        "| supernet recipe | steps | train s | tax largest | tax smallest | mean gap, middle archs | Kendall tau (90% interval) "
        "| stand-alone seeds: tau seed vs seed | commit |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    body += [f"| {r['label']} | {r['steps']} | {r['train_seconds']:.0f} | {r['tax_largest']:+.3f} | {r['tax_smallest']:+.3f} | "
             f"{r['mid_gap']:+.3f} | {r['tau']:.3f} ({r['tau_90'][0]:.2f} to {r['tau_90'][1]:.2f}), {r['n']} archs, "
             f"{r['archs']} | {r['alone_seeds']}: {'n/a' if r['seed_tau'] is None else format(r['seed_tau'], '.3f')} | "
             f"{r['commit']} |"
             for r in sorted(results.values(), key=lambda r: (r["steps"], r["label"], r["archs"]))]
    flops_tau = float(kendalltau([-net.space.flops(a) for a in archs], sa).statistic)
    body += ["", f"A baseline any supernet should beat: ranking these {len(archs)} archs by FLOPs alone (more FLOPs, lower loss) "
             f"gives Kendall tau {flops_tau:.3f} against stand-alone training. Options measured and then removed from the code "
             "(no longer helpful) are reproduced at the commit in their row."]
    proxies = {(r["archs"], r["proxy"]["steps"]): r["proxy"] for r in results.values() if r.get("proxy")}
    body += [line for (archs_, k), v in sorted(proxies.items()) for line in ("", f"Baseline for a short per-arch signal ({archs_}): {k} steps of stand-alone training from scratch (one seed "
             "not among the reference's) "
             f"rank them at Kendall tau {v['tau']:.3f} ({v['tau_90'][0]:.2f} to {v['tau_90'][1]:.2f}).")]
    body += ["", f"Latest ({label}): what each dimension costs, the largest arch with one choice changed (inherited bits/byte):", "",
             "| change | inherited | vs largest |", "| --- | --- | --- |"]
    body += [f"| {name} | {v:.3f} | {v - changes['largest']:+.3f} |" for name, v in changes.items()]
    body += ["", f"Latest ({label}), per arch:", "", "| arch | FLOPs/seq | inherited | alone, mean | alone, each seed | gap |", "| --- | --- | --- | --- | --- | --- |"]
    body += [f"| `{a.key()}` | {net.space.flops(a):.3g} | {i:.3f} | {s:.3f} | {' / '.join(f'{v:.3f}' for v in seeds)} | {i - s:+.3f} |"
             for a, i, s, seeds in zip(archs, inh, sa, per_seed.T, strict=True)]
    write_section("Weight sharing: tax and rank fidelity (inherited vs stand-alone subnets)", "\n".join(body))


if __name__ == "__main__":
    main()
