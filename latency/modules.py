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
from hwnas.supernet.decode import cache_tensors, layer_cache
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

    def __init__(self, layer: LayerConfig, d: int, head_dim: int, rotary: bool = False):
        super().__init__()
        self.attn = Attention(layer, d, head_dim, rotary)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x)


class DecodeAttentionCore(nn.Module):
    """The attention core of one layer decoding one step: the new tokens' hidden states x and what
    the layer keeps of the `context` tokens before in, the output and the updated cache out."""

    def __init__(self, layer: LayerConfig, d: int, head_dim: int, context: int, rotary: bool = False):
        super().__init__()
        self.layer, self.context = layer, context
        self.attn = Attention(layer, d, head_dim, rotary)

    def forward(self, x: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        cache = layer_cache(self.layer, past)
        y = self.attn(x, cache, self.context)
        return (y, *cache_tensors(self.layer, cache))


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
    """Token and (with learned positions) position embedding: tokens (B, T) -> x (B, T, d)."""

    def __init__(self, d: int, dims: ModelDims):
        super().__init__()
        self.tok_emb = nn.Parameter(torch.zeros(dims.vocab_size, d))
        if dims.positions == "learned":
            self.pos_emb = nn.Parameter(torch.zeros(dims.block_size, d))

    def forward(self, tokens: Tensor) -> Tensor:
        x = nn.functional.embedding(tokens, self.tok_emb)
        return x + self.pos_emb[:tokens.shape[1]] if hasattr(self, "pos_emb") else x


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
