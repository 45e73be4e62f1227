"""Every Triton kernel equals its plain-torch reference twin, over random shapes with non-power-of-two
widths and elastic slices of wider weights read in place.

On a machine without a GPU the kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET=1,
set here before the first kernel is defined: slow, so the shapes are small); on a CUDA machine they
run compiled on the GPU. Skipped, with the reason, where Triton is not installed.

Tolerances (Triton vs reference), per kernel:
  norms fp32: atol 1e-5, rtol 1e-5 (DyT: atol 1e-6); 16-bit outputs: one unit in the last place.
  elastic linear fp32: atol 1e-5, rtol 1e-5 (forward and all three gradients).
  weight-only matmul fp32: atol 1e-5, rtol 1e-5; bf16: 2e-2 (bf16 output rounding).
  linear attention fp32: atol 1e-5, rtol 1e-4 (the supernet's own token-by-token check's).
The interpreter rounds fp32 -> bf16 toward zero where the GPU rounds to nearest, hence one ulp.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before the first kernel is defined (see kernels.dispatch)

pytest.importorskip("triton", reason="Triton is not installed (Linux x86_64 wheels only): the Triton kernels "
                                     "cannot run here; their references are tested in test_kernels.py")

from hwnas import kernels as K  # noqa: E402
from hwnas.supernet import ops  # noqa: E402
from hwnas.supernet.model import ElasticAttention, ElasticNorms, corner  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not K.interpreting():
    pytest.skip("no GPU and TRITON_INTERPRET is set to off: the Triton kernels cannot run", allow_module_level=True)

TRITON = "triton"
rng = random.Random(0)
torch.manual_seed(0)


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, device=DEVICE).to(dtype)


def close(got, want, atol, rtol):
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol)


def _ulp_tol(dtype):
    return {torch.float32: 1e-5, torch.bfloat16: 2 ** -7 * 2, torch.float16: 2 ** -10 * 2}[dtype]


# --- fused elastic norm ------------------------------------------------------------------------------
# (rows, d, input width >= d, weight width >= d): non-powers of two, slices, one-element rows, odd rows
NORM_SHAPES = [(1, 1, 1, 4), (5, 7, 7, 16), (6, 24, 30, 48), (17, 100, 100, 100), (3, 129, 140, 256)] + [
    (rng.randint(1, 40), d, d + rng.choice([0, 0, 5]), d + rng.randint(0, 64)) for d in rng.sample(range(2, 300), 6)
]


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm", "dyt"])
@pytest.mark.parametrize("rows,d,width,d_max", NORM_SHAPES)
def test_norm_matches_reference(kind, rows, d, width, d_max):
    x = randn(rows, width)
    w, b, alpha = randn(d_max), randn(d_max), torch.tensor(0.8, device=DEVICE)
    bias = None if kind == "rmsnorm" else b
    atol = 1e-6 if kind == "dyt" else 1e-5
    got = K.elastic_norm(kind, x, w, bias, alpha, d=d, backend=TRITON)
    close(got, K.norm_reference(kind, x, w, bias, alpha, d=d), atol, 1e-5)
    r = randn(rows, d)
    (y, h), (y_ref, h_ref) = (K.elastic_norm(kind, x, w, bias, alpha, d=d, residual=r, backend=TRITON),
                              K.norm_reference(kind, x, w, bias, alpha, d=d, residual=r))
    assert torch.equal(h, h_ref)
    close(y, y_ref, atol, 1e-5)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm", "dyt"])
def test_norm_strided_input(kind):
    x = randn(7, 3, 50).transpose(0, 1)[..., :33]  # (3, 7, 33) view, neither contiguous nor full width
    w, b, alpha = randn(64), randn(64), torch.tensor(1.3, device=DEVICE)
    bias = None if kind == "rmsnorm" else b
    close(K.elastic_norm(kind, x, w, bias, alpha, backend=TRITON), K.norm_reference(kind, x, w, bias, alpha), 1e-5, 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm", "dyt"])
def test_norm_16bit(kind, dtype):
    x, r = randn(2, 9, 45, dtype=dtype), randn(2, 9, 45, dtype=dtype)
    w, alpha = randn(64, dtype=dtype), torch.tensor(0.6, device=DEVICE)
    b = None if kind == "rmsnorm" else randn(64, dtype=dtype)
    (y, h), (y_ref, h_ref) = (K.elastic_norm(kind, x, w, b, alpha, residual=r, backend=TRITON),
                              K.norm_reference(kind, x, w, b, alpha, residual=r))
    assert y.dtype == y_ref.dtype == dtype and y.shape == (2, 9, 45)
    tol = _ulp_tol(dtype)
    close(h, h_ref, tol * 4, tol)  # |h| < 8: an ulp of it is below 4 * 2^-8
    close(y, y_ref, tol * 8, tol * 2)


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm", "dyt"])
def test_norm_on_supernet_weights_with_gradients(kind):
    norms = ElasticNorms(48).to(DEVICE)
    with torch.no_grad():
        for p in norms.parameters():
            p.normal_()
    params = norms.params(kind, 48)  # the widest weights; the kernel reads their first 37
    x = randn(3, 5, 37).requires_grad_()
    r = randn(3, 5, 37).requires_grad_()
    y, h = K.elastic_norm(kind, x, residual=r, backend=TRITON, **params)
    close(y, norms(x + r, kind), 1e-5, 1e-5)  # the supernet's own module on its slices
    gy, gh = randn(*y.shape), randn(*h.shape)
    inputs = [x, r, *params.values()]
    got = torch.autograd.grad((y, h), inputs, (gy, gh))
    y_ref, h_ref = K.norm_reference(kind, x, residual=r, **params)
    want = torch.autograd.grad((y_ref, h_ref), inputs, (gy, gh))
    for g, g_ref in zip(got, want, strict=True):
        assert g.shape == g_ref.shape
        close(g, g_ref, 1e-5, 1e-5)
    assert torch.all(got[2 + list(params).index("weight")][37:] == 0)  # the weight gradient is full width, zero past d


def test_the_supernet_runs_its_norms_on_the_kernel_where_dispatched(monkeypatch):
    """ElasticNorms takes the kernel where the dispatch says so (on CUDA by default; here forced with
    HWNAS_KERNELS=triton): a whole subnet of every norm kind and placement at a sliced width gives the
    loss and gradients of the reference path, and HWNAS_KERNELS=reference never calls the kernel."""
    from hwnas.search_space import ArchConfig, LayerConfig, SearchSpaceConfig
    from tests.tiny import perturbed_supernet

    cfg = SearchSpaceConfig(depth=[3], embed_dim=[16, 32], head_dim=8, block_size=16, n_heads={"choices": [1, 2]},
                            attention={"choices": ["softmax"]},
                            norm_placement={"choices": ["pre", "post", "peri"], "per_layer": True})
    arch = ArchConfig(16, (LayerConfig(2, 4.0, "layernorm", "pre"), LayerConfig(1, 4.0, "rmsnorm", "post"),
                           LayerConfig(2, 4.0, "dyt", "peri")))
    net = perturbed_supernet(cfg).to(DEVICE)
    x = torch.randint(0, 256, (2, 16), device=DEVICE)
    calls = []
    real = K.elastic_norm
    monkeypatch.setattr(K, "elastic_norm", lambda *a, **kw: calls.append(a[0]) or real(*a, **kw))

    def loss_and_grads(backend: str):
        monkeypatch.setenv("HWNAS_KERNELS", backend)
        net.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x, arch).flatten(0, 1), x.flatten())
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}

    ref_loss, ref_grads = loss_and_grads("reference")
    assert calls == []
    auto_loss, _ = loss_and_grads("auto")  # the default: the kernel on CUDA, the supernet's own ops on CPU
    assert (calls == []) if DEVICE == "cpu" else (set(calls) == {"layernorm", "rmsnorm", "dyt"})
    if DEVICE == "cpu":
        assert torch.equal(auto_loss, ref_loss)
    calls.clear()
    loss, grads = loss_and_grads(TRITON)
    assert set(calls) == {"layernorm", "rmsnorm", "dyt"}
    atol, rtol = (1e-5, 1e-4) if DEVICE == "cpu" else (1e-4, 1e-3)  # CUDA's own norms reduce in another order
    close(loss, ref_loss, atol, 1e-5 if DEVICE == "cpu" else rtol)  # the CPU loss as strict as before CUDA ran this
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        close(g, ref_grads[name], atol, rtol)
    monkeypatch.setenv("HWNAS_KERNELS", "fast")
    with pytest.raises(ValueError, match="HWNAS_KERNELS='fast' is not one of auto, triton, reference"):
        net(x, arch)


# --- elastic linear ------------------------------------------------------------------------------------
# (rows, out, in, out_max, in_max)
LINEAR_SHAPES = [(1, 1, 1, 1, 1), (3, 5, 7, 5, 7), (7, 24, 40, 48, 64), (33, 17, 70, 32, 96), (65, 40, 33, 64, 33)] + [
    (rng.randint(1, 70), o, i, o + rng.randint(0, 40), i + rng.randint(0, 40))
    for o, i in zip(rng.sample(range(1, 90), 5), rng.sample(range(1, 90), 5), strict=True)
]


@pytest.mark.parametrize("rows,out_f,in_f,out_max,in_max", LINEAR_SHAPES)
def test_elastic_linear_matches_reference(rows, out_f, in_f, out_max, in_max):
    w, b = randn(out_max, in_max), randn(out_max)
    x = randn(rows, in_f)
    close(K.elastic_linear(x, w, out_f, in_f, backend=TRITON), K.linear_reference(x, w, out_f, in_f), 1e-5, 1e-5)
    close(K.elastic_linear(x, w, out_f, in_f, bias=b, backend=TRITON),
          K.linear_reference(x, w, out_f, in_f, bias=b), 1e-5, 1e-5)


@pytest.mark.parametrize("rows,out_f,in_f,out_max,in_max", LINEAR_SHAPES[1:5])
def test_elastic_linear_gradients(rows, out_f, in_f, out_max, in_max):
    w, b = randn(out_max, in_max).requires_grad_(), randn(out_max).requires_grad_()
    x = randn(2, rows, in_f + 3).requires_grad_()  # wider input: its first in_f columns are used
    y = K.elastic_linear(x, w, out_f, in_f, bias=b, backend=TRITON)
    y_ref = K.linear_reference(x, w, out_f, in_f, bias=b)
    close(y, y_ref, 1e-5, 1e-5)
    gy = randn(*y.shape)
    for g, g_ref in zip(torch.autograd.grad(y, (x, w, b), gy), torch.autograd.grad(y_ref, (x, w, b), gy), strict=True):
        assert g.shape == g_ref.shape
        close(g, g_ref, 1e-5, 1e-5)


def test_elastic_linear_on_the_supernet_qkv_weight():
    attn = ElasticAttention(d_max=40, heads_max=4, head_dim=6).to(DEVICE)
    x = randn(2, 5, 27).requires_grad_()
    w = attn.qkv  # (3, 24, 40): the kernel reads [:, :18, :27] in place
    y = K.elastic_linear(x, w, 18, backend=TRITON)  # (3, B, T, 18)
    q, k, v = ops.qkv_project(x, corner(w, 18, 27), 3)
    qkv = y.view(3, 2, 5, 3, 6).transpose(2, 3)
    for got, want in zip(qkv, (q, k, v), strict=True):
        close(got, want, 1e-5, 1e-5)
    gy = randn(*y.shape)
    y_ref = K.linear_reference(x, w, 18)
    for g, g_ref in zip(torch.autograd.grad(y, (x, w), gy), torch.autograd.grad(y_ref, (x, w), gy), strict=True):
        close(g, g_ref, 1e-5, 1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_elastic_linear_16bit(dtype):
    w, x = randn(48, 80, dtype=dtype), randn(19, 70, dtype=dtype)
    y = K.elastic_linear(x, w, 37, backend=TRITON)
    assert y.dtype == dtype
    close(y, K.linear_reference(x.float(), w.float(), 37), 5e-2, 2e-2)


# --- weight-only quantized matmul ------------------------------------------------------------------------
QUANT_SHAPES = [(1, 1, 1), (1, 48, 33), (5, 17, 64), (16, 40, 70), (19, 64, 129)] + [
    (rng.randint(1, 20), rng.randint(1, 80), rng.randint(1, 150)) for _ in range(3)
]


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("M,N,K_", QUANT_SHAPES)
def test_quant_matmul_matches_reference(bits, M, N, K_):
    w_full = randn(N + 8, K_ + 5)
    qw = K.quantize_weight(corner(w_full, N, K_), bits)  # the subnet's slice
    x = randn(M, K_)
    y = K.quant_matmul(x, qw, backend=TRITON)
    close(y, K.quant_matmul_reference(x, qw), 1e-5, 1e-5)
    close(y, torch.nn.functional.linear(x, ops.fake_quant(corner(w_full, N, K_), bits)), 1e-5, 1e-5)
    xb = x.to(torch.bfloat16)
    yb = K.quant_matmul(xb, qw, backend=TRITON)
    assert yb.dtype == torch.bfloat16
    close(yb, K.quant_matmul_reference(xb.float(), qw), 2e-2 * (1 + K_ ** 0.5), 2e-2)


def test_quant_matmul_batched_input():
    qw = K.quantize_weight(randn(24, 36), 4)
    x = randn(2, 3, 36)
    y = K.quant_matmul(x, qw, backend=TRITON)
    assert y.shape == (2, 3, 24)
    close(y, K.quant_matmul_reference(x, qw), 1e-5, 1e-5)


# --- causal linear attention -------------------------------------------------------------------------
# (B, nh, T, hs, chunk)
ATTN_SHAPES = [(1, 1, 1, 8, 32), (2, 3, 33, 8, 32), (1, 2, 70, 12, 32), (2, 1, 50, 16, 16), (1, 2, 40, 20, 64)] + [
    (rng.randint(1, 2), rng.randint(1, 3), rng.randint(1, 90), rng.choice([4, 8, 10, 16, 24]), 32) for _ in range(3)
]


@pytest.mark.parametrize("B,nh,T,hs,chunk", ATTN_SHAPES)
def test_linear_attention_matches_reference(B, nh, T, hs, chunk):
    q, k, v = (randn(B, nh, T, hs) for _ in range(3))
    got = K.linear_attention(q, k, v, chunk=chunk, backend=TRITON)
    close(got, K.linear_attention_reference(q, k, v, chunk=chunk), 1e-5, 1e-4)
    if chunk == 32:
        close(got, ops.linear_attention(q, k, v), 1e-5, 1e-4)


def test_linear_attention_reads_qkv_views_in_place():
    B, T, nh, hs = 2, 37, 3, 8
    x = randn(B, T, 40)
    w = randn(3, nh * hs, 40)
    q, k, v = ops.qkv_project(x, w, nh)  # transposed views of one matmul output
    assert not q.is_contiguous()
    close(K.linear_attention(q, k, v, backend=TRITON), ops.linear_attention(q, k, v), 1e-5, 1e-4)


def test_linear_attention_16bit_and_forward_only():
    q, k, v = (randn(1, 2, 40, 16, dtype=torch.bfloat16) for _ in range(3))
    got = K.linear_attention(q, k, v, backend=TRITON)
    assert got.dtype == torch.bfloat16
    close(got, K.linear_attention_reference(q.float(), k.float(), v.float()), 3e-2, 3e-2)
    qg = q.float().requires_grad_()
    with pytest.raises(K.KernelUnavailable, match="forward only"):
        K.linear_attention(qg, k.float(), v.float(), backend=TRITON)
    with torch.no_grad():
        K.linear_attention(qg, k.float(), v.float(), backend=TRITON)


def test_quant_matmul_is_forward_only():
    qw = K.quantize_weight(randn(8, 16), 8)
    x = randn(2, 16).requires_grad_()
    with pytest.raises(K.KernelUnavailable, match="forward only"):
        K.quant_matmul(x, qw, backend=TRITON)
    with torch.no_grad():
        close(K.quant_matmul(x, qw, backend=TRITON), K.quant_matmul_reference(x, qw), 1e-5, 1e-5)
