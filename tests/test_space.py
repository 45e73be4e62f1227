"""`SearchSpace`: encoding, validation, sampling and variation, counting, extremes, Optuna and pymoo."""

from __future__ import annotations

import dataclasses
import itertools
import re
import warnings

import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwnas.search_space import ArchConfig, ArchError, LayerConfig, SearchSpace, SearchSpaceConfig
from tests.conftest import QUICKSTART_SIZE, seeds, spaces

FAST = settings(max_examples=60, deadline=None, derandomize=True)


def replace_layer(arch: ArchConfig, i: int, **changes) -> ArchConfig:
    layers = list(arch.layers)
    layers[i] = dataclasses.replace(layers[i], **changes)
    return ArchConfig(arch.embed_dim, tuple(layers))


def layer_of_gene(name: str) -> int | None:
    m = re.fullmatch(r"\w+\[(\d+)\]", name)
    return int(m.group(1)) if m else None


# --- genes and encoding -------------------------------------------------------------------------------
def test_quickstart_genes(quickstart_space):
    space = quickstart_space
    names = [g.name for g in space.genes]
    # depth, width, the shared placement, then 6 per-layer genes for each of 4 layer slots
    assert names[:3] == ["depth", "embed_dim", "placement"]
    assert names[3:9] == ["n_heads[0]", "mlp_ratio[0]", "norm[0]", "attention[0]", "ffn[0]", "weight_bits[0]"]
    assert space.n_genes == 3 + 6 * 4 == len(names)
    assert names[-1] == "weight_bits[3]"
    assert space.choices["attention"] == ("softmax", "linear", "window:32")
    assert space.choices["ffn"] == ("mlp", "swiglu", "moe:4:1", "moe:4:2")
    assert space.choices["mlp_ratio"] == (2.0, 3.0, 4.0)
    xl, xu = space.pymoo_bounds()
    assert xl.tolist() == [0] * space.n_genes
    assert xu.tolist() == [len(g.choices) - 1 for g in space.genes]
    assert xu[:3].tolist() == [2, 2, 2] and xu[7] == 3  # ffn[0] has 4 choices


def test_moe_choices_drop_top_k_above_expert_count():
    cfg = SearchSpaceConfig(embed_dim=[64], ffn={"choices": ["mlp", "moe"], "experts": [2, 4], "top_k": [1, 2, 4]})
    assert SearchSpace(cfg).choices["ffn"] == ("mlp", "moe:2:1", "moe:2:2", "moe:4:1", "moe:4:2", "moe:4:4")


@FAST
@given(space=spaces, seed=seeds)
def test_decode_encode_round_trip(space, seed):
    arch = space.sample(seed)
    vec = space.encode(arch)
    assert vec.dtype == np.int64 and vec.shape == (space.n_genes,)
    assert space.decode(vec) == arch
    # floats holding whole numbers (what pymoo hands over) decode the same
    assert space.decode(vec.astype(float)) == arch
    # genes of layers beyond the depth encode as 0
    inactive = [j for j, g in enumerate(space.genes) if g.layer is not None and g.layer >= arch.depth]
    assert all(vec[j] == 0 for j in inactive)


@FAST
@given(space=spaces, seed=seeds)
def test_decode_ignores_inactive_genes(space, seed):
    rng = np.random.default_rng(seed)
    xl, xu = space.pymoo_bounds()
    vec = rng.integers(xl, xu + 1)
    arch = space.decode(vec)
    space.validate(arch)
    canonical = space.encode(arch)
    assert space.decode(canonical) == arch
    active = [j for j, g in enumerate(space.genes) if g.layer is None or g.layer < arch.depth]
    assert (canonical[active] == vec[active]).all()


