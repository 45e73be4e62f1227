"""The supernet: extraction parity, analytic params/FLOPs, causality, gradient isolation, bad input,
safetensors round trip, and no state carried between calls."""

from __future__ import annotations

import itertools
import re

import pytest
import torch

from hwnas.search_space import ArchConfig, ArchError, LayerConfig, SearchSpace, SearchSpaceConfig
from hwnas.supernet import InputError, Supernet, count_flops, extract_subnet, load_subnet, save_subnet
from tests.tiny import perturbed_supernet

NORMS = ["layernorm", "rmsnorm", "dyt"]
ATTNS = [("softmax", None), ("linear", None), ("window", 32)]
FFNS = [("mlp", None, None), ("swiglu", None, None), ("moe", 4, 1), ("moe", 4, 2)]
BITS = [16, 8, 4]


@pytest.fixture(scope="module", params=["shared", "per_kind"])
def net(request) -> Supernet:
    return perturbed_supernet(SearchSpaceConfig(weight_sharing=request.param))


def covering_archs() -> list[ArchConfig]:
    """Archs that together use every norm, placement, attention, FFN and bit-width choice."""
    archs = []
    for placement in ["pre", "post", "peri"]:
        for shift in range(4):
            layers = []
            for i in range(4):
                j = i + shift
                attn, window = ATTNS[j % 3]
                ffn, e, k = FFNS[j % 4]
                layers.append(LayerConfig(
                    n_heads=[2, 4][j % 2], mlp_ratio=[2.0, 3.0, 4.0][j % 3], norm=NORMS[(j + shift) % 3],
                    placement=placement, attention=attn, window=window, ffn=ffn, n_experts=e, top_k=k,
                    weight_bits=BITS[(j + 2 * shift) % 3],
                ))
            archs.append(ArchConfig(embed_dim=[64, 96, 128, 96][shift], layers=tuple(layers[: 2 + shift % 3])))
    return archs


def all_archs(space: SearchSpace) -> list[ArchConfig]:
    return covering_archs() + [space.sample(seed) for seed in range(12)] + [space.smallest(), space.largest()]


def test_covering_archs_cover_every_choice(net):
    archs = covering_archs()
    layers = [layer for a in archs for layer in a.layers]
    for a in archs:
        net.space.validate(a)
    assert {x.norm for x in layers} == set(NORMS)
    assert {x.placement for x in layers} == {"pre", "post", "peri"}
    assert {x.attention for x in layers} == {"softmax", "linear", "window"}
    assert {x.ffn_choice for x in layers} == {"mlp", "swiglu", "moe:4:1", "moe:4:2"}
    assert {x.weight_bits for x in layers} == set(BITS)


@pytest.mark.parametrize("T", [40, 128])
def test_extracted_subnet_equals_supernet(net, T):
    tokens = torch.randint(0, 256, (2, T), generator=torch.Generator().manual_seed(T))
    for arch in all_archs(net.space):
        expected = net(tokens, arch)
        sub = extract_subnet(net, arch)
        assert not any(isinstance(m, Supernet) for m in sub.modules())
        torch.testing.assert_close(sub(tokens), expected, atol=1e-5, rtol=0, msg=lambda m, a=arch: f"{a.key()}: {m}")


def test_params_and_flops_of_real_modules_equal_analytic(net):
    tokens = torch.randint(0, 256, (1, 100))
    for arch in all_archs(net.space):
        sub = extract_subnet(net, arch)
        assert sum(p.numel() for p in sub.parameters()) == net.space.params(arch)["total"], arch.key()
        expected = net.space.flops(arch, 100)
        assert count_flops(lambda s=sub: s(tokens)) == expected, arch.key()
        assert count_flops(lambda a=arch: net(tokens, a)) == expected, arch.key()


