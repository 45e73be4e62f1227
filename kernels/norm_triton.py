"""Triton half of `kernels.norm`: the fused elastic LayerNorm / RMSNorm / DyT forward.

Each program normalizes ROWS_PER_PROG rows, each held whole in registers (BLOCK_D = next power of two of
d, masked), so x is read once and y written once: the kernel is memory-bound by design. Row strides
are passed in, so `x[..., :d]` of a wider activation and `weight[:d]` of the widest weight are read
where they lie. Imported on first use by `kernels.dispatch.triton_module` (see there why).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_common import INTERPRETED, row_sum

KINDS = {"layernorm": 0, "rmsnorm": 1, "dyt": 2}


def autotune_configs():
    if INTERPRETED:  # one config: the interpreter runs every candidate, slowly
        return [triton.Config({"ROWS_PER_PROG": 4}, num_warps=4)]
    return [triton.Config({"ROWS_PER_PROG": m}, num_warps=w) for m in (1, 2, 4, 8, 16, 32, 64) for w in (2, 4, 8, 16)]


def prune_configs(configs, named_args, **kwargs):
    """Keep tiles of up to 16K elements (at least 1K, or 64 narrow rows, or 1 wide row), with 4 to 32
    elements a thread: at least one 16-byte load of fp32, and few enough to stay in registers (64
    spill for DyT on sm_90: `python -m hwnas.kernels.compile_check --all-configs --only norm`)."""
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D"))

    def per_thread(c):
        return c.kwargs["ROWS_PER_PROG"] * block_d / (c.num_warps * 32)

    kept = []
    for c in configs:
        m = c.kwargs["ROWS_PER_PROG"]
        tile = m * block_d
        big_enough = tile >= 1024 or m == 64
        small_enough = tile <= 16384 or m == 1
        if big_enough and small_enough and (4 <= per_thread(c) or c.num_warps == 2) and per_thread(c) <= 32:
            kept.append(c)
    return kept or [min(configs, key=per_thread)]


@triton.jit
def _tanh(x):
    """tanh in fp32: odd Taylor series near 0 (where 1 - exp(-2|x|) would cancel), exp form elsewhere."""
    ax = tl.abs(x)
    t = tl.exp(-2.0 * ax)
    far = (1.0 - t) / (1.0 + t)
    x2 = ax * ax
    near = ax * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    y = tl.where(ax < 0.2, near, far)
    return tl.where(x < 0, -y, y)


@triton.autotune(configs=autotune_configs(), key=["D", "ROWS_BUCKET", "KIND", "HAS_RES"],
                 prune_configs_by={"early_config_prune": prune_configs})
@triton.jit
def norm_fwd_kernel(
    X, R, W, B, A, Y, H,  # pointers: input, residual, weight, bias, alpha, output, residual sum
    n_rows, D, ROWS_BUCKET, stride_x, stride_r, stride_y, stride_h, eps,
    KIND: tl.constexpr, HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_D: tl.constexpr, ROWS_PER_PROG: tl.constexpr,
):
    rows = tl.program_id(0) * ROWS_PER_PROG + tl.arange(0, ROWS_PER_PROG)  # (M,)
    cols = tl.arange(0, BLOCK_D)  # (BD,)
    cmask = cols < D
    mask = (rows < n_rows)[:, None] & cmask[None, :]  # (M, BD)
    rows64 = rows.to(tl.int64)[:, None]
    x = tl.load(X + rows64 * stride_x + cols[None, :], mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(R + rows64 * stride_r + cols[None, :], mask=mask, other=0.0)
        h = (x.to(tl.float32) + r.to(tl.float32)).to(H.dtype.element_ty)  # rounded as torch's add rounds
        tl.store(H + rows64 * stride_h + cols[None, :], h, mask=mask)
        x = h
    x = x.to(tl.float32)
    w = tl.load(W + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    if KIND == 0:  # LayerNorm: (x - mean) / sqrt(var + eps) * w + b, biased variance
        mean = row_sum(x, 1) / D
        xc = tl.where(mask, x - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(row_sum(xc * xc, 1) / D + eps)
        y = xc * rstd[:, None] * w
    elif KIND == 1:  # RMSNorm: x / sqrt(mean(x^2) + eps) * w
        rstd = 1.0 / tl.sqrt(row_sum(x * x, 1) / D + eps)
        y = x * rstd[:, None] * w
    else:  # DyT: w * tanh(alpha * x) + b
        alpha = tl.load(A).to(tl.float32)
        y = w * _tanh(alpha * x)
    if HAS_BIAS:
        y += tl.load(B + cols, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + rows64 * stride_y + cols[None, :], y, mask=mask)


def _rows(t: torch.Tensor) -> torch.Tensor:
    """t (..., D) as (rows, D) without a copy where the layout allows it (last dim contiguous)."""
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t.reshape(-1, t.shape[-1])  # a view for contiguous and for sliced-last-dim tensors alike


def norm_forward(kind, x, weight, bias, alpha, d, residual, eps):
    """y (..., d), h (..., d) or None; see `kernels.norm.elastic_norm`."""
    lead = x.shape[:-1]
    x2 = _rows(x)
    if x2.shape[0] > 1 and x2.stride(0) < d:  # a reshape of an odd layout; make rows plain
        x2 = x2.contiguous()
    n = x2.shape[0]
    out_dtype = x.dtype if residual is None else torch.result_type(x, residual)
    y = torch.empty((n, d), dtype=out_dtype, device=x.device)
    if residual is not None:
        r2 = _rows(residual)
        h = torch.empty((n, d), dtype=out_dtype, device=x.device)
    else:
        r2 = h = None
    weight = weight if weight.stride(-1) == 1 else weight.contiguous()
    if bias is not None and bias.stride(-1) != 1:
        bias = bias.contiguous()
    block_d = triton.next_power_of_2(d)
    grid = lambda meta: (triton.cdiv(n, meta["ROWS_PER_PROG"]),)  # noqa: E731
    if n:
        norm_fwd_kernel[grid](
            x2, r2 if r2 is not None else x2, weight, bias if bias is not None else weight,
            alpha if alpha is not None else weight, y, h if h is not None else y,
            n, d, triton.next_power_of_2(n), x2.stride(0), r2.stride(0) if r2 is not None else 0, y.stride(0),
            h.stride(0) if h is not None else 0, eps,
            KIND=KINDS[kind], HAS_RES=residual is not None, HAS_BIAS=bias is not None, BLOCK_D=block_d,
        )
    y = y.view(*lead, d)
    return y, (h.view(*lead, d) if h is not None else None)
