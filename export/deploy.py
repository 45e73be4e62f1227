"""ONNX of a standalone subnet with dynamic batch and sequence axes, its int8 / int4 form, and
ONNX Runtime helpers (sessions, logits, validation loss).

The latency stage's deployment forms (`latency.modules`: fake-quantized weights folded in, stored
pre-transposed as 2-D matrices so ONNX Runtime's quantizers see plain `MatMul`s; MoE without the
data-dependent `continue`) are reused. Two of their attention kernels pad the sequence to a
multiple of a block (sliding window) or a chunk (linear attention) with Python arithmetic on the
length, which pins the length when exported; here they are written shape-polymorphically, with the
same math:

- sliding window: each query gathers its `window` keys from a front-padded copy (O(T x window)),
  instead of blocks of `window` queries against 2 x `window` keys;
- linear attention: the running (hs x hs+1) state as a cumulative sum over positions (O(T)),
  instead of chunks of `LINEAR_CHUNK` tokens.

The graph is exported with `torch.export` (the dynamo ONNX exporter) with `batch` and `seq` as
symbolic dimensions (seq in 1..block_size); `quantize` stores the arch's low-bit weights with the
latency stage's `quantize_onnx` (8 bits: per-channel int8 `DynamicQuantizeMatMul`; 4 bits:
block-wise int4 `MatMulNBits`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from hwnas.core.errors import HwnasError
from hwnas.latency.backends import quantize_onnx, quantized_weights
from hwnas.latency.modules import DeployAttention, DeployFFN, DeployNorm
from hwnas.supernet import ops
from hwnas.supernet.subnet import FFN, Attention, Norm, Subnet

INPUT, OUTPUT = "tokens", "logits"


class ExportError(HwnasError, ValueError):
    """An export that cannot be made or does not verify (parity, existing target, missing run files)."""


# --- shape-polymorphic attention kernels ------------------------------------------------------------
def window_attention_gather(q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
    """Causal sliding-window attention (token t sees t-window+1 .. t) for any length T: each query
    gathers its window of keys from a copy padded with window-1 empty keys in front."""
    B, nh, T, hs = q.shape
    w = window
    kp = F.pad(k, (0, 0, w - 1, 0))  # (B, nh, T+w-1, hs)
    vp = F.pad(v, (0, 0, w - 1, 0))
    slot = torch.arange(T, device=q.device).unsqueeze(1) + torch.arange(w, device=q.device)  # (T, w): padded positions
    kw, vw = kp[:, :, slot], vp[:, :, slot]  # (B, nh, T, w, hs)
    scores = torch.matmul(q.unsqueeze(-2), kw.transpose(-1, -2)).squeeze(-2) / math.sqrt(hs)  # (B, nh, T, w)
    scores = scores.masked_fill(slot < w - 1, float("-inf"))  # padding keys (before position 0)
    return torch.matmul(torch.softmax(scores, dim=-1).unsqueeze(-2), vw).squeeze(-2)  # (B, nh, T, hs)


def linear_attention_cumsum(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal linear attention (feature map elu+1) for any length T: the running state
    sum_{s<=t} k_s^T [v_s, 1] as a cumulative sum; the ones column carries the normalizer."""
    hs = q.shape[-1]
    q, k = F.elu(q) + 1, F.elu(k) + 1
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # (B, nh, T, hs+1)
    state = torch.cumsum(k.unsqueeze(-1) * v1.unsqueeze(-2), dim=2)  # (B, nh, T, hs, hs+1)
    out = torch.matmul(q.unsqueeze(-2), state).squeeze(-2)  # (B, nh, T, hs+1)
    return out[..., :hs] / out[..., hs:].clamp_min(ops.EPS)


class ExportAttention(DeployAttention):
    """`DeployAttention` (same weights, same quantization marks) with length-agnostic kernels."""

    def core(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.kind == "window":
            return window_attention_gather(q, k, v, self.window)
        if self.kind == "linear":
            return linear_attention_cumsum(q, k, v)
        return ops.softmax_attention(q, k, v)


_EXPORT_FORMS = {Attention: ExportAttention, FFN: DeployFFN, Norm: DeployNorm}


def export_form(subnet: Subnet) -> nn.Module:
    """A copy of `subnet` in export form: its attention, FFN and norm modules replaced by their
    deployment forms (weights fake-quantized once and folded in)."""
    out = copy.deepcopy(subnet).cpu().float()
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in _EXPORT_FORMS:
                setattr(parent, name, _EXPORT_FORMS[type(child)](child))
    return out.eval()


# --- ONNX -------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter warns and logs at length (missing torchvision ops, decomposition notes)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx_dynamic(subnet: Subnet, example: Tensor | None = None):
    """The fp32 ONNX model (`onnx.ModelProto`) of `subnet`: input `tokens` (batch, seq) int64,
    output `logits` (batch, seq, vocab) float32, seq in 1..block_size. Also returns the export form
    (its modules carry each layer's weight bits for `quantize`)."""
    block = subnet.dims.block_size
    form = export_form(subnet)
    if example is None:
        example = torch.randint(0, subnet.dims.vocab_size, (2, block), generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    seq = torch.export.Dim("seq", min=1, max=block)
    try:
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(form, (example.cpu(),), dynamo=True, optimize=True, input_names=[INPUT],
                                        output_names=[OUTPUT], dynamic_shapes=({0: batch, 1: seq},), verbose=False)
    except Exception as e:  # the exporter's errors are pages long; keep the first line
        raise ExportError(f"ONNX export of {subnet.arch.key()} failed: {str(e).strip().splitlines()[0]}") from e
    return program.model_proto, form


def low_bit_weights(form: nn.Module, full_precision_layers: str = "int8") -> dict[str, int]:
    """Weight name -> bits for `quantize`: each layer's attention and FFN matrices at the arch's
    bits (8 or 4); layers the arch keeps at 16 bits at 8 when `full_precision_layers` is "int8".
    Embeddings, the tied head, norms and MoE routers stay fp32."""
    bits = quantized_weights(form)
    if full_precision_layers == "int8":
        for prefix, m in form.named_modules():
            if isinstance(m, DeployAttention | DeployFFN) and m.weight_bits >= 16:
                bits.update({f"{prefix}.{n}": 8 for n, _ in m.named_parameters() if n != "router"})
    return bits


def quantize(model, weight_bits: dict[str, int], int4_block_size: int = 32):
    """A quantized copy of the model, the named MatMul weights in int8 / int4
    (`latency.backends.quantize_onnx`; its int4 pass edits the model it is given, hence the copy)."""
    import onnx

    model_copy = onnx.ModelProto()
    model_copy.CopyFrom(model)
    with tempfile.TemporaryDirectory(prefix="hwnas-export-") as tmp, _quiet():
        return quantize_onnx(model_copy, weight_bits, tmp, int4_block_size)


def op_counts(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def session(model, threads: int | None = None):
    """An ONNX Runtime CPU session of a model (a ModelProto, bytes, or a path)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    src = model.SerializeToString() if hasattr(model, "SerializeToString") else str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def run_session(sess, tokens: Tensor) -> np.ndarray:
    return sess.run([OUTPUT], {INPUT: np.ascontiguousarray(tokens.cpu().numpy().astype(np.int64))})[0]


def cross_entropy_sum(logits: np.ndarray | Tensor, targets: Tensor) -> float:
    logits = torch.as_tensor(logits).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").item()
