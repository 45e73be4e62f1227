"""`ArchConfig` / `LayerConfig`: canonical form, keys (unique, stable across processes), serialization."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from hypothesis import given, settings

from hwnas.search_space import ArchConfig, ArchError, LayerConfig, SearchSpace, SearchSpaceConfig
from tests.conftest import REPO, seeds, spaces

FAST = settings(max_examples=60, deadline=None, derandomize=True)

# Two handmade archs and their keys, written out by hand: a key change breaks every stored table,
# predictor dataset and result that is indexed by key, so it must be deliberate.
HANDMADE = [
    (
        ArchConfig(
            embed_dim=96,
            layers=(
                LayerConfig(n_heads=2, mlp_ratio=3, norm="rmsnorm", placement="peri", attention="window",
                            window=32, ffn="moe", n_experts=4, top_k=2, weight_bits=8),
                LayerConfig(n_heads=4, mlp_ratio=2.5, norm="dyt", placement="peri", attention="linear",
                            ffn="swiglu", weight_bits=4),
            ),
        ),
        "e96-L2:h2r3-rms-peri-win32-moe4k2-q8|h4r2.5-dyt-peri-lin-swiglu-q4",
    ),
    (
        ArchConfig(embed_dim=64, layers=(LayerConfig(n_heads=1, mlp_ratio=4.0),)),
        "e64-L1:h1r4-ln-pre-sm-mlp-q16",
    ),
]


@pytest.mark.parametrize("arch, key", HANDMADE, ids=["two-layer", "defaults"])
def test_key_of_handmade_arch_is_the_literal(arch, key):
    assert arch.key() == key
    assert str(arch) == key


def test_irrelevant_fields_are_canonicalized_to_none():
    # a window without window attention, experts without MoE: the same network, so the same value
    noisy = LayerConfig(n_heads=2, mlp_ratio=2, attention="softmax", window=32, ffn="mlp", n_experts=4, top_k=2)
    clean = LayerConfig(n_heads=2, mlp_ratio=2.0)
    assert (noisy.window, noisy.n_experts, noisy.top_k) == (None, None, None)
    assert noisy == clean and hash(noisy) == hash(clean) and noisy.key() == clean.key()
    assert isinstance(LayerConfig(n_heads=2, mlp_ratio=3).mlp_ratio, float)
    # layers given as a list are stored as a tuple, so archs stay hashable
    arch = ArchConfig(embed_dim=64, layers=[clean, noisy])
    assert isinstance(arch.layers, tuple) and arch.depth == 2
    assert hash(arch) == hash(ArchConfig(64, (clean, clean)))


def test_gene_choice_strings():
    layer = LayerConfig(n_heads=2, mlp_ratio=2, attention="window", window=16, ffn="moe", n_experts=4, top_k=1)
    assert layer.attention_choice == "window:16"
    assert layer.ffn_choice == "moe:4:1"
    assert LayerConfig(n_heads=2, mlp_ratio=2).attention_choice == "softmax"
    assert LayerConfig(n_heads=2, mlp_ratio=2, ffn="swiglu").ffn_choice == "swiglu"
    assert LayerConfig(n_heads=2, mlp_ratio=1.5).hidden(64) == 96


def test_keys_of_close_ratios_differ():
    # ratios equal to 6 significant digits (what `:g` prints) are still different archs
    close = 1 + 2**-20
    cfg = SearchSpaceConfig(depth=[1], embed_dim=[2**20], mlp_ratio={"choices": [1.0, close]}, ffn={"choices": ["mlp"]})
    space = SearchSpace(cfg)
    a, b = (ArchConfig(2**20, (LayerConfig(n_heads=2, mlp_ratio=r),)) for r in (1.0, close))
    assert space.contains(a) and space.contains(b)
    assert a != b
    assert a.key() != b.key()
    assert a.key() == "e1048576-L1:h2r1-ln-pre-sm-mlp-q16"


@FAST
@given(space=spaces, s1=seeds, s2=seeds)
def test_key_is_unique_per_arch(space, s1, s2):
    a, b = space.sample(s1), space.sample(s2)
    assert (a == b) == (a.key() == b.key())
    # an equal arch built independently (through the gene vector and through a dict) has the same key
    for twin in (space.decode(space.encode(a)), ArchConfig.from_dict(a.to_dict())):
        assert twin == a and twin is not a
        assert twin.key() == a.key() and hash(twin) == hash(a)


@FAST
@given(space=spaces, seed=seeds)
def test_distinct_archs_have_distinct_keys_in_bulk(space, seed):
    # small spaces give many collisions among 60 samples: the key partition must equal the value one
    archs = [space.sample(seed + i) for i in range(60)]
    assert len({a.key() for a in archs}) == len(set(archs))
    by_key = {}
    for a in archs:
        assert by_key.setdefault(a.key(), a) == a


def test_key_is_stable_across_processes(quickstart_space):
    seeds_ = [0, 1, 7, 123, 2**31]
    # the default space is the quickstart one (test_config checks it); building it here keeps the
    # child process light (hwnas.search_space only)
    assert SearchSpace().config == quickstart_space.config
    code = (
        "from hwnas.search_space import SearchSpace\n"
        "space = SearchSpace()\n"
        f"for s in {seeds_!r}:\n"
        "    print(space.sample(s).key())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO, timeout=60,
        env={**os.environ, "PYTHONHASHSEED": "4242"},  # string hashes differ from this process's
    )
    child = out.stdout.split()
    assert len(child) == len(seeds_) == len(set(child))
    assert child == [quickstart_space.sample(s).key() for s in seeds_]


@FAST
@given(space=spaces, seed=seeds)
def test_json_round_trip(space, seed):
    arch = space.sample(seed)
    text = arch.to_json()
    assert json.loads(text)["embed_dim"] == arch.embed_dim
    back = ArchConfig.from_json(text)
    assert back == arch and back.key() == arch.key()
    assert back.to_json() == text
    space.validate(back)


@FAST
@given(space=spaces, seed=seeds)
def test_yaml_round_trip(space, seed):
    arch = space.sample(seed)
    text = arch.to_yaml()
    assert yaml.safe_load(text)["layers"][0]["n_heads"] == arch.layers[0].n_heads
    back = ArchConfig.from_yaml(text)
    assert back == arch and back.key() == arch.key()
    space.validate(back)


@pytest.mark.parametrize(
    "data, field",
    [
        ([1, 2], "arch"),
        ({"embed_dim": 64}, "arch"),
        ({"embed_dim": 64, "layers": [], "extra": 1}, "arch"),
        ({"embed_dim": 64, "layers": "h2r2"}, "layers"),
        ({"embed_dim": 64, "layers": [3]}, "layers[0]"),
        ({"embed_dim": 64, "layers": [{"n_heads": 2, "mlp_ratio": 2.0}, {"n_heads": 2, "mlp_ratio": 2.0, "heads": 2}]},
         "layers[1].heads"),
        ({"embed_dim": 64, "layers": [{"mlp_ratio": 2.0}]}, "layers[0]"),
        ({"embed_dim": 64, "layers": [{"n_heads": 2, "mlp_ratio": "two"}]}, "layers[0]"),
    ],
    ids=["not-mapping", "missing-layers", "extra-key", "layers-not-list", "layer-not-mapping",
         "unknown-layer-field", "missing-n_heads", "ratio-not-number"],
)
def test_from_dict_rejects_malformed_data(data, field):
    with pytest.raises(ArchError) as info:
        ArchConfig.from_dict(data)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    assert "\n" not in str(info.value)
