"""Deployment forms of a subnet's modules: what the latency tables time and the export writes.

The math is the training modules' (`supernet.subnet`), in forms the runtimes and exporters take:

- `deploy_copy`: weights fake-quantized once and stored pre-transposed as 2-D matrices (so ONNX
  Runtime's int8 and 4-bit quantizers see plain `MatMul`s), sliding-window attention without
  `unfold`, MoE without the data-dependent `continue` (an expert with no tokens multiplies an
  empty matrix), norms in their export form (`ops.deploy_norm`);
- `torch_deploy_copy`: eager PyTorch as it deploys, each 8- or 4-bit attention or FFN with its
  weights on real low-bit kernels (`kernels.LowBitLinear`) instead of fake quantization;
- `export_form`: `deploy_copy` of fp32 CPU weights, the exported model's form (its kernels take
  any sequence length: a dynamic `seq` axis).

Tests check each form against the module it comes from.
"""

from __future__ import annotations

import copy
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from hwnas.kernels import LowBitLinear, quantize_weight

from . import ops
from .subnet import FFN, Attention, Norm, Subnet


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
        self.n_heads, self.kind, self.window, self.rotary = layer.n_heads, layer.attention, layer.window, attn.rotary
        self.weight_bits = layer.weight_bits  # of every parameter here (the exporter's quantizer reads it)
        three, a, d = attn.qkv.shape
        with torch.no_grad():
            w_qkv = ops.fake_quant(attn.qkv.detach(), layer.weight_bits).reshape(three * a, d)
            self.w_qkv = nn.Parameter(w_qkv.t().contiguous())  # (d, 3a): columns q | k | v, heads major
            self.w_proj = nn.Parameter(ops.fake_quant(attn.proj.detach(), layer.weight_bits).t().contiguous())  # (a, d)

    def forward(self, x: Tensor, cache: ops.LayerCache | None = None, pos: int = 0) -> Tensor:
        B, T, _ = x.shape
        qkv = _mm(x, self.w_qkv).view(B, T, 3, self.n_heads, -1).permute(2, 0, 3, 1, 4)  # (3, B, nh, T, hs)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.rotary:
            q, k = ops.rope_qk(q, k, pos)
        if cache is None:
            y = self.core(q, k, v)
        else:
            y = ops.cached_attention(self.kind, q, k, v, self.window, cache, pos)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, a)
        return _mm(y, self.w_proj)

    def core(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """The attention kind's kernel on q, k, v (B, nh, T, hs); subclasses swap in other forms."""
        if self.kind == "window":
            return ops.window_attention(q, k, v, self.window, unfold=False)
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
        experts = [partial(self._expert, up=up, down=down) for up, down in zip(self.ups, self.downs, strict=True)]
        return ops.expert_mix(flat, gates, idx, experts, skip_empty=False).view(B, T, d), None

    @staticmethod
    def _expert(x: Tensor, up: Tensor | nn.Module, down: Tensor | nn.Module) -> Tensor:
        return _mm(F.gelu(_mm(x, up)), down)


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


def export_form(subnet: Subnet) -> nn.Module:
    """A copy of `subnet` in export form: `deploy_copy` on fp32 CPU weights. Its kernels take any
    sequence length (the exported graph's dynamic `seq` axis): blocked sliding-window and chunked
    linear attention count their blocks and chunks from the (symbolic) length, so the exported model
    runs the very forms the latency tables time."""
    return deploy_copy(subnet).cpu().float()
