"""Analytic cost of an arch: parameters, forward FLOPs and memory, without building a model.

The formulas mirror the supernet's modules exactly (tests count the real module against them):
- bias-free Q/K/V/O projections of width `n_heads * head_dim`, learned positions (rope and none have
  no parameters), tied LM head;
- per sublayer one norm (pre, post) or two (peri), plus a final norm of the last layer's kind;
- FLOPs count matrix products only (2 per multiply-add), as torch's FlopCounterMode does:
  softmax attention scores all T x T pairs, sliding-window attention works in blocks of `window`
  queries against 2 * `window` keys, linear attention in chunks of `LINEAR_CHUNK` (the value is
  augmented with a ones column that carries the normalizer), MoE runs `top_k` of `n_experts`
  expert slices per token plus the router.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .arch import ArchConfig, LayerConfig
from .kinds import NORMS

LINEAR_CHUNK = 32  # chunk length of the chunked causal linear attention
NORMS_PER_SUBLAYER = {"pre": 1, "post": 1, "peri": 2}


@dataclass(frozen=True)
class ModelDims:
    """The fixed (unsearched) hyperparameters every subnet shares."""

    vocab_size: int
    block_size: int
    head_dim: int
    positions: str = "learned"  # learned, rope or none (`SearchSpaceConfig.positions`)


def human_count(n: float) -> str:
    """A count for people: 1.23M, 45.60k, 7."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def attn_width(layer: LayerConfig, dims: ModelDims) -> int:
    return layer.n_heads * dims.head_dim


def layer_params(layer: LayerConfig, d: int, dims: ModelDims) -> dict[str, int]:
    """Parameters of one block, split into linear weights (quantizable) and the rest."""
    a, h = attn_width(layer, dims), layer.hidden(d)
    attn = 4 * d * a
    ffn = {"mlp": 2 * d * h, "swiglu": 3 * d * h, "moe": 2 * d * h}[layer.ffn]
    router = d * layer.n_experts if layer.ffn == "moe" else 0
    norms = 2 * NORMS_PER_SUBLAYER[layer.placement] * NORMS[layer.norm].n_params(d)
    return {"linear": attn + ffn, "router": router, "norm": norms}


def params(arch: ArchConfig, dims: ModelDims) -> dict[str, int]:
    """Parameter count: `embedding` (tokens + positions; the head is tied), `non_embedding`, `total`."""
    d = arch.embed_dim
    embedding = dims.vocab_size * d + (dims.block_size * d if dims.positions == "learned" else 0)
    body = sum(sum(layer_params(layer, d, dims).values()) for layer in arch.layers)
    body += NORMS[arch.layers[-1].norm].n_params(d)  # final norm
    return {"embedding": embedding, "non_embedding": body, "total": embedding + body}


def attention_flops(layer: LayerConfig, seq_len: int, dims: ModelDims) -> int:
    """FLOPs of the attention core (scores and weighted values) for one sequence of `seq_len`."""
    hd, nh, t = dims.head_dim, layer.n_heads, seq_len
    if layer.attention == "softmax" or (layer.attention == "window" and t <= layer.window):
        return nh * 4 * t * t * hd
    if layer.attention == "window":
        w = layer.window
        tp = math.ceil(t / w) * w
        return nh * 4 * tp * 2 * w * hd
    c = min(LINEAR_CHUNK, t)
    tp = math.ceil(t / c) * c
    intra = 2 * tp * c * hd + 2 * tp * c * (hd + 1)
    inter = 2 * tp * hd * (hd + 1) * 2  # per-chunk k^T v, then q @ state
    return nh * (intra + inter)


def ffn_flops_per_token(layer: LayerConfig, d: int) -> int:
    h = layer.hidden(d)
    if layer.ffn == "mlp":
        return 4 * d * h
    if layer.ffn == "swiglu":
        return 6 * d * h
    return 2 * d * layer.n_experts + layer.top_k * 4 * d * (h // layer.n_experts)


def flops(arch: ArchConfig, seq_len: int, dims: ModelDims) -> int:
    """Forward FLOPs of one sequence of `seq_len` tokens (batch 1), LM head included."""
    d, t = arch.embed_dim, seq_len
    total = t * 2 * d * dims.vocab_size  # tied head
    for layer in arch.layers:
        total += t * 2 * 4 * d * attn_width(layer, dims)  # q, k, v, o projections
        total += attention_flops(layer, t, dims)
        total += t * ffn_flops_per_token(layer, d)
    return total


def flops_per_token(arch: ArchConfig, seq_len: int, dims: ModelDims) -> float:
    return flops(arch, seq_len, dims) / seq_len


def memory(arch: ArchConfig, seq_len: int, dims: ModelDims, batch: int = 1) -> dict[str, int]:
    """Inference memory in bytes at deploy precision (16-bit, or the layer's weight bits).

    `weights`: quantized linear weights plus a 16-bit scale per output channel; everything else
    16-bit. `kv_cache`: keys and values kept for `seq_len` tokens (the window for sliding-window
    attention, the running state for linear attention). `activations`: the largest live tensor of
    a forward pass (hidden, Q/K/V, FFN intermediate or logits).
    """
    d, t = arch.embed_dim, seq_len
    p = params(arch, dims)
    weights = 2 * p["total"]
    kv, act = 0, max(d, dims.vocab_size)
    for layer in arch.layers:
        lp = layer_params(layer, d, dims)
        a, h = attn_width(layer, dims), layer.hidden(d)
        if layer.weight_bits < 16:
            ffn_out = {"mlp": h + d, "swiglu": 2 * h + d, "moe": h + d}[layer.ffn]
            out_channels = 3 * a + d + ffn_out
            weights += lp["linear"] * layer.weight_bits // 8 - 2 * lp["linear"] + 2 * out_channels
        if layer.attention == "softmax":
            kv += 2 * a * t * 2
        elif layer.attention == "window":
            kv += 2 * a * min(t, layer.window) * 2
        else:
            kv += layer.n_heads * dims.head_dim * (dims.head_dim + 1) * 2
        if layer.ffn == "moe":
            ffn_live = layer.top_k * (h // layer.n_experts)
        else:
            ffn_live = 2 * h if layer.ffn == "swiglu" else h
        act = max(act, 3 * a, ffn_live)
    return {"weights": weights, "kv_cache": batch * kv, "activations": batch * t * act * 2,
            "total": weights + batch * kv + batch * t * act * 2}
