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
    choices: list[int] = Field(description=f"attention heads per layer, each in 1..{MAX_HEADS}")
    per_layer: bool = True

    @field_validator("choices")
    @classmethod
    def check_choices(cls, v):
        return _positive_ints(v, MAX_HEADS)


class RatioDim(Section):
    choices: list[float] = Field(description=f"hidden units per embedding dimension, each in (0, {MAX_MLP_RATIO:g}]")
    per_layer: bool = True

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
    choices: list[NormKind]
    per_layer: bool = True


class PlacementDim(KindDim):
    what = "placement"
    choices: list[Placement]
    per_layer: bool = False


class AttentionDim(KindDim):
    what = "attention kind"
    choices: list[AttentionKind]
    per_layer: bool = True
    windows: list[int] = Field(default_factory=lambda: [32], description=f"window sizes in tokens, each in 1..{MAX_BLOCK}")

    @field_validator("windows")
    @classmethod
    def check_windows(cls, v):
        return _positive_ints(v, MAX_BLOCK)


class FfnDim(KindDim):
    what = "FFN kind"
    choices: list[FfnKind]
    per_layer: bool = True
    experts: list[int] = Field(default_factory=lambda: [4], description=f"experts per MoE layer, each in 2..{MAX_EXPERTS}")
    top_k: list[int] = Field(default_factory=lambda: [1, 2], description=f"experts per token, each in 1..{MAX_EXPERTS}")

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
    choices: list[WeightBits]
    per_layer: bool = True


class SearchSpaceConfig(Section):
    """Choices of every searchable dimension, plus the fixed model hyperparameters they live in."""

    vocab_size: int = Field(default=256, gt=0, le=MAX_VOCAB, description=f"tokens, 1..{MAX_VOCAB}")
    block_size: int = Field(default=128, gt=0, le=MAX_BLOCK, description=f"context length in tokens, 1..{MAX_BLOCK}")
    head_dim: int = Field(default=16, gt=0, le=MAX_WIDTH, description=f"width of one attention head, 1..{MAX_WIDTH}")
    depth: list[int] = Field(default_factory=lambda: [2, 3, 4], description=f"layer counts, each in 1..{MAX_DEPTH}")
    embed_dim: list[int] = Field(default_factory=lambda: [64, 96, 128], description=f"widths, each in 1..{MAX_WIDTH}")
    n_heads: PositiveIntDim = PositiveIntDim(choices=[2, 4])
    mlp_ratio: RatioDim = RatioDim(choices=[2.0, 3.0, 4.0])
    norm: NormDim = NormDim(choices=list(DEFAULT_NORMS))
    norm_placement: PlacementDim = PlacementDim(choices=["pre", "post", "peri"])
    attention: AttentionDim = AttentionDim(choices=["softmax", "linear", "window"])
    ffn: FfnDim = FfnDim(choices=["mlp", "swiglu", "moe"])
    weight_bits: BitsDim = BitsDim(choices=[16, 8, 4])
    # how the supernet shares projection weights: "per_kind" (each attention / FFN kind its own, as
    # few-shot NAS splits a supernet: less interference between kinds, better-trained subnets; up to
    # 3x the attention / FFN weights to store) or "shared" (one Q/K/V/O set for every attention kind,
    # one set of FFN hidden units for every FFN kind)
    weight_sharing: Literal["shared", "per_kind"] = "per_kind"

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
        too_wide = [w for w in self.attention.windows if w > self.block_size]
        if "window" in self.attention.choices and too_wide:
            raise field_error("attention.windows", f"{too_wide[0]} exceeds block_size {self.block_size}")
        return self
