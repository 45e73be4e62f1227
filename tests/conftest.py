"""Shared fixtures and hypothesis strategies for the search-space, config and CLI tests."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import strategies as st

from hwnas.search_space import SearchSpace, SearchSpaceConfig

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
# the interpreter running the tests is the venv's; its `hwnas` console script sits beside it
VENV_BIN = Path(sys.executable).parent
QUICKSTART_SIZE = 1_589_326_982_208


@pytest.fixture(scope="session")
def quickstart_space() -> SearchSpace:
    from hwnas.config import load_config

    return SearchSpace(load_config(QUICKSTART).search_space)


def _subset(values, min_size: int = 1):
    """A non-empty list of distinct values from `values`, in a drawn order."""
    return st.lists(st.sampled_from(values), min_size=min_size, max_size=len(values), unique=True)


@st.composite
def space_configs(draw) -> SearchSpaceConfig:
    """Varied valid search spaces: different depth lists, widths, choices and per-layer flags.

    Embed dims are multiples of 8 and ratios in {1, 1.5, 2, 4}, so every hidden size is a multiple
    of 8 and experts 2 and 4 divide it; windows fit the block size 16.
    """
    ffn_choices = draw(_subset(["mlp", "swiglu", "moe"]))
    experts = draw(_subset([2, 4]))
    top_k = draw(_subset([k for k in (1, 2, 4) if k <= max(experts)]))
    flag = st.booleans()
    return SearchSpaceConfig(
        vocab_size=draw(st.sampled_from([16, 32])),
        block_size=16,
        head_dim=draw(st.sampled_from([4, 8])),
        depth=draw(_subset([1, 2, 3, 4])),
        embed_dim=draw(_subset([8, 16, 32])),
        n_heads={"choices": draw(_subset([1, 2, 4])), "per_layer": draw(flag)},
        mlp_ratio={"choices": draw(_subset([1.0, 1.5, 2.0, 4.0])), "per_layer": draw(flag)},
        norm={"choices": draw(_subset(["layernorm", "rmsnorm", "dyt"])), "per_layer": draw(flag)},
        norm_placement={"choices": draw(_subset(["pre", "post", "peri"])), "per_layer": draw(flag)},
        attention={
            "choices": draw(_subset(["softmax", "linear", "window"])),
            "windows": draw(_subset([2, 4, 8])),
            "per_layer": draw(flag),
        },
        ffn={"choices": ffn_choices, "experts": experts, "top_k": top_k, "per_layer": draw(flag)},
        weight_bits={"choices": draw(_subset([16, 8, 4])), "per_layer": draw(flag)},
    )


spaces = space_configs().map(SearchSpace)
seeds = st.integers(min_value=0, max_value=2**32 - 1)
