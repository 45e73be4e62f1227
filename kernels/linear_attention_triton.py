"""Triton half of `kernels.linear_attention`: the chunked causal linear-attention forward.

One program owns one (batch, head) and a block of value columns and walks the sequence chunk by
chunk: scores = phi(q_c) phi(k_c)^T (causally masked) give the in-chunk part, phi(q_c) S the part
from earlier chunks, and the states S += phi(k_c)^T v_c, z += sum phi(k_c) carry on in fp32
registers. q, k and v are read through four strides each, so the (B, nh, T, hs) views that
`qkv_project` returns (a transpose of one matmul's output) are not copied.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import INTERPRETED, dot_precision, row_sum


def autotune_configs():
    if INTERPRETED:
        return [triton.Config({"BLOCK_C": 16, "BLOCK_V": 16}, num_warps=4)]
    return [triton.Config({"BLOCK_C": c, "BLOCK_V": bv}, num_warps=w, num_stages=2)
            for c in (16, 32) for bv in (16, 32, 64, 128) for w in (2, 4, 8)]


def prune_configs(configs, named_args, **kwargs):
    """Keep value blocks no wider than the head, and tiles that fit in registers: fp32 elements a
    thread holds (state, q, k, scores, values, output) within a budget that ptxas meets without
    spilling on sm_90 (`python -m hwnas.kernels.compile_check --only "linear attention"`); 3xTF32
    products need about four times the registers of plain TF32 ones."""
    block_d = kwargs["BLOCK_D"]
    budget = 24 if kwargs["PRECISION"] == "tf32x3" else 96

    def per_thread(c):
        C, V = c.kwargs["BLOCK_C"], c.kwargs["BLOCK_V"]
        return (block_d * V + 2 * C * block_d + C * C + 2 * C * V) / (32 * c.num_warps)

    fits = [c for c in configs if c.kwargs["BLOCK_V"] <= block_d]
    kept = [c for c in fits if per_thread(c) <= budget]
    return kept or [min(fits or configs, key=per_thread)]


@triton.autotune(configs=autotune_configs(), key=["T", "HS", "BH", "PRECISION"], prune_configs_by={"early_config_prune": prune_configs})
@triton.jit
def linear_attention_fwd_kernel(
    Q, K, V, Out, T, HS, NH, BH,
    sqb, sqh, sqt, sqd, skb, skh, skt, skd, svb, svh, svt, svd, sob, soh, sot, sod,
    eps, PRECISION: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_V: tl.constexpr,
):
    bh, pv = tl.program_id(0), tl.program_id(1)
    b, h = bh // NH, bh % NH
    Q += b.to(tl.int64) * sqb + h * sqh
    K += b.to(tl.int64) * skb + h * skh
    V += b.to(tl.int64) * svb + h * svh
    Out += b.to(tl.int64) * sob + h * soh
    offs_c = tl.arange(0, BLOCK_C)
    offs_d = tl.arange(0, BLOCK_D)
    offs_v = pv * BLOCK_V + tl.arange(0, BLOCK_V)
    dmask, vmask = offs_d < HS, offs_v < HS
    causal = offs_c[:, None] >= offs_c[None, :]  # (C, C)
    S = tl.full((BLOCK_D, BLOCK_V), 0.0, tl.float32)  # sum over earlier chunks of phi(k)^T v
    z = tl.full((BLOCK_D,), 0.0, tl.float32)  # sum over earlier chunks of phi(k)
    for c0 in range(0, T, BLOCK_C):
        t = c0 + offs_c
        tmask = t < T
        qk_mask = tmask[:, None] & dmask[None, :]
        q = tl.load(Q + t[:, None] * sqt + offs_d[None, :] * sqd, mask=qk_mask, other=0.0).to(tl.float32)  # (C, D)
        k = tl.load(K + t[:, None] * skt + offs_d[None, :] * skd, mask=qk_mask, other=0.0).to(tl.float32)
        v = tl.load(V + t[:, None] * svt + offs_v[None, :] * svd, mask=tmask[:, None] & vmask[None, :],
                    other=0.0).to(tl.float32)  # (C, BV)
        q = tl.where(qk_mask, tl.where(q > 0, q + 1.0, tl.exp(q)), 0.0)  # elu + 1; padding is 0
        k = tl.where(qk_mask, tl.where(k > 0, k + 1.0, tl.exp(k)), 0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION)  # (C, C)
        s = tl.where(causal, s, 0.0)
        num = tl.dot(s, v, input_precision=PRECISION) + tl.dot(q, S, input_precision=PRECISION)  # (C, BV)
        den = row_sum(s, 1) + row_sum(q * z[None, :], 1)  # (C,)
        out = num / tl.maximum(den, eps)[:, None]
        tl.store(Out + t[:, None] * sot + offs_v[None, :] * sod, out.to(Out.dtype.element_ty),
                 mask=tmask[:, None] & vmask[None, :])
        S += tl.dot(tl.trans(k), v, input_precision=PRECISION)
        z += row_sum(k, 0)


def linear_attention_forward(q, k, v, eps):
    B, NH, T, HS = q.shape
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    if o.numel() == 0:
        return o
    block_d = max(16, triton.next_power_of_2(HS))
    grid = lambda meta: (B * NH, triton.cdiv(HS, meta["BLOCK_V"]))  # noqa: E731
    linear_attention_fwd_kernel[grid](
        q, k, v, o, T, HS, NH, B * NH, *q.stride(), *k.stride(), *v.stride(), *o.stride(), eps,
        PRECISION=dot_precision(q.dtype), BLOCK_D=block_d,
    )
    return o

