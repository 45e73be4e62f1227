"""The weight-sharing supernet: one decoder-only byte-level LM holding the largest weights.

`supernet(tokens, arch)` runs exactly the subnet `arch` by slicing: the first `embed_dim` columns,
the first `n_heads` heads, the first `mlp_ratio * embed_dim` hidden units, the first `depth`
layers (nested like MatFormer); with `weight_sharing: per_kind` each attention and FFN kind slices
its own projections. The arch is passed down the call; nothing is stored on the modules
between calls, so a forward never depends on an earlier one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
import torch.nn as nn
from torch import Tensor

from hwnas import kernels
from hwnas.core.errors import HwnasError
from hwnas.search_space import ArchConfig, LayerConfig, SearchSpace, SearchSpaceConfig
from hwnas.search_space.kinds import NORMS

from . import ops


class InputError(HwnasError, ValueError):
    """Tokens the supernet cannot take (wrong dtype or shape, outside the vocabulary, too long)."""


def first(p: Tensor, n: int) -> Tensor:
    """The first n entries of a 1-d weight (the weight itself when n covers it)."""
    return p if n == p.shape[0] else p[:n]


def corner(w: Tensor, rows: int, cols: int) -> Tensor:
    """w[..., :rows, :cols], the weight itself when that is all of it (a view costs microseconds,
    which add up at small batch)."""
    if w.shape[-2] == rows and w.shape[-1] == cols:
        return w
    return w[..., :rows, :cols]


class ElasticNorms(nn.Module):
    """The parameters of every norm kind of the space at the largest width, named `{tag}_{param}`
    (`search_space.kinds.NORMS`); `forward` uses the first d."""

    def __init__(self, d_max: int, kinds: Sequence[str] = tuple(NORMS)):
        super().__init__()
        for kind in (k for k in NORMS.values() if k.name in kinds):  # the registry's order, whatever the config's
            for name, init in zip(kind.params, kind.init, strict=True):
                shape = () if name in kind.scalars else (d_max,)
                self.register_parameter(f"{kind.tag}_{name}", nn.Parameter(torch.full(shape, init)))

    def params(self, kind: str, d: int) -> dict[str, Tensor]:
        """The weights of norm `kind` at width d, by name."""
        k = NORMS[kind]
        return {name: getattr(self, f"{k.tag}_{name}") if name in k.scalars else first(getattr(self, f"{k.tag}_{name}"), d)
                for name in k.params}

    def forward(self, x: Tensor, kind: str) -> Tensor:
        backend = kernels.model_backend()
        # CUDA (or forced): the fused kernel reads the first d in place; on CPU one attribute test, no dispatch
        if (x.is_cuda or backend == "triton") and kind in kernels.NORM_KINDS and kernels.use_triton(backend, x):
            k = NORMS[kind]
            full = {name: getattr(self, f"{k.tag}_{name}") for name in k.params}
            return kernels.elastic_norm(kind, x, full["weight"], full.get("bias"), full.get("alpha"), backend=backend)
        return ops.norm(kind, x, **self.params(kind, x.shape[-1]))


def quantized(weights: dict[str, Tensor], bits: int) -> dict[str, Tensor]:
    """Each weight fake-quantized to `bits` (per output channel), the MoE router excepted."""
    return {k: w if k == "router" else ops.fake_quant(w, bits) for k, w in weights.items()}


def fan_in_normal(*shape: int) -> Tensor:
    """A weight of `shape` (out, in last) drawn at std 1/sqrt(in): each projection keeps its input's
    scale, so every residual branch adds a unit-scale update from the first step. The usual 0.02
    makes the branches ~50x smaller than the embedding at this width, and training spent its first
    hundreds of steps growing them (BENCHMARKS.md, "Training recipe": 3.06 -> 2.65 bits/byte at
    600 steps for the standard design)."""
    return torch.randn(*shape) / shape[-1] ** 0.5


def shared_or_per_kind(make: Callable[[], Tensor], kinds: Sequence[str] | None) -> nn.Parameter | nn.ParameterDict:
    """One parameter for every kind (`kinds` None), or one per kind."""
    return nn.Parameter(make()) if kinds is None else nn.ParameterDict({k: nn.Parameter(make()) for k in kinds})


def of_kind(param: nn.Parameter | nn.ParameterDict, kind: str) -> Tensor:
    return param if isinstance(param, nn.Parameter) else param[kind]


class ElasticAttention(nn.Module):
    """Q/K/V/O projections of softmax, linear and sliding-window attention: one set shared by all
    kinds, or (`kinds` given) one set per kind."""

    def __init__(self, d_max: int, heads_max: int, head_dim: int, kinds: Sequence[str] | None = None,
                 rotary: bool = False):
        super().__init__()
        self.head_dim, self.rotary = head_dim, rotary
        a = heads_max * head_dim
        self.qkv = shared_or_per_kind(lambda: fan_in_normal(3, a, d_max), kinds)  # (3, nh*hs, d): q, k, v
        self.proj = shared_or_per_kind(lambda: fan_in_normal(d_max, a), kinds)

    def full(self, kind: str) -> tuple[Tensor, Tensor]:
        """The whole (qkv, proj) tensors an attention of `kind` slices."""
        return of_kind(self.qkv, kind), of_kind(self.proj, kind)

    def static(self, layer: LayerConfig, d: int) -> dict[str, Tensor]:
        """The weights `layer` uses at width d, as a subnet holds them (`subnet.Attention`'s
        parameters by name): what `forward` computes with and what extraction copies."""
        a = layer.n_heads * self.head_dim
        qkv, proj = self.full(layer.attention)
        return {"qkv": corner(qkv, a, d), "proj": corner(proj, d, a)}

    def forward(self, x: Tensor, layer: LayerConfig) -> Tensor:
        w = quantized(self.static(layer, x.shape[-1]), layer.weight_bits)
        return ops.attention_sublayer(x, layer, w["qkv"], w["proj"], rotary=self.rotary)


class ElasticFFN(nn.Module):
    """GELU MLP, SwiGLU and mixture-of-experts over one set of hidden units, or (`kinds` given) one
    set per kind. MoE experts are equal contiguous groups of the arch's hidden units; each expert
    count has its own router."""

    def __init__(self, d_max: int, hidden_max: int, expert_counts: list[int], kinds: Sequence[str] | None = None):
        super().__init__()
        self.up = shared_or_per_kind(lambda: fan_in_normal(hidden_max, d_max), kinds)
        self.gate = nn.Parameter(fan_in_normal(hidden_max, d_max))
        self.down = shared_or_per_kind(lambda: fan_in_normal(d_max, hidden_max), kinds)
        # routers start small, so every expert gets tokens while the experts are still alike
        self.routers = nn.ParameterDict({str(e): nn.Parameter(torch.randn(e, d_max) * 0.02) for e in expert_counts})

    def full(self, kind: str) -> tuple[Tensor, Tensor]:
        """The whole (up, down) tensors an FFN of `kind` slices (SwiGLU's gate is its own)."""
        return of_kind(self.up, kind), of_kind(self.down, kind)

    def static(self, layer: LayerConfig, d: int) -> dict[str, Tensor]:
        """The weights `layer` uses at width d, as a subnet holds them (`subnet.FFN`'s parameters by
        name): MoE experts are equal contiguous groups of the hidden units, up (E, size, d) and
        down (E, d, size), with the router of that expert count."""
        h = layer.hidden(d)
        up, down = self.full(layer.ffn)
        if layer.ffn == "moe":
            E = layer.n_experts
            return {"router": corner(self.routers[str(E)], E, d), "up": corner(up, h, d).reshape(E, h // E, d),
                    "down": corner(down, d, h).reshape(d, E, h // E).transpose(0, 1)}
        w = {"up": corner(up, h, d), "down": corner(down, d, h)}
        return w | {"gate": corner(self.gate, h, d)} if layer.ffn == "swiglu" else w

    def forward(self, x: Tensor, layer: LayerConfig) -> tuple[Tensor, Tensor | None]:
        return ops.ffn_sublayer(x, layer, quantized(self.static(layer, x.shape[-1]), layer.weight_bits))


class Block(nn.Module):
    """One transformer layer that builds every norm / placement / attention / FFN variant from the
    arch. Each sublayer has an input norm and an output norm (the latter used by peri-LN only)."""

    def __init__(self, d_max: int, heads_max: int, head_dim: int, hidden_max: int, expert_counts: list[int],
                 norm_kinds: Sequence[str], attention_kinds: Sequence[str] | None = None,
                 ffn_kinds: Sequence[str] | None = None, rotary: bool = False):
        super().__init__()
        self.attn = ElasticAttention(d_max, heads_max, head_dim, attention_kinds, rotary)
        self.ffn = ElasticFFN(d_max, hidden_max, expert_counts, ffn_kinds)
        self.norm_attn, self.norm_attn_out = ElasticNorms(d_max, norm_kinds), ElasticNorms(d_max, norm_kinds)
        self.norm_ffn, self.norm_ffn_out = ElasticNorms(d_max, norm_kinds), ElasticNorms(d_max, norm_kinds)

    def forward(self, x: Tensor, layer: LayerConfig) -> tuple[Tensor, Tensor | None]:
        p = layer.placement
        norm_attn, norm_attn_out = partial(self.norm_attn, kind=layer.norm), partial(self.norm_attn_out, kind=layer.norm)
        norm_ffn, norm_ffn_out = partial(self.norm_ffn, kind=layer.norm), partial(self.norm_ffn_out, kind=layer.norm)
        x = ops.combine(p, x, self.attn(ops.core_input(p, x, norm_attn), layer), norm_attn, norm_attn_out)
        y, aux = self.ffn(ops.core_input(p, x, norm_ffn), layer)
        return ops.combine(p, x, y, norm_ffn, norm_ffn_out), aux


class Supernet(nn.Module):
    """A byte-level decoder-only LM over every arch of `SearchSpace(config)`."""

    def __init__(self, config: SearchSpaceConfig | None = None):
        super().__init__()
        self.space = SearchSpace(config)
        c = self.space.config
        self.config = c
        d_max, heads_max = max(c.embed_dim), max(c.n_heads.choices)
        hidden_max = int(round(max(c.mlp_ratio.choices) * d_max))
        # Embeddings at std 1/sqrt(d_max), scaled by sqrt(d) on input (ops.embed): the residual stream
        # starts near unit scale, which Dynamic Tanh needs (it does not rescale like LayerNorm), and the
        # tied head starts with logits of std <= 1.
        self.tok_emb = nn.Parameter(torch.randn(c.vocab_size, d_max) / d_max**0.5)  # tied with the LM head
        if c.positions == "learned":  # (rope turns queries and keys instead; none: the causal mask alone)
            self.pos_emb = nn.Parameter(torch.randn(c.block_size, d_max) / d_max**0.5)
        per_kind = c.weight_sharing == "per_kind"
        kinds = {"norm_kinds": list(c.norm.choices), "attention_kinds": list(c.attention.choices) if per_kind else None,
                 "ffn_kinds": list(c.ffn.choices) if per_kind else None, "rotary": c.positions == "rope"}
        self.blocks = nn.ModuleList(
            Block(d_max, heads_max, c.head_dim, hidden_max, list(c.ffn.experts), **kinds) for _ in range(self.space.max_depth)
        )
        self.norm_final = ElasticNorms(d_max, c.norm.choices)
        self._checked: set[ArchConfig] = set()  # archs already validated (a cache; no effect on outputs)

    def check(self, tokens: Tensor, arch: ArchConfig) -> None:
        """Raise `ArchError` for an arch outside the space, `InputError` for bad tokens."""
        if arch not in self._checked:
            self.space.validate(arch)
            self._checked.add(arch)
        if not isinstance(tokens, Tensor) or tokens.dtype not in (torch.int64, torch.int32) or tokens.ndim != 2:
            got = f"{tokens.dtype} tensor of shape {tuple(tokens.shape)}" if isinstance(tokens, Tensor) else type(tokens).__name__
            raise InputError(f"tokens: expected an integer tensor of shape (batch, seq_len), got {got}")
        T, V = tokens.shape[1], self.config.vocab_size
        if not 0 < T <= self.config.block_size:
            raise InputError(f"tokens: sequence length {T} is outside 1..{self.config.block_size} (block_size)")
        lo, hi = torch.aminmax(tokens)
        if lo < 0 or hi >= V:
            raise InputError(f"tokens: ids must be in [0, {V - 1}] (vocab_size {V}), got range [{int(lo)}, {int(hi)}]")

    def forward(self, tokens: Tensor, arch: ArchConfig, return_aux: bool = False):
        """tokens (B, T) int -> logits (B, T, vocab); with `return_aux`, also the summed MoE
        load-balancing loss (0 when the arch has no MoE layer)."""
        self.check(tokens, arch)
        d, T = arch.embed_dim, tokens.shape[1]
        emb = corner(self.tok_emb, self.config.vocab_size, d)  # tied with the LM head
        pos_emb = corner(self.pos_emb, T, d) if self.config.positions == "learned" else None
        x = ops.embed(tokens, emb, pos_emb)  # (B, T, d)
        aux = x.new_zeros(())
        for block, layer in zip(self.blocks, arch.layers, strict=False):
            x, a = block(x, layer)
            if a is not None:
                aux = aux + a
        x = self.norm_final(x, arch.layers[-1].norm)
        logits = nn.functional.linear(x, emb)  # (B, T, vocab)
        return (logits, aux) if return_aux else logits
