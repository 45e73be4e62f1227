"""The search-space section of an experiment config: which choices each dimension offers.

Every dimension is a list of choices. Per-layer dimensions (heads, MLP ratio, norm, placement,
attention, FFN, weight bits) also say whether each layer chooses on its own (`per_layer: true`) or
all layers share one choice. Window sizes belong to the `window` attention kind, expert counts and
top-k to the `moe` FFN kind.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

# --- bounds ---------------------------------------------------------------------------------------
# Every size and count has an upper bound, checked when the config loads, so a slip (an extra zero,
# `1e9`) is one line naming the field instead of an allocation failure or a run that never ends.
# The bounds sit far above anything one machine trains; whether a config's supernet really fits
# in this machine's memory is checked by the stages that build it (hwnas.supernet.memory).
MAX_SEED = 2**63 - 1  # a signed 64-bit integer, as torch takes it; libraries that take only 32-bit seeds
#                       (numpy's legacy RandomState: pymoo, Optuna's samplers, scikit-learn) get one derived
#                       from all of its bits (search_space.space.legacy_seed)
MAX_VOCAB = 2**20  # tokens: above every tokenizer in use (~256k); hwnas models bytes (256)
MAX_BLOCK = 2**20  # context length in tokens (and every seq_len and attention window)
MAX_WIDTH = 2**20  # embed_dim and head_dim (the widest language models are ~25k wide)
MAX_DEPTH = 1024  # layers (the deepest language models have ~130)
MAX_HEADS = 1024  # attention heads per layer
MAX_EXPERTS = 4096  # MoE experts per layer, and top-k (the largest MoE models route over 256)
MAX_MLP_RATIO = 64.0  # hidden units per embedding dimension (4 is usual)
MAX_BATCH = 2**16  # sequences in one batch
MAX_STEPS = 10**8  # optimizer steps (and checkpoint, evaluation and log intervals): 10**8 steps
#                    of even 10 ms each is a year
MAX_TOKENS = 2**30  # tokens of one evaluation (1 GiB of bytes)
MAX_CORPUS_BYTES = 2**50  # a cap on the corpus size (1 PiB)
MAX_THREADS = 4096  # CPU threads
MAX_SECONDS = 3600.0  # a time limit or pause of one measurement
MAX_INT4_BLOCK = 2**16  # a weight block of int4 MatMulNBits (a power of two; 32 is usual)
MAX_WORKERS = 1024  # search worker processes sharing one study
MAX_PICK = 1000  # characters of an export pick: an index, an arch key or a rule is far shorter

NormKind = Literal["layernorm", "rmsnorm", "dyt"]
Placement = Literal["pre", "post", "peri"]
AttentionKind = Literal["softmax", "linear", "window"]
FfnKind = Literal["mlp", "swiglu", "moe"]

NORM_KINDS: tuple[str, ...] = ("layernorm", "rmsnorm", "dyt")
PLACEMENTS: tuple[str, ...] = ("pre", "post", "peri")
ATTENTION_KINDS: tuple[str, ...] = ("softmax", "linear", "window")
FFN_KINDS: tuple[str, ...] = ("mlp", "swiglu", "moe")
WEIGHT_BITS: tuple[int, ...] = (16, 8, 4)


def int_choice(*allowed: int):
    """An integer that must be one of `allowed`. A `Literal[16, 8, 4]` would also take 8.0; this
    follows the rule of every other integer field (strict: no floats, no booleans, no strings)."""
    expected = ", ".join(map(str, allowed[:-1])) + f" or {allowed[-1]}" if len(allowed) > 1 else str(allowed[0])

    def check(v: int) -> int:
        if v not in allowed:
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return v

    return Annotated[int, AfterValidator(check)]


WeightBits = int_choice(*WEIGHT_BITS)
# a seed: numpy and torch take it as is, 32-bit libraries a seed derived from it (see MAX_SEED)
Seed = Annotated[int, Field(ge=0, le=MAX_SEED, description=f"random seed, an integer in 0..{MAX_SEED}")]


class Section(BaseModel):
    """A config section: strict types (an integer field takes integers only, never 12.0 or true),
    finite numbers, unknown keys rejected with the list of allowed keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [k for k in data if k not in cls.model_fields]
            if unknown:
                allowed = ", ".join(cls.model_fields)
                raise field_error(str(unknown[0]), f"unknown key; allowed keys: {allowed}")
        return data