@pytest.mark.parametrize("attention", ATTNS)
def test_attention_is_causal(net, attention):
    kind, window = attention
    layer = LayerConfig(n_heads=4, mlp_ratio=4.0, attention=kind, window=window)
    arch = ArchConfig(embed_dim=96, layers=(layer, layer))
    tokens = torch.randint(0, 256, (1, 100), generator=torch.Generator().manual_seed(1))
    base = net(tokens, arch)
    for t in [0, 31, 32, 63, 98]:
        changed = tokens.clone()
        changed[0, t + 1] = (changed[0, t + 1] + 1) % 256
        out = net(changed, arch)
        torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], atol=1e-6, rtol=0)
        assert (out[:, t + 1] - base[:, t + 1]).abs().max() > 1e-4  # and the change is seen at t+1


def test_window_attention_forgets_beyond_the_window(net):
    layer = LayerConfig(n_heads=2, mlp_ratio=2.0, attention="window", window=32)
    arch = ArchConfig(embed_dim=64, layers=(layer, layer))
    tokens = torch.randint(0, 256, (1, 128), generator=torch.Generator().manual_seed(2))
    changed = tokens.clone()
    changed[0, 10] = (changed[0, 10] + 7) % 256
    a, b = net(tokens, arch), net(changed, arch)
    # two layers of window 32 reach 2 * 31 positions ahead: 10..72 may see the change, 73.. must not
    assert (a[:, 10:42] - b[:, 10:42]).abs().amax(-1).min() > 1e-5  # within one window: clearly seen
    torch.testing.assert_close(a[:, 73:], b[:, 73:], atol=1e-6, rtol=0)


def _used_mask(net: Supernet, arch: ArchConfig) -> dict[str, torch.Tensor]:
    """Which entries of each supernet parameter the arch uses, from slicing rules written out here."""
    c, d = net.config, arch.embed_dim
    used = {name: torch.zeros_like(p, dtype=torch.bool) for name, p in net.named_parameters()}
    used["tok_emb"][:, :d] = True
    used["pos_emb"][:, :d] = True
    norm_params = {"layernorm": ["ln_weight", "ln_bias"], "rmsnorm": ["rms_weight"], "dyt": ["dyt_weight", "dyt_bias", "dyt_alpha"]}

    def mark_norm(prefix: str, kind: str) -> None:
        for p in norm_params[kind]:
            if used[f"{prefix}.{p}"].ndim == 0:
                used[f"{prefix}.{p}"].fill_(True)
            else:
                used[f"{prefix}.{p}"][:d] = True

    def of_kind(name: str, kind: str) -> str:  # per-kind weights are named <name>.<kind>
        return name if c.weight_sharing == "shared" else f"{name}.{kind}"

    for i, layer in enumerate(arch.layers):
        b = f"blocks.{i}"
        a, h = layer.n_heads * c.head_dim, layer.hidden(d)
        used[of_kind(f"{b}.attn.qkv", layer.attention)][:, :a, :d] = True
        used[of_kind(f"{b}.attn.proj", layer.attention)][:d, :a] = True
        used[of_kind(f"{b}.ffn.up", layer.ffn)][:h, :d] = True
        used[of_kind(f"{b}.ffn.down", layer.ffn)][:d, :h] = True
        if layer.ffn == "swiglu":
            used[f"{b}.ffn.gate"][:h, :d] = True
        if layer.ffn == "moe":
            used[f"{b}.ffn.routers.{layer.n_experts}"][:, :d] = True
        mark_norm(f"{b}.norm_attn", layer.norm)
        mark_norm(f"{b}.norm_ffn", layer.norm)
        if layer.placement == "peri":
            mark_norm(f"{b}.norm_attn_out", layer.norm)
            mark_norm(f"{b}.norm_ffn_out", layer.norm)
    mark_norm("norm_final", arch.layers[-1].norm)
    return used


def test_gradients_flow_only_into_used_slices(net):
    tokens = torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(3))
    for arch in covering_archs()[::2] + [net.space.sample(7)]:
        net.zero_grad(set_to_none=False)
        logits, aux = net(tokens, arch, return_aux=True)
        (logits.square().mean() + aux).backward()
        params = dict(net.named_parameters())
        for name, used in _used_mask(net, arch).items():
            grad = params[name].grad if params[name].grad is not None else torch.zeros_like(params[name])
            assert not grad[~used].any(), f"{arch.key()}: {name} has gradient outside its slice"
            if used.any() and re.search(r"\.(qkv|up|down)(\.|$)|^tok_emb$", name):
                assert grad[used].abs().max() > 0, f"{arch.key()}: {name} got no gradient"


