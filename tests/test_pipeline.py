"""`hwnas run`: the whole pipeline on a tiny experiment; killed at random points and run again, it
finishes without redoing completed stages and without corrupt files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_train import text_dir  # noqa: F401  (fixture)

HWNAS = [sys.executable, "-m", "hwnas.cli"]


def tiny_yaml(tmp_path: Path, corpus: Path) -> Path:
    cfg = {
        "name": "tiny", "run_dir": str(tmp_path / "run"), "seed": 0,
        "search_space": {
            "depth": [1, 2], "embed_dim": [16, 32], "head_dim": 8, "block_size": 32,
            "n_heads": {"choices": [1, 2]}, "mlp_ratio": {"choices": [2.0, 4.0]},
            "attention": {"choices": ["softmax", "linear", "window"], "windows": [8]},
            "ffn": {"choices": ["mlp", "swiglu", "moe"], "experts": [2], "top_k": [1, 2]},
            "weight_bits": {"choices": [16, 8]},
        },
        "train": {"corpus": str(corpus), "steps": 12, "warmup_steps": 2, "batch_size": 4, "ckpt_every": 4, "eval_every": 6,
                  "eval_tokens": 512, "val_fraction": 0.2, "wandb": "disabled", "threads": 1},
        "latency": {"backends": ["torch"], "threads": 1, "warmup": 1, "min_repeats": 3, "max_repeats": 5, "check_every": 3,
                    "max_seconds": 0.2, "n_correction": 6, "n_fidelity": 0, "wandb": "disabled", "speed_backoff_s": 0},
        "predictors": {"n_fit": 12, "n_heldout": 4, "eval_tokens": 256, "models": ["ridge", "gbr"], "cv_folds": 3,
                       "wandb": "disabled", "threads": 1},
        "search": {"objectives": ["loss", "latency@cpu"], "engine": "pymoo", "budget": 200, "population": 20,
                   "validate_top": 2, "wandb": "disabled"},
        "export": {"eval_tokens": 256, "measure_latency": False, "sample_tokens": 8, "threads": 1},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(config: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*HWNAS, "run", str(config), "--no-progress"], capture_output=True, text=True, timeout=timeout, env=env)


def test_pipeline_survives_kills_and_skips_finished_stages(tmp_path, text_dir):  # noqa: F811
    config = tiny_yaml(tmp_path, text_dir)
    rd = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # kill it twice: once during training, once during a later stage
    for marker in ("[train] running", "[predictors] running"):
        proc = subprocess.Popen([*HWNAS, "run", str(config), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)
        seen = ""
        deadline = time.time() + 300
        while marker not in seen and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        time.sleep(1.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert marker in seen, seen
    ckpt = rd / "train" / "checkpoint.safetensors"
    before = ckpt.stat().st_mtime_ns
    done = run(config)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[train] complete, skipped" in done.stdout
    assert ckpt.stat().st_mtime_ns == before  # training was not redone
    for path in ["train/summary.json", "latency/cpu-torch.json", "predictors/report.json", "search/front.json",
                 "export/report.json", "export/model.onnx", "export/model.safetensors", "pipeline.json"]:
        assert (rd / path).exists(), path
    for path in rd.rglob("*.json"):
        json.loads(path.read_text())  # no corrupt (half-written) JSON anywhere
    assert not list(rd.rglob("*.tmp")), "temp files left behind"
    assert "Pareto front" in done.stdout and "sample:" in done.stdout
    again = run(config)
    assert again.returncode == 0
    for stage in ("train", "latency", "predictors", "search", "export"):
        assert f"[{stage}] complete, skipped" in again.stdout


def test_changed_search_section_reruns_search_and_export_only(tmp_path, text_dir):  # noqa: F811
    config = tiny_yaml(tmp_path, text_dir)
    assert run(config).returncode == 0
    cfg = yaml.safe_load(config.read_text())
    cfg["search"]["budget"] = 240
    config.write_text(yaml.safe_dump(cfg))
    out = run(config)
    assert out.returncode == 0, out.stderr[-2000:]
    for stage in ("train", "latency", "predictors"):
        assert f"[{stage}] complete, skipped" in out.stdout
    assert "[search] running" in out.stdout and "[export] running" in out.stdout
    assert json.loads((tmp_path / "run/search/summary.json").read_text())["candidates"] > 200


@pytest.mark.parametrize("bad", [{"search": {"engine": "magic"}}, {"trian": {}}])
def test_bad_config_fails_before_any_stage(tmp_path, text_dir, bad):  # noqa: F811
    config = tiny_yaml(tmp_path, text_dir)
    cfg = yaml.safe_load(config.read_text())
    for k, v in bad.items():
        cfg[k] = {**cfg.get(k, {}), **v} if k in cfg else v
    config.write_text(yaml.safe_dump(cfg))
    out = run(config)
    assert out.returncode == 2
    assert out.stderr.startswith("hwnas: error:") and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()
