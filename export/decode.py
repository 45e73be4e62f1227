"""The exported model's decoding step as ONNX: `model.decode.onnx` (and its int8 / int4 form) takes
the new tokens, their first position and each attention layer's cache, and returns the logits and
the updated cache, so a runtime generates token by token without recomputing the context.

Inputs: `tokens` (batch, seq) int64, `pos` () int64, then per layer `past_k.<i>` / `past_v.<i>`
(batch, heads, past, head_dim) for softmax and sliding-window attention (past: 0 at the start; a
window keeps at most window-1) or `state.<i>` (batch, heads, head_dim, head_dim + 1) for linear
attention (zeros at the start). Outputs: `logits` (batch, seq, vocab), then `present_k.<i>` /
`present_v.<i>` / `new_state.<i>` in the same order, to feed back as the next step's inputs. The math
is `supernet.decode`'s (the same functions), checked against torch in the tests.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from hwnas.supernet.decode import DecodeCache, DecodeStep
from hwnas.supernet.deploy import export_form
from hwnas.supernet.subnet import Subnet


def cache_names(arch, prefix: tuple[str, str, str]) -> list[str]:
    """Per layer, the names of its cache tensors: (k, v) names for softmax and window, a state name for linear."""
    k, v, s = prefix
    names: list[str] = []
    for i, layer in enumerate(arch.layers):
        names += [f"{s}.{i}"] if layer.attention == "linear" else [f"{k}.{i}", f"{v}.{i}"]
    return names


def input_names(arch) -> list[str]:
    return ["tokens", "pos", *cache_names(arch, ("past_k", "past_v", "state"))]


def output_names(arch) -> list[str]:
    return ["logits", *cache_names(arch, ("present_k", "present_v", "new_state"))]


def decode_form(subnet: Subnet) -> DecodeStep:
    """`subnet` in export form (weights quantized once and folded in) as a
    decoding step with the position and the caches as inputs (`supernet.decode.DecodeStep`)."""
    return DecodeStep(export_form(subnet)).eval()


def export_decode_onnx(subnet: Subnet):
    """The fp32 decoding-step ONNX model (`onnx.ModelProto`) of `subnet`, and its `decode_form`
    (whose modules carry the weight bits `deploy.quantize` reads). Exported with torch.export (the
    dynamo exporter) with batch, seq and each cache's past length (0 at the start) as dynamic dims."""
    from .deploy import ExportError, quiet_exporter

    form = decode_form(subnet.cpu().float())
    arch = subnet.arch
    try:
        with quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(form, form.trace_inputs(), dynamo=True, optimize=True, input_names=input_names(arch),
                                        output_names=output_names(arch), dynamic_shapes=form.dynamic_shapes(), verbose=False)
    except Exception as e:  # the exporter's errors are pages long; keep the first line
        raise ExportError(f"ONNX export of the decoding step of {arch.key()} failed: {str(e).strip().splitlines()[0]}") from e
    return program.model_proto, form


def onnx_decode(sess, form: DecodeStep, prompt: Tensor, steps: int) -> tuple[np.ndarray, list[int]]:
    """Greedy decoding with an ONNX Runtime session of the decoding step: the prompt (1, P) read in
    one call, then `steps` single-token calls, each feeding back the token chosen last. Returns the
    logits of every position read (P + steps, vocab) and the `steps` tokens fed back."""
    feeds_past = [t.numpy() for t in form.caches(prompt.shape[0], 0)]
    names_in, n_out = input_names(form.arch), len(output_names(form.arch))
    tokens, pos, rows, chosen = prompt.numpy().astype(np.int64), 0, [], []
    for _ in range(steps + 1):
        out = sess.run(None, dict(zip(names_in, [tokens, np.array(pos, dtype=np.int64), *feeds_past], strict=True)))
        rows.append(out[0][0])
        pos += tokens.shape[1]
        feeds_past = out[1:n_out]
        nxt = int(out[0][0, -1].argmax())
        chosen.append(nxt)
        tokens = np.array([[nxt]], dtype=np.int64)
    return np.concatenate(rows, axis=0)[:prompt.shape[1] + steps], chosen[:steps]


# --- timing -----------------------------------------------------------------------------------------
def _median(xs: list[float]) -> float:
    return float(np.median(np.asarray(xs)))


def _timed_runs(run, repeats: int) -> dict[str, float]:
    """`run()` -> (prefill seconds, seconds per decoded token); one warm-up, then the medians of `repeats`."""
    run()
    prefill, per_token = zip(*(run() for _ in range(repeats)), strict=True)
    return {"prefill_ms": 1e3 * _median(list(prefill)), "decode_ms_per_token": 1e3 * _median(list(per_token)),
            "tokens_per_s": 1.0 / max(_median(list(per_token)), 1e-12)}


def _torch_run(model, prompt: Tensor, steps: Tensor):
    import time

    @torch.no_grad()
    def run() -> tuple[float, float]:
        cache = DecodeCache.of(model)
        t0 = time.perf_counter()
        model(prompt, cache=cache)
        t1 = time.perf_counter()
        for i in range(steps.shape[1]):
            model(steps[:, i:i + 1], cache=cache)
        return t1 - t0, (time.perf_counter() - t1) / steps.shape[1]

    return run


