"""The pieces a latency table times, built from the real standalone modules of `supernet.subnet`.

A subnet's forward is, in order: the embedding, then per layer an attention sublayer and an FFN
sublayer, then the head. Each sublayer is a *core* (`Attention` or `FFN`) plus the norms and the
residual add that the placement wraps around it (`SubnetBlock.forward`):

    pre:  x + core(norm(x))          post: norm(x + core(x))          peri: x + norm(core(norm(x)))

`NormResidual` is that wrapper alone (inputs x and y = core output); `Embed` is the token and
position lookup; `Head` is the final norm and the tied LM head. Composing them reproduces
`Subnet.forward` exactly (a test checks it for every placement).

`deploy_copy` turns any of these (or a whole `Subnet`) into its deployment form for ONNX export:
weights fake-quantized once and stored pre-transposed as 2-D matrices (so ONNX Runtime's int8 and
4-bit quantizers see plain `MatMul`s), sliding-window attention without `unfold`, and MoE without
the data-dependent `continue` (an expert with no tokens multiplies an empty matrix). The math is
the same; a test checks the exported graph against the torch module.
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from hwnas.kernels import LowBitLinear, quantize_weight
from hwnas.search_space import LayerConfig, ModelDims
from hwnas.supernet import ops
from hwnas.supernet.subnet import FFN, Attention, Norm, Subnet

INIT_STD = 0.02  # the supernet's init scale for matrices


def random_init_(module: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Matrices ~ N(0, 0.02) like the supernet's init (spreads MoE routing); norms keep identity."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2 and "norm" not in name:
                p.normal_(0.0, INIT_STD, generator=generator)
    return module


# --- the timed pieces (real modules) --------------------------------------------------------------
class AttentionCore(nn.Module):
    """The attention core of one layer: QKV projection, attention, output projection."""

    def __init__(self, layer: LayerConfig, d: int, head_dim: int):
        super().__init__()
        self.attn = Attention(layer, d, head_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x)


class FfnCore(nn.Module):
    """The FFN core of one layer (router and experts for MoE; its balance loss is computed too,
    as `Subnet.forward` computes it)."""

    def __init__(self, layer: LayerConfig, d: int):
        super().__init__()
        self.ffn = FFN(layer, d)

    def forward(self, x: Tensor) -> Tensor:
        y, _ = self.ffn(x)
        return y


class NormResidual(nn.Module):
    """The norms and residual add around one sublayer core, as `SubnetBlock` places them.

    Inputs: x, the sublayer input, and y, the core's output. Outputs: the core's input and the
    sublayer output (post-LN has no separate core input: the core reads x itself)."""

    def __init__(self, norm: str, placement: str, d: int):
        super().__init__()
        self.placement = placement
        self.norm_in = Norm(norm, d)  # SubnetBlock.norm_attn / norm_ffn
        if placement == "peri":
            self.norm_out = Norm(norm, d)  # SubnetBlock.norm_attn_out / norm_ffn_out

    def core_input(self, x: Tensor) -> Tensor:
        return ops.core_input(self.placement, x, self.norm_in)

    def combine(self, x: Tensor, y: Tensor) -> Tensor:
        return ops.combine(self.placement, x, y, self.norm_in, getattr(self, "norm_out", None))

    def forward(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.core_input(x), self.combine(x, y)


class Embed(nn.Module):
    """Token and learned position embedding: tokens (B, T) -> x (B, T, d)."""

    def __init__(self, d: int, dims: ModelDims):
        super().__init__()
        self.tok_emb = nn.Parameter(torch.zeros(dims.vocab_size, d))
        self.pos_emb = nn.Parameter(torch.zeros(dims.block_size, d))

    def forward(self, tokens: Tensor) -> Tensor:
        T = tokens.shape[1]
        return nn.functional.embedding(tokens, self.tok_emb) + self.pos_emb[:T]


class Head(nn.Module):
    """Final norm and the tied LM head: x (B, T, d) -> logits (B, T, vocab)."""

    def __init__(self, norm: str, d: int, dims: ModelDims):
        super().__init__()
        self.norm_final = Norm(norm, d)
        self.tok_emb = nn.Parameter(torch.zeros(dims.vocab_size, d))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(self.norm_final(x), self.tok_emb)


class Nothing(nn.Module):
    """Returns its input: times the fixed cost of one call of a backend."""

    def forward(self, x: Tensor) -> Tensor:
        return x


# --- deployment forms for ONNX export -------------------------------------------------------------
def window_attention_blocks(q: Tensor, k: Tensor, v: Tensor, window: int) -> Tensor:
    """`ops.window_attention` with the (previous, current) key blocks built by slicing and
    concatenation instead of `unfold` (which the ONNX exporters do not take); same math."""
    B, nh, T, hs = q.shape
    w = window
    if T <= w:
        return ops.softmax_attention(q, k, v)
    n = math.ceil(T / w)
    pad = n * w - T
    qb = F.pad(q, (0, 0, 0, pad)).reshape(B * nh, n, w, hs)  # (B*nh, n, w, hs)
    kblk = F.pad(k, (0, 0, w, pad)).reshape(B * nh, n + 1, w, hs)  # one empty block in front
    vblk = F.pad(v, (0, 0, w, pad)).reshape(B * nh, n + 1, w, hs)
    kb = torch.cat([kblk[:, :-1], kblk[:, 1:]], dim=2)  # (B*nh, n, 2w, hs): block j-1 then j
    vb = torch.cat([vblk[:, :-1], vblk[:, 1:]], dim=2)
    y = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=ops.window_mask(n, w, q.device))
    return y.reshape(B, nh, n * w, hs)[:, :, :T]


class DeployNorm(nn.Module):
    """`Norm` in its export form (`ops.deploy_norm`: e.g. RMSNorm written out, since the
    TorchScript exporter has no `rms_norm`)."""

    def __init__(self, norm: Norm):
        super().__init__()
        self.kind, self.p = norm.kind, copy.deepcopy(norm.p)

    def forward(self, x: Tensor) -> Tensor:
        return ops.deploy_norm(self.kind, x, **self.p)


def _mm(x: Tensor, w: Tensor | nn.Module) -> Tensor:
    """x @ w for a pre-transposed (in, out) weight, or the product of a `LowBitLinear` holding it."""
    return torch.matmul(x, w) if isinstance(w, Tensor) else w(x)


class DeployAttention(nn.Module):
    """`Attention` with fake-quantized weights folded in, QKV as one (d, 3a) matrix."""

    def __init__(self, attn: Attention):
        super().__init__()
        layer = attn.layer
        self.n_heads, self.kind, self.window = layer.n_heads, layer.attention, layer.window
        self.weight_bits = layer.weight_bits  # of every parameter here (the exporter's quantizer reads it)
        three, a, d = attn.qkv.shape
        with torch.no_grad():
            w_qkv = ops.fake_quant(attn.qkv.detach(), layer.weight_bits).reshape(three * a, d)
            self.w_qkv = nn.Parameter(w_qkv.t().contiguous())  # (d, 3a): columns q | k | v, heads major
            self.w_proj = nn.Parameter(ops.fake_quant(attn.proj.detach(), layer.weight_bits).t().contiguous())  # (a, d)

    def forward(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        qkv = _mm(x, self.w_qkv).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
        y = self.core(qkv[0], qkv[1], qkv[2])
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, a)
        return _mm(y, self.w_proj)

    def core(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The attention kind's kernel on q, k, v (B, nh, T, hs); subclasses swap in other forms."""
        if self.kind == "window":
            return window_attention_blocks(q, k, v, self.window)
        return ops.attention(self.kind, q, k, v, self.window)