def test_no_state_between_calls(net):
    tokens = torch.randint(0, 256, (2, 50))
    a, b = net.space.sample(1), net.space.sample(2)
    first = net(tokens, a)
    net(tokens, b)
    torch.testing.assert_close(net(tokens, a), first, atol=0, rtol=0)


def test_moe_balance_loss_is_returned_only_for_moe(net):
    tokens = torch.randint(0, 256, (2, 50))
    dense = ArchConfig(64, (LayerConfig(n_heads=2, mlp_ratio=2.0),) * 2)
    moe = ArchConfig(64, (LayerConfig(n_heads=2, mlp_ratio=2.0, ffn="moe", n_experts=4, top_k=2),) * 2)
    assert net(tokens, dense, return_aux=True)[1].item() == 0
    assert net(tokens, moe, return_aux=True)[1].item() >= 1.0 - 1e-6  # E * sum(f * P) >= 1 at best balance


@pytest.mark.parametrize(
    "arch,field",
    [
        (ArchConfig(64, tuple(LayerConfig(2, 2.0) for _ in range(5))), "depth"),
        (ArchConfig(256, (LayerConfig(2, 2.0),) * 2), "embed_dim"),
        (ArchConfig(64, (LayerConfig(8, 2.0),) * 2), "layers[0].n_heads"),
        (ArchConfig(64, (LayerConfig(2, 2.0), LayerConfig(2, 8.0))), "layers[1].mlp_ratio"),
        (ArchConfig(64, (LayerConfig(2, 2.0), LayerConfig(2, 2.0, attention="flash"))), "layers[1].attention"),
        (ArchConfig(64, (LayerConfig(2, 2.0, norm="batchnorm"),) * 2), "layers[0].norm"),
        (ArchConfig(64, (LayerConfig(2, 2.0, ffn="moe", n_experts=8, top_k=1),) * 2), "layers[0].n_experts"),
        (ArchConfig(64, (LayerConfig(2, 2.0, weight_bits=2),) * 2), "layers[0].weight_bits"),
    ],
)
def test_arch_outside_the_space_names_the_field(net, arch, field):
    with pytest.raises(ArchError) as e:
        net(torch.zeros(1, 8, dtype=torch.long), arch)
    assert e.value.field == field
    assert str(e.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    "tokens,message",
    [
        (torch.tensor([[0, 256]]), r"tokens: ids must be in \[0, 255\] \(vocab_size 256\), got range \[0, 256\]"),
        (torch.tensor([[-1, 3]]), r"tokens: ids must be in \[0, 255\]"),
        (torch.zeros(1, 129, dtype=torch.long), r"tokens: sequence length 129 is outside 1..128 \(block_size\)"),
        (torch.zeros(1, 8), r"tokens: expected an integer tensor of shape \(batch, seq_len\), got torch.float32"),
        (torch.zeros(8, dtype=torch.long), r"tokens: expected an integer tensor of shape \(batch, seq_len\), got torch.int64 tensor of shape \(8,\)"),
    ],
)
def test_bad_tokens_raise_input_error(net, tokens, message):
    with pytest.raises(InputError, match=message):
        net(tokens, net.space.smallest())


def test_subnet_saves_and_loads_without_the_supernet(net, tmp_path):
    tokens = torch.randint(0, 256, (2, 64))
    for i, arch in enumerate(covering_archs()[:6]):
        sub = extract_subnet(net, arch)
        path = tmp_path / f"sub{i}.safetensors"
        save_subnet(sub, path)
        loaded = load_subnet(path)
        assert loaded.arch == arch
        torch.testing.assert_close(loaded(tokens), net(tokens, arch), atol=1e-5, rtol=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"sub{i}.safetensors" for i in range(6)]  # no temp files left


