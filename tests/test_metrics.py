"""Analytic parameters, FLOPs and memory, checked against arithmetic written out by hand.

The hand cases use one layer with embed d = 8, 1 head of head_dim 4 (attention width a = 4),
MLP ratio 2 (hidden h = 16), vocab V = 16 and block size 8.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings

from hwnas.search_space import LINEAR_CHUNK, ArchConfig, LayerConfig, ModelDims
from hwnas.search_space import metrics as M
from tests.conftest import seeds, spaces

DIMS = ModelDims(vocab_size=16, block_size=8, head_dim=4)
EMBEDDING = 16 * 8 + 8 * 8  # token table V x d + learned positions block x d (the LM head is tied) = 192
ATTN = 4 * 8 * 4  # q, k, v, o: d x a each, no bias = 128


def one_layer(**kw) -> ArchConfig:
    return ArchConfig(embed_dim=8, layers=(LayerConfig(**{"n_heads": 1, "mlp_ratio": 2, **kw}),))


# --- parameters -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw, non_embedding",
    [
        # linear + 2 sublayers x norms per sublayer x norm size + final norm
        ({}, ATTN + 2 * 8 * 16 + 2 * 1 * (2 * 8) + 2 * 8),  # layernorm (weight, bias) pre: 128+256+32+16 = 432
        ({"norm": "rmsnorm"}, ATTN + 256 + 2 * 1 * 8 + 8),  # rmsnorm (weight): 408
        ({"norm": "dyt"}, ATTN + 256 + 2 * 1 * (2 * 8 + 1) + (2 * 8 + 1)),  # dyt (alpha, weight, bias): 435
        ({"placement": "post"}, 432),  # post: one norm per sublayer, like pre
        ({"placement": "peri"}, ATTN + 256 + 2 * 2 * 16 + 16),  # peri: two per sublayer: 464
        ({"norm": "dyt", "placement": "peri"}, ATTN + 256 + 2 * 2 * 17 + 17),  # 469
        ({"ffn": "swiglu"}, ATTN + 3 * 8 * 16 + 32 + 16),  # gate, up, down: 560
        ({"ffn": "moe", "n_experts": 2, "top_k": 1}, ATTN + 2 * 8 * 16 + 8 * 2 + 32 + 16),  # + router d x E: 448
        ({"ffn": "moe", "n_experts": 4, "top_k": 2}, ATTN + 256 + 8 * 4 + 32 + 16),  # 464
        ({"n_heads": 2}, 4 * 8 * 8 + 256 + 32 + 16),  # a = 8: 560
        ({"mlp_ratio": 1.5}, ATTN + 2 * 8 * 12 + 32 + 16),  # h = 12: 368
        ({"attention": "window", "window": 4}, 432),  # attention kind adds no parameters
        ({"attention": "linear"}, 432),
        ({"weight_bits": 4}, 432),  # quantization changes bytes, not the count
    ],
)
def test_params_by_hand(kw, non_embedding):
    p = M.params(one_layer(**kw), DIMS)
    assert p == {"embedding": EMBEDDING, "non_embedding": non_embedding, "total": EMBEDDING + non_embedding}


def test_params_literal_values():
    # the same arithmetic, evaluated, so a slip in the expressions above cannot hide a slip below
    assert M.params(one_layer(), DIMS)["total"] == 624
    assert M.params(one_layer(norm="rmsnorm"), DIMS)["total"] == 600
    assert M.params(one_layer(norm="dyt"), DIMS)["total"] == 627
    assert M.params(one_layer(placement="peri"), DIMS)["total"] == 656
    assert M.params(one_layer(ffn="swiglu"), DIMS)["total"] == 752
    assert M.params(one_layer(ffn="moe", n_experts=2, top_k=1), DIMS)["total"] == 640


def test_final_norm_follows_the_last_layer():
    two = ArchConfig(8, (LayerConfig(n_heads=1, mlp_ratio=2, norm="dyt"), LayerConfig(n_heads=1, mlp_ratio=2)))
    # layer 0: 128 + 256 + 2 x 17 = 418; layer 1: 128 + 256 + 2 x 16 = 416; final layernorm 16
    assert M.params(two, DIMS)["non_embedding"] == 418 + 416 + 16
    swapped = ArchConfig(8, two.layers[::-1])
    assert M.params(swapped, DIMS)["non_embedding"] == 416 + 418 + 17


# --- FLOPs ----------------------------------------------------------------------------------------------
def per_token_fixed(t: int) -> int:
    """Tied head (2 d V) + q, k, v, o projections (4 x 2 d a), for t tokens."""
    return t * 2 * 8 * 16 + t * 4 * 2 * 8 * 4  # 256 t + 256 t


MLP = 4 * 8 * 16  # two d x h matmuls, 2 FLOPs per multiply-add: 512 per token


@pytest.mark.parametrize(
    "kw, t, attention",
    [
        ({}, 8, 1 * 4 * 8 * 8 * 4),  # softmax: QK^T and AV, 2 x 2 x T^2 x hd = 1024
        ({}, 3, 4 * 3 * 3 * 4),  # 144
        ({}, 40, 4 * 40 * 40 * 4),  # softmax ignores the block size too: 25600
        # sliding window, T <= window: the whole (causal) T x T block = softmax
        ({"attention": "window", "window": 4}, 3, 4 * 3 * 3 * 4),  # 144
        ({"attention": "window", "window": 4}, 4, 4 * 4 * 4 * 4),  # 256
        # T > window: ceil(T / w) blocks of w queries against 2w keys, padded to tp = 8
        ({"attention": "window", "window": 2}, 8, 4 * 8 * (2 * 2) * 4),  # 512
        ({"attention": "window", "window": 2}, 7, 4 * 8 * (2 * 2) * 4),  # 7 pads to 8: 512
        ({"attention": "window", "window": 4}, 6, 4 * 8 * (2 * 4) * 4),  # 6 pads to 8: 1024
        # linear, T <= chunk (c = T = 8): intra q k^T (2 T c hd) + scores @ [v, 1] (2 T c (hd + 1))
        # + inter k^T [v, 1] and q @ state (2 x 2 T hd (hd + 1))
        ({"attention": "linear"}, 8, 2 * 8 * 8 * 4 + 2 * 8 * 8 * 5 + 2 * 2 * 8 * 4 * 5),  # 512+640+640 = 1792
        # linear, T = 40 > chunk 32: c = 32, padded to tp = 64
        ({"attention": "linear"}, 40, 2 * 64 * 32 * 4 + 2 * 64 * 32 * 5 + 2 * 2 * 64 * 4 * 5),  # 41984
        ({"attention": "linear", "n_heads": 2}, 8, 2 * 1792),  # per head
    ],
)
def test_attention_flops_by_hand(kw, t, attention):
    layer = one_layer(**kw).layers[0]
    assert M.attention_flops(layer, t, DIMS) == attention
    a = layer.n_heads * 4
    expected = t * 2 * 8 * 16 + t * 4 * 2 * 8 * a + attention + t * MLP
    assert M.flops(one_layer(**kw), t, DIMS) == expected
    assert M.flops_per_token(one_layer(**kw), t, DIMS) == expected / t


def test_attention_flop_literals():
    assert LINEAR_CHUNK == 32
    layer = one_layer(attention="linear").layers[0]
    assert M.attention_flops(layer, 8, DIMS) == 1792
    assert M.attention_flops(layer, 40, DIMS) == 41984
    assert M.attention_flops(one_layer(attention="window", window=2).layers[0], 8, DIMS) == 512
    assert M.flops(one_layer(), 8, DIMS) == 2048 + 2048 + 1024 + 4096 == 9216


@pytest.mark.parametrize(
    "kw, per_token",
    [
        ({}, 4 * 8 * 16),  # mlp: 512
        ({"ffn": "swiglu"}, 6 * 8 * 16),  # three d x h matmuls: 768
        # moe: router 2 d E, plus top_k experts of h / E hidden units each (2 matmuls)
        ({"ffn": "moe", "n_experts": 2, "top_k": 1}, 2 * 8 * 2 + 1 * 4 * 8 * 8),  # 32 + 256 = 288
        ({"ffn": "moe", "n_experts": 4, "top_k": 2}, 2 * 8 * 4 + 2 * 4 * 8 * 4),  # 64 + 256 = 320
    ],
)
def test_ffn_flops_by_hand(kw, per_token):
    layer = one_layer(**kw).layers[0]
    assert M.ffn_flops_per_token(layer, 8) == per_token
    assert M.flops(one_layer(**kw), 8, DIMS) == per_token_fixed(8) + 1024 + 8 * per_token


def test_flops_add_over_layers():
    a = LayerConfig(n_heads=1, mlp_ratio=2, ffn="swiglu")
    b = LayerConfig(n_heads=2, mlp_ratio=2, attention="linear")
    two = ArchConfig(8, (a, b))
    head = 8 * 2 * 8 * 16
    assert M.flops(two, 8, DIMS) == M.flops(ArchConfig(8, (a,)), 8, DIMS) + M.flops(ArchConfig(8, (b,)), 8, DIMS) - head


# --- memory ---------------------------------------------------------------------------------------------
def test_memory_by_hand():
    mem = M.memory(one_layer(), 8, DIMS)
    assert mem["weights"] == 2 * 624  # 16-bit everything
    assert mem["kv_cache"] == 2 * 4 * 8 * 2  # k and v, width a, T tokens, 2 bytes: 128
    assert mem["activations"] == 8 * max(8, 16, 3 * 4, 16) * 2  # largest live tensor: logits (V = 16): 256
    assert mem["total"] == 1248 + 128 + 256

    # int8 / int4 linear weights (384 of them), plus a 16-bit scale per output channel:
    # q, k, v (3a = 12) + o (d = 8) + mlp up (h = 16) + down (d = 8) = 44 channels
    linear, channels = ATTN + 256, 3 * 4 + 8 + 16 + 8
    rest = 2 * (624 - linear)
    assert M.memory(one_layer(weight_bits=8), 8, DIMS)["weights"] == rest + linear * 1 + 2 * channels == 952
    assert M.memory(one_layer(weight_bits=4), 8, DIMS)["weights"] == rest + linear // 2 + 2 * channels == 760

    # the cache of sliding-window attention holds the window; linear attention its hd x (hd + 1) state
    assert M.memory(one_layer(attention="window", window=2), 8, DIMS)["kv_cache"] == 2 * 4 * 2 * 2
    assert M.memory(one_layer(attention="window", window=4), 3, DIMS)["kv_cache"] == 2 * 4 * 3 * 2
    assert M.memory(one_layer(attention="linear"), 8, DIMS)["kv_cache"] == 1 * 4 * 5 * 2
    assert M.memory(one_layer(attention="linear"), 4000, DIMS)["kv_cache"] == 40  # constant in T
    # swiglu holds gate and up (2h = 32) at once; batch scales cache and activations, not weights
    assert M.memory(one_layer(ffn="swiglu"), 8, DIMS)["activations"] == 8 * 32 * 2
    b4 = M.memory(one_layer(), 8, DIMS, batch=4)
    assert (b4["weights"], b4["kv_cache"], b4["activations"]) == (1248, 4 * 128, 4 * 256)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(space=spaces, seed=seeds)
def test_memory_fields_positive_and_fewer_bits_fewer_bytes(space, seed):
    arch = space.sample(seed)
    mem = space.memory(arch)
    assert set(mem) == {"weights", "kv_cache", "activations", "total"}
    assert all(isinstance(v, int) and v > 0 for v in mem.values())
    assert mem["total"] == mem["weights"] + mem["kv_cache"] + mem["activations"]
    by_bits = {}
    for bits in (16, 8, 4):
        same = ArchConfig(arch.embed_dim, tuple(LayerConfig(**{**layer.__dict__, "weight_bits": bits})
                                                for layer in arch.layers))
        by_bits[bits] = space.memory(same)
        assert space.params(same) == space.params(arch)
        assert space.flops(same) == space.flops(arch)
    assert by_bits[4]["weights"] < by_bits[8]["weights"] < by_bits[16]["weights"] == 2 * space.params(arch)["total"]
    assert by_bits[4]["kv_cache"] == by_bits[16]["kv_cache"]
    p = space.params(arch)
    assert p["total"] == p["embedding"] + p["non_embedding"] and min(p.values()) > 0
    assert space.flops(arch) > 0


def test_space_metrics_default_to_block_size(quickstart_space):
    space = quickstart_space
    arch = space.sample(9)
    assert space.flops(arch) == M.flops(arch, 128, space.dims) != space.flops(arch, 64)
    assert space.memory(arch) == M.memory(arch, 128, space.dims)
    assert space.memory(arch, batch=2)["kv_cache"] == 2 * space.memory(arch)["kv_cache"]
    assert space.dims == ModelDims(256, 128, 16)
    flops = [space.flops(arch, t) for t in (16, 32, 64, 128)]
    assert np.all(np.diff(flops) > 0)
