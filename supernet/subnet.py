"""Standalone subnets: `extract_subnet(supernet, arch)` copies an arch's weights into a plain
module with no supernet and no slicing, which saves to and loads from safetensors with its arch."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from hwnas.core.io import atomic_path
from hwnas.search_space import ArchConfig, LayerConfig, ModelDims
from hwnas.search_space.kinds import NORMS

from . import ops
from .decode import DecodeCache
from .model import ElasticNorms, Supernet, quantized


class Norm(nn.Module):
    def __init__(self, kind: str, d: int):
        super().__init__()
        self.kind = kind
        k = NORMS[kind]
        self.p = nn.ParameterDict({name: nn.Parameter(torch.full(() if name in k.scalars else (d,), init))
                                   for name, init in zip(k.params, k.init, strict=True)})

    def forward(self, x: Tensor) -> Tensor:
        return ops.norm(self.kind, x, **self.p)


class Attention(nn.Module):
    def __init__(self, layer: LayerConfig, d: int, head_dim: int, rotary: bool = False):
        super().__init__()
        self.layer, self.rotary = layer, rotary
        a = layer.n_heads * head_dim
        self.qkv = nn.Parameter(torch.zeros(3, a, d))
        self.proj = nn.Parameter(torch.zeros(d, a))

    def forward(self, x: Tensor, cache: ops.LayerCache | None = None, pos: int = 0) -> Tensor:
        bits = self.layer.weight_bits
        return ops.attention_sublayer(x, self.layer, ops.fake_quant(self.qkv, bits), ops.fake_quant(self.proj, bits), cache, pos,
                                      self.rotary)


class FFN(nn.Module):
    def __init__(self, layer: LayerConfig, d: int):
        super().__init__()
        self.layer = layer
        h = layer.hidden(d)
        if layer.ffn == "moe":
            E = layer.n_experts
            self.router = nn.Parameter(torch.zeros(E, d))
            self.up = nn.Parameter(torch.zeros(E, h // E, d))  # expert e: up[e], down[e]
            self.down = nn.Parameter(torch.zeros(E, d, h // E))
        else:
            self.up = nn.Parameter(torch.zeros(h, d))
            self.down = nn.Parameter(torch.zeros(d, h))
            if layer.ffn == "swiglu":
                self.gate = nn.Parameter(torch.zeros(h, d))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        return ops.ffn_sublayer(x, self.layer, quantized(dict(self.named_parameters()), self.layer.weight_bits))


class SubnetBlock(nn.Module):
    def __init__(self, layer: LayerConfig, d: int, head_dim: int, rotary: bool = False):
        super().__init__()
        self.layer = layer
        self.attn, self.ffn = Attention(layer, d, head_dim, rotary), FFN(layer, d)
        self.norm_attn, self.norm_ffn = Norm(layer.norm, d), Norm(layer.norm, d)
        if layer.placement == "peri":
            self.norm_attn_out, self.norm_ffn_out = Norm(layer.norm, d), Norm(layer.norm, d)

    def forward(self, x: Tensor, cache: ops.LayerCache | None = None, pos: int = 0) -> tuple[Tensor, Tensor | None]:
        p = self.layer.placement
        norm_attn_out, norm_ffn_out = getattr(self, "norm_attn_out", None), getattr(self, "norm_ffn_out", None)
        h = ops.core_input(p, x, self.norm_attn)
        x = ops.combine(p, x, self.attn(h) if cache is None else self.attn(h, cache, pos), self.norm_attn, norm_attn_out)
        y, aux = self.ffn(ops.core_input(p, x, self.norm_ffn))
        return ops.combine(p, x, y, self.norm_ffn, norm_ffn_out), aux


class Subnet(nn.Module):
    """A plain transformer LM for one arch (the same math as the supernet, no slicing)."""

    def __init__(self, arch: ArchConfig, dims: ModelDims):
        super().__init__()
        self.arch, self.dims = arch, dims
        d = arch.embed_dim
        self.tok_emb = nn.Parameter(torch.zeros(dims.vocab_size, d))  # tied with the LM head
        if dims.positions == "learned":
            self.pos_emb = nn.Parameter(torch.zeros(dims.block_size, d))
        rotary = dims.positions == "rope"
        self.blocks = nn.ModuleList(SubnetBlock(layer, d, dims.head_dim, rotary) for layer in arch.layers)
        self.norm_final = Norm(arch.layers[-1].norm, d)

    def forward(self, tokens: Tensor, return_aux: bool = False, cache: DecodeCache | None = None):
        """Logits (B, T, vocab) of `tokens` (B, T). With a `cache` (`supernet.decode`), the tokens
        continue the sequence the cache holds, at positions cache.pos .. cache.pos+T-1."""
        T = tokens.shape[1]
        pos = 0 if cache is None else cache.claim(T)
        x = ops.embed(tokens, self.tok_emb, self.positions(pos, T))
        aux = x.new_zeros(())
        for i, block in enumerate(self.blocks):
            x, a = block(x) if cache is None else block(x, cache.layers[i], pos)
            if a is not None:
                aux = aux + a
        logits = nn.functional.linear(self.norm_final(x), self.tok_emb)
        return (logits, aux) if return_aux else logits

    def positions(self, pos: int | Tensor, T: int) -> Tensor | None:
        """The learned position embeddings of positions pos .. pos+T-1 (None with rope or none)."""
        if self.dims.positions != "learned":
            return None
        if isinstance(pos, int):
            return self.pos_emb[pos:pos + T]
        return self.pos_emb.index_select(0, torch.arange(T, device=self.pos_emb.device) + pos)


# --- extraction -----------------------------------------------------------------------------------
def _copy_norm(dst: Norm, src: ElasticNorms, d: int) -> None:
    for name, value in src.params(dst.kind, d).items():
        dst.p[name].copy_(value)


@torch.no_grad()
def extract_subnet(supernet: Supernet, arch: ArchConfig) -> Subnet:
    """A standalone `Subnet` with copies of the weights `supernet(tokens, arch)` uses."""
    supernet.space.validate(arch)
    d = arch.embed_dim
    sub = Subnet(arch, supernet.space.dims).to(supernet.tok_emb.device, supernet.tok_emb.dtype)
    sub.tok_emb.copy_(supernet.tok_emb[:, :d])
    if hasattr(sub, "pos_emb"):
        sub.pos_emb.copy_(supernet.pos_emb[:, :d])
    for src, dst, layer in zip(supernet.blocks, sub.blocks, arch.layers, strict=False):
        for part in ("attn", "ffn"):
            for name, w in getattr(src, part).static(layer, d).items():
                getattr(dst, part).get_parameter(name).copy_(w)
        _copy_norm(dst.norm_attn, src.norm_attn, d)
        _copy_norm(dst.norm_ffn, src.norm_ffn, d)
        if layer.placement == "peri":
            _copy_norm(dst.norm_attn_out, src.norm_attn_out, d)
            _copy_norm(dst.norm_ffn_out, src.norm_ffn_out, d)
    _copy_norm(sub.norm_final, supernet.norm_final, d)
    return sub


# --- safetensors I/O ------------------------------------------------------------------------------
def save_subnet(subnet: Subnet, path: str | Path) -> None:
    """Write the weights, the arch and the model dims into one safetensors file (atomically)."""
    from safetensors.torch import save_file

    meta = {"arch": subnet.arch.to_json(), "dims": json.dumps(subnet.dims.__dict__), "format": "hwnas-subnet-1"}
    tensors = {k: v.detach().contiguous().cpu() for k, v in subnet.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def load_subnet(path: str | Path, device: str | torch.device = "cpu") -> Subnet:
    """Rebuild a `Subnet` from `save_subnet`'s file; no supernet and no pickle involved."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from .checkpoint import check_finite

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != "hwnas-subnet-1":
        raise ValueError(f"{path}: not an hwnas subnet file (metadata format {meta.get('format')!r})")
    try:
        sub = Subnet(ArchConfig.from_json(meta["arch"]), ModelDims(**json.loads(meta["dims"])))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: metadata 'arch' or 'dims' is missing or not what hwnas writes ({type(e).__name__}: {e})") from None
    tensors = load_file(str(path), device=str(device))
    check_finite(tensors, path)
    sub.load_state_dict(tensors, strict=True)
    return sub.to(device)
