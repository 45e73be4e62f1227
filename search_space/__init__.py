"""The search space: `ArchConfig` values, the `SearchSpace` over them, and their analytic cost."""

from .arch import ArchConfig, LayerConfig
from .config import SearchSpaceConfig
from .errors import ArchError
from .metrics import LINEAR_CHUNK, ModelDims
from .space import Gene, SearchSpace, as_rng, legacy_seed

__all__ = [
    "ArchConfig", "ArchError", "Gene", "LINEAR_CHUNK", "LayerConfig",
    "ModelDims", "SearchSpace", "SearchSpaceConfig", "as_rng", "legacy_seed",
]
