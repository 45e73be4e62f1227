"""Elastic linear: `x @ weight[:out, :in].T (+ bias[:out])` with the corner of the widest weight read
in place (the supernet's `corner(w, out, in)`), never copied to a contiguous tensor first.

A (G, O, I) weight (the supernet's stacked q/k/v weight) gives (G, ..., out), the batched product
of `supernet.ops.qkv_project`. `linear_reference` is the plain-torch twin and equals the
supernet's `F.linear(x, corner(w, out, in))` / `qkv_project` matmul exactly (a test checks it).
Forward and backward both run the Triton kernel (the weight gradient lands in the corner of a
full-size zero tensor, as autograd through a slice gives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .dispatch import needs_grad, triton_module, use_triton


def _corner(w: Tensor, rows: int, cols: int) -> Tensor:
    if w.shape[-2] == rows and w.shape[-1] == cols:
        return w
    return w[..., :rows, :cols]


def _sizes(x: Tensor, weight: Tensor, out_features: int | None, in_features: int | None,
           bias: Tensor | None) -> tuple[int, int]:
    if weight.ndim not in (2, 3):
        raise ValueError(f"weight must be (out, in) or (groups, out, in), got shape {tuple(weight.shape)}")
    out_f = weight.shape[-2] if out_features is None else int(out_features)
    in_f = x.shape[-1] if in_features is None else int(in_features)
    if not (0 < out_f <= weight.shape[-2] and 0 <= in_f <= weight.shape[-1] and in_f <= x.shape[-1]):
        raise ValueError(f"out_features={out_f}, in_features={in_f} do not fit weight {tuple(weight.shape)} "
                         f"and input width {x.shape[-1]}")
    if bias is not None and (weight.ndim == 3 or bias.shape[0] < out_f):
        raise ValueError("bias must be 1-d of width >= out_features, and only with a 2-d weight")
    return out_f, in_f


def linear_reference(x: Tensor, weight: Tensor, out_features: int | None = None, in_features: int | None = None,
                     bias: Tensor | None = None) -> Tensor:
    """The plain-torch twin of `elastic_linear` (same arguments and result)."""
    out_f, in_f = _sizes(x, weight, out_features, in_features, bias)
    x = x if in_f == x.shape[-1] else x[..., :in_f]
    w = _corner(weight, out_f, in_f)
    if weight.ndim == 2:
        return F.linear(x, w, None if bias is None else bias[:out_f])
    lead = x.shape[:-1]
    y = torch.matmul(x.reshape(1, -1, in_f), w.transpose(1, 2))  # (G, rows, out), as qkv_project
    return y.view(weight.shape[0], *lead, out_f)


class _ElasticLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, out_f, in_f):
        ctx.save_for_backward(x, weight)
        ctx.sizes = (out_f, in_f)
        return triton_module("linear").linear_forward(x, weight, out_f, in_f, bias)

    @staticmethod
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gx, gw, gb = triton_module("linear").linear_backward(gy, x, weight, *ctx.sizes, need_x, need_w, need_b)
        return gx, gw, gb, None, None


def elastic_linear(x: Tensor, weight: Tensor, out_features: int | None = None, in_features: int | None = None,
                   bias: Tensor | None = None, backend: str = "auto") -> Tensor:
    """y = x[..., :in] @ weight[:out, :in].T (+ bias[:out]): (..., out), or (G, ..., out) for a
    (G, O, I) weight. Defaults: out = all rows of the weight, in = x's width.

    Reads the slice in place through the weight's strides. Differentiable (Triton backward).
    Triton vs reference, fp32: relative error ~1e-6 (tested at rtol 1e-5, atol 1e-5; exact fp32
    products in the interpreter, 3xTF32 on CUDA unless torch allows TF32); bf16/fp16 inputs
    accumulate in fp32.
    """
    out_f, in_f = _sizes(x, weight, out_features, in_features, bias)
    if not use_triton(backend, x, weight, bias) or x.dtype != weight.dtype or (bias is not None and bias.dtype != x.dtype):
        return linear_reference(x, weight, out_f, in_f, bias)
    if needs_grad(x, weight, bias):
        return _ElasticLinearFn.apply(x, weight, bias, out_f, in_f)
    return triton_module("linear").linear_forward(x, weight, out_f, in_f, bias)
