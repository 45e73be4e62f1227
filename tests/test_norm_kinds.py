"""Norm kinds come from two registries (the space's `kinds.NORMS`, the math's `ops.NORM_OPS`); CRMSNorm,
added through them alone, works end to end: its math against the paper's identity, the supernet
against its extraction, the analytic parameter counts, latency pieces, the ONNX export, and a
whole `hwnas run`."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from hwnas.core.errors import ConfigError
from hwnas.search_space import ArchConfig, LayerConfig, SearchSpace, SearchSpaceConfig
from hwnas.search_space.kinds import NORMS
from hwnas.supernet import Supernet, extract_subnet, ops
from hwnas.supernet.memory import supernet_params
from tests.tiny import hwnas, perturbed_supernet, stdlib_text, tiny_config, write_config


def test_every_registered_norm_has_its_math_and_identity_like_init():
    assert set(NORMS) == set(ops.NORM_OPS)
    x = torch.randn(3, 5, 16)
    for kind in NORMS.values():
        params = {n: torch.full(() if n in kind.scalars else (16,), v) for n, v in zip(kind.params, kind.init, strict=True)}
        y = ops.norm(kind.name, x, **params)
        assert y.shape == x.shape and torch.isfinite(y).all(), kind.name
        torch.testing.assert_close(ops.deploy_norm(kind.name, x, **params), y, atol=1e-6, rtol=1e-5)


def test_crmsnorm_is_rmsnorm_of_the_zero_mean_vector_it_compresses():
    """The paper's identity: for a zero-mean z in R^(d+1) and x = z[:d], CRMSNorm(x) = RMSNorm(z)[:d]."""
    z = torch.randn(4, 7, 33, dtype=torch.float64)
    z = z - z.mean(dim=-1, keepdim=True)
    x, w = z[..., :32], torch.randn(32, dtype=torch.float64)
    expected = F.rms_norm(z, (33,), eps=ops.EPS)[..., :32] * w
    torch.testing.assert_close(ops.crms_norm(x, w), expected)


def test_an_unknown_norm_names_the_registered_kinds(tmp_path):
    from hwnas.config import load_config

    with pytest.raises(ValueError, match="layernorm, rmsnorm, dyt, crmsnorm"):
        ops.norm("batchnorm", torch.zeros(2, 4), weight=torch.ones(4))
    bad = write_config(tmp_path / "bad.yaml", {"name": "x", "search_space": {"norm": {"choices": ["batchnorm"]}}})
    with pytest.raises(ConfigError, match="'dyt' or 'crmsnorm'"):
        load_config(bad)


@pytest.fixture(scope="module")
def crms_net() -> Supernet:
    cfg = SearchSpaceConfig(depth=[2], embed_dim=[32, 48], head_dim=8, block_size=32, n_heads={"choices": [2, 4]},
                            mlp_ratio={"choices": [2.0]}, norm={"choices": ["crmsnorm", "rmsnorm"]},
                            ffn={"choices": ["mlp", "moe"], "experts": [2], "top_k": [1]})
    return perturbed_supernet(cfg)


def crms_arch(placement: str, ffn: str = "mlp") -> ArchConfig:
    moe = {"n_experts": 2, "top_k": 1} if ffn == "moe" else {}
    return ArchConfig(48, (LayerConfig(4, 2.0, norm="crmsnorm", placement=placement, ffn=ffn, **moe),
                           LayerConfig(2, 2.0, norm="rmsnorm", placement=placement)))


def test_the_supernet_holds_only_its_spaces_norms(crms_net):
    names = {n.rsplit(".", 1)[-1] for n, _ in crms_net.named_parameters() if "norm" in n}
    assert names == {"crms_weight", "rms_weight"}
    assert sum(p.numel() for p in crms_net.parameters()) == supernet_params(crms_net.config)


@pytest.mark.parametrize("placement", ["pre", "post", "peri"])
def test_crmsnorm_subnet_equals_its_extraction_and_counts(crms_net, placement):
    arch = crms_arch(placement, "moe")
    tokens = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(1))
    sub = extract_subnet(crms_net, arch)
    torch.testing.assert_close(sub(tokens), crms_net(tokens, arch), atol=1e-5, rtol=0)
    assert sum(p.numel() for p in sub.parameters()) == crms_net.space.params(arch)["total"]
    assert "-crms-" in arch.key()


def test_crmsnorm_latency_pieces_and_onnx_export(crms_net):
    from hwnas.export.deploy import export_onnx_dynamic, run_session, session
    from hwnas.latency.keys import arch_keys, space_pieces

    space = SearchSpace(crms_net.config)
    keys = [p.key for p in space_pieces(space)]
    assert "norm/d48-crms-peri" in keys and "head/d32-crms" in keys
    assert set(arch_keys(crms_arch("peri"))) <= set(keys)
    piece = next(p for p in space_pieces(space) if p.key == "norm/d48-crms-peri")
    x, y = piece.inputs(1, 8, space.dims)
    core_in, out = piece.build(space.dims)(x, y)
    assert core_in.shape == out.shape == x.shape
    sub = extract_subnet(crms_net, crms_arch("pre")).eval()
    model, _ = export_onnx_dynamic(sub)
    tokens = torch.randint(0, 256, (1, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = sub(tokens).numpy()
    assert abs(run_session(session(model), tokens) - expected).max() < 1e-3


@pytest.mark.slow  # a whole `hwnas run` (about a minute); the pieces above run by default
def test_a_whole_run_searches_crmsnorm(tmp_path):
    cfg = tiny_config(tmp_path / "run", stdlib_text(tmp_path / "text"))
    cfg["search_space"]["norm"] = {"choices": ["crmsnorm", "layernorm"]}
    proc = hwnas("run", str(write_config(tmp_path / "tiny.yaml", cfg)), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = json.loads((tmp_path / "run" / "latency" / "cpu-torch.json").read_text())["payload"]["entries"]
    assert any("-crms-" in k for k in table)
    exported = json.loads((tmp_path / "run" / "export" / "config.json").read_text())
    assert {layer["norm"] for layer in exported["arch"]["layers"]} <= {"crmsnorm", "layernorm"}
