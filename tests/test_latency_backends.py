"""Latency pieces and backends on real modules: the pieces compose to the real subnet, the ONNX
deployment form computes the same function, quantized graphs use low-bit kernels, and a tiny
table builds and reports end to end with both backends."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import onnx
import pytest
import torch

from hwnas.kernels import LowBitLinear, quant_matmul_reference, quantize_weight
from hwnas.latency import (
    LatencyConfig,
    LatencyTable,
    Protocol,
    fidelity_report,
    run_latency,
    space_pieces,
    table_path,
)
from hwnas.latency.backends import OnnxRuntimeBackend, TorchBackend, export_onnx, quantize_onnx
from hwnas.latency.keys import arch_pieces
from hwnas.search_space import ArchConfig, LayerConfig, SearchSpace, SearchSpaceConfig
from hwnas.supernet import Supernet, extract_subnet
from hwnas.supernet.deploy import deploy_copy, torch_deploy_copy
from hwnas.supernet.subnet import SubnetBlock
from tests.tiny import perturbed_supernet

ATTNS = [("softmax", None), ("linear", None), ("window", 4)]
FFNS = [("mlp", None, None), ("swiglu", None, None), ("moe", 2, 1), ("moe", 4, 2)]
NORMS = ["layernorm", "rmsnorm", "dyt"]
SMALL = SearchSpaceConfig(
    vocab_size=32, block_size=16, head_dim=8, depth=[1, 2, 3, 4], embed_dim=[16, 32],
    n_heads={"choices": [1, 2]}, mlp_ratio={"choices": [2.0, 4.0]}, norm={"choices": NORMS},
    norm_placement={"choices": ["pre", "post", "peri"]},
    attention={"choices": ["softmax", "linear", "window"], "windows": [4]},
    ffn={"choices": ["mlp", "swiglu", "moe"], "experts": [2, 4], "top_k": [1, 2]}, weight_bits={"choices": [16, 8, 4]},
)


def covering_archs(bits: int = 16) -> list[ArchConfig]:
    """Archs using every norm, placement, attention and FFN kind between them."""
    archs = []
    for placement, shift in itertools.product(["pre", "post", "peri"], range(2)):
        layers = []
        for i in range(4):
            j = i + 2 * shift
            attn, window = ATTNS[j % 3]
            ffn, e, k = FFNS[j % 4]
            layers.append(LayerConfig(n_heads=1 + j % 2, mlp_ratio=2.0 if j % 2 else 4.0, norm=NORMS[j % 3],
                                      placement=placement, attention=attn, window=window, ffn=ffn, n_experts=e,
                                      top_k=k, weight_bits=bits))
        archs.append(ArchConfig(embed_dim=32 if shift else 16, layers=tuple(layers)))
    return archs


@pytest.fixture(scope="module")
def net() -> Supernet:
    # larger embeddings and routers (the projections already start at std 1/sqrt(fan_in))
    return perturbed_supernet(SMALL, scale={"emb": 10.0, "router": 10.0}).eval()


def tokens(batch: int = 2, T: int = 16) -> torch.Tensor:
    return torch.randint(0, 32, (batch, T), generator=torch.Generator().manual_seed(1))


# --- pieces compose to the real model -------------------------------------------------------------
@pytest.mark.parametrize("placement", ["pre", "post", "peri"])
def test_norm_piece_and_cores_compose_to_the_subnet_block(placement):
    """norm + attn core, then norm + FFN core, with the block's own modules == SubnetBlock."""
    from hwnas.latency.modules import NormResidual

    torch.manual_seed(0)
    layer = LayerConfig(n_heads=2, mlp_ratio=2.0, norm="dyt", placement=placement, attention="window", window=4,
                        ffn="moe", n_experts=2, top_k=1)
    block = SubnetBlock(layer, 16, 8)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.5)
    glue_attn, glue_ffn = NormResidual("dyt", placement, 16), NormResidual("dyt", placement, 16)
    glue_attn.norm_in, glue_ffn.norm_in = block.norm_attn, block.norm_ffn
    if placement == "peri":
        glue_attn.norm_out, glue_ffn.norm_out = block.norm_attn_out, block.norm_ffn_out
    x = torch.randn(2, 16, 16)
    with torch.no_grad():
        h = glue_attn.combine(x, block.attn(glue_attn.core_input(x)))
        out = glue_ffn.combine(h, block.ffn(glue_ffn.core_input(h))[0])
        ref, _ = block(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_every_piece_of_an_arch_builds_and_runs():
    space = SearchSpace(SMALL)
    for arch in covering_archs(8):
        for piece in arch_pieces(arch):
            module = piece.build(space.dims)
            with torch.no_grad():
                out = module(*piece.inputs(1, 16, space.dims))
            first = out[0] if isinstance(out, tuple) else out
            assert torch.isfinite(first.float()).all(), piece.key


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_deploy_form_computes_the_same_function(net, bits):
    for arch in covering_archs(bits):
        sub = extract_subnet(net, arch).eval()
        with torch.no_grad():
            torch.testing.assert_close(deploy_copy(sub)(tokens()), sub(tokens()), rtol=1e-4, atol=1e-4)


# --- ONNX Runtime ---------------------------------------------------------------------------------
def test_onnxruntime_matches_torch_in_fp32(net):
    """The exported graph computes the subnet's function: on other tokens than it was exported
    with (MoE routing differs), and the timed closure on the export tokens."""
    backend = OnnxRuntimeBackend("cpu", threads=1)
    other = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(7))
    for arch in covering_archs(16):
        sub = extract_subnet(net, arch).eval()
        with torch.no_grad():
            want, want_other = sub(tokens()).numpy(), sub(other).numpy()
        got = backend.prepare(sub, (tokens(),))()[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=arch.key())
        with torch.no_grad():
            sess = backend.session_for(backend.to_onnx(sub, (tokens(),)))
        got_other = sess.run(None, {"in0": other.numpy()})[0]
        np.testing.assert_allclose(got_other, want_other, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=arch.key())


