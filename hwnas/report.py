"""Human-readable summaries printed by the CLI (rich tables)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from hwnas.config import ExperimentConfig
from hwnas.search_space import ArchConfig, SearchSpace, as_rng
from hwnas.search_space.metrics import human_count


def arch_row(space: SearchSpace, arch: ArchConfig) -> list[str]:
    p = space.params(arch)
    t = space.config.block_size
    return [
        str(arch.depth),
        str(arch.embed_dim),
        human_count(p["total"]),
        human_count(p["non_embedding"]),
        human_count(space.flops(arch) / t),
        f"{space.memory(arch)['total'] / 2**20:.2f}",
        arch.key(),
    ]


def print_space_summary(cfg: ExperimentConfig, samples: int, seed: int, console: Console | None = None) -> None:
    console = console or Console(width=200)
    space = SearchSpace(cfg.search_space)
    c = cfg.search_space
    console.print(f"[bold]hwnas search space[/bold] of experiment [cyan]{cfg.name}[/cyan]")
    console.print(f"  archs: {space.size():,} (~{float(space.size()):.3e})   genes: {space.n_genes}")
    console.print(f"  vocab {c.vocab_size}, context {c.block_size}, head dim {c.head_dim}")
    dims = Table(title="dimensions", show_lines=False)
    for col in ("dimension", "choices", "scope"):
        dims.add_column(col)
    dims.add_row("depth", str(list(c.depth)), "global")
    dims.add_row("embed_dim", str(list(c.embed_dim)), "global")
    for dim, choices in space.choices.items():
        dims.add_row(dim, ", ".join(map(str, choices)), "per layer" if space.per_layer[dim] else "shared")
    console.print(dims)

    table = Table(title=f"archs (FLOPs per token at sequence length {c.block_size}; memory at deploy precision)")
    for col in ("", "depth", "width", "params", "non-emb", "FLOPs/tok", "mem MiB", "key"):
        table.add_column(col, overflow="fold")
    table.add_row("smallest", *arch_row(space, space.smallest()))
    table.add_row("largest", *arch_row(space, space.largest()))
    rng = as_rng(seed)
    for i in range(samples):
        table.add_row(f"sample {i}", *arch_row(space, space.sample(rng)))
    console.print(table)


def print_front(search_dir, console: Console | None = None) -> None:
    """The saved Pareto front as a table, with re-measured values where the search validated them."""
    from hwnas.search.objectives import decode_objectives, tokens_per_s
    from hwnas.search.pareto import read_front, read_validation

    console = console or Console(width=200)
    data = read_front(search_dir)
    measured = {r["key"]: r for r in read_validation(search_dir)}
    names = data["objectives"]
    table = Table(title=f"Pareto front: {len(data['front'])} of {data['n_candidates']} candidates, hypervolume "
                        f"{data['hypervolume']:.4g} (reference point {[round(x, 4) for x in data['ref_point']]})")
    table.add_column("#")
    for n in names:
        table.add_column(n)
        table.add_column(f"{n} (re-measured)")
    decode = decode_objectives(names)
    for n in decode:  # a decoding step's ms per token, as the rate people quote
        table.add_column(f"{n} tokens/s")
    table.add_column("arch key", overflow="fold")
    for i, m in enumerate(data["front"]):
        row = [str(i)]
        values = dict(zip(names, m["objectives"], strict=True))
        for n, v in values.items():
            real = measured.get(m["key"], {}).get(f"measured:{n}")
            row += [f"{v:.4g}", "" if real is None else f"{real:.4g}"]
        row += [f"{tokens_per_s(n, values[n]):,.0f}" for n in decode]
        table.add_row(*row, m["key"])
    console.print(table)
    print_choices(search_dir, console)


def print_choices(search_dir, console: Console) -> None:
    """Which design choices the front uses against the space, and their latency at equal width."""
    from hwnas.search.choices import HEADERS, latency_headers, latency_targets, read_choices, row_cells

    report = read_choices(search_dir)
    if report is None:
        return
    targets = latency_targets(report)
    table = Table(title=f"design choices: share of the front's {report['front_size']} members (and of their layers) against "
                        f"the space; latency of the largest arch with the choice in every layer")
    for col in (*HEADERS, *latency_headers(targets)):
        table.add_column(col)
    for r in report["rows"]:
        table.add_row(*row_cells(r, targets))
    console.print(table)
