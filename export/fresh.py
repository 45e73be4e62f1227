"""The exported model's latency as its user sees it: loaded the documented way in a fresh process
and timed with a plain wall-clock loop (`latency.protocol.plain_loop`: no interleaving, no CPU-time
clock, no stopping rule), set beside the latency tables' median and p90 predictions.

The export stage runs this on the written files before it commits them: `hwnas.export.load(folder,
real_kernels=True, threads=T)` for torch (the torch table's form, with the process settings the
tables measured under) and `hwnas.export.deploy.session(file, threads=T)` for ONNX Runtime, on the
model file whose layers carry the arch's own bits (the form the onnxruntime table times).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hwnas.latency.userview import RUNS, WARMUP  # timed as `latency.userview` times subnets


def fresh_latency(folder: Path, onnx_file: str | None, threads: int, batch_size: int, seq_len: int, seed: int,
                  max_seconds: float = 20.0) -> dict[str, Any]:
    """`_fresh_latency` in a freshly spawned process: nothing this process allocated or tuned
    (allocator, threads, caches) carries over."""
    from hwnas.core.isolate import run_isolated

    return run_isolated(_fresh_latency, Path(folder), onnx_file, threads, batch_size, seq_len, seed, max_seconds)


def _fresh_latency(folder: Path, onnx_file: str | None, threads: int, batch_size: int, seq_len: int, seed: int,
                   max_seconds: float) -> dict[str, Any]:
    import torch

    from hwnas.latency.protocol import plain_loop

    from .deploy import INPUT, session
    from .standalone import load

    def row(m, how: str) -> dict[str, Any]:
        return {"how": how, "median_ms": 1e3 * m.median, "p90_ms": 1e3 * m.p90, "min_ms": 1e3 * m.min, "runs": m.n,
                "complete": m.stable}

    out: dict[str, Any] = {"threads": threads, "warmup": WARMUP, "runs": RUNS, "clock": "wall (time.perf_counter)"}
    model = load(folder / "model.safetensors", real_kernels=True, threads=threads)
    tokens = torch.randint(0, model.dims.vocab_size, (batch_size, seq_len), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        m = plain_loop(lambda: model(tokens), WARMUP, RUNS, max_seconds)
    out["torch"] = row(m, f"load(folder, real_kernels=True, threads={threads}), under torch.inference_mode()")
    if onnx_file:
        sess = session(folder / onnx_file, threads)
        feeds = {INPUT: tokens.numpy()}
        m = plain_loop(lambda: sess.run(None, feeds), WARMUP, RUNS, max_seconds)
        out["onnxruntime"] = row(m, f"session('{onnx_file}', threads={threads})")
    return out
