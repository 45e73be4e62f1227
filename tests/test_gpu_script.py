"""experiments/bench/gpu.py, the GPU proof in one command: its dry run (CPU, Triton interpreter, tiny
sizes) goes through every part and records each figure, so the script cannot rot while no GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "bench" / "gpu.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1"}


def gpu_py(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, env=ENV)


def test_the_dry_run_goes_through_every_part_and_records_its_figures(tmp_path):
    benchmarks = (SCRIPT.parents[2] / "BENCHMARKS.md").read_bytes()
    proc = gpu_py("--dry-run", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu.json").read_text())
    assert result["dry_run"] and set(result["parts"]) == {"tests", "kernels", "train", "latency"}
    assert not [p for p in result["parts"].values() if "error" in p]
    assert result["parts"]["tests"]["counts"] == ({"passed": 4} if torch.cuda.is_available() else {"skipped": 4})
    # every kernel was checked against its reference (a mismatch fails the part) and timed
    rows = result["parts"]["kernels"]["rows"]
    assert {r["kernel"] for r in rows} == {"layernorm", "layernorm + residual", "rmsnorm", "rmsnorm + residual", "dyt",
                                           "dyt + residual", "elastic linear", "int8 weight-only matmul",
                                           "int4 weight-only matmul", "linear attention"}
    assert all(r["us"]["triton"] > 0 and r["us"]["eager"] > 0 for r in rows)
    # both training runs (CPU twice on a dry run): same seed and batches, the same losses
    train = result["parts"]["train"]
    runs = train["runs"]
    assert set(runs) == {"cuda", "cpu"} and all(r["steps"] == 3 and r["batch_tokens_per_s"] > 0 for r in runs.values())
    assert train["bpb_cuda_minus_cpu"] == {"largest": 0.0, "smallest": 0.0}
    assert 0 < runs["cpu"]["val_bpb_largest"] < 9
    # the table and its fidelity report on held-out subnets
    lat = result["parts"]["latency"]
    (report,) = lat["reports"].values()
    assert lat["backends"] == ["torch"] and lat["n_fidelity"] == 4
    assert 0 <= report["within_10pct"] <= 1 and -1 <= report["kendall_tau"] <= 1
    text = (tmp_path / "gpu.md").read_text()
    for needle in ("Tests on this machine (tests/test_cuda.py): 4 skipped", "### Kernels on CPU (Triton interpreter)", "| elastic linear |", "batch tokens/s", "| cpu/torch | 4 |",
                   "Dry run"):
        assert needle in text, needle
    assert (SCRIPT.parents[2] / "BENCHMARKS.md").read_bytes() == benchmarks  # a dry run never writes there


def test_a_failed_part_is_recorded_and_the_others_still_run(tmp_path):
    (tmp_path / "train-cuda").write_text("a file where the first training run's folder goes\n")
    proc = gpu_py("--dry-run", "--out", str(tmp_path), "--parts", "train", "kernels")
    assert proc.returncode == 1, proc.stderr[-3000:]
    parts = json.loads((tmp_path / "gpu.json").read_text())["parts"]
    assert "error" in parts["train"] and "error" not in parts["kernels"] and parts["kernels"]["rows"]
    assert "Training: failed:" in (tmp_path / "gpu.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would run for real")
def test_without_a_gpu_the_real_run_measures_and_writes_nothing(tmp_path):
    proc = gpu_py("--out", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2 and "no CUDA GPU" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, needle", [
    (["--steps", "0"], "argument --steps: must be an integer in 1..100000000, got '0'"),
    (["--fidelity", "x"], "argument --fidelity: expected an integer in 0..100000, got 'x'"),
    (["--steps", "1000000000000"], "argument --steps: must be an integer in 1..100000000, got '1000000000000'"),
])
def test_bad_counts_are_refused_in_one_line(tmp_path, args, needle):
    proc = gpu_py("--dry-run", "--out", str(tmp_path / "out"), "--parts", "kernels", *args, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert needle in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out" / "gpu.json").exists()