def test_decode_bad_vectors_name_the_gene(quickstart_space):
    space = quickstart_space
    good = space.encode(space.sample(3)).astype(object)
    n = space.n_genes
    j_ffn1 = [g.name for g in space.genes].index("ffn[1]")

    def bad(j, value):
        vec = good.copy()
        vec[j] = value
        return vec

    cases = [
        (np.zeros(n - 1), "vector", rf"expected shape \({n},\), got \({n - 1},\)"),
        (np.zeros((1, n)), "vector", r"expected shape"),
        (bad(0, 3), "depth", r"not an integer in \[0, 2\]"),
        (bad(1, -1), "embed_dim", r"not an integer in \[0, 2\]"),
        (bad(j_ffn1, 4), "ffn[1]", r"gene value 4 is not an integer in \[0, 3\]"),
        (bad(j_ffn1, 1.5), "ffn[1]", r"1\.5"),
        (bad(2, float("nan")), "placement", r"nan"),
        (bad(2, float("inf")), "placement", r"inf"),
        (bad(2, "1"), "placement", r"'1'"),
        (bad(2, None), "placement", r"None"),
    ]
    for vec, field, message in cases:
        with pytest.raises(ArchError, match=message) as info:
            space.decode(vec)
        assert info.value.field == field, (vec, info.value)
        assert str(info.value).startswith(f"{field}: ")


# --- validation ---------------------------------------------------------------------------------------
def _base(space: SearchSpace) -> ArchConfig:
    """A valid 3-layer quickstart arch with a MoE layer 0 and a window-attention layer 2."""
    layers = (
        LayerConfig(n_heads=2, mlp_ratio=2, ffn="moe", n_experts=4, top_k=2),
        LayerConfig(n_heads=4, mlp_ratio=3, norm="dyt"),
        LayerConfig(n_heads=2, mlp_ratio=4, attention="window", window=32, weight_bits=8),
    )
    arch = ArchConfig(96, layers)
    space.validate(arch)
    return arch


@pytest.mark.parametrize(
    "mutate, field, message",
    [
        (lambda a: ArchConfig(a.embed_dim, a.layers + a.layers[:2]), "depth", "5 is not one of [2, 3, 4]"),
        (lambda a: ArchConfig(a.embed_dim, a.layers[:1]), "depth", "1 is not one of [2, 3, 4]"),
        (lambda a: ArchConfig(80, a.layers), "embed_dim", "80 is not one of [64, 96, 128]"),
        (lambda a: ArchConfig(96.0, a.layers), "embed_dim", "96.0 is not one of [64, 96, 128]"),
        (lambda a: replace_layer(a, 1, n_heads=3), "layers[1].n_heads", "3 is not one of [2, 4]"),
        (lambda a: replace_layer(a, 1, n_heads=4.0), "layers[1].n_heads", "4.0 is not one of [2, 4]"),
        (lambda a: replace_layer(a, 1, n_heads=True), "layers[1].n_heads", "True is not one of [2, 4]"),
        (lambda a: replace_layer(a, 2, mlp_ratio=2.5), "layers[2].mlp_ratio", "2.5 is not one of [2.0, 3.0, 4.0]"),
        (lambda a: replace_layer(a, 0, norm="batchnorm"), "layers[0].norm",
         "'batchnorm' is not one of ['layernorm', 'rmsnorm', 'dyt']"),
        (lambda a: ArchConfig(a.embed_dim, tuple(dataclasses.replace(x, placement="middle") for x in a.layers)),
         "layers[0].placement", "'middle' is not one of ['pre', 'post', 'peri']"),
        (lambda a: replace_layer(a, 1, placement="peri"), "layers[1].placement",
         "'peri' differs from layers[0] ('pre'), but placement is shared by all layers (per_layer: false)"),
        (lambda a: replace_layer(a, 1, attention="flash"), "layers[1].attention",
         "'flash' is not one of ['softmax', 'linear', 'window']"),
        (lambda a: replace_layer(a, 2, window=64), "layers[2].window", "64 is not one of [32]"),
        (lambda a: replace_layer(a, 2, window=None), "layers[2].window", "None is not one of [32]"),
        (lambda a: replace_layer(a, 2, window=32.0), "layers[2].window", "32.0 is not one of [32]"),
        (lambda a: replace_layer(a, 1, ffn="relu"), "layers[1].ffn", "'relu' is not one of ['mlp', 'swiglu', 'moe']"),
        (lambda a: replace_layer(a, 0, n_experts=8), "layers[0].n_experts", "8 is not one of [4]"),
        (lambda a: replace_layer(a, 0, top_k=3), "layers[0].top_k", "3 is not one of [1, 2]"),
        (lambda a: replace_layer(a, 0, top_k=None), "layers[0].top_k", "None is not one of [1, 2]"),
        (lambda a: replace_layer(a, 2, weight_bits=2), "layers[2].weight_bits", "2 is not one of [16, 8, 4]"),
        (lambda a: replace_layer(a, 2, weight_bits=8.0), "layers[2].weight_bits", "8.0 is not one of [16, 8, 4]"),
        (lambda a: ArchConfig(a.embed_dim, (a.layers[0], "h2", a.layers[2])), "layers[1]",
         "expected a LayerConfig, got str"),
        (lambda a: a.to_dict(), "arch", "expected an ArchConfig, got dict"),
    ],
    ids=["too-deep", "too-shallow", "embed", "embed-float", "heads", "heads-float", "heads-bool", "ratio",
         "norm", "placement", "placement-shared", "attention", "window", "window-missing", "window-float",
         "ffn", "experts", "top-k", "top-k-missing", "bits", "bits-float", "layer-type", "arch-type"],
)
def test_validate_names_the_offending_field(quickstart_space, mutate, field, message):
    bad = mutate(_base(quickstart_space))
    with pytest.raises(ArchError) as info:
        quickstart_space.validate(bad)
    assert info.value.field == field
    assert str(info.value) == f"{field}: {message}"
    assert not quickstart_space.contains(bad)
    with pytest.raises(ArchError):
        quickstart_space.encode(bad)  # encoding validates first


