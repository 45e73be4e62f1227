"""ONNX of a standalone subnet with dynamic batch and sequence axes, its int8 / int4 form, and
ONNX Runtime helpers (sessions, logits, validation loss).

The latency stage's deployment forms (`supernet.deploy`: fake-quantized weights folded in, stored
pre-transposed as 2-D matrices so ONNX Runtime's quantizers see plain `MatMul`s; MoE without the
data-dependent `continue`) are what is exported, kernels included: blocked sliding-window attention
and chunked linear attention count their blocks and chunks from the length with integer arithmetic
that stays symbolic under `torch.export`, so the exported graph takes any length and runs the forms
the latency tables time (an earlier per-query gather form of sliding-window attention ran 8.8x
slower than the blocked one at 512 tokens in ONNX Runtime).

The graph is exported with `torch.export` (the dynamo ONNX exporter) with `batch` and `seq` as
symbolic dimensions (seq in 1..block_size); `quantize` stores the arch's low-bit weights with the
latency stage's `quantize_onnx` (8 bits: per-channel int8 `DynamicQuantizeMatMul`; 4 bits:
block-wise int4 `MatMulNBits`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from hwnas.core.errors import HwnasError
from hwnas.latency.backends import quantize_onnx, quantized_weights, quiet_exporter
from hwnas.supernet.deploy import DeployAttention, DeployFFN, export_form
from hwnas.supernet.subnet import Subnet

INPUT, OUTPUT = "tokens", "logits"


class ExportError(HwnasError, ValueError):
    """An export that cannot be made or does not verify (parity, existing target, missing run files)."""


# --- ONNX -------------------------------------------------------------------------------------------


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
        with quiet_exporter(), torch.no_grad():
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
    with tempfile.TemporaryDirectory(prefix="hwnas-export-") as tmp, quiet_exporter():
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
