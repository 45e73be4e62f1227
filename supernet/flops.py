"""Count the matmul FLOPs a module really executes (torch's FlopCounterMode), including the CPU
flash-attention op that FlopCounterMode does not count by itself."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

_registered = False


def _register_cpu_sdpa() -> None:
    global _registered
    if _registered:
        return
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    @register_flop_formula(op)
    def _sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        *batch, L, E = query_shape
        S, Ev = key_shape[-2], value_shape[-1]
        b = 1
        for n in batch:
            b *= n
        return 2 * b * L * S * E + 2 * b * L * S * Ev  # scores, then weighted values

    _registered = True


def count_flops(fn: Callable[[], object]) -> int:
    """Total FLOPs of calling `fn()` (2 per multiply-add of matrix products)."""
    _register_cpu_sdpa()
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