def test_onnxruntime_pieces_match_torch_in_fp32():
    space = SearchSpace(SMALL)
    backend = OnnxRuntimeBackend("cpu", threads=1)
    pieces = {p.key: p for arch in covering_archs(16)[:3] for p in arch_pieces(arch)}
    for piece in pieces.values():
        module, inputs = piece.build(space.dims), piece.inputs(2, 16, space.dims)
        with torch.no_grad():
            want = module(*inputs)
        want = want if isinstance(want, tuple) else (want,)
        got = backend.prepare(module, inputs)()
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-5, err_msg=piece.key)


@pytest.mark.parametrize("bits, kernels", [(8, {"DynamicQuantizeMatMul", "MatMulInteger"}), (4, {"MatMulNBits"})])
def test_quantized_layers_run_low_bit_kernels(net, bits, kernels, tmp_path):
    arch = covering_archs(bits)[1]
    sub = extract_subnet(net, arch).eval()
    model, weights = export_onnx(sub, (tokens(),))
    n_low = sum(1 for layer in arch.layers for _ in range(
        2 + {"mlp": 2, "swiglu": 3, "moe": 2 * (layer.n_experts or 0)}[layer.ffn]))
    assert len(weights) == n_low and set(weights.values()) == {bits}
    assert not any("router" in w or "tok_emb" in w for w in weights)
    q = quantize_onnx(model, weights, tmp_path)
    ops = [n.op_type for n in q.graph.node]
    assert sum(op in kernels for op in ops) == n_low  # every quantized MatMul, nothing else
    if bits == 8:  # 7 bits of range: no VPMADDUBSW saturation on CPUs without VNNI
        codes = [onnx.numpy_helper.to_array(t) for t in q.graph.initializer if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 2]
        assert len(codes) == n_low and max(int(np.abs(c.astype(np.int32)).max()) for c in codes) == 64
    with torch.no_grad():
        want = sub(tokens()).numpy()
    got = OnnxRuntimeBackend("cpu", threads=1).prepare(sub, (tokens(),))()[0]
    # low-bit kernels: close, not equal (int8 activations; int4 regridded in blocks of 32; routing flips)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9


# --- eager torch: real low-bit kernels, never fake quantization ------------------------------------
@pytest.mark.parametrize("out_f, in_f, rows", [(64, 32, 16), (24, 40, 3), (8, 8, 1), (33, 31, 5)])
@pytest.mark.parametrize("bits", [8, 4])
def test_low_bit_linear_is_the_quantized_product(bits, out_f, in_f, rows):
    """Odd widths too (the int4 kernel pads them): within activation rounding (8 bits: int8 rows)
    or bf16 rounding (4 bits) of the exact product with the codes."""
    g = torch.Generator().manual_seed(out_f + in_f)
    w, x = torch.randn(out_f, in_f, generator=g), torch.randn(2, rows, in_f, generator=g)
    q = quantize_weight(w, bits)
    want = quant_matmul_reference(x, q)
    got = LowBitLinear(q)(x)
    assert got.shape == want.shape and got.dtype == torch.float32
    assert (got - want).abs().max() <= 2e-2 * want.abs().max()
    assert (got - want).abs().max() > 0  # a real low-bit product (int8 activations, bf16), not the dequantized matmul