def _onnx_run(sess, form: DecodeStep, prompt: Tensor, steps: Tensor):
    import time

    names, n_out = input_names(form.arch), len(output_names(form.arch))
    first = [prompt.numpy().astype(np.int64)] + [steps[:, i:i + 1].numpy().astype(np.int64) for i in range(steps.shape[1])]

    def run() -> tuple[float, float]:
        past, pos, stamps = [t.numpy() for t in form.caches(1, 0)], 0, [time.perf_counter()]
        for tokens in first:
            out = sess.run(None, dict(zip(names, [tokens, np.array(pos, dtype=np.int64), *past], strict=True)))
            past, pos = out[1:n_out], pos + tokens.shape[1]
            stamps.append(time.perf_counter())
        return stamps[1] - stamps[0], (stamps[-1] - stamps[1]) / steps.shape[1]

    return run


def measure_decode(subnet: Subnet, graphs: dict[str, bytes], context: int, new_tokens: int, threads: int | None,
                   repeats: int = 5, seed: int = 0) -> dict[str, Any]:
    """Prefill ms (a prompt of `context` tokens) and decoding ms per token (`new_tokens` more, one per
    call, each over the cache) on this machine: eager torch as it deploys (8/4-bit layers on real
    low-bit kernels, `torch_deploy_copy`) and ONNX Runtime on each decoding graph in `graphs`
    ({file name: serialized model}). Medians of `repeats` runs after a warm-up; batch 1."""
    from hwnas.supernet.deploy import torch_deploy_copy

    from .deploy import session

    if threads:
        torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, subnet.dims.vocab_size, (1, context + new_tokens), generator=gen)
    prompt, steps = tokens[:, :context], tokens[:, context:]
    rows = [{"runtime": "torch", "file": "model.safetensors (real low-bit kernels)",
             **_timed_runs(_torch_run(torch_deploy_copy(subnet.cpu().float().eval()), prompt, steps), repeats)}]
    form = decode_form(subnet)
    for name, graph in graphs.items():
        rows.append({"runtime": "onnxruntime", "file": name,
                     **_timed_runs(_onnx_run(session(graph, threads), form, prompt, steps), repeats)})
    return {"context": context, "new_tokens": new_tokens, "batch_size": 1, "threads": threads or torch.get_num_threads(),
            "repeats": repeats, "rows": rows}


def decode_table_rows(run_dir, subnet: Subnet, graphs: dict[str, bytes], threads: int | None, max_seconds: float | None,
                      seed: int = 0) -> dict[str, Any]:
    """The run's decode tables (`latency.workloads: [decode]`) against the exported model: one
    decoding step at the table's context, timed with each table's protocol, threads and statistic
    (torch: the exported weights on real low-bit kernels, as the table times them; ONNX Runtime: the
    table's own form, then each exported decoding graph at the same context), with the table's
    prediction beside it. {"rows": [...], "notes": [...]}; no rows without a decode table."""
    from hwnas.latency.backends import backend_class
    from hwnas.latency.session import TableTiming, add_ratios, decode_step

    from .deploy import session

    rows, notes = [], []
    for backend in ("torch", "onnxruntime"):
        timing = TableTiming(run_dir, "cpu", backend, subnet.dims.block_size, threads, max_seconds, workload="decode")
        notes += timing.notes
        if timing.table is None:
            continue
        context, stat = timing.workload["context"], timing.statistic
        step, inputs = decode_step(subnet.cpu().float().eval(), context, timing.workload["batch_size"],
                                   backend_class(backend).position_input, seed)
        foreign = timing.foreign_note(subnet.arch)  # predicts another machine: nothing here compares
        notes += [foreign] if foreign else []
        base = {"backend": backend, "context": context, "batch_size": timing.workload["batch_size"], "threads": timing.threads,
                "statistic": stat, "predicted_ms": None if foreign else timing.predict_ms(subnet.arch),
                **({} if foreign else timing.anchored_prediction(subnet.arch))}
        label = "model.safetensors (real low-bit kernels)" if backend == "torch" else "the table's form (its bits)"
        rows.append({**base, "model": label, "measured_ms": 1e3 * timing.time_module(step, inputs).value(stat)})
        if backend == "onnxruntime":
            feeds_in = [t.numpy() for t in inputs]  # tokens, the position, the caches: the exported graph's inputs
            for name, graph in graphs.items():
                sess = session(graph, timing.threads)
                feeds = dict(zip(input_names(subnet.arch), feeds_in, strict=True))
                m = timing.time_call(lambda s=sess, f=feeds: s.run(None, f))
                rows.append({**base, "model": name, "measured_ms": 1e3 * m.value(stat)})
    return {"rows": add_ratios(rows), "notes": notes}


def time_decoding(run_dir, subnet: Subnet, graphs: dict[str, bytes], context: int, new_tokens: int, threads: int | None,
                  cfg) -> tuple[dict[str, Any], dict[str, Any]]:
    """`measure_decode`, then `decode_table_rows` (an `ExportConfig` `cfg` gives their threads, cap and
    seed), in the one process the export spawns for them."""
    timing = measure_decode(subnet, graphs, context, new_tokens, threads, seed=cfg.seed)
    return timing, decode_table_rows(run_dir, subnet, graphs, cfg.threads, cfg.latency_max_seconds, cfg.seed)