class DeployFFN(nn.Module):
    """`FFN` with fake-quantized weights folded in, every matrix 2-D and pre-transposed; returns
    (y, None) like `FFN` (the MoE balance loss is a training term, not part of inference)."""

    def __init__(self, ffn: FFN):
        super().__init__()
        layer = ffn.layer
        self.kind, self.top_k = layer.ffn, layer.top_k
        self.weight_bits = bits = layer.weight_bits  # of every parameter but the router
        with torch.no_grad():
            up, down = ops.fake_quant(ffn.up.detach(), bits), ops.fake_quant(ffn.down.detach(), bits)
            if self.kind == "moe":
                self.router = nn.Parameter(ffn.router.detach().t().contiguous())  # (d, E)
                self.ups = nn.ParameterList(nn.Parameter(w.t().contiguous()) for w in up)  # (d, size) each
                self.downs = nn.ParameterList(nn.Parameter(w.t().contiguous()) for w in down)  # (size, d)
            else:
                self.up = nn.Parameter(up.t().contiguous())  # (d, h)
                self.down = nn.Parameter(down.t().contiguous())  # (h, d)
                if self.kind == "swiglu":
                    self.gate = nn.Parameter(ops.fake_quant(ffn.gate.detach(), bits).t().contiguous())

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        if self.kind == "mlp":
            return _mm(F.gelu(_mm(x, self.up)), self.down), None
        if self.kind == "swiglu":
            return _mm(F.silu(_mm(x, self.gate)) * _mm(x, self.up), self.down), None
        B, T, d = x.shape
        flat = x.reshape(B * T, d)
        gates, idx = F.softmax(torch.matmul(flat, self.router), dim=-1).topk(self.top_k, dim=-1)  # (N, k)
        out = torch.zeros_like(flat)
        for e in range(len(self.ups)):
            token, slot = torch.where(idx == e)  # the tokens routed to expert e (each at most once)
            y = _mm(F.gelu(_mm(flat[token], self.ups[e])), self.downs[e])
            out = out.index_add(0, token, y * gates[token, slot].unsqueeze(-1))
        return out.view(B, T, d), None