@pytest.mark.parametrize("bits, kernel", [(8, "aten::_int_mm"), (4, "aten::_weight_int4pack_mm_for_cpu")])
def test_torch_backend_times_low_bit_layers_on_low_bit_kernels(net, bits, kernel, monkeypatch):
    from torch.profiler import ProfilerActivity, profile

    from hwnas.supernet import ops

    arch = covering_archs(bits)[1]
    sub = extract_subnet(net, arch).eval()
    with torch.no_grad():
        want = sub(tokens())
    run = TorchBackend("cpu", threads=1).prepare(sub, (tokens(),))
    lowbit = [m for m in torch_deploy_copy(sub).modules() if isinstance(m, LowBitLinear)]
    n_low = sum(2 + {"mlp": 2, "swiglu": 3, "moe": 2 * (layer.n_experts or 0)}[layer.ffn] for layer in arch.layers)
    assert len(lowbit) == n_low and {m.bits for m in lowbit} == {bits}

    def no_fake_quant(*a, **k):
        raise AssertionError("the torch backend ran fake quantization")

    monkeypatch.setattr(ops, "fake_quant", no_fake_quant)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        got = run()
    names = [e.name for e in prof.events()]
    assert names.count(kernel) >= 2 * arch.depth  # every attention's two projections at least
    assert (got - want).abs().max() <= 5e-2 * want.abs().max()  # the same function, up to the kernels' rounding


def test_torch_backend_leaves_16_bit_layers_as_they_are(net):
    from torch.profiler import ProfilerActivity, profile

    sub = extract_subnet(net, covering_archs(16)[1]).eval()
    run = TorchBackend("cpu", threads=1).prepare(sub, (tokens(),))
    assert not [m for m in torch_deploy_copy(sub).modules() if isinstance(m, LowBitLinear)]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        got = run()
    assert not {"aten::_int_mm", "aten::_weight_int4pack_mm_for_cpu"} & {e.name for e in prof.events()}
    with torch.no_grad():
        torch.testing.assert_close(got, sub(tokens()))


def test_mixed_precision_arch_quantizes_each_layer_by_its_bits(net):
    base = covering_archs(16)[0]
    layers = tuple(LayerConfig(**{**layer.__dict__, "weight_bits": b}) for layer, b in zip(base.layers, [16, 8, 4, 16], strict=True))
    arch = ArchConfig(base.embed_dim, layers)
    sub = extract_subnet(net, arch).eval()
    _, weights = export_onnx(sub, (tokens(),))
    assert {w.split(".")[1] for w, b in weights.items() if b == 8} == {"1"}
    assert {w.split(".")[1] for w, b in weights.items() if b == 4} == {"2"}


# --- end to end on a micro space ------------------------------------------------------------------
MICRO = SearchSpaceConfig(
    vocab_size=32, block_size=16, head_dim=4, depth=[1, 2], embed_dim=[8], n_heads={"choices": [2]},
    mlp_ratio={"choices": [2.0]}, norm={"choices": ["rmsnorm"]}, norm_placement={"choices": ["pre"]},
    attention={"choices": ["softmax", "window"], "windows": [4]}, ffn={"choices": ["mlp", "moe"], "experts": [2], "top_k": [1]},
    weight_bits={"choices": [16, 8]},
)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_tiny_table_builds_and_reports_end_to_end(tmp_path, backend):
    space = SearchSpace(MICRO)
    cfg = LatencyConfig(threads=1, warmup=1, min_repeats=3, max_repeats=6, check_every=3, passes=2, n_correction=0,
                        n_fidelity=4, interleave=4, wandb="disabled", speed_backoff_s=0)
    table = run_latency(space, cfg, tmp_path, backend=backend, progress=False)
    assert set(table.entries) == {p.key for p in space_pieces(space)}
    assert all(m.median > 0 and 6 <= m.n <= 12 for m in table.entries.values())  # 2 passes of 3 to 6 runs
    assert table.correction is None and table.meta["complete"]
    loaded = LatencyTable.load(table_path(tmp_path, "cpu", backend), strict=True)
    arch = space.sample(0)
    assert loaded.predict(arch) == pytest.approx(table.predict(arch)) and table.predict(arch) > 0
    report = fidelity_report(space, cfg.model_copy(update={"threads": 2, "max_repeats": 50}), loaded, tmp_path,
                             progress=False)  # measured like the table was, whatever the config says now
    assert report["n"] == 4 and 0 <= report["prediction"]["within_10pct"] <= 1
    assert report["fingerprint"]["threads"] == 1 and all(r["stable"] in (True, False) for r in report["rows"])
    measured = json.loads((tmp_path / "latency" / f"fidelity-cpu-{backend}-measured.json").read_text())["measured"]
    assert len(measured) == 4 and all(m["n"] <= 12 for m in measured.values())  # the table's protocol, not 50 runs
    assert (tmp_path / "latency" / f"fidelity-cpu-{backend}.png").exists()
    speed = report["speed"]  # the speed reference, timed in the build's one window and the report's
    assert speed["reference"] == table.reference.key() and speed["build_ms"]["stages"] == ["pieces"]
    assert len(speed["report_ms"]) == 1 and speed["build_ms"]["level"] > 0 and math.isfinite(speed["drift_pct"])