def test_validate_top_k_above_own_expert_count():
    # 4 is a valid top-k (for 4 experts) but not for a layer with 2 experts
    space = SearchSpace(SearchSpaceConfig(embed_dim=[64], ffn={"choices": ["moe"], "experts": [2, 4], "top_k": [1, 4]}))
    ok = ArchConfig(64, (LayerConfig(n_heads=2, mlp_ratio=2, ffn="moe", n_experts=4, top_k=4),) * 2)
    assert ok.validate(space) is ok
    bad = ArchConfig(64, (ok.layers[0], LayerConfig(n_heads=2, mlp_ratio=2, ffn="moe", n_experts=2, top_k=4)))
    with pytest.raises(ArchError) as info:
        space.validate(bad)
    assert info.value.field == "layers[1].top_k"
    assert str(info.value) == "layers[1].top_k: 4 is not one of [1]"


@pytest.mark.parametrize(
    "dim, config, change, shown",
    [
        ("n_heads", {"n_heads": {"choices": [2, 4], "per_layer": False}}, {"n_heads": 4}, "4 differs from layers[0] (2)"),
        ("norm", {"norm": {"choices": ["layernorm", "dyt"], "per_layer": False}}, {"norm": "dyt"}, "'dyt'"),
        ("attention", {"attention": {"choices": ["softmax", "window"], "windows": [16, 32], "per_layer": False}},
         {"attention": "window", "window": 16}, "'window:16' differs from layers[0] ('softmax')"),
        ("ffn", {"ffn": {"choices": ["moe"], "experts": [4], "top_k": [1, 2], "per_layer": False}},
         {"top_k": 2}, "'moe:4:2' differs from layers[0] ('moe:4:1')"),
        ("weight_bits", {"weight_bits": {"choices": [16, 4], "per_layer": False}}, {"weight_bits": 4}, "4 differs"),
    ],
)
def test_shared_dimension_must_agree_across_layers(dim, config, change, shown):
    space = SearchSpace(SearchSpaceConfig(**config))
    arch = space.sample(0)
    first = space.decode(np.zeros(space.n_genes, dtype=int))  # choice 0 everywhere, depth 2
    assert first.depth == 2
    bad = replace_layer(first, 1, **change)
    with pytest.raises(ArchError) as info:
        space.validate(bad)
    assert info.value.field == f"layers[1].{dim}"
    assert shown in str(info.value) and "shared by all layers (per_layer: false)" in str(info.value)
    # the layers of a sample all take the shared gene's one value
    attr = f"{dim}_choice" if dim in ("attention", "ffn") else dim
    assert len({getattr(layer, attr) for layer in arch.layers}) == 1


