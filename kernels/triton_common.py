"""What the Triton kernels share: whether they are interpreted, and `row_sum`.

Triton's interpreter (TRITON_INTERPRET=1) can only run library helpers defined while it was on, and
Triton's own `@jit` helpers (`tl.sum`, `tl.zeros`, `tl.cdiv`, ...) are defined when `triton` is first
imported, which torch may do early (`torch.utils.flop_counter` imports it). So the kernels use only
Triton builtins (`tl.full` for zeros, integer arithmetic for ceil-division) and `row_sum` below,
which under the interpreter calls the builtin `tl.reduce` with Triton's sum combiner (the interpreter
recognizes it and sums with numpy, without calling it) and on a GPU is `tl.sum` itself.
"""

from __future__ import annotations

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
