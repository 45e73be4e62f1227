"""The weight-sharing bench's own statistics (experiments/bench/weight_sharing.py): the FLOPs-stratified
arch sample (per-layer kinds, uniform kinds, sizes only), the bootstrap interval of Kendall tau and
the one-change archs."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments" / "bench"))

from weight_sharing import KIND_FIELDS, bootstrap_tau, one_change_archs, stratified_archs, uniform_kinds  # noqa: E402


def test_stratified_archs_span_the_space_by_flops(quickstart_space):
    archs = stratified_archs(quickstart_space, 12, seed=3, pool_size=600)
    assert len(archs) == 12 and len(set(archs)) == 12
    assert archs[0] == quickstart_space.smallest() and archs[-1] == quickstart_space.largest()
    flops = [quickstart_space.flops(a) for a in archs]
    assert flops == sorted(flops)  # one per stratum, strata in FLOPs order
    assert stratified_archs(quickstart_space, 12, seed=3, pool_size=600) == archs  # the seed decides
    assert stratified_archs(quickstart_space, 12, seed=4, pool_size=600) != archs


def test_bootstrap_interval_brackets_tau_and_narrows_with_agreement():
    rng = np.random.default_rng(0)
    x = rng.normal(size=40)
    agree, noisy = x + 0.1 * rng.normal(size=40), x + 2.0 * rng.normal(size=40)
    lo, hi = bootstrap_tau(x, agree, n=500)
    assert lo <= kendalltau(x, agree).statistic <= hi and lo > 0.7
    lo_n, hi_n = bootstrap_tau(x, noisy, n=500)
    assert lo_n <= kendalltau(x, noisy).statistic <= hi_n
    assert hi_n - lo_n > hi - lo
    assert np.allclose(bootstrap_tau(x, x, n=200), 1.0)  # a perfect ranking stays perfect in every resample


def test_one_change_archs_differ_from_the_largest_in_one_field(quickstart_space):
    changes = one_change_archs(quickstart_space)
    big = changes.pop("largest")
    assert big == quickstart_space.largest()
    assert {"placement post", "norm layernorm", "ffn moe", "embed_dim 64", "depth 2"} <= set(changes)
    for name, arch in changes.items():
        quickstart_space.validate(arch)
        if name.startswith(("depth", "embed_dim")):
            continue
        field = name.split()[0]
        assert {getattr(layer, field) for layer in arch.layers} != {getattr(layer, field) for layer in big.layers}
        assert arch.embed_dim == big.embed_dim and arch.depth == big.depth


def test_uniform_kinds_ties_every_layer_to_the_first_and_keeps_sizes(quickstart_space):
    mixed = stratified_archs(quickstart_space, 10, seed=1, pool_size=400)
    assert any(len({layer.norm for layer in a.layers}) > 1 for a in mixed)  # the default draw mixes kinds
    archs = stratified_archs(quickstart_space, 10, seed=1, pool_size=400, uniform=True)
    for a in archs:
        quickstart_space.validate(a)
        assert all({getattr(layer, f) for layer in a.layers} == {getattr(a.layers[0], f)} for f in KIND_FIELDS)
    arch = next(a for a in mixed if len({layer.attention for layer in a.layers}) > 1)
    tied = uniform_kinds(arch)
    assert [(x.n_heads, x.mlp_ratio, x.placement) for x in tied.layers] == [(x.n_heads, x.mlp_ratio, x.placement) for x in arch.layers]
    assert tied.embed_dim == arch.embed_dim and tied.depth == arch.depth and tied != arch


def test_sizes_only_archs_share_the_largest_kinds_and_differ_in_sizes(quickstart_space):
    archs = stratified_archs(quickstart_space, 10, seed=2, pool_size=600, sizes_only=True)
    largest = quickstart_space.largest()
    kinds = {(layer.norm, layer.placement, layer.attention, layer.ffn, layer.weight_bits) for a in archs for layer in a.layers}
    assert kinds == {(largest.layers[0].norm, largest.layers[0].placement, "softmax", largest.layers[0].ffn, 16)}
    assert len(set(archs)) == 10 and archs[-1] == largest
    assert (archs[0].embed_dim, archs[0].depth) == (quickstart_space.smallest().embed_dim, quickstart_space.smallest().depth)
    flops = [quickstart_space.flops(a) for a in archs]
    assert flops == sorted(flops) and len({(a.embed_dim, a.depth) for a in archs}) > 3
    for a in archs:
        quickstart_space.validate(a)
