"""Which design choices pay on a finished search: the front's use of each norm, placement, attention
kind, FFN kind and bit width against the space's, and each choice's latency at equal width from the
run's tables (the search stage's search/choices.json), plus the same latency for both runtimes when
the run has both tables, so low bits can be judged on the runtime that deploys them.

    python experiments/bench/choices.py [--config experiments/quickstart.yaml] [--run-dir runs/quickstart]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command, git_commit, supernet_steps, write_section  # noqa: E402

from hwnas.config import load_config  # noqa: E402
from hwnas.latency.table import load_table, table_path  # noqa: E402
from hwnas.search.choices import choices_markdown, choices_report  # noqa: E402
from hwnas.search.pareto import read_front  # noqa: E402
from hwnas.search_space import ArchConfig, SearchSpace  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="experiments/quickstart.yaml")
    p.add_argument("--run-dir", default=None, help="default: the config's run directory")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    cfg = load_config(args.config)
    run = Path(args.run_dir) if args.run_dir else cfg.run_path
    space = SearchSpace(cfg.search_space)
    front = read_front(run / "search")
    archs = [ArchConfig.from_dict(m["arch"]) for m in front["front"]]
    tables = {f"{d}/{b}": load_table(run, d, b, space=space) for d in cfg.latency.devices for b in cfg.latency.backends
              if table_path(run, d, b).exists()}
    report = choices_report(space, archs, tables, cfg.seed)
    text = choices_markdown(report)
    print(text)
    print(json.dumps({"objectives": front["objectives"], "constraints": front["constraints"]}))
    if args.no_write:
        return
    body = [f"`{command()}` (commit {git_commit()}; run {run}, front of the search `{', '.join(front['objectives'])}`"
            f"{' subject to ' + ', '.join(front['constraints']) if front['constraints'] else ''})", "", text]
    write_section(f"Design choices on the front (which choices pay), supernet of {supernet_steps(run)} steps", "\n".join(body))


if __name__ == "__main__":
    main()
