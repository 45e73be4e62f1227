"""Behaviour unchanged across a refactor: the same front, export and latency predictions, to the float.

    # on the commit before the change (a checkout with its own `pip install -e .`):
    python experiments/behaviour/check.py capture /tmp/golden
    # on the commit after it:
    python experiments/behaviour/check.py compare /tmp/golden

`capture` runs the tests' tiny experiment (`hwnas run`, about a minute) and records the latency
tables' predictions (median, p90, min) for 200 drawn archs as exact floats. `compare` copies that
run, deletes every stage's output but the corpus and the latency tables (timings differ from run
to run; the tables are the measured input), runs `hwnas run` again with the code checked out now,
and compares: every tensor of the checkpoint and the exported model exactly; every JSON, JSONL and
CSV leaf except timings, paths and hashes of files that embed them; the ONNX graphs without the
source-line metadata the exporter records; the stored tables' predictions to the last bit. It
prints each difference and exits 1 if there is one.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
SKIP = re.compile(r"(seconds|tokens_per_s|sha256|run_dir|out_dir|time|elapsed|wall|date|created|finished|host|_s$|_ms$|latency|speed|"
                  r"window|measured|hash|path|file|command|version|pid|rate|timing)", re.I)


def predictions(config: Path, run: Path) -> dict:
    import numpy as np

    from hwnas.config import load_config
    from hwnas.latency.table import LatencyTable
    from hwnas.search_space import SearchSpace

    space = SearchSpace(load_config(config).search_space)
    rng = np.random.default_rng(123)
    archs = [space.sample(rng) for _ in range(200)]
    table = LatencyTable.load(run / "latency" / "cpu-torch.json")
    out = {"keys": [a.key() for a in archs], "median": [table.predict_ms(a).hex() for a in archs]}
    for stat in ("p90", "min"):
        out[stat] = [table.for_statistic(stat).predict_ms(a).hex() for a in archs]
    return out


def run(config: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "hwnas.cli", "run", str(config), "--no-progress"], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"hwnas run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def capture(root: Path) -> None:
    from tests.tiny import stdlib_text, tiny_config, write_config

    root.mkdir(parents=True, exist_ok=True)
    config = write_config(root / "tiny.yaml", tiny_config(root / "run", stdlib_text(root / "text")))
    run(config)
    (root / "predictions.json").write_text(json.dumps(predictions(config, root / "run")))
    print(f"captured {root / 'run'} and the predictions of 200 archs")


def leaves(a, b, where: str, bad: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if not SKIP.search(str(k)):
                leaves(a.get(k), b.get(k), f"{where}.{k}", bad)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            leaves(x, y, f"{where}[{i}]", bad)
    elif a != b:
        bad.append(f"{where}: {str(a)[:80]} != {str(b)[:80]}")


def onnx_graph(path: Path) -> bytes:
    import onnx

    model = onnx.load(path)
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.metadata_props[:]
    return model.SerializeToString()


def differences(old: Path, new: Path) -> list[str]:
    from safetensors import safe_open

    bad: list[str] = []
    for f in sorted(old.rglob("*")):
        rel = f.relative_to(old)
        g = new / rel
        if f.is_dir() or "wandb" in rel.parts or rel.suffix in (".png", ".html", ".lock", ".md", ".skops", ".bin"):
            continue
        if not g.exists():
            bad.append(f"missing {rel}")
        elif rel.suffix == ".safetensors":
            a, b = safe_open(f, "pt"), safe_open(g, "pt")
            if set(a.keys()) != set(b.keys()) or any(not (a.get_tensor(k) == b.get_tensor(k)).all() for k in a.keys()):
                bad.append(f"tensors of {rel}")
        elif rel.suffix == ".onnx":
            if onnx_graph(f) != onnx_graph(g):
                bad.append(f"ONNX graph of {rel}")
        elif rel.suffix == ".json":
            leaves(json.loads(f.read_text()), json.loads(g.read_text()), str(rel), bad)
        elif rel.suffix == ".jsonl":
            leaves([json.loads(x) for x in f.read_text().splitlines()], [json.loads(x) for x in g.read_text().splitlines()],
                   str(rel), bad)
        elif rel.suffix == ".csv":
            leaves(list(csv.DictReader(f.open())), list(csv.DictReader(g.open())), str(rel), bad)
    for rel in ("search/front.json", "search/candidates.csv", "corpus/train.bin", "corpus/val.bin"):
        if (old / rel).read_bytes() != (new / rel).read_bytes():
            bad.append(f"bytes of {rel}")
    return bad


def compare(root: Path) -> int:
    import yaml

    rerun = root / "rerun"
    shutil.rmtree(rerun, ignore_errors=True)
    shutil.copytree(root / "run", rerun)
    for stage in ("train", "predictors", "search", "export"):
        shutil.rmtree(rerun / stage, ignore_errors=True)
    cfg = yaml.safe_load((root / "tiny.yaml").read_text()) | {"run_dir": str(rerun)}
    (root / "tiny-rerun.yaml").write_text(yaml.safe_dump(cfg))
    run(root / "tiny-rerun.yaml")
    bad = differences(root / "run", rerun)
    if predictions(root / "tiny.yaml", root / "run") != json.loads((root / "predictions.json").read_text()):
        bad.append("latency predictions of the stored table")
    print("\n".join(bad) if bad else "no differences: checkpoint, records, predictor, front, candidates, validation, "
          "export (tensors, ONNX graphs, config) and 600 latency predictions are the same")
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["capture", "compare"])
    parser.add_argument("dir", type=Path)
    args = parser.parse_args()
    if args.mode == "capture":
        capture(args.dir)
        return 0
    return compare(args.dir)


if __name__ == "__main__":
    sys.exit(main())
