"""The pieces a latency table times, built from the real standalone modules of `supernet.subnet`.

A subnet's forward is, in order: the embedding, then per layer an attention sublayer and an FFN
sublayer, then the head. Each sublayer is a *core* (`Attention` or `FFN`) plus the norms and the
residual add that the placement wraps around it (`SubnetBlock.forward`):

    pre:  x + core(norm(x))          post: norm(x + core(x))          peri: x + norm(core(norm(x)))

`NormResidual` is that wrapper alone (inputs x and y = core output); `Embed` is the token and
position lookup; `Head` is the final norm and the tied LM head. Composing them reproduces
`Subnet.forward` exactly (a test checks it for every placement).

Their deployment forms (what the tables time) are `supernet.deploy`'s.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from hwnas.search_space import LayerConfig, ModelDims
from hwnas.supernet import ops
from hwnas.supernet.subnet import FFN, Attention, Norm, Subnet

INIT_STD = 0.02  # the supernet's init scale for matrices


def random_init_(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Matrices ~ N(0, 0.02) like the supernet's init (spreads MoE routing); norms keep identity."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2 and "norm" not in name:
                p.normal_(0.0, INIT_STD, generator=generator)
    return module


# --- the timed pieces (real modules) --------------------------------------------------------------
class AttentionCore(nn.Module):
    """The attention core of one layer: QKV projection, attention, output projection."""

    def __init__(self, layer: LayerConfig, d: int, head_dim: int):
        super().__init__()
        self.attn = Attention(layer, d, head_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x)


def cache_shapes(layer: LayerConfig, context: int, head_dim: int, batch: int) -> list[tuple[int, ...]]:
    """The shapes of what one attention layer keeps after `context` tokens (`ops.LayerCache`):
    keys and values (softmax: all of them; a window: the last window-1) or linear attention's state."""
    nh = layer.n_heads
    if layer.attention == "linear":
        return [(batch, nh, head_dim, head_dim + 1)]
    past = context if layer.attention == "softmax" else min(context, layer.window - 1)
    return [(batch, nh, past, head_dim)] * 2


def layer_cache(layer: LayerConfig, past: tuple[Tensor, ...]) -> ops.LayerCache:
    return ops.LayerCache(state=past[0]) if layer.attention == "linear" else ops.LayerCache(past[0], past[1])


def cache_tensors(layer: LayerConfig, cache: ops.LayerCache) -> list[Tensor]:
    return [cache.state] if layer.attention == "linear" else [cache.k, cache.v]


class DecodeAttentionCore(nn.Module):
    """The attention core of one layer decoding one step: the new tokens' hidden states x and what
    the layer keeps of the `context` tokens before in, the output and the updated cache out."""

    def __init__(self, layer: LayerConfig, d: int, head_dim: int, context: int):
        super().__init__()
        self.layer, self.context = layer, context
        self.attn = Attention(layer, d, head_dim)

    def forward(self, x: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        cache = layer_cache(self.layer, past)
        y = self.attn(x, cache, self.context)
        return (y, *cache_tensors(self.layer, cache))


class DecodeStep(nn.Module):
    """A whole subnet decoding one step after `context` tokens: tokens and every layer's cache in,
    the logits and the updated caches out (`Subnet.forward` with a `DecodeCache`)."""

    def __init__(self, subnet: Subnet, context: int):
        super().__init__()
        self.subnet, self.context = subnet, context

    def forward(self, tokens: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        from hwnas.supernet.decode import DecodeCache

        layers, at = [], 0
        for layer in self.subnet.arch.layers:
            n = 1 if layer.attention == "linear" else 2
            layers.append(layer_cache(layer, past[at:at + n]))
            at += n
        cache = DecodeCache(self.subnet.dims.block_size, layers, self.context)
        logits = self.subnet(tokens, cache=cache)
        return (logits, *[t for layer, c in zip(self.subnet.arch.layers, layers, strict=True) for t in cache_tensors(layer, c)])

    def inputs(self, batch: int, generator: torch.Generator) -> tuple[Tensor, ...]:
        """Example inputs: one new token per sequence and caches of `context` tokens."""
        dims = self.subnet.dims
        tokens = torch.randint(0, dims.vocab_size, (batch, 1), generator=generator)
        past = [torch.randn(*shape, generator=generator).abs() if layer.attention == "linear" else torch.randn(*shape, generator=generator)
                for layer in self.subnet.arch.layers for shape in cache_shapes(layer, self.context, dims.head_dim, batch)]
        return (tokens, *past)


class FfnCore(nn.Module):
    """The FFN core of one layer (router and experts for MoE; its balance loss is computed too,
    as `Subnet.forward` computes it)."""

    def __init__(self, layer: LayerConfig, d: int):
        super().__init__()
        self.ffn = FFN(layer, d)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.ffn(x)
        return y


class NormResidual(nn.Module):
    """The norms and residual add around one sublayer core, as `SubnetBlock` places them.

    Inputs: x, the sublayer input, and y, the core's output. Outputs: the core's input and the
    sublayer output (post-LN has no separate core input: the core reads x itself)."""

    def __init__(self, norm: str, placement: str, d: int):
        super().__init__()
        self.placement = placement
        self.norm_in = Norm(norm, d)  # SubnetBlock.norm_attn / norm_ffn
        if placement == "peri":
            self.norm_out = Norm(norm, d)  # SubnetBlock.norm_attn_out / norm_ffn_out

    def core_input(self, x: Tensor) -> Tensor:
        return ops.core_input(self.placement, x, self.norm_in)

    def combine(self, x: Tensor, y: Tensor) -> Tensor:
        return ops.combine(self.placement, x, y, self.norm_in, getattr(self, "norm_out", None))

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.core_input(x), self.combine(x, y)


class Embed(nn.Module):
    """Token and learned position embedding: tokens (B, T) -> x (B, T, d)."""

    def __init__(self, d: int, dims: ModelDims):
        super().__init__()
        self.tok_emb = nn.Parameter(torch.zeros(dims.vocab_size, d))
        self.pos_emb = nn.Parameter(torch.zeros(dims.block_size, d))

    def forward(self, tokens: Tensor) -> Tensor:
        T = tokens.shape[1]
        return nn.functional.embedding(tokens, self.tok_emb) + self.pos_emb[:T]


class Head(nn.Module):
    """Final norm and the tied LM head: x (B, T, d) -> logits (B, T, vocab)."""

    def __init__(self, norm: str, d: int, dims: ModelDims):
        super().__init__()
        self.norm_final = Norm(norm, d)
        self.tok_emb = nn.Parameter(torch.zeros(dims.vocab_size, d))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(self.norm_final(x), self.tok_emb)


class Nothing(nn.Module):
    """Returns its input: times the fixed cost of one call of a backend."""

    def forward(self, x: Tensor) -> Tensor:
        return x


def is_subnet(module: nn.Module) -> bool:
    return isinstance(module, Subnet)