def test_every_window_is_timed_by_a_fresh_process(tmp_path, monkeypatch):
    """Pieces and the whole subnets that fit the correction are timed as the table is used: by
    spawned processes, a window of them each (with the speed reference), not by the build process."""
    import hwnas.latency.build as build

    calls = []

    def recording(fn, *args, **kwargs):
        calls.append((fn.__name__, len(args[-1]), kwargs["reference"].key()))
        return real(fn, *args, **kwargs)

    real = build.run_isolated
    monkeypatch.setattr(build, "run_isolated", recording)
    monkeypatch.setattr(build, "WINDOW_ARCHS", 10)
    space = SearchSpace(MICRO)
    cfg = LatencyConfig(threads=1, warmup=1, min_repeats=3, max_repeats=6, check_every=3, passes=1, n_correction=12,
                        n_fidelity=0, interleave=4, wandb="disabled", speed_retakes=0)  # a window per process, no retakes
    table = run_latency(space, cfg, tmp_path, progress=False)
    ref = table.reference.key()
    n_pieces = len(space_pieces(space))  # one window
    assert calls == [("measure_pieces_job", n_pieces, ref), ("measure_archs_job", 6, ref), ("measure_archs_job", 6, ref)]
    assert len(table.calibration) == 12 and all(m.median > 0 for _, m in table.calibration.values())
    assert [w.stage for w in table.speed_windows] == ["pieces", "calibration", "calibration"]
    assert all(w.reference.median > 0 for w in table.speed_windows) and ref not in table.calibration
    loaded = LatencyTable.load(table_path(tmp_path, "cpu", "torch"))
    assert loaded.calibration.keys() == table.calibration.keys() and loaded.speed_windows == table.speed_windows


def test_backends_time_with_the_fixed_thread_count():
    seen = []
    backend = TorchBackend("cpu", threads=1)
    torch.set_num_threads(2)
    module = torch.nn.Linear(4, 4)
    orig = module.forward
    module.forward = lambda x: (seen.append(torch.get_num_threads()), orig(x))[1]
    backend.measure(module, (torch.randn(2, 4),), Protocol(warmup=1, min_repeats=2, max_repeats=2, check_every=1))
    assert set(seen) == {1} and torch.get_num_threads() == 2


def test_cuda_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from hwnas.latency import LatencyError

    with pytest.raises(LatencyError, match="CUDA"):
        TorchBackend("cuda", 1)


def test_dynamo_exporter_also_works():
    """The default exporter is TorchScript (5-10x faster per piece); the torch.export-based one
    gives the same graph semantics and the same low-bit kernels."""
    from hwnas.latency.keys import ffn_piece

    space = SearchSpace(SMALL)
    piece = ffn_piece(LayerConfig(2, 2.0, ffn="moe", n_experts=2, top_k=1, weight_bits=4), 16)
    module, inputs = piece.build(space.dims), piece.inputs(2, 16, space.dims)
    backend = OnnxRuntimeBackend("cpu", 1, exporter="dynamo")
    model = backend.to_onnx(module, inputs)
    assert sum(n.op_type == "MatMulNBits" for n in model.graph.node) == 4  # 2 experts x (up, down)
    with torch.no_grad():
        want = module(*inputs).numpy()
    got = backend.prepare(module, inputs)()[0]
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9


def test_torch_backend_pins_the_allocator_on_linux():
    import platform

    from hwnas.latency import backends

    TorchBackend("cpu", 1)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert backends._ALLOCATOR_FIXED and backends.steady_allocator()
