"""Fused elastic norm: LayerNorm, RMSNorm or Dynamic Tanh over the first `d` features, with the
weights of the widest supernet width read in place (no slice is copied), optionally fused with the
residual add that precedes the norm in a pre-/post-norm block.

    y = norm(x[..., :d])                      with weight[:d] (and bias[:d])
    h = x[..., :d] + residual; y = norm(h)    with `residual`: returns (y, h)

`norm_reference` is the plain-torch twin; it computes exactly `hwnas.supernet.ops.norm` on the
sliced weights (same calls, same order), which a test checks. The Triton forward accumulates in
fp32 (one pass over each row held in registers); the backward recomputes the reference under
autograd, so gradients are those of the supernet's own ops (the weight gradient has the full width,
zero past `d`, as the gradient of a slice does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .dispatch import needs_grad, triton_module, use_triton

EPS = 1e-5
NORM_KINDS = ("layernorm", "rmsnorm", "dyt")
MAX_TRITON_WIDTH = 32768  # a row lives in registers; wider rows run the reference


def _first(p: Tensor | None, n: int) -> Tensor | None:
    return p if p is None or p.ndim == 0 or p.shape[0] == n else p[:n]


def _check(kind: str, x: Tensor, weight: Tensor, bias: Tensor | None, alpha: Tensor | None, d: int,
           residual: Tensor | None) -> None:
    if kind not in NORM_KINDS:
        raise ValueError(f"norm kind {kind!r} is not one of {', '.join(NORM_KINDS)}")
    if not 0 < d <= x.shape[-1] or d > weight.shape[0]:
        raise ValueError(f"d={d} must be in 1..min(x width {x.shape[-1]}, weight width {weight.shape[0]})")
    if kind == "rmsnorm" and bias is not None:
        raise ValueError("rmsnorm takes no bias")
    if (kind == "dyt" or bias is not None) and (bias is None or bias.shape[0] < d):
        raise ValueError(f"{kind} needs a bias of width >= {d}")
    if kind == "dyt" and (alpha is None or alpha.numel() != 1):
        raise ValueError("dyt needs a scalar alpha")
    if residual is not None and residual.shape != (*x.shape[:-1], d):
        raise ValueError(f"residual shape {tuple(residual.shape)} != {(*x.shape[:-1], d)}")


def norm_reference(kind: str, x: Tensor, weight: Tensor, bias: Tensor | None = None, alpha: Tensor | None = None,
                   d: int | None = None, residual: Tensor | None = None, eps: float = EPS):
    """The plain-torch twin of `elastic_norm` (same arguments and returns)."""
    d = x.shape[-1] if d is None else d
    x = x if d == x.shape[-1] else x[..., :d]
    h = x if residual is None else x + residual
    weight, bias = _first(weight, d), _first(bias, d)
    if kind == "layernorm":
        y = F.layer_norm(h, (d,), weight, bias, eps)
    elif kind == "rmsnorm":
        y = F.rms_norm(h, (d,), weight, eps)
    elif kind == "dyt":
        y = torch.addcmul(bias, weight, torch.tanh(alpha * h))
    else:
        raise ValueError(f"norm kind {kind!r} is not one of {', '.join(NORM_KINDS)}")
    return y if residual is None else (y, h)


class _ElasticNormFn(torch.autograd.Function):
    """Triton forward; backward by autograd through `norm_reference` recomputed from the inputs."""

    @staticmethod
    def forward(ctx, kind, x, weight, bias, alpha, residual, d, eps):
        y, h = triton_module("norm").norm_forward(kind, x, weight, bias, alpha, d, residual, eps)
        ctx.kind, ctx.d, ctx.eps = kind, d, eps
        ctx.save_for_backward(x, weight, bias, alpha, residual)
        return y if residual is None else (y, h)

    @staticmethod
    def backward(ctx, gy, gh=None):
        saved = ctx.saved_tensors
        wanted = ctx.needs_input_grad[1:6]  # x, weight, bias, alpha, residual
        inputs = [t.detach().requires_grad_(w) if t is not None else None for t, w in zip(saved, wanted, strict=True)]
        with torch.enable_grad():
            out = norm_reference(ctx.kind, *inputs[:4], d=ctx.d, residual=inputs[4], eps=ctx.eps)
        outs, grads = ((out,), (gy,)) if inputs[4] is None else (out, (gy, gh))
        req = [t for t in inputs if t is not None and t.requires_grad]
        got = iter(torch.autograd.grad(outs, req, grads, allow_unused=True)) if req else iter(())
        result = [next(got) if t is not None and t.requires_grad else None for t in inputs]
        return (None, *result, None, None)


def elastic_norm(kind: str, x: Tensor, weight: Tensor, bias: Tensor | None = None, alpha: Tensor | None = None,
                 d: int | None = None, residual: Tensor | None = None, eps: float = EPS, backend: str = "auto"):
    """Norm `kind` ("layernorm", "rmsnorm", "dyt") over the first `d` features of x (default: all).

    x (..., D) with d <= D (read in place through its row stride when its last dim is contiguous);
    weight, bias (d_max,) with d <= d_max, read in place; alpha a scalar tensor (DyT only);
    residual (..., d) or None. Returns y (..., d) in x's dtype, or (y, h) with h = x[..., :d] + residual
    when a residual is given (the fused residual add of a pre-/post-norm block).
    Differentiable (Triton forward, reference backward). Triton vs reference, fp32: max abs error
    <= 1e-5 for LayerNorm/RMSNorm of unit-scale inputs, <= 1e-6 for DyT.
    """
    d = x.shape[-1] if d is None else int(d)
    if alpha is not None and not torch.is_tensor(alpha):
        alpha = torch.tensor(float(alpha), device=x.device)
    _check(kind, x, weight, bias, alpha, d, residual)
    if not use_triton(backend, x, weight, bias, alpha, residual) or d > MAX_TRITON_WIDTH:
        return norm_reference(kind, x, weight, bias, alpha, d, residual, eps)
    if needs_grad(x, weight, bias, alpha, residual):
        return _ElasticNormFn.apply(kind, x, weight, bias, alpha, residual, d, eps)
    y, h = triton_module("norm").norm_forward(kind, x, weight, bias, alpha, d, residual, eps)
    return y if residual is None else (y, h)
