"""Weight-only quantized matmul, the deploy path of the search's `weight_bits` choice: int8 or int4
(two codes a byte) weights with one fp32 scale per output channel, 16/32-bit activations.

`quantize_weight(w, bits)` puts w on exactly the grid of `supernet.ops.fake_quant` (symmetric,
per output channel, qmax = 2**(bits-1) - 1, scale = max|w_row| / qmax), so

    quant_matmul(x, quantize_weight(w, bits)) == x @ (q * scale).T == F.linear(x, fake_quant(w, bits))

up to float rounding (fake_quant's straight-through form `w + (wq - w)` can differ from `wq` by an
ulp; `q * scale` itself is bit-identical, a test checks both). Quantize the slice a subnet uses:
`quantize_weight(corner(w, out, in), bits)`, since the scales depend on the columns kept.

int4 layout: codes q in [-7, 7] stored offset by 8 as unsigned nibbles, column 2j in the low nibble
and 2j+1 in the high nibble of byte j (an odd last column pairs with code 0).

Inference only (forward): where autograd needs a gradient of x, `backend="auto"` runs the reference
(which differentiates through the dequantized weight) and `backend="triton"` raises.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .dispatch import KernelUnavailable, needs_grad, triton_module, use_triton

BITS = (8, 4)


def pack_int4(q: Tensor) -> Tensor:
    """int codes (out, in) in [-8, 7] -> uint8 (out, ceil(in/2)): column 2j low nibble, 2j+1 high."""
    if q.shape[-1] % 2:
        q = F.pad(q, (0, 1))
    u = (q.to(torch.int16) + 8).to(torch.uint8)
    return u[..., 0::2] | (u[..., 1::2] << 4)


def unpack_int4(packed: Tensor, in_features: int) -> Tensor:
    """The inverse of `pack_int4`: uint8 (out, ceil(in/2)) -> int8 codes (out, in_features)."""
    lo = (packed & 15).to(torch.int8) - 8
    hi = (packed >> 4).to(torch.int8) - 8
    return torch.stack([lo, hi], dim=-1).flatten(-2)[..., :in_features]


@dataclass(frozen=True)
class QuantizedWeight:
    """A weight (out, in) as integer codes and per-output-channel scales: w ~= codes * scale[:, None].

    data: int8 (out, in) for 8 bits; uint8 (out, ceil(in/2)) packed codes for 4 bits.
    scale: float32 (out,).
    """

    data: Tensor
    scale: Tensor
    bits: int
    in_features: int

    @property
    def out_features(self) -> int:
        return self.data.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    def codes(self) -> Tensor:
        """int8 codes (out, in), unpacked for 4 bits."""
        return self.data if self.bits == 8 else unpack_int4(self.data, self.in_features)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """codes * scale as (out, in), computed in fp32 and cast to `dtype`."""
        return (self.codes().to(torch.float32) * self.scale[:, None]).to(dtype)

    def to(self, device) -> QuantizedWeight:
        return QuantizedWeight(self.data.to(device), self.scale.to(device), self.bits, self.in_features)

    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size() + self.scale.numel() * self.scale.element_size()


def quantize_weight(w: Tensor, bits: int) -> QuantizedWeight:
    """Quantize w (out, in) to `bits` (8 or 4) on the grid of `supernet.ops.fake_quant`."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS} (16 means unquantized: use the weight itself), got {bits}")
    if w.ndim != 2:
        raise ValueError(f"quantize_weight takes a 2-d (out, in) weight, got shape {tuple(w.shape)}")
    w = w.detach()
    qmax = 2 ** (bits - 1) - 1
    scale = w.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / qmax  # as fake_quant, in w's dtype
    q = torch.clamp(torch.round(w / scale), -qmax, qmax).to(torch.int8)
    data = q if bits == 8 else pack_int4(q)
    return QuantizedWeight(data.contiguous(), scale.squeeze(-1).to(torch.float32).contiguous(), bits, w.shape[1])


def quant_matmul_reference(x: Tensor, qweight: QuantizedWeight) -> Tensor:
    """The plain-torch twin: F.linear(x, dequantized weight in x's dtype)."""
    return F.linear(x, qweight.dequantize(x.dtype))


def quant_matmul(x: Tensor, qweight: QuantizedWeight, backend: str = "auto") -> Tensor:
    """y = x @ (codes * scale).T: x (..., in) fp32/bf16/fp16 -> (..., out) in x's dtype.

    The Triton kernel reads the int8 / packed int4 codes, converts them to 16-bit floats in registers
    (exact: |code| <= 127), accumulates x @ codes.T in fp32 (fp32 x as three bf16 parts) and applies
    the scales once per output. Inference only (forward, see module doc). Triton vs reference: fp32 max relative error ~1e-6 (tested at
    rtol 1e-5, atol 1e-5); bf16 within bf16 rounding of the output (tested at rtol 2e-2).
    """
    if x.shape[-1] != qweight.in_features:
        raise ValueError(f"x width {x.shape[-1]} != qweight in_features {qweight.in_features}")
    if not use_triton(backend, x, qweight.data, qweight.scale):
        return quant_matmul_reference(x, qweight)
    if needs_grad(x):
        if backend == "auto":
            return quant_matmul_reference(x, qweight)
        raise KernelUnavailable("the Triton weight-only matmul is forward only; run it under torch.no_grad() "
                                "or use backend='auto' to differentiate through the reference")
    return triton_module("quant_matmul").quant_matmul_forward(x, qweight)
