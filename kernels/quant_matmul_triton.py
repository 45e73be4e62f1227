"""Triton half of `kernels.quant_matmul`: y = (x @ codes.T) * scale with int8 or packed int4 codes.

Weight-only quantization pays off where the matmul is memory-bound (decode: a few rows of x), so
the tiles are skinny in M and the weight stream is what each program pipelines: int8 halves and
int4 quarters the bytes of a bf16 weight. The codes are widened to x's dtype in registers (int4:
two nibbles a byte, interleaved back into column order with `tl.join`), fed to `tl.dot` with fp32
accumulation, and the per-channel scale is applied once at the end. fp32 activations are split into
three bf16 parts (hi + mid + lo, 24 bits of mantissa between them), each multiplied by the exact
codes, so they keep about fp32 accuracy on bf16 tensor cores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import INTERPRETED


def autotune_configs():
    if INTERPRETED:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32}, num_warps=4)]
    cfg = lambda m, n, k, s, w: triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k},  # noqa: E731
                                              num_stages=s, num_warps=w)
    # decode: 16-row tiles, many programs along N, deep weight pipelines; at most 64 weight elements
    # a thread (more spills on sm_90: `python -m hwnas.kernels.compile_check --all-configs --only int`)
    decode = [cfg(16, n, k, s, w) for n in (16, 32, 64) for k in (128, 256, 512) for s in (3, 4, 5) for w in (2, 4, 8)
              if n * k <= 64 * 32 * w and n * k >= 8 * 32 * w]
    mid = [cfg(32, 64, 128, 4, 4), cfg(64, 64, 64, 4, 4), cfg(64, 128, 64, 4, 4)]
    large = [cfg(128, 128, 64, 4, 8), cfg(128, 256, 64, 3, 8), cfg(128, 64, 64, 4, 4)]
    return decode + mid + large


def prune_configs(configs, named_args, **kwargs):
    """Row tiles by M (16 for decode, 32/64 for small batches, 128 for prefill); for fp32 activations
    (split in three) at most 16 x 128 activation tiles, larger ones spill on sm_90."""
    M = named_args["M"]
    want = 16 if M <= 16 else 64 if M <= 64 else 128
    by_rows = [c for c in configs if c.kwargs["BLOCK_M"] == want or (want == 64 and c.kwargs["BLOCK_M"] == 32)]
    if named_args["X"].dtype == torch.float32:
        by_rows = [c for c in by_rows if c.kwargs["BLOCK_K"] <= 128 and (c.kwargs["BLOCK_M"] <= 16 or c.kwargs["BLOCK_K"] <= 64)] or by_rows
    return by_rows or configs[:1]


@triton.autotune(configs=autotune_configs(), key=["M", "N", "K", "BITS"], prune_configs_by={"early_config_prune": prune_configs})
@triton.jit
def wq_matmul_kernel(
    X, Q, S, Y, M, N, K, sxm, sxk, sqn, sqk, sym, syn,
    BITS: tl.constexpr, DOT_FP32: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_n, pid_m = tl.program_id(0), tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm, rn = offs_m % M, offs_n % N  # wrapped: loads stay in bounds, the store masks
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, (K + BLOCK_K - 1) // BLOCK_K):
        offs_k = k0 * BLOCK_K + tl.arange(0, BLOCK_K)
        x = tl.load(X + rm[:, None] * sxm + offs_k[None, :] * sxk, mask=offs_k[None, :] < K, other=0.0)  # (BM, BK)
        if BITS == 8:
            w = tl.load(Q + rn[:, None] * sqn + offs_k[None, :] * sqk, mask=offs_k[None, :] < K, other=0)  # (BN, BK)
        else:
            offs_b = k0 * (BLOCK_K // 2) + tl.arange(0, BLOCK_K // 2)
            b = tl.load(Q + rn[:, None] * sqn + offs_b[None, :] * sqk, mask=offs_b[None, :] < (K + 1) // 2,
                        other=0).to(tl.int32)  # (BN, BK/2)
            lo = (b & 15) - 8  # column 2j
            hi = (b >> 4) - 8  # column 2j + 1
            w = tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_K))  # interleaved back: (BN, BK)
        # codes to 16-bit floats (exact: |code| <= 127), via fp32: the interpreter's int -> bf16 is broken
        w = tl.trans(w.to(tl.float32).to(tl.float16 if X.dtype.element_ty == tl.float16 else tl.bfloat16))  # (BK, BN)
        if DOT_FP32:  # the interpreter's 16-bit dot multiplies bit patterns; fp32 products of them are exact
            w = w.to(tl.float32)
        # x beyond K is 0, so padded codes add nothing
        if X.dtype.element_ty == tl.float32:  # x = hi + mid + lo in bf16: three exact-weight products ~ fp32
            hi = x.to(tl.bfloat16)
            r = x - hi.to(tl.float32)
            mid = r.to(tl.bfloat16)
            lo = (r - mid.to(tl.float32)).to(tl.bfloat16)
            if DOT_FP32:
                hi, mid, lo = hi.to(tl.float32), mid.to(tl.float32), lo.to(tl.float32)
            acc = tl.dot(hi, w, acc)
            acc = tl.dot(mid, w, acc)
            acc = tl.dot(lo, w, acc)
        else:
            if DOT_FP32:
                x = x.to(tl.float32)
            acc = tl.dot(x, w, acc)
    scale = tl.load(S + rn).to(tl.float32)
    acc = acc * scale[None, :]
    y_ptrs = Y + offs_m[:, None] * sym + offs_n[None, :] * syn
    tl.store(y_ptrs, acc.to(Y.dtype.element_ty), mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


def quant_matmul_forward(x: torch.Tensor, qweight) -> torch.Tensor:
    lead = x.shape[:-1]
    K, N = qweight.in_features, qweight.out_features
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M and N:
        q = qweight.data
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(M, meta["BLOCK_M"]))  # noqa: E731
        wq_matmul_kernel[grid](x2, q, qweight.scale, y, M, N, K, x2.stride(0), x2.stride(1), q.stride(0), q.stride(1),
                         y.stride(0), y.stride(1), BITS=qweight.bits, DOT_FP32=INTERPRETED)
    return y.view(*lead, N)
