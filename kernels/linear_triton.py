"""Triton half of `kernels.linear`: one strided, tiled matmul C = A @ B (+ bias) that reads its
operands where they lie, so `weight[:out, :in]` of the widest weight is never copied.

A[m, k] = A_ptr[m * sam + k * sak], B[k, n] = B_ptr[k * sbk + n * sbn], C likewise: the forward
(x @ W[:out, :in].T), both backward products (dY @ W[:out, :in] and dY.T @ x, the latter written
straight into the corner of a full-size zero gradient) and a leading group axis (the (3, a, d)
q/k/v weight) are all this one kernel with different strides. fp32 accumulation; fp32 inputs use
plain TF32 only where torch's own matmuls would (`torch.backends.cuda.matmul.allow_tf32`), else 3xTF32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import INTERPRETED, dot_precision


def autotune_configs():
    if INTERPRETED:
        return [triton.Config({"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4)]
    cfg = lambda m, n, k, s, w: triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8},  # noqa: E731
                                              num_stages=s, num_warps=w)
    return [
        # large tiles for training / prefill shapes (the Triton tutorial's H100-tested set)
        cfg(128, 256, 64, 3, 8), cfg(256, 128, 64, 3, 8), cfg(128, 128, 64, 4, 4), cfg(128, 128, 32, 4, 4),
        cfg(128, 64, 64, 4, 4), cfg(64, 128, 64, 4, 4), cfg(64, 64, 64, 4, 4), cfg(128, 32, 32, 4, 4),
        cfg(64, 32, 32, 5, 2), cfg(32, 64, 32, 5, 2),
        # skinny tiles for decode-like shapes (a handful of rows): many programs along N
        cfg(16, 64, 128, 4, 4), cfg(16, 128, 128, 4, 4), cfg(32, 64, 128, 4, 4), cfg(16, 32, 256, 3, 4),
    ]


def prune_configs(configs, named_args, **kwargs):
    """Drop row tiles far taller than M (decode shapes) and keep the skinny ones only for small M.
    3xTF32 (fp32 inputs) needs about twice the registers: keep at most 64 accumulator and 64 operand
    elements a thread, beyond which ptxas spills on sm_90 (`python -m hwnas.kernels.compile_check
    --all-configs --only "elastic linear"`)."""
    M = named_args["M"]
    cap = max(16, triton.next_power_of_2(M))
    x3 = kwargs.get("PRECISION") == "tf32x3"

    def fits(c):
        bm, bn, bk, threads = c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], 32 * c.num_warps
        return not x3 or (bm * bn <= 64 * threads and bk * (bm + bn) <= 64 * threads)

    kept = [c for c in configs
            if c.kwargs["BLOCK_M"] <= max(cap, 64) and (M <= 64 or c.kwargs["BLOCK_K"] <= 64) and fits(c)]
    return kept or [c for c in configs if fits(c)][-1:] or configs[-1:]


@triton.autotune(configs=autotune_configs(), key=["M", "N", "K", "PRECISION"], prune_configs_by={"early_config_prune": prune_configs})
@triton.jit
def matmul_kernel(
    A, B, C, BIAS, M, N, K,
    sam, sak, sag, sbk, sbn, sbg, scm, scn, scg,  # strides; *g: the group axis (program_id 1)
    HAS_BIAS: tl.constexpr, PRECISION: tl.constexpr, DOT_FP32: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    # grouped tile order: GROUP_M row tiles share their column tiles in L2
    pid, g = tl.program_id(0), tl.program_id(1)
    n_m, n_n = (M + BLOCK_M - 1) // BLOCK_M, (N + BLOCK_N - 1) // BLOCK_N
    per_group = GROUP_M * n_n
    first_m = (pid // per_group) * GROUP_M
    size_m = min(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rm = offs_m % M  # wrapped rows/cols load valid memory; the store masks them
    rn = offs_n % N
    a_ptrs = A + g * sag + rm[:, None] * sam + offs_k[None, :] * sak  # (BM, BK)
    b_ptrs = B + g * sbg + offs_k[:, None] * sbk + rn[None, :] * sbn  # (BK, BN)
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k in range(0, (K + BLOCK_K - 1) // BLOCK_K):
        k_left = K - k * BLOCK_K
        a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
        b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        if DOT_FP32:  # the interpreter's bf16 dot multiplies bit patterns; fp32 products of bf16 are exact
            a, b = a.to(tl.float32), b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
        a_ptrs += BLOCK_K * sak
        b_ptrs += BLOCK_K * sbk
    if HAS_BIAS:
        acc += tl.load(BIAS + rn).to(tl.float32)[None, :]
    c_ptrs = C + g * scg + offs_m[:, None] * scm + offs_n[None, :] * scn
    tl.store(c_ptrs, acc.to(C.dtype.element_ty), mask=(offs_m < M)[:, None] & (offs_n < N)[None, :])


def matmul(a, b, c, M, N, K, a_strides, b_strides, c_strides, groups=1, bias=None):
    """c[g, m, n] = sum_k a[g, m, k] b[g, k, n] (+ bias[n]), all read through the given strides
    (m, k, g), (k, n, g), (m, n, g); `c` is written in place and returned."""
    if M == 0 or N == 0:
        return c
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]), groups)  # noqa: E731
    matmul_kernel[grid](
        a, b, c, bias if bias is not None else c, M, N, K, *a_strides, *b_strides, *c_strides,
        HAS_BIAS=bias is not None, PRECISION=dot_precision(a.dtype), DOT_FP32=INTERPRETED,
    )
    return c


def _rows(x: torch.Tensor) -> torch.Tensor:
    if x.stride(-1) != 1:
        x = x.contiguous()
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.shape[0] <= 1 or x2.stride(0) >= x2.shape[1] else x2.contiguous()


def linear_forward(x, weight, out_f, in_f, bias):
    """x (..., >=in_f) @ weight[..., :out_f, :in_f].T (+ bias[:out_f]) -> (..., out_f), or
    (G, ..., out_f) for a (G, O, I) weight; K may be 0 (an all-zero result, as torch gives)."""
    lead = x.shape[:-1]
    x2 = _rows(x)
    R = x2.shape[0]
    if weight.ndim == 2:
        y = torch.empty((R, out_f), dtype=x.dtype, device=x.device)
        if in_f == 0:
            return (y.zero_() + (bias[:out_f] if bias is not None else 0)).view(*lead, out_f)
        matmul(x2, weight, y, R, out_f, in_f, (x2.stride(0), 1, 0), (weight.stride(1), weight.stride(0), 0),
               (y.stride(0), 1, 0), bias=bias)
        return y.view(*lead, out_f)
    G = weight.shape[0]
    y = torch.empty((G, R, out_f), dtype=x.dtype, device=x.device)
    if in_f == 0:
        return y.zero_().view(G, *lead, out_f)
    matmul(x2, weight, y, R, out_f, in_f, (x2.stride(0), 1, 0), (weight.stride(2), weight.stride(1), weight.stride(0)),
           (y.stride(1), 1, y.stride(0)), groups=G)
    return y.view(G, *lead, out_f)


def linear_backward(gy, x, weight, out_f, in_f, need_x, need_w, need_b):
    """Gradients of `linear_forward` for x (its full shape), weight (full size, zero outside the
    corner) and bias (full size), each None unless asked for."""
    x2 = _rows(x)
    R, Dx = x2.shape
    grouped = weight.ndim == 3
    G = weight.shape[0] if grouped else 1
    gy3 = gy.reshape(G, R, out_f)
    if gy3.stride(-1) != 1:
        gy3 = gy3.contiguous()
    w3 = weight if grouped else weight.unsqueeze(0)
    gx = gw = gb = None
    if need_x:  # dX[:, :in] = sum_g dY_g @ W_g[:out, :in]
        gx = (torch.zeros if Dx > in_f else torch.empty)((R, Dx), dtype=x.dtype, device=x.device)
        if G == 1:
            matmul(gy3[0], w3[0], gx, R, in_f, out_f, (gy3.stride(1), 1, 0), (w3.stride(1), w3.stride(2), 0),
                   (gx.stride(0), 1, 0))
        else:
            parts = torch.empty((G, R, in_f), dtype=torch.float32, device=x.device)
            matmul(gy3, w3, parts, R, in_f, out_f, (gy3.stride(1), 1, gy3.stride(0)),
                   (w3.stride(1), w3.stride(2), w3.stride(0)), (parts.stride(1), 1, parts.stride(0)), groups=G)
            gx[:, :in_f] = parts.sum(0)
        gx = gx.view(x.shape)
    if need_w:  # dW[g, :out, :in] = dY_g.T @ x, written into the corner
        gw = torch.zeros_like(w3)
        matmul(gy3, x2, gw, out_f, in_f, R, (1, gy3.stride(1), gy3.stride(0)), (x2.stride(0), 1, 0),
               (gw.stride(1), 1, gw.stride(0)), groups=G)
        gw = gw if grouped else gw[0]
    if need_b:
        gb = torch.zeros((weight.shape[-2],), dtype=gy.dtype, device=gy.device)
        gb[:out_f] = gy3[0].sum(0)
    return gx, gw, gb