def test_loading_a_non_subnet_file_fails_clearly(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="not an hwnas subnet file"):
        load_subnet(path)


def test_supernet_holds_the_largest_weights():
    net = Supernet(SearchSpaceConfig(weight_sharing="shared"))
    c = net.config
    assert net.tok_emb.shape == (c.vocab_size, max(c.embed_dim))
    assert len(net.blocks) == max(c.depth)
    assert net.blocks[0].ffn.up.shape == (int(max(c.mlp_ratio.choices) * max(c.embed_dim)), max(c.embed_dim))
    assert net.blocks[0].attn.qkv.shape == (3, max(c.n_heads.choices) * c.head_dim, max(c.embed_dim))
    assert sorted(net.blocks[0].ffn.routers.keys()) == [str(e) for e in c.ffn.experts]


def test_per_kind_sharing_gives_each_attention_and_ffn_kind_its_own_weights():
    shared = Supernet(SearchSpaceConfig(weight_sharing="shared"))
    cfg = SearchSpaceConfig(weight_sharing="per_kind", attention={"choices": ["softmax", "linear"]})
    net = Supernet(cfg)
    attn, ffn = net.blocks[0].attn, net.blocks[0].ffn
    assert sorted(attn.qkv.keys()) == ["linear", "softmax"] and sorted(attn.proj.keys()) == ["linear", "softmax"]
    assert sorted(ffn.up.keys()) == ["mlp", "moe", "swiglu"] and sorted(ffn.down.keys()) == ["mlp", "moe", "swiglu"]
    assert attn.qkv["linear"].shape == shared.blocks[0].attn.qkv.shape
    assert ffn.up["moe"].shape == shared.blocks[0].ffn.up.shape
    per_layer_extra = 1 * (shared.blocks[0].attn.qkv.numel() + shared.blocks[0].attn.proj.numel()) + 2 * (
        shared.blocks[0].ffn.up.numel() + shared.blocks[0].ffn.down.numel())
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(net) == n(shared) + len(net.blocks) * per_layer_extra
    # a subnet is the same size whatever the sharing: only the supernet stores more
    arch = net.space.sample(3)
    assert n(extract_subnet(net, arch)) == n(extract_subnet(shared, arch)) == net.space.params(arch)["total"]


def test_a_checkpoint_of_one_weight_sharing_does_not_load_into_the_other(tmp_path):
    from hwnas.supernet.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    path = tmp_path / "ckpt.safetensors"
    model = Supernet(SearchSpaceConfig(weight_sharing="shared"))
    save_checkpoint(path, model, torch.optim.AdamW(model.parameters()), meta={})
    with pytest.raises(CheckpointError, match="weights do not fit this model"):
        load_checkpoint(path, Supernet(SearchSpaceConfig(weight_sharing="per_kind")))


@pytest.mark.parametrize("sharing", ["shared", "per_kind"])
def test_every_arch_of_a_tiny_space_matches_its_extraction(sharing):
    """Every arch of a tiny space (all gene vectors) runs and matches its extraction."""
    cfg = SearchSpaceConfig(weight_sharing=sharing,
        depth=[1], embed_dim=[16], head_dim=4, block_size=16,
        n_heads={"choices": [1, 2]}, mlp_ratio={"choices": [2.0]},
        attention={"choices": ["softmax", "linear", "window"], "windows": [4]},
        ffn={"choices": ["mlp", "swiglu", "moe"], "experts": [2], "top_k": [1, 2]},
    )
    torch.manual_seed(0)
    net = Supernet(cfg)
    space = net.space
    tokens = torch.randint(0, 256, (2, 16))
    lows, highs = space.pymoo_bounds()
    count = 0
    for vec in itertools.product(*[range(lo, hi + 1) for lo, hi in zip(lows, highs, strict=True)]):
        arch = space.decode(vec)
        torch.testing.assert_close(extract_subnet(net, arch)(tokens), net(tokens, arch), atol=1e-5, rtol=0)
        count += 1
    assert count == space.size()