# --- sampling and variation ---------------------------------------------------------------------------
@FAST
@given(space=spaces, seed=seeds)
def test_sample_mutate_crossover_are_valid(space, seed):
    rng = np.random.default_rng(seed)
    a, b = space.sample(rng), space.sample(rng)
    for arch in (a, b, space.mutate(a, rng), space.mutate(a, rng, p=1.0), space.crossover(a, b, rng),
                 space.crossover(b, a, rng), space.smallest(), space.largest()):
        assert isinstance(arch, ArchConfig)
        space.validate(arch)
        assert space.contains(arch)


@FAST
@given(space=spaces, seed=seeds)
def test_crossover_takes_every_gene_from_a_parent(space, seed):
    rng = np.random.default_rng(seed)
    for _ in range(10):
        a, b = space.sample(rng), space.sample(rng)
        child = space.crossover(a, b, rng)
        assert space.crossover(a, a, rng) == a
        va, vb, vc = space.encode(a), space.encode(b), space.encode(child)
        assert child.depth in (a.depth, b.depth) and child.embed_dim in (a.embed_dim, b.embed_dim)
        for j, gene in enumerate(space.genes):
            if gene.layer is not None and gene.layer >= child.depth:
                continue
            if gene.layer is not None and gene.layer >= a.depth:  # a slot only b has
                assert vc[j] == vb[j], gene.name
            elif gene.layer is not None and gene.layer >= b.depth:  # a slot only a has
                assert vc[j] == va[j], gene.name
            else:
                assert vc[j] in (va[j], vb[j]), gene.name


def test_crossover_mixes_both_parents(quickstart_space):
    space = quickstart_space
    rng = np.random.default_rng(3)
    from_a = from_b = 0
    for _ in range(200):
        a, b = space.sample(rng), space.sample(rng)
        if a.depth != b.depth:
            continue
        va, vb, vc = space.encode(a), space.encode(b), space.encode(space.crossover(a, b, rng))
        differ = va != vb
        from_a += int((vc[differ] == va[differ]).sum())
        from_b += int((vc[differ] == vb[differ]).sum())
    # uniform crossover: about half of the differing genes from each parent
    assert 0.4 < from_a / (from_a + from_b) < 0.6


@FAST
@given(space=spaces, seed=seeds)
def test_mutate_rates(space, seed):
    rng = np.random.default_rng(seed)
    a = space.sample(rng)
    assert space.mutate(a, rng, p=0.0) == a
    m = space.mutate(a, rng, p=1.0)
    va, vm = space.encode(a), space.encode(m)
    # with p=1 every active gene that has an alternative moves to a different choice
    for j, gene in enumerate(space.genes):
        active_in_both = gene.layer is None or gene.layer < min(a.depth, m.depth)
        if active_in_both and len(gene.choices) > 1:
            assert vm[j] != va[j], gene.name


def test_sampling_is_seeded_and_covers_choices(quickstart_space):
    space = quickstart_space
    assert space.sample(11) == space.sample(11)
    assert space.sample(np.random.default_rng(11)) == space.sample(11)
    archs = [space.sample(np.random.default_rng(5)) for _ in range(2)]
    assert archs[0] == archs[1]
    rng = np.random.default_rng(0)
    archs = [space.sample(rng) for _ in range(3000)]
    assert len(set(archs)) > 2990  # 1.6e12 archs: repeats are rare
    depth = np.bincount([a.depth for a in archs], minlength=5)[2:] / len(archs)
    ffn = {k: sum(x.ffn_choice == k for a in archs for x in a.layers) for k in space.choices["ffn"]}
    assert np.all(np.abs(depth - 1 / 3) < 0.04), depth
    n_layers = sum(a.depth for a in archs)
    assert all(abs(v / n_layers - 1 / 4) < 0.03 for v in ffn.values()), ffn


