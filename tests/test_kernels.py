"""The kernels' plain-torch reference twins equal the supernet's own ops exactly where they overlap,
the int8/int4 deploy path sits on fake quantization's grid, and the dispatcher picks the reference
off CUDA. None of this needs Triton (test_kernels_triton.py runs the Triton kernels themselves)."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F

from hwnas import kernels as K
from hwnas.search_space import LINEAR_CHUNK
from hwnas.supernet import ops
from hwnas.supernet.model import ElasticAttention, ElasticNorms, corner

torch.manual_seed(0)


def _randomize(module: torch.nn.Module) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


# --- reference twins == supernet ops ----------------------------------------------------------------
@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm", "dyt"])
@pytest.mark.parametrize("d", [5, 24, 37, 48])
def test_norm_reference_is_the_supernet_norm_on_its_slices(kind, d):
    norms = _randomize(ElasticNorms(48))
    x = torch.randn(2, 3, d)
    want = norms(x, kind)  # the supernet: ops.norm on first(weight, d)
    got = K.norm_reference(kind, x, **_full_params(norms, kind))  # the full-width weights, d = x's width
    assert torch.equal(got, want)
    assert torch.equal(K.elastic_norm(kind, x, **_full_params(norms, kind)), want)  # auto on CPU: the reference


def _full_params(norms: ElasticNorms, kind: str) -> dict:
    return norms.params(kind, norms.ln_weight.shape[0])


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm", "dyt"])
def test_norm_reference_residual_and_wider_input(kind):
    norms = _randomize(ElasticNorms(40))
    p = _full_params(norms, kind)
    x, r = torch.randn(4, 40), torch.randn(4, 29)
    y, h = K.norm_reference(kind, x, d=29, residual=r, **p)
    assert torch.equal(h, x[:, :29] + r)
    assert torch.equal(y, ops.norm(kind, x[:, :29] + r, **norms.params(kind, 29)))


def test_linear_reference_is_the_supernet_linear_and_qkv_projection():
    w = torch.randn(50, 70)
    x = torch.randn(2, 3, 33)
    assert torch.equal(K.linear_reference(x, w, 21, 33), F.linear(x, corner(w, 21, 33)))
    b = torch.randn(50)
    assert torch.equal(K.linear_reference(x, w, 21, 33, bias=b), F.linear(x, corner(w, 21, 33), b[:21]))
    attn = _randomize(ElasticAttention(d_max=40, heads_max=4, head_dim=6))
    x = torch.randn(2, 5, 24)
    n_heads = 3
    q, k, v = ops.qkv_project(x, corner(attn.qkv, n_heads * 6, 24), n_heads)
    y = K.linear_reference(x, attn.qkv, n_heads * 6, 24)  # (3, B, T, nh*hs)
    qkv = y.view(3, 2, 5, n_heads, 6).transpose(2, 3)
    assert torch.equal(qkv[0], q) and torch.equal(qkv[1], k) and torch.equal(qkv[2], v)


@pytest.mark.parametrize("T", [1, 7, 32, 33, 100])
def test_linear_attention_reference_is_the_supernet_op(T):
    q, k, v = (torch.randn(2, 3, T, 8) for _ in range(3))
    assert torch.equal(K.linear_attention_reference(q, k, v), ops.linear_attention(q, k, v))
    assert torch.equal(K.linear_attention(q, k, v), ops.linear_attention(q, k, v))  # auto on CPU
    assert LINEAR_CHUNK == 32


def test_linear_attention_reference_does_not_depend_on_the_chunk():
    q, k, v = (torch.randn(1, 2, 45, 8) for _ in range(3))
    base = K.linear_attention_reference(q, k, v, chunk=45)
    for chunk in (1, 5, 16, 32, 64):
        torch.testing.assert_close(K.linear_attention_reference(q, k, v, chunk=chunk), base, atol=1e-5, rtol=1e-5)


# --- quantization: the deploy path computes fake quantization's numbers ---------------------------
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("shape", [(7, 13), (16, 32), (5, 1), (33, 70)])
def test_quantize_weight_is_fake_quant_grid(bits, shape):
    w_full = torch.randn(40, 80) * torch.rand(40, 1) * 3  # rows of different scales
    w = corner(w_full, *shape)  # a subnet's slice, quantized on its own (as the supernet does)
    qw = K.quantize_weight(w, bits)
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / qmax
    assert torch.equal(qw.dequantize(), torch.clamp(torch.round(w / scale), -qmax, qmax) * scale)  # bit-identical
    assert qw.codes().abs().max() <= qmax and qw.shape == shape
    fq = ops.fake_quant(w, bits)  # w + (wq - w): within an ulp of wq
    torch.testing.assert_close(qw.dequantize(), fq, atol=1e-6, rtol=1e-6)
    x = torch.randn(3, shape[1])
    torch.testing.assert_close(K.quant_matmul(x, qw), F.linear(x, fq), atol=1e-5, rtol=1e-5)
    assert qw.nbytes() < w.numel() * 4 * (0.3 if bits == 4 else 0.55) + 4 * shape[0]


@pytest.mark.parametrize("cols", [1, 2, 7, 8, 33])
def test_int4_pack_roundtrip(cols):
    q = torch.randint(-8, 8, (5, cols), dtype=torch.int8)
    packed = K.pack_int4(q)
    assert packed.dtype == torch.uint8 and packed.shape == (5, (cols + 1) // 2)
    assert torch.equal(K.unpack_int4(packed, cols), q)
    assert torch.equal(packed[0, 0] & 15, (q[0, 0] + 8).to(torch.uint8))  # column 0 in the low nibble


def test_argument_errors():
    with pytest.raises(ValueError, match="no bias"):
        K.elastic_norm("rmsnorm", torch.randn(2, 4), torch.ones(4), torch.zeros(4))
    with pytest.raises(ValueError, match="d=9"):
        K.elastic_norm("layernorm", torch.randn(2, 8), torch.ones(16), d=9)
    with pytest.raises(ValueError, match="do not fit"):
        K.elastic_linear(torch.randn(2, 8), torch.randn(4, 6))
    with pytest.raises(ValueError, match="in_features"):
        K.quant_matmul(torch.randn(2, 5), K.quantize_weight(torch.randn(3, 4), 8))


def test_quantize_weight_rejects_bad_bits():
    with pytest.raises(ValueError, match="bits"):
        K.quantize_weight(torch.randn(3, 4), 16)


# --- dispatch ----------------------------------------------------------------------------------------
def test_auto_runs_the_reference_off_cuda(monkeypatch):
    x = torch.randn(3, 8)
    assert not K.use_triton("auto", x)
    monkeypatch.setenv("HWNAS_KERNELS", "reference")
    assert not K.use_triton("auto", x)
    assert not K.use_triton("reference", x)
    with pytest.raises(ValueError, match="backend"):
        K.use_triton("cuda", x)


def test_forced_triton_on_cpu_without_interpreter_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(K.KernelUnavailable, match="TRITON_INTERPRET|not installed"):
        K.use_triton("triton", torch.randn(2))


def test_import_does_not_import_triton():
    code = "import sys, hwnas.kernels; assert 'triton' not in sys.modules, 'triton imported'"
    import subprocess

    subprocess.run([sys.executable, "-c", code], check=True)


def test_reference_norm_and_linear_differentiate_like_the_supernet():
    norms = _randomize(ElasticNorms(16))
    x = torch.randn(3, 10, requires_grad=True)
    K.elastic_norm("layernorm", x, norms.ln_weight, norms.ln_bias).sum().backward()
    assert norms.ln_weight.grad.shape == (16,) and torch.all(norms.ln_weight.grad[10:] == 0)
    w = torch.randn(12, 16, requires_grad=True)
    K.elastic_linear(x, w, 5).pow(2).sum().backward()
    assert w.grad.shape == (12, 16) and torch.all(w.grad[5:] == 0) and torch.all(w.grad[:, 10:] == 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU message; this machine has a GPU")
def test_kernel_benchmark_needs_a_gpu_and_writes_nothing_without_one():
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    bench_md = root / "BENCHMARKS.md"
    before = bench_md.read_bytes() if bench_md.exists() else None
    run = subprocess.run([sys.executable, str(root / "experiments" / "bench" / "kernels.py")], capture_output=True,
                         text=True, cwd=root)
    assert run.returncode == 2
    assert "CUDA GPU" in run.stderr and "not touched" in run.stderr
    assert (bench_md.read_bytes() if bench_md.exists() else None) == before


@pytest.mark.skipif(not K.triton_available(), reason="Triton is not installed: nothing to compile")
def test_kernels_compile_for_h100_without_a_gpu():
    """The code a GPU would run compiles for sm_90 (H100/H200) through Triton's compiler and bundled
    ptxas, one config of each kernel, without register spills (in a subprocess: the interpreter is
    off there)."""
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-m", "hwnas.kernels.compile_check", "--quick", "--arch", "90"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "7/7 compiled" in run.stdout and " 0 spill" in run.stdout, run.stdout
