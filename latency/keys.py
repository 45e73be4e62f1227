"""Table keys: the measured pieces a subnet is made of, and which pieces a space can produce.

A subnet is timed as the sum of its pieces (see `modules`):

    call                                  fixed cost of one forward call of the backend
    embed/d{d}                            token + position embedding
    per layer:
      norm/d{d}-{norm}-{placement}        the attention sublayer's norms and residual add
      attn/d{d}-h{heads}-{kind}-q{bits}   the attention core (kind: sm, lin, win{window})
      norm/d{d}-{norm}-{placement}        the FFN sublayer's norms and residual add
      ffn/d{d}-h{hidden}-{kind}-q{bits}   the FFN core (kind: mlp, swiglu, moe{E}k{k})
    head/d{d}-{norm}                      final norm + tied LM head

So the attention sublayer of a layer is `norm + attn` (its norm and its quantization included), the
FFN sublayer `norm + ffn`. The norm is its own key because it does not depend on the core: the
table then holds one entry per distinct core and per distinct norm, not one per product of both.
The number of keys grows with the choices per dimension, never with the number of subnets.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
import torch.nn as nn

from hwnas.search_space import ArchConfig, LayerConfig, ModelDims, SearchSpace
from hwnas.search_space.kinds import attention_tag, ffn_tag, norm_tag
from hwnas.search_space.space import layer_fields
from hwnas.supernet.decode import layer_caches

from .modules import (
    AttentionCore,
    DecodeAttentionCore,
    Embed,
    FfnCore,
    Head,
    NormResidual,
    Nothing,
    random_init_,
)

KINDS = ("call", "embed", "norm", "attn", "ffn", "head")


@dataclass(frozen=True)
class Piece:
    """One table key: a kind and the fields its latency depends on (others are None)."""

    kind: str
    d: int | None = None
    n_heads: int | None = None
    attention: str | None = None
    window: int | None = None
    hidden: int | None = None
    ffn: str | None = None
    n_experts: int | None = None
    top_k: int | None = None
    weight_bits: int | None = None
    norm: str | None = None
    placement: str | None = None

    @property
    def key(self) -> str:
        k = self.kind
        if k == "call":
            return "call"
        if k == "embed":
            return f"embed/d{self.d}"
        if k == "norm":
            return f"norm/d{self.d}-{norm_tag(self.norm)}-{self.placement}"
        if k == "head":
            return f"head/d{self.d}-{norm_tag(self.norm)}"
        if k == "attn":
            return f"attn/d{self.d}-h{self.n_heads}-{attention_tag(self.attention, self.window)}-q{self.weight_bits}"
        if k == "ffn":
            return f"ffn/d{self.d}-h{self.hidden}-{ffn_tag(self.ffn, self.n_experts, self.top_k)}-q{self.weight_bits}"
        raise ValueError(f"piece kind {k!r} is not one of {KINDS}")

    def __str__(self) -> str:
        return self.key

    # --- the module and inputs to time ---------------------------------------------------------
    def layer(self) -> LayerConfig:
        """A layer whose attention (or FFN) core is this piece; its other fields are placeholders."""
        if self.kind == "attn":
            return LayerConfig(n_heads=self.n_heads, mlp_ratio=1.0, attention=self.attention, window=self.window,
                               weight_bits=self.weight_bits)
        if self.kind == "ffn":
            return LayerConfig(n_heads=1, mlp_ratio=self.hidden / self.d, ffn=self.ffn, n_experts=self.n_experts,
                               top_k=self.top_k, weight_bits=self.weight_bits)
        raise ValueError(f"{self.key} is not a core piece")

    def build(self, dims: ModelDims, context: int | None = None) -> nn.Module:
        """The real module of this piece with random weights (seeded by the key). `context`: the
        decoding workload's (one new token over a cache of `context` tokens): an attention core
        then takes and returns its cache (`DecodeAttentionCore`); the other pieces are the same."""
        k, d = self.kind, self.d
        if k == "call":
            module: nn.Module = Nothing()
        elif k == "embed":
            module = Embed(d, dims)
        elif k == "norm":
            module = NormResidual(self.norm, self.placement, d)
        elif k == "head":
            module = Head(self.norm, d, dims)
        elif k == "attn":
            rotary = dims.positions == "rope"
            module = (AttentionCore(self.layer(), d, dims.head_dim, rotary) if context is None
                      else DecodeAttentionCore(self.layer(), d, dims.head_dim, context, rotary))
        else:
            module = FfnCore(self.layer(), d)
        gen = torch.Generator().manual_seed(zlib.crc32(self.key.encode()))
        return random_init_(module, gen).eval()

    def inputs(self, batch: int, seq_len: int, dims: ModelDims, context: int | None = None) -> tuple[torch.Tensor, ...]:
        """Example inputs: tokens for `call` and `embed`, hidden states (x, and y for norms) else;
        with a decoding `context`, an attention core's cache of that many tokens too."""
        gen = torch.Generator().manual_seed(zlib.crc32(self.key.encode()) + 1)
        if self.kind in ("call", "embed"):
            return (torch.randint(0, dims.vocab_size, (batch, seq_len), generator=gen),)
        x = torch.randn(batch, seq_len, self.d, generator=gen)
        if self.kind == "norm":
            return x, torch.randn(batch, seq_len, self.d, generator=gen)
        if self.kind == "attn" and context is not None:
            return (x, *layer_caches(self.layer(), context, dims.head_dim, batch, gen))
        return (x,)


