"""Causal linear attention, chunked: feature map elu+1, exact attention inside a chunk and a running
(hs x hs) state plus (hs,) normalizer state across chunks, so the cost is O(T).

    out_t = sum_{s<=t} phi(q_t).phi(k_s) v_s / max(sum_{s<=t} phi(q_t).phi(k_s), eps)

`linear_attention_reference` is `supernet.ops.linear_attention` with the chunk length as an argument
(the same code: at `chunk=LINEAR_CHUNK` the two are bit-identical, a test checks it), including its
ones-column trick for the normalizer. The Triton kernel walks the chunks of one (batch, head) in a
program, keeping both states in registers; it computes the normalizer as row sums rather than
through a ones column (same math, different rounding).

Forward only (inference and latency measurement): where autograd needs a gradient, `backend="auto"`
runs the reference, and `backend="triton"` raises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hwnas.search_space import LINEAR_CHUNK

from .dispatch import KernelUnavailable, needs_grad, triton_module, use_triton

EPS = 1e-5


def linear_attention_reference(q: Tensor, k: Tensor, v: Tensor, chunk: int = LINEAR_CHUNK) -> Tensor:
    """q, k, v (B, nh, T, hs) -> (B, nh, T, hs); the code of `supernet.ops.linear_attention`."""
    B, nh, T, hs = q.shape
    c = min(chunk, T) if isinstance(T, int) else chunk  # (a symbolic length, an exported graph's: whole chunks)
    n = (T + c - 1) // c
    pad = n * c - T
    q, k = F.elu(q) + 1, F.elu(k) + 1
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)  # (B, nh, T, hs+1)
    qc = F.pad(q, (0, 0, 0, pad)).view(B, nh, n, c, hs)
    kc = F.pad(k, (0, 0, 0, pad)).view(B, nh, n, c, hs)  # padded keys are 0: they add nothing
    vc = F.pad(v1, (0, 0, 0, pad)).view(B, nh, n, c, hs + 1)
    scores = torch.matmul(qc, kc.transpose(-1, -2))  # (B, nh, n, c, c)
    causal = torch.ones(c, c, dtype=torch.bool, device=q.device).tril()
    intra = torch.matmul(scores.masked_fill(~causal, 0.0), vc)  # (B, nh, n, c, hs+1)
    kv = torch.matmul(kc.transpose(-1, -2), vc)  # (B, nh, n, hs, hs+1)
    state = torch.cumsum(kv, dim=2) - kv  # sum over earlier chunks only
    out = intra + torch.matmul(qc, state)  # (B, nh, n, c, hs+1)
    out = out.reshape(B, nh, n * c, hs + 1)[:, :, :T]
    return out[..., :hs] / out[..., hs:].clamp_min(EPS)


def linear_attention(q: Tensor, k: Tensor, v: Tensor, chunk: int = LINEAR_CHUNK, backend: str = "auto") -> Tensor:
    """Causal linear attention of q, k, v (B, nh, T, hs) -> (B, nh, T, hs) in q's dtype.

    q, k, v are read through their strides (the transposed views `qkv_project` returns need no
    copy). `chunk` is the reference's chunk length; the Triton kernel autotunes its own (16 or 32:
    a blocking choice, the result does not depend on it beyond rounding). Forward only (see module doc).
    Triton vs reference: fp32 max abs error ~1e-6 for unit-scale inputs (tested at atol 1e-5,
    rtol 1e-4, the tolerance of the supernet's own token-by-token check).
    """
    if q.ndim != 4 or k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k, v must share one (B, nh, T, hs) shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if not use_triton(backend, q, k, v):
        return linear_attention_reference(q, k, v, chunk)
    if needs_grad(q, k, v):
        if backend == "auto":
            return linear_attention_reference(q, k, v, chunk)
        raise KernelUnavailable("the Triton linear attention is forward only; run it under torch.no_grad() "
                                "or use backend='auto' to differentiate through the reference")
    return triton_module("linear_attention").linear_attention_forward(q, k, v, EPS)
