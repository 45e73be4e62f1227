"""Cached decoding: a subnet generates token by token with what each attention layer keeps of the
tokens before (`ops.LayerCache`), instead of recomputing the whole context for every new token.

    cache = DecodeCache.of(subnet)
    logits = subnet(prompt, cache=cache)          # prefill: the prompt's tokens, positions 0 .. P-1
    logits = subnet(next_token, cache=cache)      # one decoding step at position P, and so on

Softmax attention keeps every key and value (its cache grows with the context), sliding-window
attention the last window-1 (bounded by the window), linear attention a recurrent state of fixed
size; norms, placements, FFNs and MoE routing work per token and keep nothing. The logits equal a
full recomputation of the sequence (tested across every kind). Learned positions cap the context
at the block size: a step beyond it is refused (`DecodeCache.room`); with rotary or no positions
(`search_space.positions`) decoding may go on past it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

from .ops import LayerCache


def cache_shapes(layer, context: int, head_dim: int, batch: int) -> list[tuple[int, ...]]:
    """The shapes of what one attention layer (a `LayerConfig`) keeps after `context` tokens:
    keys and values (softmax: all of them; a window: the last window-1) or linear attention's state."""
    nh = layer.n_heads
    if layer.attention == "linear":
        return [(batch, nh, head_dim, head_dim + 1)]
    past = context if layer.attention == "softmax" else min(context, layer.window - 1)
    return [(batch, nh, past, head_dim)] * 2


def layer_caches(layer, context: int, head_dim: int, batch: int, generator: torch.Generator | None = None) -> list[Tensor]:
    """One layer's cache of `context` tokens: random (a linear state non-negative, as its feature map
    keeps it) with a `generator`, else empty (no past keys, a zero state: the first step's)."""
    if generator is None:
        return [torch.zeros(*s) for s in cache_shapes(layer, context, head_dim, batch)]
    out = [torch.randn(*s, generator=generator) for s in cache_shapes(layer, context, head_dim, batch)]
    return [t.abs() for t in out] if layer.attention == "linear" else out


def layer_cache(layer, past: tuple[Tensor, ...] | list[Tensor]) -> LayerCache:
    """A layer's cache from its tensors, in `cache_shapes` order."""
    return LayerCache(state=past[0]) if layer.attention == "linear" else LayerCache(past[0], past[1])


def cache_tensors(layer, cache: LayerCache) -> list[Tensor]:
    """A layer's cache as tensors, in `cache_shapes` order."""
    return [cache.state] if layer.attention == "linear" else [cache.k, cache.v]


MAX_PAST = 1 << 16  # the longest cache a decoding graph takes without learned positions (rope, none)


def cap(dims) -> int | None:
    """The longest context a model of `dims` (a `ModelDims`) reads: its block size with learned
    positions, else None (rotary and no positions know no end)."""
    return dims.block_size if dims.positions == "learned" else None


@dataclass
class DecodeCache:
    """The decoding state of one model: the next position and each layer's `LayerCache`;
    `block_size` the context cap (None: no cap, rotary or no positions)."""

    block_size: int | None
    layers: list[LayerCache] = field(default_factory=list)
    pos: int | Tensor = 0

    @classmethod
    def of(cls, model) -> DecodeCache:
        """An empty cache for `model` (a `Subnet`, or a deployment form of one)."""
        return cls(cap(model.dims), [LayerCache() for _ in model.arch.layers])

    def room(self) -> float:
        """How many more tokens fit before the block size (inf without a cap)."""
        return float("inf") if self.block_size is None else self.block_size - self.pos

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

    @classmethod
    def from_tensors(cls, model, past: tuple[Tensor, ...] | list[Tensor], pos: int | Tensor) -> DecodeCache:
        """The cache of `model` whose layers hold `past` (each layer's `cache_shapes` in turn), at `pos`."""
        layers, at = [], 0
        for layer in model.arch.layers:
            n = 1 if layer.attention == "linear" else 2
            layers.append(layer_cache(layer, past[at:at + n]))
            at += n
        return cls(cap(model.dims), layers, pos)

    def tensors(self, model) -> list[Tensor]:
        """Every layer's cache as tensors, in the order `from_tensors` reads them."""
        return [t for layer, c in zip(model.arch.layers, self.layers, strict=True) for t in cache_tensors(layer, c)]


class DecodeStep(nn.Module):
    """`model` (a `Subnet` or a deployment form of one) decoding with its cache as explicit tensors:
    tokens, then (without a fixed `context`) the first position as a 0-d tensor, then every layer's
    cache in; the logits and the updated caches out. What the latency tables time (a fixed context)
    and what the exported decoding graph is (the position an input)."""

    def __init__(self, model: nn.Module, context: int | None = None):
        super().__init__()
        self.model, self.context = model, context
        self.arch, self.dims = model.arch, model.dims

    def forward(self, tokens: Tensor, *args: Tensor) -> tuple[Tensor, ...]:
        pos, past = (args[0], args[1:]) if self.context is None else (self.context, args)
        cache = DecodeCache.from_tensors(self, past, pos)
        logits = self.model(tokens, cache=cache)
        return (logits, *cache.tensors(self))

    def caches(self, batch: int, context: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """Caches of `context` tokens: random (non-negative states) with a `generator`, else empty
        (no past keys, zero states: the first step's)."""
        return [t for layer in self.arch.layers for t in layer_caches(layer, context, self.dims.head_dim, batch, generator)]

    def inputs(self, batch: int, generator: torch.Generator, context: int | None = None) -> tuple[Tensor, ...]:
        """Example inputs: one new token per sequence and random caches of the fixed context (or,
        without one, of `context` tokens, the position a 0-d int64 tensor after the tokens)."""
        tokens = torch.randint(0, self.dims.vocab_size, (batch, 1), generator=generator)
        if self.context is not None:
            return (tokens, *self.caches(batch, self.context, generator))
        return (tokens, torch.tensor(context, dtype=torch.int64), *self.caches(batch, context, generator))

    def trace_inputs(self) -> tuple[Tensor, ...]:
        """What the decoding graph (no fixed context) is traced with: 2 sequences of 3 new tokens
        after 4 cached ones (a size of 0 or 1 would be specialized by torch.export, not kept dynamic)."""
        past = [torch.zeros(2, t.shape[1], 4, t.shape[3]) if t.shape[2] == 0 else t for t in self.caches(2, 0)]
        return (torch.zeros(2, 3, dtype=torch.int64), torch.tensor(4, dtype=torch.int64), *past)

    def dynamic_shapes(self) -> tuple:
        """torch.export's dynamic dims of `trace_inputs`: batch, the new tokens (up to the block
        size) and each cache's past length (0 at the start; up to the block size with learned
        positions, MAX_PAST without)."""
        batch = torch.export.Dim("batch", min=1, max=1 << 16)
        seq = torch.export.Dim("seq", min=1, max=self.dims.block_size)
        longest = cap(self.dims) or MAX_PAST
        past: list = []
        for i, layer in enumerate(self.arch.layers):
            length = torch.export.Dim(f"past{i}", min=0, max=longest)
            past += [{0: batch}] if layer.attention == "linear" else [{0: batch, 2: length}] * 2
        return ({0: batch, 1: seq}, (None, *past))  # (tokens, *args): the position, then the caches