class FirstOutput(nn.Module):
    """Wraps a module returning (y, aux) so the exported graph has y alone."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)[0]


_DEPLOY = {Attention: DeployAttention, FFN: DeployFFN, Norm: DeployNorm}


def deploy_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` (a timed piece or a whole `Subnet`) in deployment form for export."""
    if isinstance(module, FFN):
        return FirstOutput(DeployFFN(module)).eval()
    if type(module) in _DEPLOY:
        return _DEPLOY[type(module)](module).eval()
    out = copy.deepcopy(module)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if type(child) in _DEPLOY:
                setattr(parent, name, _DEPLOY[type(child)](child))
    return out.eval()


def _low_bit(module: DeployAttention | DeployFFN, device: str) -> nn.Module:
    """`module` with every weight matrix but the router held as real low-bit codes (`LowBitLinear`)."""
    def held(w: Tensor) -> LowBitLinear:
        return LowBitLinear(quantize_weight(w.detach().t(), module.weight_bits), device)  # (in, out) -> (out, in)

    for name in ("w_qkv", "w_proj", "up", "down", "gate"):
        if name in module._parameters:
            setattr(module, name, held(module._parameters.pop(name)))
    for name in ("ups", "downs"):
        if isinstance(getattr(module, name, None), nn.ParameterList):
            setattr(module, name, nn.ModuleList(held(w) for w in getattr(module, name)))
    return module


def torch_deploy_copy(module: nn.Module, device: str = "cpu") -> nn.Module:
    """A copy of `module` as eager PyTorch deploys it on `device`: 16-bit layers as they are, each
    8- or 4-bit attention or FFN in deployment form with its weights on real low-bit kernels
    (`kernels.LowBitLinear`) instead of fake quantization. What the `torch` latency tables time."""
    def low_bit(child: nn.Module) -> bool:
        return type(child) in (Attention, FFN) and child.layer.weight_bits < 16

    if low_bit(module):
        return _low_bit(_DEPLOY[type(module)](module), device).eval()
    out = copy.deepcopy(module)
    for parent in list(out.modules()):
        for name, child in list(parent.named_children()):
            if low_bit(child):
                setattr(parent, name, _low_bit(_DEPLOY[type(child)](child), device))
    return out.eval()


def is_subnet(module: nn.Module) -> bool:
    return isinstance(module, Subnet)