def field_error(field: str, message: str) -> PydanticCustomError:
    """A validation error about the sub-field `field` of the model being validated."""
    return PydanticCustomError("field_error", message, {"field": field})


def power_of_two(v: int) -> int:
    """Validator body for block sizes such as int4_block_size (a power of two)."""
    if v & (v - 1):
        raise ValueError(f"must be a power of two >= 16, got {v}")
    return v


def _choices_ok(values: list, what: str) -> list:
    if not values:
        raise ValueError(f"needs at least one {what}")
    if len(set(values)) != len(values):
        raise ValueError(f"has duplicate choices {values}")
    return values


def _positive_ints(values: list[int], most: int) -> list[int]:
    _choices_ok(values, "choice")
    bad = [v for v in values if v <= 0]
    if bad:
        raise ValueError(f"must be positive integers, got {bad[0]}")
    big = [v for v in values if v > most]
    if big:
        raise ValueError(f"must be at most {most}, got {big[0]}")
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
        _choices_ok(v, "choice")
        bad = [x for x in v if x <= 0]
        if bad:
            raise ValueError(f"must be positive numbers, got {bad[0]}")
        big = [x for x in v if x > MAX_MLP_RATIO]
        if big:
            raise ValueError(f"must be at most {MAX_MLP_RATIO:g}, got {big[0]:g}")
        return sorted(v)


class NormDim(Section):
    choices: list[NormKind]
    per_layer: bool = True

    @field_validator("choices")
    @classmethod
    def check_choices(cls, v):
        return _choices_ok(v, "norm kind")


class PlacementDim(Section):
    choices: list[Placement]
    per_layer: bool = False

    @field_validator("choices")
    @classmethod
    def check_choices(cls, v):
        return _choices_ok(v, "placement")


class AttentionDim(Section):
    choices: list[AttentionKind]
    per_layer: bool = True
    windows: list[int] = Field(default_factory=lambda: [32], description=f"window sizes in tokens, each in 1..{MAX_BLOCK}")

    @field_validator("choices")
    @classmethod
    def check_choices(cls, v):
        return _choices_ok(v, "attention kind")

    @field_validator("windows")
    @classmethod
    def check_windows(cls, v):
        return _positive_ints(v, MAX_BLOCK)


class FfnDim(Section):
    choices: list[FfnKind]
    per_layer: bool = True
    experts: list[int] = Field(default_factory=lambda: [4], description=f"experts per MoE layer, each in 2..{MAX_EXPERTS}")
    top_k: list[int] = Field(default_factory=lambda: [1, 2], description=f"experts per token, each in 1..{MAX_EXPERTS}")

    @field_validator("choices")
    @classmethod
    def check_choices(cls, v):
        return _choices_ok(v, "FFN kind")

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


class BitsDim(Section):
    choices: list[WeightBits]
    per_layer: bool = True

    @field_validator("choices")
    @classmethod
    def check_choices(cls, v):
        return _choices_ok(v, "bit width")


class SearchSpaceConfig(Section):
    """Choices of every searchable dimension, plus the fixed model hyperparameters they live in."""

    vocab_size: int = Field(default=256, gt=0, le=MAX_VOCAB, description=f"tokens, 1..{MAX_VOCAB}")
    block_size: int = Field(default=128, gt=0, le=MAX_BLOCK, description=f"context length in tokens, 1..{MAX_BLOCK}")
    head_dim: int = Field(default=16, gt=0, le=MAX_WIDTH, description=f"width of one attention head, 1..{MAX_WIDTH}")
    depth: list[int] = Field(default_factory=lambda: [2, 3, 4], description=f"layer counts, each in 1..{MAX_DEPTH}")
    embed_dim: list[int] = Field(default_factory=lambda: [64, 96, 128], description=f"widths, each in 1..{MAX_WIDTH}")
    n_heads: PositiveIntDim = PositiveIntDim(choices=[2, 4])
    mlp_ratio: RatioDim = RatioDim(choices=[2.0, 3.0, 4.0])
    norm: NormDim = NormDim(choices=["layernorm", "rmsnorm", "dyt"])
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