# --- counting -----------------------------------------------------------------------------------------
TINY_SPACES = [
    SearchSpaceConfig(
        vocab_size=16, block_size=16, head_dim=4, depth=[1, 2], embed_dim=[8, 16],
        n_heads={"choices": [1, 2]}, mlp_ratio={"choices": [2.0]},
        norm={"choices": ["layernorm", "rmsnorm"]}, norm_placement={"choices": ["pre", "post"]},
        attention={"choices": ["softmax", "linear", "window"], "windows": [4]},
        ffn={"choices": ["mlp", "moe"], "experts": [2], "top_k": [1, 2]},
        weight_bits={"choices": [16, 8], "per_layer": False},
    ),
    SearchSpaceConfig(
        vocab_size=16, block_size=16, head_dim=4, depth=[1, 3], embed_dim=[8],
        n_heads={"choices": [1, 2], "per_layer": False}, mlp_ratio={"choices": [1.0, 2.0]},
        norm={"choices": ["dyt"]}, norm_placement={"choices": ["peri", "pre"], "per_layer": True},
        attention={"choices": ["window"], "windows": [2, 4], "per_layer": False},
        ffn={"choices": ["moe"], "experts": [2, 4], "top_k": [1, 4]},
        weight_bits={"choices": [4]},
    ),
]


@pytest.mark.parametrize("cfg", TINY_SPACES, ids=["tiny-a", "tiny-b"])
def test_size_matches_brute_force_enumeration(cfg):
    space = SearchSpace(cfg)
    _, xu = space.pymoo_bounds()
    keys, archs = set(), set()
    n_vectors = 0
    for vec in itertools.product(*(range(int(u) + 1) for u in xu)):
        arch = space.decode(np.array(vec))
        space.validate(arch)
        keys.add(arch.key())
        archs.add(arch)
        n_vectors += 1
    assert n_vectors == int(np.prod(xu + 1)) > len(archs)  # inactive genes repeat archs
    assert len(keys) == len(archs) == space.size()


def test_tiny_space_size_by_hand():
    # tiny-a: a layer picks heads (2) x norm (2) x attention (softmax, linear, window:4 = 3)
    # x ffn (mlp, moe:2:1, moe:2:2 = 3) = 36; shared: placement (2) x bits (2); widths: 2
    per_layer = 2 * 2 * 3 * 3
    assert SearchSpace(TINY_SPACES[0]).size() == 2 * 2 * 2 * (per_layer**1 + per_layer**2) == 10_656
    # tiny-b: a layer picks ratio (2) x placement (2) x ffn (moe:2:1, moe:4:1, moe:4:4 = 3; no moe:2:4)
    # = 12; shared: heads (2) x attention (window:2, window:4 = 2); one width
    assert SearchSpace(TINY_SPACES[1]).size() == 2 * 2 * (12 + 12**3) == 6_960


def test_quickstart_size_closed_form(quickstart_space):
    c = quickstart_space.config
    moe_pairs = sum(1 for e in c.ffn.experts for k in c.ffn.top_k if k <= e)  # (4,1), (4,2)
    attention = (len(c.attention.choices) - 1) + len(c.attention.windows)  # softmax, linear, window:32
    ffn = (len(c.ffn.choices) - 1) + moe_pairs  # mlp, swiglu, moe:4:1, moe:4:2
    per_layer = len(c.n_heads.choices) * len(c.mlp_ratio.choices) * len(c.norm.choices) * attention * ffn \
        * len(c.weight_bits.choices)
    assert per_layer == 2 * 3 * 3 * 3 * 4 * 3 == 648
    shared = len(c.norm_placement.choices)
    expected = len(c.embed_dim) * shared * sum(per_layer**d for d in c.depth)
    assert expected == 3 * 3 * (648**2 + 648**3 + 648**4)
    assert quickstart_space.size() == expected == QUICKSTART_SIZE
    assert isinstance(quickstart_space.size(), int)


# --- extremes -----------------------------------------------------------------------------------------
def _costs(space: SearchSpace, arch: ArchConfig) -> tuple[int, int, int]:
    return (space.flops(arch), space.params(arch)["total"], space.memory(arch)["total"])


