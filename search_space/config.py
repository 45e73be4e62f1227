"""The search-space section of an experiment config: which choices each dimension offers.

Every dimension is a list of choices. Per-layer dimensions (heads, MLP ratio, norm, placement,
attention, FFN, weight bits) also say whether each layer chooses on its own (`per_layer: true`) or
all layers share one choice. Window sizes belong to the `window` attention kind, expert counts and
top-k to the `moe` FFN kind.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from hwnas.core.config import (
    MAX_BLOCK,
    MAX_DEPTH,
    MAX_EXPERTS,
    MAX_HEADS,
    MAX_MLP_RATIO,
    MAX_VOCAB,
    MAX_WIDTH,
    Section,
    field_error,
    int_choice,
)

from .kinds import ATTENTION_TAGS, DEFAULT_NORMS, FFN_KINDS, NORMS, PLACEMENTS, WEIGHT_BITS

NormKind = Literal[tuple(NORMS)]  # every kind registered in search_space.kinds
Placement = Literal[PLACEMENTS]
AttentionKind = Literal[tuple(ATTENTION_TAGS)]
FfnKind = Literal[FFN_KINDS]
NORM_KINDS: tuple[str, ...] = tuple(NORMS)
ATTENTION_KINDS: tuple[str, ...] = tuple(ATTENTION_TAGS)

WeightBits = int_choice(*WEIGHT_BITS)


def _choices_ok(values: list, what: str) -> list:
    if not values:
        raise ValueError(f"needs at least one {what}")
    if len(set(values)) != len(values):
        raise ValueError(f"has duplicate choices {values}")
    return values


def _positive_ints(values: list[int], most: int) -> list[int]:
    return _positive_at_most(values, most, "integers")


def _positive_at_most(values: list, most: float, kind: str, show=str) -> list:
    """`values` sorted, once each checked to be distinct, positive and at most `most`."""
    _choices_ok(values, "choice")
    bad = [v for v in values if v <= 0]
    if bad:
        raise ValueError(f"must be positive {kind}, got {bad[0]}")
    big = [v for v in values if v > most]
    if big:
        raise ValueError(f"must be at most {show(most)}, got {show(big[0])}")
    return sorted(values)


class PositiveIntDim(Section):
    choices: list[int] = Field(description=f"attention heads per layer to choose from, each in 1..{MAX_HEADS}; a "
                               "layer's attention width is heads x search_space.head_dim")
    per_layer: bool = Field(default=True, description="true: each layer picks its own head count; false: all layers "
                            "share one")

    @field_validator("choices")
    @classmethod
    def check_choices(cls, v):
        return _positive_ints(v, MAX_HEADS)


class RatioDim(Section):
    choices: list[float] = Field(description=f"FFN hidden units per embedding dimension to choose from, each in "
                                 f"(0, {MAX_MLP_RATIO:g}]; every ratio x embed_dim must be a whole number")
    per_layer: bool = Field(default=True, description="true: each layer picks its own MLP ratio; false: all layers "
                            "share one")

    @field_validator("choices", mode="before")
    @classmethod
    def _as_float(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [float(x) if isinstance(x, int) and not isinstance(x, bool) else x for x in v]
        return v

    @field_validator("choices")
    @classmethod
    def _check(cls, v: list[float]) -> list[float]:
        return _positive_at_most(v, MAX_MLP_RATIO, "numbers", show=lambda x: f"{x:g}")


class KindDim(Section):
    """A per-layer dimension whose choices are kinds (or bit widths): distinct, at least one."""

    what: ClassVar[str] = "choice"

    @field_validator("choices", check_fields=False)
    @classmethod
    def check_choices(cls, v):
        return _choices_ok(v, cls.what)


class NormDim(KindDim):
    what = "norm kind"
    choices: list[NormKind] = Field(description="normalization kinds to choose from: layernorm, rmsnorm, dyt "
                                    "(Dynamic Tanh), crmsnorm (compressed RMSNorm); the final norm takes the last "
                                    "layer's kind")
    per_layer: bool = Field(default=True, description="true: each layer picks its own norm kind; false: all layers "
                            "share one")


class PlacementDim(KindDim):
    what = "placement"
    choices: list[Placement] = Field(description="where each sublayer's norm sits: pre (x + f(norm(x))), post "
                                     "(norm(x + f(x))) or peri (x + norm(f(norm(x))), two norms per sublayer)")
    per_layer: bool = Field(default=False, description="true: each layer picks its own placement; false (the "
                            "default): all layers share one")


class AttentionDim(KindDim):
    what = "attention kind"
    choices: list[AttentionKind] = Field(description="attention kinds to choose from: softmax (causal, every earlier "
                                         "token), linear (chunked causal linear attention) or window (causal "
                                         "sliding window, sizes from `windows`)")
    per_layer: bool = Field(default=True, description="true: each layer picks its own attention kind; false: all "
                            "layers share one")
    windows: list[int] = Field(default_factory=lambda: [32], description=f"window sizes in tokens of the window kind "
                               f"(a token sees itself and the window - 1 before it), each in 1..{MAX_BLOCK} and at "
                               "most block_size; ignored without window in choices")

    @field_validator("windows")
    @classmethod
    def check_windows(cls, v):
        return _positive_ints(v, MAX_BLOCK)


class FfnDim(KindDim):
    what = "FFN kind"
    choices: list[FfnKind] = Field(description="FFN kinds to choose from: mlp (GELU), swiglu, or moe (the layer's "
                                   "hidden units split into GELU-MLP experts, counts from `experts` and `top_k`)")
    per_layer: bool = Field(default=True, description="true: each layer picks its own FFN kind; false: all layers "
                            "share one")
    experts: list[int] = Field(default_factory=lambda: [4], description=f"experts per MoE layer, each in "
                               f"2..{MAX_EXPERTS} and dividing every hidden size (embed_dim x mlp_ratio); ignored "
                               "without moe in choices")
    top_k: list[int] = Field(default_factory=lambda: [1, 2], description=f"experts each token runs (routed by a "
                             f"learned router), each in 1..{MAX_EXPERTS}; a pair with top_k > experts is skipped")

    @field_validator("experts", "top_k")
    @classmethod
    def check_counts(cls, v):
        return _positive_ints(v, MAX_EXPERTS)

    @model_validator(mode="after")
    def _k_fits(self) -> FfnDim:
        if "moe" in self.choices and max(self.top_k) > max(self.experts):  # a top-k no expert count can use
            raise field_error("top_k", f"{max(self.top_k)} exceeds every expert count {self.experts}")
        if "moe" in self.choices and min(self.experts) < 2:
            raise field_error("experts", f"must be >= 2 for moe, got {min(self.experts)}")
        return self


class BitsDim(KindDim):
    what = "bit width"
    choices: list[WeightBits] = Field(description="bits of a layer's attention and FFN weights: 16 (full "
                                      "precision), 8 (int8) or 4 (int4); the supernet trains them fake-quantized, "
                                      "latency tables and the export run real low-bit kernels")
    per_layer: bool = Field(default=True, description="true: each layer picks its own bit width; false: all layers "
                            "share one")


class SearchSpaceConfig(Section):
    """Choices of every searchable dimension, plus the fixed model hyperparameters they live in."""

    vocab_size: int = Field(default=256, gt=0, le=MAX_VOCAB, description=f"token ids the model embeds, 1..{MAX_VOCAB}; "
                            "the corpora are bytes (token = byte), so keep it at 256 or more")
    block_size: int = Field(default=128, gt=0, le=MAX_BLOCK, description=f"context length in tokens, 1..{MAX_BLOCK}: "
                            "the longest sequence any subnet reads, and the default seq_len of every stage")
    head_dim: int = Field(default=16, gt=0, le=MAX_WIDTH, description=f"width of one attention head, 1..{MAX_WIDTH} "
                          "(fixed: the head count is what is searched)")
    positions: Literal["learned", "rope", "none"] = Field(
        default="learned", description="how the model knows where a token is: learned (a position embedding per "
        "place, GPT-2's; it caps every context at block_size), rope (rotary embeddings of queries and keys, "
        "Llama's; no parameters, cached decoding may run past block_size) or none (no positional encoding, "
        "NoPE: the causal mask alone orders the tokens)")
    depth: list[int] = Field(default_factory=lambda: [2, 3, 4], description=f"layer counts to choose from, each in "
                             f"1..{MAX_DEPTH}")
    embed_dim: list[int] = Field(default_factory=lambda: [64, 96, 128], description=f"embedding widths to choose from, "
                                 f"each in 1..{MAX_WIDTH} (one per subnet, shared by all its layers)")
    n_heads: PositiveIntDim = Field(default=PositiveIntDim(choices=[2, 4]), description="attention heads per layer")
    mlp_ratio: RatioDim = Field(default=RatioDim(choices=[2.0, 3.0, 4.0]), description="FFN hidden units per "
                                "embedding dimension")
    norm: NormDim = Field(default=NormDim(choices=list(DEFAULT_NORMS)), description="the normalization layer's kind")
    norm_placement: PlacementDim = Field(default=PlacementDim(choices=["pre", "post", "peri"]),
                                         description="where the norms sit around each sublayer")
    attention: AttentionDim = Field(default=AttentionDim(choices=["softmax", "linear", "window"]),
                                    description="the attention kind, and the window sizes of sliding-window attention")
    ffn: FfnDim = Field(default=FfnDim(choices=["mlp", "swiglu", "moe"]), description="the FFN kind, and the expert "
                        "counts and top-k of mixture-of-experts FFNs")
    weight_bits: BitsDim = Field(default=BitsDim(choices=[16, 8, 4]), description="the bit width of each layer's "
                                 "attention and FFN weights")
    weight_sharing: Literal["shared", "per_kind"] = Field(
        default="per_kind", description="how the supernet shares projection weights: per_kind (each attention and FFN "
        "kind its own, as few-shot NAS splits a supernet: less interference, better-trained subnets, up to 3x the "
        "attention / FFN weights) or shared (one Q/K/V/O set for every attention kind, one set of FFN hidden units "
        "for every FFN kind)")

    @field_validator("depth")
    @classmethod
    def check_depth(cls, v):
        return _positive_ints(v, MAX_DEPTH)

    @field_validator("embed_dim")
    @classmethod
    def check_embed_dim(cls, v):
        return _positive_ints(v, MAX_WIDTH)

    @model_validator(mode="after")
    def _consistent(self) -> SearchSpaceConfig:
        for d in self.embed_dim:
            for r in self.mlp_ratio.choices:
                hidden = d * r
                if hidden != int(hidden):
                    raise field_error(
                        "mlp_ratio.choices",
                        f"{r:g} x embed_dim {d} = {hidden:g} is not a whole number of hidden units",
                    )
                if "moe" in self.ffn.choices:
                    for e in self.ffn.experts:
                        if int(hidden) % e:
                            raise field_error(
                                "ffn.experts",
                                f"{e} does not divide the hidden size {int(hidden)} "
                                f"(embed_dim {d} x mlp_ratio {r:g}); use expert counts dividing every hidden size",
                            )
        if self.positions == "rope" and self.head_dim % 2:
            raise field_error("head_dim", f"{self.head_dim} is odd; rope rotates pairs of a head's dimensions, so "
                              "positions: rope needs an even head_dim")
        too_wide = [w for w in self.attention.windows if w > self.block_size]
        if "window" in self.attention.choices and too_wide:
            raise field_error("attention.windows", f"{too_wide[0]} exceeds block_size {self.block_size}")
        return self
