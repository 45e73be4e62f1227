"""Positions (`search_space.positions`): learned embeddings, rotary embeddings of queries and keys
(rope) or none. Rotary scores depend on the distance between tokens alone; the supernet, its
subnets, the deployment forms, the latency pieces and the exported decoding step agree for every
kind; cached decoding with rope or none runs past the block size and still equals a full
recomputation; the parameter count follows the kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hwnas.search_space import ArchConfig, LayerConfig, SearchSpace, SearchSpaceConfig
from hwnas.supernet import extract_subnet, ops
from hwnas.supernet.decode import DecodeCache
from hwnas.supernet.deploy import deploy_copy, export_form, torch_deploy_copy
from tests.tiny import perturbed_supernet

L = LayerConfig
ARCH = ArchConfig(32, (L(2, 4.0, "layernorm", "pre", "softmax", None, "mlp", weight_bits=16),
                       L(1, 2.0, "rmsnorm", "post", "linear", None, "swiglu", weight_bits=8),
                       L(2, 2.0, "dyt", "peri", "window", 4, "moe", 2, 1, weight_bits=4)))


def space_cfg(positions: str, block_size: int = 16) -> SearchSpaceConfig:
    return SearchSpaceConfig(
        depth=[1, 2, 3], embed_dim=[16, 32], head_dim=8, block_size=block_size, positions=positions,
        n_heads={"choices": [1, 2]}, mlp_ratio={"choices": [2.0, 4.0]},
        norm={"choices": ["layernorm", "rmsnorm", "dyt"], "per_layer": True},
        norm_placement={"choices": ["pre", "post", "peri"], "per_layer": True},
        attention={"choices": ["softmax", "linear", "window"], "windows": [4]},
        ffn={"choices": ["mlp", "swiglu", "moe"], "experts": [2], "top_k": [1]},
        weight_bits={"choices": [16, 8, 4], "per_layer": True})


@pytest.fixture(scope="module", params=["learned", "rope", "none"])
def net(request):
    return perturbed_supernet(space_cfg(request.param), scale=1.0).eval()


def test_rotary_scores_depend_on_the_distance_alone():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, generator=g), torch.randn(1, 1, 1, 8, generator=g)
    scores = [float((ops.rope(q, p + 3) * ops.rope(k, p)).sum()) for p in (0, 5, 40, 1000)]
    assert np.allclose(scores, scores[0], atol=1e-4)  # query 3 after the key, wherever the pair sits
    assert abs(float((ops.rope(q, 7) * ops.rope(k, 0)).sum()) - scores[0]) > 1e-3  # another distance, another score
    assert torch.allclose(ops.rope(q, 0), q)  # position 0 does not turn
    assert torch.allclose(ops.rope(q, 9).norm(), q.norm())  # a rotation keeps the length
    # a 0-d tensor position (the exported graph's) is the same as an int
    assert torch.equal(ops.rope(torch.cat([q, k], 2), torch.tensor(4)), ops.rope(torch.cat([q, k], 2), 4))


@torch.no_grad()
def test_every_form_of_a_subnet_agrees_and_caches_equal_a_recomputation(net):
    sub = extract_subnet(net, ARCH).eval()
    tokens = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(1))
    full = sub(tokens)
    assert torch.allclose(net(tokens, ARCH), full, atol=1e-5, rtol=0)
    for form, tol in ((sub, 1e-5), (deploy_copy(sub), 1e-5), (export_form(sub), 1e-5), (torch_deploy_copy(sub), 1e-3)):
        cache = DecodeCache.of(form)
        out = [form(tokens[:, :5], cache=cache)] + [form(tokens[:, t:t + 1], cache=cache) for t in range(5, 16)]
        assert torch.allclose(torch.cat(out, 1), form(tokens), atol=tol, rtol=0), type(form).__name__
    assert torch.allclose(deploy_copy(sub)(tokens), full, atol=1e-4, rtol=0)


@torch.no_grad()
def test_positions_change_the_logits_as_their_kind_says():
    """Shuffling the tokens before the last one: without positions the last token's logits do not
    change (attention is a set function of the past); with learned or rotary positions they do."""
    tokens = torch.randint(0, 256, (1, 12), generator=torch.Generator().manual_seed(2))
    shuffled = torch.cat([tokens[:, :11].flip(1), tokens[:, 11:]], 1)
    arch = ArchConfig(32, (L(2, 4.0, "layernorm", "pre", "softmax", None, "mlp"),))
    moved = {}
    for positions in ("learned", "rope", "none"):
        sub = extract_subnet(perturbed_supernet(space_cfg(positions), scale=1.0).eval(), arch).eval()
        moved[positions] = float((sub(tokens)[0, -1] - sub(shuffled)[0, -1]).abs().max())
    assert moved["none"] < 1e-4 and moved["learned"] > 1e-2 and moved["rope"] > 1e-2, moved


@torch.no_grad()
def test_rope_and_none_decode_past_the_block_size_and_learned_stops_there():
    tokens = torch.randint(0, 256, (1, 40), generator=torch.Generator().manual_seed(3))
    for positions in ("rope", "none"):
        sub = extract_subnet(perturbed_supernet(space_cfg(positions), scale=1.0).eval(), ARCH).eval()
        cache = DecodeCache.of(sub)
        out = [sub(tokens[:, :10], cache=cache)] + [sub(tokens[:, t:t + 1], cache=cache) for t in range(10, 40)]
        assert cache.pos == 40 and cache.room() == float("inf")
        assert torch.allclose(torch.cat(out, 1), sub(tokens), atol=1e-5, rtol=0), positions  # 40 > block_size 16
    sub = extract_subnet(perturbed_supernet(space_cfg("learned"), scale=1.0).eval(), ARCH).eval()
    cache = DecodeCache.of(sub)
    sub(tokens[:, :16], cache=cache)
    with pytest.raises(ValueError, match="exceeds the block size 16"):
        sub(tokens[:, 16:17], cache=cache)


def test_parameters_follow_the_positions_kind():
    for positions in ("learned", "rope", "none"):
        cfg = space_cfg(positions)
        net, space = perturbed_supernet(cfg, scale=1.0), SearchSpace(cfg)
        sub = extract_subnet(net, ARCH)
        assert sum(p.numel() for p in sub.parameters()) == space.params(ARCH)["total"], positions
        assert hasattr(net, "pos_emb") == hasattr(sub, "pos_emb") == (positions == "learned")


def test_rope_and_none_may_time_decoding_past_the_block_size():
    from hwnas.config import parse_config

    cfg = parse_config({"name": "t", "search_space": {"block_size": 128, "positions": "rope"},
                        "latency": {"decode_context": 200, "workloads": ["prefill", "decode"]}})
    assert cfg.latency.decode_context == 200  # (learned positions refuse it: test_config)


@pytest.mark.parametrize("positions", ["rope", "none"])
def test_the_onnx_decoding_step_with_rope_or_none_equals_torch_past_the_block(positions):
    from hwnas.export.decode import export_decode_onnx, onnx_decode
    from hwnas.export.deploy import session

    sub = extract_subnet(perturbed_supernet(space_cfg(positions), scale=1.0).eval(), ARCH).eval()
    model, form = export_decode_onnx(sub)
    prompt = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(4))
    logits, chosen = onnx_decode(session(model, 1), form, prompt, 24)  # 30 positions, block_size 16
    with torch.no_grad():
        full = sub(torch.tensor([prompt[0].tolist() + chosen]))[0].numpy()
    assert logits.shape == full.shape == (30, 256) and np.abs(logits - full).max() <= 1e-4


@torch.no_grad()
def test_the_latency_pieces_of_a_rope_space_time_rotary_attention_and_no_position_table():
    from dataclasses import replace

    from hwnas.latency.keys import arch_pieces

    dims = SearchSpace(space_cfg("rope")).dims
    attn = next(p for p in arch_pieces(ARCH) if p.kind == "attn")
    embed = next(p for p in arch_pieces(ARCH) if p.kind == "embed")
    assert not hasattr(embed.build(dims), "pos_emb") and hasattr(embed.build(replace(dims, positions="learned")), "pos_emb")
    x = (attn.inputs(2, 8, dims)[0] * 50,)  # weights of std 0.02: scores large enough for the rotation to show
    rotary, plain = attn.build(dims), attn.build(replace(dims, positions="none"))  # the same seeded weights
    inner = rotary.attn
    want = ops.attention_sublayer(x[0], inner.layer, inner.qkv, inner.proj, rotary=True)
    torch.testing.assert_close(rotary(*x), want, rtol=0, atol=0)
    assert (rotary(*x) - plain(*x)).abs().max() > 0.05 * plain(*x).abs().max()  # the rotation shows
