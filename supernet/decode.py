"""Cached decoding: a subnet generates token by token with what each attention layer keeps of the
tokens before (`ops.LayerCache`), instead of recomputing the whole context for every new token.

    cache = DecodeCache.of(subnet)
    logits = subnet(prompt, cache=cache)          # prefill: the prompt's tokens, positions 0 .. P-1
    logits = subnet(next_token, cache=cache)      # one decoding step at position P, and so on

Softmax attention keeps every key and value (its cache grows with the context), sliding-window
attention the last window-1 (bounded by the window), linear attention a recurrent state of fixed
size; norms, placements, FFNs and MoE routing work per token and keep nothing. The logits equal a
full recomputation of the sequence (tested across every kind). Learned positions cap the context
at the block size: a step beyond it is refused (`DecodeCache.room`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor

from .ops import LayerCache


@dataclass
class DecodeCache:
    """The decoding state of one model: the next position and each layer's `LayerCache`."""

    block_size: int
    layers: list[LayerCache] = field(default_factory=list)
    pos: int | Tensor = 0

    @classmethod
    def of(cls, model) -> DecodeCache:
        """An empty cache for `model` (a `Subnet`, or a deployment form of one)."""
        return cls(model.dims.block_size, [LayerCache() for _ in model.arch.layers])

    def room(self) -> int:
        """How many more tokens fit before the block size."""
        return self.block_size - self.pos

    def claim(self, n: int) -> int:
        """Reserve positions for `n` new tokens; returns the first. A `ValueError` past the block size."""
        if isinstance(self.pos, int) and n > self.room():  # (a tensor position: the exported graph's, unchecked)
            raise ValueError(f"decoding {n} more token(s) at position {self.pos} exceeds the block size {self.block_size} "
                             "(learned positions stop there); start a new cache from the last tokens")
        start, self.pos = self.pos, self.pos + n
        return start

    def nbytes(self) -> int:
        """Bytes the cache holds now (keys, values and recurrent states)."""
        return sum(c.nbytes() for c in self.layers)