def test_smallest_and_largest_bound_quickstart_samples(quickstart_space):
    space = quickstart_space
    small, large = space.smallest(), space.largest()
    space.validate(small)
    space.validate(large)
    assert (small.depth, small.embed_dim, large.depth, large.embed_dim) == (2, 64, 4, 128)
    rng = np.random.default_rng(2024)
    samples = [space.sample(rng) for _ in range(500)]
    cs, cl = _costs(space, small), _costs(space, large)
    for arch in samples:
        c = _costs(space, arch)
        assert cs[0] <= c[0]  # fewest FLOPs
        assert cs <= c  # (FLOPs, params, memory) lexicographically: the documented greedy order
        assert cl[0] >= c[0] and cl[1] >= c[1] and cl[2] >= c[2]


def test_smallest_without_moe_has_fewest_flops_params_and_memory():
    # with MoE in the space the fewest-FLOPs FFN (moe, top-1) has router weights an MLP lacks, so
    # there is no arch with both fewest FLOPs and fewest params; without MoE there is one
    space = SearchSpace(SearchSpaceConfig(ffn={"choices": ["swiglu", "mlp"]}))
    small = space.smallest()
    assert all(layer.ffn == "mlp" and layer.norm == "rmsnorm" for layer in small.layers)
    rng = np.random.default_rng(1)
    cs = _costs(space, small)
    for _ in range(500):
        c = _costs(space, space.sample(rng))
        assert cs[0] <= c[0] and cs[1] <= c[1] and cs[2] <= c[2]


@settings(max_examples=40, deadline=None, derandomize=True)
@given(space=spaces, seed=seeds)
def test_extremes_bound_samples_in_varied_spaces(space, seed):
    rng = np.random.default_rng(seed)
    cs, cl = _costs(space, space.smallest()), _costs(space, space.largest())
    for _ in range(30):
        c = _costs(space, space.sample(rng))
        assert cs <= c <= cl


