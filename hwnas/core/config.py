"""What every config section shares: the upper bounds of sizes and counts, strict sections that
reject unknown keys, and validator helpers."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
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

def int_choice(*allowed: int):
    """An integer that must be one of `allowed`. A `Literal[16, 8, 4]` would also take 8.0; this
    follows the rule of every other integer field (strict: no floats, no booleans, no strings)."""
    expected = ", ".join(map(str, allowed[:-1])) + f" or {allowed[-1]}" if len(allowed) > 1 else str(allowed[0])

    def check(v: int) -> int:
        if v not in allowed:
            raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
        return v

    return Annotated[int, AfterValidator(check)]


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
