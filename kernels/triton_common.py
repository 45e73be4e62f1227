"""What the Triton kernels share: whether they are interpreted, `row_sum`, and `dot_precision`.

Triton's interpreter (TRITON_INTERPRET=1) can only run library helpers defined while it was on, and
Triton's own `@jit` helpers (`tl.sum`, `tl.zeros`, `tl.cdiv`, ...) are defined when `triton` is first
imported, which torch may do early (`torch.utils.flop_counter` imports it). So the kernels use only
Triton builtins (`tl.full` for zeros, integer arithmetic for ceil-division) and `row_sum` below,
which under the interpreter calls the builtin `tl.reduce` with Triton's sum combiner (the interpreter
recognizes it and sums with numpy, without calling it) and on a GPU is `tl.sum` itself.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .dispatch import interpreting

INTERPRETED = interpreting()

if INTERPRETED:
    _SUM_COMBINE = tl.standard._sum_combine

    @triton.jit
    def row_sum(x, axis: tl.constexpr):
        return tl.reduce(x, axis, _SUM_COMBINE)

else:
    row_sum = tl.sum


def dot_precision(dtype: torch.dtype) -> str:
    """`tl.dot` input precision for operands of `dtype`: with fp32, plain TF32 only where torch allows it
    for its own matmuls (`torch.backends.cuda.matmul.allow_tf32`), else 3xTF32 (about fp32 accuracy
    on tensor cores; fp32 FMA tiles spill registers). Ignored for 16-bit operands."""
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "tf32x3"
    return "tf32"
