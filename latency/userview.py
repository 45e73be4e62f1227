"""Latency as a user measures it: a subnet built in a fresh process of its own, in its deployment
form, timed with a plain wall-clock loop (`protocol.plain_loop`: 30 warm-up runs, then 200; no
interleaving, no CPU-time clock, no stopping rule, nothing tuned before).

The tables time pieces and subnets by their own protocol (interleaved rounds, passes, the timing
thread's CPU clock, malloc thresholds pinned); what a user sees is the wall-clock time of a model
run in an ordinary process. This is that measurement, so a table can be scored against it
(the fidelity report's `user_view`, `experiments/bench/user_latency.py`). One such measurement
is itself noisy on a shared VM: the same subnet timed again in another fresh process repeated
within 10% of its median 50-95% of the time (BENCHMARKS.md, "Latency as users measure it").

Forms (`FORMS`): `torch` (`supernet.deploy.torch_deploy_copy`: real int8/int4 kernels, under
`torch.inference_mode`, in a process that changed no setting), `onnxruntime` (the form the
onnxruntime table times, `OnnxRuntimeBackend.to_onnx`, in a session of `threads` threads with the
options the export's `session` uses),
`torch pinned` (the torch form once glibc malloc's thresholds are pinned, as `hwnas.export.load`
and the tables' process do; timed after `torch` in the same process).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

WARMUP, RUNS = 30, 200
FORMS = ("torch", "onnxruntime", "torch pinned")


def time_as_a_user(space_json: dict[str, Any], arch_json: dict[str, Any], forms: Sequence[str], batch: int, seq: int,
                   threads: int, seed: int, int4_block_size: int = 32) -> dict[str, dict[str, float]]:
    """In this process (a fresh one: see `user_latency`): the subnet's run times in each of
    `forms`, ms by statistic (median, p90, p10, min)."""
    import torch

    from hwnas.search_space import ArchConfig, SearchSpaceConfig
    from hwnas.supernet import Supernet, extract_subnet
    from hwnas.supernet.deploy import torch_deploy_copy

    from .backends import OnnxRuntimeBackend, steady_allocator
    from .protocol import STATISTICS, plain_loop

    unknown = set(forms) - set(FORMS)
    if unknown:
        raise ValueError(f"forms: {sorted(unknown)} not among {', '.join(FORMS)}")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    subnet = extract_subnet(Supernet(SearchSpaceConfig(**space_json)), ArchConfig.from_dict(arch_json)).eval()
    tokens = torch.randint(0, subnet.dims.vocab_size, (batch, seq))
    out: dict[str, dict[str, float]] = {}

    def timed(fn) -> dict[str, float]:
        m = plain_loop(fn, WARMUP, RUNS)
        return {s: 1e3 * m.value(s) for s in STATISTICS}

    deployed = torch_deploy_copy(subnet, "cpu").eval() if {"torch", "torch pinned"} & set(forms) else None
    if "torch" in forms:
        with torch.inference_mode():
            out["torch"] = timed(lambda: deployed(tokens))
    if "onnxruntime" in forms:
        be = OnnxRuntimeBackend("cpu", threads, int4_block_size=int4_block_size)
        sess = be.session_for(be.to_onnx(subnet, (tokens,)))  # the session options of `hwnas.export.deploy.session`
        feeds = {sess.get_inputs()[0].name: tokens.numpy()}
        out["onnxruntime"] = timed(lambda: sess.run(None, feeds))
    if "torch pinned" in forms:
        steady_allocator()
        with torch.inference_mode():
            out["torch pinned"] = timed(lambda: deployed(tokens))
    return out


def user_latency(space_json: dict[str, Any], arch_json: dict[str, Any], forms: Sequence[str], batch: int, seq: int,
                 threads: int, seed: int, int4_block_size: int = 32) -> dict[str, dict[str, float]]:
    """`time_as_a_user` in a freshly spawned process: nothing this process built, allocated or
    tuned carries over."""
    from hwnas.core.isolate import run_isolated

    return run_isolated(time_as_a_user, space_json, arch_json, list(forms), batch, seq, threads, seed, int4_block_size)
