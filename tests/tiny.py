"""A tiny experiment for end-to-end tests, the CLI run as a user runs it, and a digest of a run
directory that proves a refused command changed nothing.

    config = tiny_yaml(tmp_path, text_root)      # the whole pipeline in about a minute on 2 cores
    proc = hwnas("latency", str(config))         # a subprocess, like a user's shell
    assert_refused(proc, "latency.seed")         # exit 2, one line `hwnas: error: ...`, no traceback
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

HWNAS = [sys.executable, "-m", "hwnas.cli"]
STDLIB_FILES = ["json/decoder.py", "json/encoder.py", "textwrap.py", "glob.py", "shlex.py", "fnmatch.py"]


def stdlib_text(root: Path) -> Path:
    """A small text corpus: six modules of the installed Python's standard library, copied to `root`."""
    stdlib = Path(json.__file__).parent.parent
    root.mkdir(parents=True, exist_ok=True)
    for name in STDLIB_FILES:
        (root / Path(name).name).write_text((stdlib / name).read_text())
    return root


def tiny_config(run_dir: Path, corpus: Path) -> dict:
    """The tiny experiment as a dict (every stage, a few seconds each)."""
    return {
        "name": "tiny", "run_dir": str(run_dir), "seed": 0,
        "search_space": {
            "depth": [1, 2], "embed_dim": [16, 32], "head_dim": 8, "block_size": 32,
            "n_heads": {"choices": [1, 2]}, "mlp_ratio": {"choices": [2.0, 4.0]},
            "attention": {"choices": ["softmax", "linear", "window"], "windows": [8]},
            "ffn": {"choices": ["mlp", "swiglu", "moe"], "experts": [2], "top_k": [1, 2]},
            "weight_bits": {"choices": [16, 8]},
        },
        "train": {"corpus": str(corpus), "steps": 12, "warmup_steps": 2, "batch_size": 4, "ckpt_every": 4, "eval_every": 6,
                  "eval_tokens": 512, "val_fraction": 0.2, "ema_decay": 0.9, "wandb": "disabled", "threads": 1},
        "latency": {"backends": ["torch"], "threads": 1, "warmup": 1, "min_repeats": 3, "max_repeats": 5, "check_every": 3,
                    "max_seconds": 0.2, "n_correction": 6, "n_fidelity": 0, "wandb": "disabled", "speed_backoff_s": 0,
                    "speed_retakes": 0},  # a tiny model's windows move more than 5% on a busy 2-core test machine: no retakes
        "predictors": {"n_fit": 12, "n_heldout": 4, "eval_tokens": 256, "models": ["ridge", "gbr"], "cv_folds": 3,
                       "wandb": "disabled", "threads": 1},
        "search": {"objectives": ["loss", "latency@cpu"], "latency_backend": "torch", "engine": "pymoo", "budget": 200, "population": 20,
                   "validate_top": 2, "wandb": "disabled"},
        "export": {"eval_tokens": 256, "measure_latency": False, "sample_tokens": 8, "threads": 1, "wandb": "disabled",
                   "decode": False},
    }


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def tiny_yaml(tmp_path: Path, corpus: Path) -> Path:
    """tmp_path/tiny.yaml: the tiny experiment, running in tmp_path/run."""
    return write_config(tmp_path / "tiny.yaml", tiny_config(tmp_path / "run", corpus))


def hwnas(*args: str, timeout: float = 600, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """`hwnas ARGS...` in a subprocess, one BLAS thread, output captured as text."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*HWNAS, *args], capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


def assert_refused(proc: subprocess.CompletedProcess, *needles: str, code: int = 2) -> str:
    """The command failed with `code` and one line `hwnas: error: ...` holding every needle, no
    traceback; returns the line."""
    err = proc.stderr.strip()
    assert proc.returncode == code, f"exit {proc.returncode}\nstdout: {proc.stdout[-2000:]}\nstderr: {proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("hwnas: error:")]
    assert len(lines) == 1, err[-3000:]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (by relative path); compare two to prove nothing changed."""
    out = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def perturbed_supernet(cfg, scale: float | dict[str, float] | None = None):
    """A supernet of `cfg` (torch seed 0) whose norms are moved off their identity init (+ 0.1 N(0, 1)),
    so that parity checks them too; `scale` multiplies the other weights (all of them, or those whose
    name holds a key of the dict), so that differences would show."""
    import torch

    from hwnas.supernet import Supernet

    torch.manual_seed(0)
    net = Supernet(cfg)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
            elif isinstance(scale, float | int):
                p.mul_(scale)
            elif scale:
                p.mul_(next((v for k, v in scale.items() if k in name), 1.0))
    return net


def page_text(path: Path) -> str:
    """An HTML plot's source with plotly's JSON escapes (\\u002f, \\u00d7) decoded, for text checks."""
    return re.sub(r"\\u([0-9a-fA-F]{4})", lambda m: chr(int(m.group(1), 16)), path.read_text(encoding="utf-8"))


def wandb_when(run_dir: Path, ready, read=None, timeout: float = 60):
    """What `read` (the offline W&B history, by default) finds under `run_dir` once `ready` holds of it:
    wandb-core may still be writing the run file after `finish()` returns. Past `timeout`, what it finds."""
    from hwnas.core.tracking import read_wandb_history

    read, deadline = read or read_wandb_history, time.monotonic() + timeout
    while not ready(found := read(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return found
