"""The kinds a layer chooses from, as the space knows them: each kind's name (in configs), its tag
(in arch keys and latency-table keys) and, for norms, its parameters.

This is the space's half of a kind; the math is the other half (`supernet.ops`, which registers a
function under the same name). Adding a norm kind is one `NormKind` here and one `ops.NormOp`;
the supernet, subnets, latency tables and exports read both registries and need no change.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NormKind:
    """A normalization layer: `params` are its parameters in the order the modules hold them, each
    a vector of the layer's width or (in `scalars`) one number, with its initial value."""

    name: str
    tag: str
    params: tuple[str, ...]
    init: tuple[float, ...]
    scalars: tuple[str, ...] = ()
    paper: str = ""

    def n_params(self, d: int) -> int:
        """Parameters of one such norm at width d."""
        return sum(1 if p in self.scalars else d for p in self.params)


NORMS: dict[str, NormKind] = {n.name: n for n in (
    NormKind("layernorm", "ln", ("weight", "bias"), (1.0, 0.0), paper="Ba et al. 2016, Layer Normalization"),
    NormKind("rmsnorm", "rms", ("weight",), (1.0,), paper="Zhang & Sennrich 2019, Root Mean Square Layer Normalization"),
    NormKind("dyt", "dyt", ("alpha", "weight", "bias"), (0.5, 1.0, 0.0), scalars=("alpha",),
             paper="Zhu et al. 2025, Transformers without Normalization"),
    NormKind("crmsnorm", "crms", ("weight",), (1.0,),
             paper="Jiang et al. 2023, Pre-RMSNorm and Pre-CRMSNorm Transformers"),
)}
# the kinds a space offers when its config does not say (the papers' three; CRMSNorm is opt-in)
DEFAULT_NORMS: tuple[str, ...] = ("layernorm", "rmsnorm", "dyt")

PLACEMENTS: tuple[str, ...] = ("pre", "post", "peri")
ATTENTION_TAGS: dict[str, str] = {"softmax": "sm", "linear": "lin", "window": "win"}
FFN_KINDS: tuple[str, ...] = ("mlp", "swiglu", "moe")
WEIGHT_BITS: tuple[int, ...] = (16, 8, 4)


def norm_tag(kind: str) -> str:
    return NORMS[kind].tag


def attention_tag(kind: str, window: int | None) -> str:
    """"sm", "lin", or "win{window}"."""
    return ATTENTION_TAGS[kind] + (str(window) if kind == "window" else "")


def ffn_tag(kind: str, n_experts: int | None, top_k: int | None) -> str:
    """"mlp", "swiglu", or "moe{experts}k{top_k}"."""
    return f"moe{n_experts}k{top_k}" if kind == "moe" else kind
