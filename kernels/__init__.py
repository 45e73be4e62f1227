"""hwnas.kernels: Triton kernels for the supernet's hot elastic operations, each with a plain-torch
reference twin and one dispatcher (Triton on CUDA, the reference elsewhere; see `dispatch`).

| function | what | backward |
| --- | --- | --- |
| `elastic_norm` | LayerNorm / RMSNorm / DyT over the first d of a wider weight, optional fused residual add | reference (autograd) |
| `elastic_linear` | x @ W[:out, :in].T with the slice read in place; (G, O, I) weights for q/k/v | Triton |
| `quant_matmul` | weight-only int8 / int4 matmul with per-channel scales (`quantize_weight`) | none (inference) |
| `LowBitLinear` | a layer of int8 / int4 codes on real kernels: Triton on CUDA; on CPU dynamic int8 (`_int_mm`) and weight-only int4 (`_weight_int4pack_mm_for_cpu`) | none (inference) |
| `linear_attention` | chunked causal linear attention, elu+1 features | none (auto: reference) |

Where each runs in the product:

- `linear_attention`: every forward of linear attention (`supernet.ops.linear_attention`); the
  Triton kernel on CUDA at inference, the reference otherwise.
- `LowBitLinear` (and through it `quant_matmul`): the `torch` latency tables and the exported
  model loaded with torch (`supernet.deploy.torch_deploy_copy`), for every 8- and 4-bit layer.
- `elastic_norm`: every LayerNorm / RMSNorm / DyT of the supernet and its extracted subnets on CUDA
  (`supernet.model.ElasticNorms`: CUDA training, evaluation and the CUDA torch latency tables); on
  CPU the supernet keeps its own `ops.norm` (the same math, with no dispatch cost per call).
  `HWNAS_KERNELS=triton` forces the kernel (on CPU under `TRITON_INTERPRET=1`, as a test does),
  `HWNAS_KERNELS=reference` turns it off.
- `elastic_linear`: not on the product path, by choice. The supernet slices its weights with `corner`
  (a view) and calls `F.linear`, which hands cuBLAS the view through its leading dimension, no copy;
  in bf16-autocast training the weights are fp32 and the activations bf16, where the kernel falls
  back to that same call; and a deployed subnet has contiguous weights, so the CUDA tables must time
  cuBLAS, as users run it. The kernel is tested against its reference under the Triton interpreter
  and timed against cuBLAS in `experiments/bench/kernels.py` (and gpu.py), which says whether it
  would ever pay.

Every function takes `backend="auto" | "triton" | "reference"`. Importing this package never
imports Triton (the kernels load on first use), so it works where Triton is not installed.
"""

from .dispatch import BACKENDS, KernelUnavailable, interpreting, model_backend, triton_available, use_triton
from .linear import elastic_linear, linear_reference
from .linear_attention import linear_attention, linear_attention_reference
from .lowbit_linear import LowBitLinear
from .norm import EPS, NORM_KINDS, elastic_norm, norm_reference
from .quant_matmul import (
    QuantizedWeight,
    pack_int4,
    quant_matmul,
    quant_matmul_reference,
    quantize_weight,
    unpack_int4,
)

__all__ = [
    "BACKENDS", "EPS", "KernelUnavailable", "LowBitLinear", "NORM_KINDS", "QuantizedWeight", "elastic_linear", "elastic_norm",
    "interpreting", "linear_attention", "linear_attention_reference", "linear_reference", "model_backend", "norm_reference",
    "pack_int4", "quant_matmul", "quant_matmul_reference", "quantize_weight", "triton_available", "unpack_int4",
    "use_triton",
]