CALL = Piece("call")


def embed_piece(d: int) -> Piece:
    return Piece("embed", d=d)


def head_piece(norm: str, d: int) -> Piece:
    return Piece("head", d=d, norm=norm)


def norm_piece(layer: LayerConfig, d: int) -> Piece:
    return Piece("norm", d=d, norm=layer.norm, placement=layer.placement)


def attn_piece(layer: LayerConfig, d: int) -> Piece:
    return Piece("attn", d=d, n_heads=layer.n_heads, attention=layer.attention, window=layer.window,
                 weight_bits=layer.weight_bits)


def ffn_piece(layer: LayerConfig, d: int) -> Piece:
    return Piece("ffn", d=d, hidden=layer.hidden(d), ffn=layer.ffn, n_experts=layer.n_experts, top_k=layer.top_k,
                 weight_bits=layer.weight_bits)


def arch_pieces(arch: ArchConfig) -> list[Piece]:
    """The pieces of `arch` in forward order, with repeats: call, embed, (norm, attn, norm, ffn)
    per layer, head."""
    d = arch.embed_dim
    pieces = [CALL, embed_piece(d)]
    for layer in arch.layers:
        pieces += [norm_piece(layer, d), attn_piece(layer, d), norm_piece(layer, d), ffn_piece(layer, d)]
    return pieces + [head_piece(arch.layers[-1].norm, d)]


def arch_keys(arch: ArchConfig) -> list[str]:
    return [p.key for p in arch_pieces(arch)]


def space_pieces(space: SearchSpace) -> list[Piece]:
    """Every distinct piece any arch of `space` can contain, in a fixed order (cheap first)."""
    c = space.choices
    pieces: dict[str, Piece] = {}

    def add(p: Piece) -> None:
        pieces.setdefault(p.key, p)

    add(CALL)
    for d in space.config.embed_dim:
        add(embed_piece(d))
    for d in space.config.embed_dim:
        for norm in c["norm"]:
            add(head_piece(norm, d))
            for placement in c["placement"]:
                add(norm_piece(LayerConfig(1, 1.0, norm=norm, placement=placement), d))
    for d in space.config.embed_dim:
        for bits in c["weight_bits"]:
            for heads in c["n_heads"]:
                for attention in c["attention"]:
                    add(attn_piece(LayerConfig(heads, 1.0, weight_bits=bits, **layer_fields("attention", attention)), d))
            for ratio in c["mlp_ratio"]:
                for ffn in c["ffn"]:
                    add(ffn_piece(LayerConfig(1, ratio, weight_bits=bits, **layer_fields("ffn", ffn)), d))
    return list(pieces.values())
