"""Real low-bit matmuls for eager PyTorch: what the `torch` latency tables time for 8- and 4-bit
layers, in place of fake quantization (which dequantizes in every forward and so made low bits look
slower than 16 in the search). On CUDA, the Triton weight-only kernel (`quant_matmul`); on CPU:

- 8 bits, dynamic int8: each row of x (a token) is quantized to int8 on the fly (symmetric, its own
  scale), multiplied with the int8 weight codes by `torch._int_mm` (int32 accumulation) and rescaled
  by the row and channel scales. The scheme of ONNX Runtime's `DynamicQuantizeMatMul` and PyTorch's
  `quantize_dynamic` (they take one activation scale per tensor; one per row is as fast and closer).
- 4 bits, weight-only: the codes packed by `_convert_weight_to_int4pack_for_cpu`, groups of 32 input
  channels that all carry their channel's one scale (so the weights are exactly `fake_quant`'s grid),
  bf16 activations into `_weight_int4pack_mm_for_cpu`, the result back in x's dtype. The counterpart
  of ONNX Runtime's `MatMulNBits`. The kernel takes input widths in multiples of 32 and output widths
  in multiples of 16: others are zero-padded (and the padding's outputs dropped).

Both take a `QuantizedWeight` (`quant_matmul.quantize_weight`), inference only. Against the exact
product x @ (codes * scale).T (`quant_matmul_reference`): 8 bits within the activation rounding
(~1e-2 of the output's scale), 4 bits within bf16 rounding; a test checks both.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .quant_matmul import QuantizedWeight, quant_matmul

INT4_GROUP = 32  # input channels per group of torch's int4 CPU kernel (one of 32, 64, 128, 256)
INT4_OUT_MULTIPLE = 16  # its output channels come in tiles of 16


class LowBitLinear(nn.Module):
    """y = x @ W.T with W held as `qweight`'s int8 or int4 codes, run by a real low-bit kernel of
    `device` (its layout is the device's: build one per device rather than moving it)."""

    def __init__(self, qweight: QuantizedWeight, device: str | torch.device = "cpu"):
        super().__init__()
        self.bits, self.in_features, self.out_features = qweight.bits, qweight.in_features, qweight.out_features
        self.cuda_weight = qweight.to(device) if torch.device(device).type == "cuda" else None
        if self.cuda_weight is not None:
            return
        codes = qweight.codes()  # int8 (out, in)
        if self.bits == 8:
            self.register_buffer("codes_t", codes.t().contiguous())  # (in, out) for _int_mm
            self.register_buffer("scale", qweight.scale.clone())
            return
        pad, pad_out = -self.in_features % INT4_GROUP, -self.out_features % INT4_OUT_MULTIPLE
        unsigned = (F.pad(codes.to(torch.int32), (0, pad, 0, pad_out)) + 8).contiguous()  # (out', in') in [1, 15]
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(unsigned, 1))
        groups = unsigned.shape[1] // INT4_GROUP
        scales = F.pad(qweight.scale, (0, pad_out)).to(torch.bfloat16).expand(groups, -1)  # (groups, out'): per channel
        self.register_buffer("scales_and_zeros", torch.stack([scales, torch.zeros_like(scales)], dim=-1).contiguous())
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        if self.cuda_weight is not None:
            return quant_matmul(x, self.cuda_weight, backend="triton")
        lead, dtype = x.shape[:-1], x.dtype
        rows = x.reshape(-1, self.in_features)
        if self.bits == 8:
            row_scale = rows.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / 127
            q = torch.round(rows / row_scale).to(torch.int8)
            y = torch._int_mm(q, self.codes_t).to(torch.float32) * row_scale * self.scale
        else:
            a = F.pad(rows, (0, self.pad)) if self.pad else rows
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(a.to(torch.bfloat16).contiguous(), self.packed, INT4_GROUP,
                                                           self.scales_and_zeros)[:, :self.out_features]
        return y.to(dtype).reshape(*lead, self.out_features)


__all__ = ["INT4_GROUP", "INT4_OUT_MULTIPLE", "LowBitLinear"]
