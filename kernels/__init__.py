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
- `elastic_norm` and `elastic_linear`: not on the product path yet. They replace the supernet's
  slice-then-compute (`corner` + `F.linear`, `ops.norm`) in CUDA training, where reading the slice
  in place saves a copy per layer; on CPU, the only place this project can measure today, their
  dispatcher would run the same reference math, so wiring them would change nothing measurable
  here. They are tested against their references under the Triton interpreter and timed in
  `experiments/bench/kernels.py`; they go on the path with the CUDA training and CUDA latency
  tables (issue 28), behind the same `backend="auto"` dispatch.

Every function takes `backend="auto" | "triton" | "reference"`. Importing this package never
imports Triton (the kernels load on first use), so it works where Triton is not installed.
"""

from .dispatch import BACKENDS, KernelUnavailable, interpreting, triton_available, use_triton
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
    "interpreting", "linear_attention", "linear_attention_reference", "linear_reference", "norm_reference",
    "pack_int4", "quant_matmul", "quant_matmul_reference", "quantize_weight", "triton_available", "unpack_int4",
    "use_triton",
]
