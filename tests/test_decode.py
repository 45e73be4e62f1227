"""Cached decoding (supernet.decode): for every attention kind, norm, placement, FFN kind and bit
width, the logits of a prefill followed by decoding steps equal a full recomputation of the
sequence at every position (fp32, 1e-5), in the training form and the deployment form (and within
the rounding of int8 activation codes on real low-bit kernels); a step past the block size is refused."""

from __future__ import annotations

import pytest
import torch

from hwnas.search_space import ArchConfig, LayerConfig, SearchSpace, SearchSpaceConfig
from hwnas.supernet import extract_subnet
from hwnas.supernet.decode import DecodeCache
from hwnas.supernet.deploy import deploy_copy, torch_deploy_copy
from tests.tiny import perturbed_supernet

SPACE_CFG = SearchSpaceConfig(
    depth=[1, 2, 3], embed_dim=[16, 32], head_dim=8, block_size=32,
    n_heads={"choices": [1, 2]}, mlp_ratio={"choices": [2.0, 4.0]},
    norm={"choices": ["layernorm", "rmsnorm", "dyt", "crmsnorm"], "per_layer": True},
    norm_placement={"choices": ["pre", "post", "peri"], "per_layer": True},
    attention={"choices": ["softmax", "linear", "window"], "windows": [4, 8]},
    ffn={"choices": ["mlp", "swiglu", "moe"], "experts": [2], "top_k": [1, 2]},
    weight_bits={"choices": [16, 8, 4], "per_layer": True},
)
SPACE = SearchSpace(SPACE_CFG)
L = LayerConfig
COVERING = [
    ArchConfig(32, (L(2, 4.0, "layernorm", "pre", "softmax", None, "mlp", weight_bits=16),
                    L(1, 2.0, "rmsnorm", "post", "linear", None, "swiglu", weight_bits=8),
                    L(2, 2.0, "dyt", "peri", "window", 4, "moe", 2, 1, weight_bits=4))),
    ArchConfig(16, (L(1, 2.0, "crmsnorm", "post", "window", 8, "moe", 2, 2, weight_bits=8),
                    L(2, 4.0, "rmsnorm", "peri", "softmax", None, "mlp", weight_bits=4),
                    L(2, 2.0, "dyt", "pre", "linear", None, "swiglu", weight_bits=16))),
]
ARCHS = COVERING + [SPACE.sample(seed) for seed in range(6)]


@pytest.fixture(scope="module")
def supernet():
    return perturbed_supernet(SPACE_CFG, scale=1.0).eval()  # the init scale: logits of order 1-10


def stepwise(model, tokens: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    """Logits of `tokens` fed in `chunks` (a prefill, then steps) through one cache."""
    cache, out, at = DecodeCache.of(model), [], 0
    for n in chunks:
        out.append(model(tokens[:, at:at + n], cache=cache))
        at += n
    assert cache.pos == at == tokens.shape[1]
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("arch", ARCHS, ids=[f"arch{i}" for i in range(len(ARCHS))])
@torch.no_grad()
def test_cached_decoding_equals_a_full_recomputation(supernet, arch):
    sub = extract_subnet(supernet, arch).eval()
    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    full = sub(tokens)
    for chunks in ([5] + [1] * 27, [1] * 32, [7, 3, 9, 1, 12]):  # prompt + single steps; steps only; uneven chunks
        assert torch.allclose(stepwise(sub, tokens, chunks), full, atol=1e-5, rtol=0), chunks
    deployed = deploy_copy(sub)  # weights quantized once and folded in: the export's math
    assert torch.allclose(stepwise(deployed, tokens, [5] + [1] * 27), deployed(tokens), atol=1e-5, rtol=0)
    # 8/4-bit layers on real low-bit kernels: a token's int8 activation codes can round the other way
    # when its input differs in the last bit (measured: up to 8e-5; the kernels' own error is ~1e-2)
    real = torch_deploy_copy(sub)
    assert torch.allclose(stepwise(real, tokens, [5] + [1] * 27), real(tokens), atol=1e-3, rtol=0)


@torch.no_grad()
def test_caches_grow_as_each_attention_kind_keeps_its_past(supernet):
    def arch(kind: str, window: int | None = None) -> ArchConfig:
        return ArchConfig(16, (L(2, 2.0, "layernorm", "pre", kind, window, "mlp"),))

    sizes = {}
    for name, a in {"softmax": arch("softmax"), "window": arch("window", 4), "linear": arch("linear")}.items():
        sub = extract_subnet(supernet, a).eval()
        cache = DecodeCache.of(sub)
        sub(torch.zeros(1, 10, dtype=torch.long), cache=cache)
        at10 = cache.nbytes()
        sub(torch.zeros(1, 20, dtype=torch.long), cache=cache)
        sizes[name] = (at10, cache.nbytes())
    hs, nh, f32 = 8, 2, 4
    assert sizes["softmax"] == (2 * nh * 10 * hs * f32, 2 * nh * 30 * hs * f32)  # every key and value
    assert sizes["window"] == (2 * nh * 3 * hs * f32,) * 2  # the last window-1
    assert sizes["linear"] == (nh * hs * (hs + 1) * f32,) * 2  # a fixed-size state


@torch.no_grad()
def test_a_step_past_the_block_size_is_refused(supernet):
    sub = extract_subnet(supernet, COVERING[0]).eval()
    cache = DecodeCache.of(sub)
    sub(torch.zeros(1, 30, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="exceeds the block size 32"):
        sub(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    assert cache.pos == 30 and cache.room() == 2


@pytest.fixture(scope="module")
def decode_graphs(supernet):
    from hwnas.export.decode import export_decode_onnx

    return {arch.key(): (extract_subnet(supernet, arch).eval(), *export_decode_onnx(extract_subnet(supernet, arch).eval()))
            for arch in COVERING}


@pytest.mark.parametrize("arch", [COVERING[0], pytest.param(COVERING[1], marks=pytest.mark.slow)], ids=["mixed-a", "mixed-b"])
def test_the_onnx_decoding_step_equals_torch_and_its_low_bit_form_follows(decode_graphs, arch):
    """The exported decoding step (cache in, cache out) run by ONNX Runtime: a prompt, then one token
    per call, equals torch recomputing the whole sequence; its int8/int4 form has the quantized
    kernels and follows the fp32 logits."""
    import numpy as np

    from hwnas.export.decode import onnx_decode
    from hwnas.export.deploy import low_bit_weights, op_counts, quantize, session

    sub, model, form = decode_graphs[arch.key()]
    prompt = torch.randint(0, 256, (1, 6), generator=torch.Generator().manual_seed(1))
    logits, chosen = onnx_decode(session(model, 1), form, prompt, 20)
    with torch.no_grad():
        full = sub(torch.tensor([prompt[0].tolist() + chosen]))[0].numpy()
    assert logits.shape == full.shape == (26, 256) and np.abs(logits - full).max() <= 1e-4
    low = quantize(model, low_bit_weights(form))
    ops = op_counts(low)
    assert ops.get("MatMulNBits", 0) > 0 and ops.get("DynamicQuantizeMatMul", 0) + ops.get("MatMulInteger", 0) > 0  # 4 and 8 bits
    low_logits, _ = onnx_decode(session(low, 1), form, prompt, 20)
    first = low_logits[:6]  # the prompt's positions: the same tokens in both
    assert np.corrcoef(first.ravel(), logits[:6].ravel())[0, 1] > 0.95