# --- Optuna -------------------------------------------------------------------------------------------
def _run_study(space: SearchSpace, sampler, n_trials: int):
    suggested: dict[int, ArchConfig] = {}

    def objective(trial):
        arch = space.suggest(trial)
        space.validate(arch)
        suggested[trial.number] = arch
        return space.params(arch)["total"], space.flops(arch)

    study = optuna.create_study(directions=["minimize", "minimize"], sampler=sampler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.optimize(objective, n_trials=n_trials)
    return study, suggested


OPTUNA_SPACES = {
    "quickstart": SearchSpaceConfig(),
    "shared-heads-norm": SearchSpaceConfig(
        depth=[1, 3, 5], n_heads={"choices": [2, 4], "per_layer": False},
        norm={"choices": ["rmsnorm", "dyt"], "per_layer": False}, norm_placement={"choices": ["pre", "peri"], "per_layer": True},
    ),
}


@pytest.mark.parametrize("space_id", OPTUNA_SPACES)
@pytest.mark.parametrize("sampler_name", ["nsga2", "tpe"])
def test_optuna_produces_only_valid_archs(space_id, sampler_name):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = SearchSpace(OPTUNA_SPACES[space_id])
    sampler = (optuna.samplers.NSGAIISampler(seed=0, population_size=8) if sampler_name == "nsga2"
               else optuna.samplers.TPESampler(seed=0, n_startup_trials=8))
    study, suggested = _run_study(space, sampler, n_trials=30)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 30
    shared_names = {g.name for g in space.genes if g.layer is None}
    for trial in complete:
        arch = suggested[trial.number]
        assert space.from_params(trial.params) == arch
        assert trial.values == [space.params(arch)["total"], space.flops(arch)]
        # global and shared genes always; per-layer genes only for the active layers
        per_layer = {name for name in trial.params if layer_of_gene(name) is not None}
        assert set(trial.params) - per_layer == shared_names
        assert {layer_of_gene(name) for name in per_layer} == set(range(arch.depth))
        n_per_layer_dims = sum(space.per_layer.values())
        assert len(per_layer) == n_per_layer_dims * arch.depth
    assert len({a.key() for a in suggested.values()}) > 5  # the study explores


# --- pymoo --------------------------------------------------------------------------------------------
def _pymoo_spaces():
    return [
        SearchSpace(SearchSpaceConfig()),
        # single-choice genes give xl == xu, which the real-valued operators must survive
        SearchSpace(SearchSpaceConfig(depth=[1, 3], embed_dim=[64], n_heads={"choices": [2]},
                                      ffn={"choices": ["mlp", "moe"], "experts": [2, 4], "top_k": [1, 2, 4]},
                                      weight_bits={"choices": [8]})),
    ]


@pytest.mark.parametrize("index", [0, 1], ids=["quickstart", "single-choice-genes"])
def test_pymoo_integer_nsga2_produces_only_valid_archs(index):
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.core.problem import ElementwiseProblem
    from pymoo.operators.crossover.sbx import SBX
    from pymoo.operators.mutation.pm import PM
    from pymoo.operators.repair.rounding import RoundingRepair
    from pymoo.operators.sampling.rnd import IntegerRandomSampling
    from pymoo.optimize import minimize

    space = _pymoo_spaces()[index]
    xl, xu = space.pymoo_bounds()
    seen: list[ArchConfig] = []

    class Problem(ElementwiseProblem):
        def __init__(self):
            super().__init__(n_var=space.n_genes, n_obj=2, xl=xl, xu=xu, vtype=int)

        def _evaluate(self, x, out, *args, **kwargs):
            arch = space.decode(x)
            space.validate(arch)
            seen.append(arch)
            out["F"] = [space.flops(arch), -space.params(arch)["total"]]

    algorithm = NSGA2(
        pop_size=16,
        sampling=IntegerRandomSampling(),
        crossover=SBX(prob=0.9, eta=15, vtype=float, repair=RoundingRepair()),
        mutation=PM(eta=20, vtype=float, repair=RoundingRepair()),
        eliminate_duplicates=True,
    )
    res = minimize(Problem(), algorithm, ("n_gen", 8), seed=1, verbose=False)
    assert len(seen) >= 16 * 4
    assert len({a.key() for a in seen}) > 16
    for x in np.atleast_2d(res.X):
        space.validate(space.decode(x))


@pytest.mark.parametrize("index", [0, 1], ids=["quickstart", "single-choice-genes"])
def test_pymoo_mixed_variable_ga_produces_only_valid_archs(index):
    from pymoo.algorithms.moo.nsga2 import RankAndCrowding
    from pymoo.core.mixed import MixedVariableGA
    from pymoo.core.problem import ElementwiseProblem
    from pymoo.optimize import minimize

    space = _pymoo_spaces()[index]
    variables = space.pymoo_variables()
    assert list(variables) == [g.name for g in space.genes]
    assert [v.bounds for v in variables.values()] == [(0, len(g.choices) - 1) for g in space.genes]
    seen: list[ArchConfig] = []

    class Problem(ElementwiseProblem):
        def __init__(self):
            super().__init__(vars=space.pymoo_variables(), n_obj=2)

        def _evaluate(self, x, out, *args, **kwargs):
            arch = space.decode_pymoo(x)
            space.validate(arch)
            seen.append(arch)
            out["F"] = [space.flops(arch), -space.params(arch)["total"]]

    res = minimize(Problem(), MixedVariableGA(pop_size=16, survival=RankAndCrowding()), ("n_gen", 5),
                   seed=1, verbose=False)
    assert len(seen) >= 16 * 3
    for x in np.atleast_1d(res.X):
        space.validate(space.decode_pymoo(x))


@given(seed=seeds, as_dict=st.booleans())
@settings(max_examples=30, deadline=None, derandomize=True)
def test_decode_pymoo_accepts_dicts_and_vectors(quickstart_space, seed, as_dict):
    space = quickstart_space
    arch = space.sample(seed)
    vec = space.encode(arch)
    x = {g.name: int(v) for g, v in zip(space.genes, vec, strict=True)} if as_dict else vec
    assert space.decode_pymoo(x) == arch
