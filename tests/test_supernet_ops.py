"""Each norm, attention and FFN variant of `supernet.ops` against a straightforward reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hwnas.supernet import ops

torch.manual_seed(0)


def ref_attention(q, k, v, allowed):
    """Plain masked softmax attention; allowed[t, s] says whether t may look at s."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def ref_linear_attention(q, k, v):
    """Causal linear attention token by token: out_t = sum_s<=t phi(q_t).phi(k_s) v_s / sum_s<=t phi(q_t).phi(k_s)."""
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    out = torch.empty_like(v)
    for t in range(q.shape[2]):
        w = (fq[:, :, t : t + 1] * fk[:, :, : t + 1]).sum(-1)  # (B, nh, t+1)
        out[:, :, t] = (w.unsqueeze(-1) * v[:, :, : t + 1]).sum(2) / w.sum(-1, keepdim=True)
    return out


@pytest.mark.parametrize("T", [1, 5, 32, 33, 70])
def test_softmax_attention_matches_reference(T):
    q, k, v = (torch.randn(2, 3, T, 8) for _ in range(3))
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    torch.testing.assert_close(ops.attention("softmax", q, k, v, None), ref_attention(q, k, v, causal), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T,window", [(5, 8), (8, 8), (9, 8), (30, 8), (64, 16), (37, 5)])
def test_window_attention_matches_reference(T, window):
    q, k, v = (torch.randn(2, 3, T, 8) for _ in range(3))
    t = torch.arange(T)
    band = (t.view(-1, 1) >= t.view(1, -1)) & (t.view(-1, 1) - t.view(1, -1) < window)
    torch.testing.assert_close(ops.attention("window", q, k, v, window), ref_attention(q, k, v, band), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("T", [1, 7, 32, 33, 100])
def test_linear_attention_matches_reference(T):
    q, k, v = (torch.randn(2, 2, T, 8) for _ in range(3))
    torch.testing.assert_close(ops.attention("linear", q, k, v, None), ref_linear_attention(q, k, v), atol=1e-5, rtol=1e-4)


def test_norms_match_reference():
    x = torch.randn(4, 7, 12)
    w, b, alpha = torch.randn(12), torch.randn(12), torch.tensor(0.7)
    ln = torch.nn.LayerNorm(12, eps=ops.EPS)
    with torch.no_grad():
        ln.weight.copy_(w)
        ln.bias.copy_(b)
    torch.testing.assert_close(ops.norm("layernorm", x, weight=w, bias=b), ln(x))
    rms = x / torch.sqrt((x * x).mean(-1, keepdim=True) + ops.EPS) * w
    torch.testing.assert_close(ops.norm("rmsnorm", x, weight=w), rms, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ops.norm("dyt", x, weight=w, bias=b, alpha=alpha), w * torch.tanh(alpha * x) + b)
    with pytest.raises(ValueError, match="batchnorm"):
        ops.norm("batchnorm", x, weight=w)


def test_mlp_and_swiglu_match_reference():
    x, up, gate, down = torch.randn(3, 5, 8), torch.randn(16, 8), torch.randn(16, 8), torch.randn(8, 16)
    torch.testing.assert_close(ops.mlp(x, up, down), F.gelu(x @ up.T) @ down.T)
    silu = lambda z: z * torch.sigmoid(z)  # noqa: E731
    torch.testing.assert_close(ops.swiglu(x, gate, up, down), (silu(x @ gate.T) * (x @ up.T)) @ down.T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_moe_matches_per_token_reference(top_k):
    E, d, s = 4, 8, 6
    x, router = torch.randn(2, 9, d), torch.randn(E, d)
    ups, downs = [torch.randn(s, d) for _ in range(E)], [torch.randn(d, s) for _ in range(E)]
    y, balance = ops.moe(x, router, top_k, ups, downs)
    flat = x.reshape(-1, d)
    expected = torch.zeros_like(flat)
    counts = torch.zeros(E)
    for n, tok in enumerate(flat):
        probs = torch.softmax(router @ tok, dim=0)
        for e in torch.argsort(probs, descending=True)[:top_k]:
            expected[n] += probs[e] * (downs[e] @ F.gelu(ups[e] @ tok))
            counts[e] += 1
    torch.testing.assert_close(y.reshape(-1, d), expected, atol=1e-4, rtol=1e-4)
    mean_prob = torch.softmax(flat @ router.T, dim=-1).mean(0)
    torch.testing.assert_close(balance, E * (counts / counts.sum() * mean_prob).sum())


def test_moe_runs_under_bf16_autocast_close_to_fp32():
    # autocast runs the experts' matmuls in bf16 while the output buffer is fp32 (was a dtype error)
    E, d, s = 4, 8, 6
    x, router = torch.randn(2, 9, d), torch.randn(E, d)
    ups, downs = [torch.randn(s, d) for _ in range(E)], [torch.randn(d, s) for _ in range(E)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = ops.moe(x, router, 2, ups, downs)
    torch.testing.assert_close(y.float(), ops.moe(x, router, 2, ups, downs)[0], atol=0.1, rtol=0.05)


@pytest.mark.parametrize("bits", [8, 4])
def test_fake_quant_is_symmetric_per_channel_with_straight_through_grad(bits):
    w = torch.randn(6, 10, requires_grad=True)
    q = ops.fake_quant(w, bits)
    qmax = 2 ** (bits - 1) - 1
    scale = w.detach().abs().amax(-1, keepdim=True) / qmax
    levels = q.detach() / scale
    torch.testing.assert_close(levels, levels.round(), atol=1e-4, rtol=0)  # on the integer grid
    assert levels.abs().max() <= qmax + 1e-4
    assert len(torch.unique(levels.round())) <= 2 * qmax + 1
    assert (q.detach() - w.detach()).abs().max() <= scale.max() / 2 + 1e-6
    q.sum().backward()
    torch.testing.assert_close(w.grad, torch.ones_like(w))  # straight-through
    assert ops.fake_quant(w, 16) is w
