"""`ArchFeaturizer`: archs (or their `SearchSpace.encode` vectors) to a numeric feature matrix, as a
scikit-learn transformer, so any regressor composes with it in a `Pipeline`.

Feature groups:
- `onehot`: one column per (gene, choice) of the search space's encoding; genes of layers beyond the
  arch's depth are all zero (not "choice 0", which `encode` uses for them).
- `counts`: depth and width, how many layers take each choice of each per-layer dimension, and the
  layer means of heads, MLP ratio and weight bits.
- `ends`: the choices of the first and of the last layer, one-hot (the last layer's norm kind is also
  the final norm's, and the ends of the stack matter most to a shallowly trained supernet).
- `cost`: log parameters (total, non-embedding), log forward FLOPs at the block size, log weight bytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted

from hwnas.search_space import ArchConfig, ArchError, SearchSpace, SearchSpaceConfig
from hwnas.search_space.space import LAYER_DIMS, gene_value

FEATURE_GROUPS = ("onehot", "counts", "ends", "cost")


def space_of(space_config: SearchSpaceConfig | dict[str, Any] | None) -> SearchSpace:
    """The `SearchSpace` of a config, its JSON dict (as estimators store it), or None (the default)."""
    if space_config is None or isinstance(space_config, SearchSpaceConfig):
        return SearchSpace(space_config)
    return SearchSpace(SearchSpaceConfig.model_validate(space_config))


def as_archs(X: Any, space: SearchSpace) -> list[ArchConfig]:
    """Archs from a sequence of `ArchConfig`s (or their dicts), or a 2-d array of gene vectors."""
    if isinstance(X, ArchConfig):
        raise ArchError("X", "expected a sequence of archs, got a single ArchConfig; wrap it in a list")
    if isinstance(X, np.ndarray) and X.dtype != object:
        if X.ndim != 2:
            raise ArchError("X", f"expected a 2-d array of gene vectors, got shape {X.shape}")
        return [space.decode(row) for row in X]
    if not isinstance(X, Sequence | np.ndarray):
        raise ArchError("X", f"expected archs or gene vectors, got {type(X).__name__}")
    out = []
    for item in X:
        if isinstance(item, ArchConfig):
            out.append(item)
        elif isinstance(item, dict):
            out.append(ArchConfig.from_dict(item))
        else:
            out.append(space.decode(np.asarray(item)))
    return out


class ArchFeaturizer(TransformerMixin, BaseEstimator):
    """Transform archs to features. `space_config`: the search space (its JSON dict or a
    `SearchSpaceConfig`; None: the default space). `features`: which groups, see the module doc."""

    def __init__(self, space_config: dict[str, Any] | SearchSpaceConfig | None = None,
                 features: Sequence[str] = FEATURE_GROUPS):
        self.space_config = space_config
        self.features = features

    # the SearchSpace is rebuilt from `space_config` when needed and never saved with the estimator
    def _space(self) -> SearchSpace:
        space = self.__dict__.get("_space_cache")
        if space is None:
            space = self.__dict__["_space_cache"] = space_of(self.space_config)
        return space

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_space_cache", None)
        return state

    def fit(self, X: Any = None, y: Any = None) -> ArchFeaturizer:
        unknown = [g for g in self.features if g not in FEATURE_GROUPS]
        if unknown or not self.features:
            raise ValueError(f"features must be a non-empty subset of {FEATURE_GROUPS}, got {list(self.features)}")
        self.__dict__.pop("_space_cache", None)
        space = self._space()
        self.feature_names_ = np.array(self._names(space), dtype=object)
        self.n_genes_ = space.n_genes
        return self

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self, "feature_names_")
        return self.feature_names_.copy()

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "feature_names_")
        space = self._space()
        archs = as_archs(X, space)
        rows = [self._row(arch, space) for arch in archs]
        return np.array(rows, dtype=np.float64).reshape(len(rows), len(self.feature_names_))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # archs, not numbers
        tags.input_tags.categorical = True
        tags.requires_fit = True
        return tags

    # --- the features -------------------------------------------------------------------------------
    def _names(self, space: SearchSpace) -> list[str]:
        names: list[str] = []
        if "onehot" in self.features:
            names += [f"{g.name}={c}" for g in space.genes for c in g.choices]
        if "counts" in self.features:
            names += ["depth", "embed_dim"]
            names += [f"n_{dim}={c}" for dim in LAYER_DIMS for c in space.choices[dim]]
            names += ["mean_n_heads", "mean_mlp_ratio", "mean_weight_bits"]
        if "ends" in self.features:
            names += [f"{end}_{dim}={c}" for end in ("first", "last") for dim in LAYER_DIMS if dim != "placement"
                      for c in space.choices[dim]]
        if "cost" in self.features:
            names += ["log_params", "log_params_non_embedding", "log_flops", "log_weight_bytes"]
        return names

    def _row(self, arch: ArchConfig, space: SearchSpace) -> list[float]:
        row: list[float] = []
        if "onehot" in self.features:
            vec = space.encode(arch)
            for gene, idx in zip(space.genes, vec, strict=True):
                active = gene.layer is None or gene.layer < arch.depth
                row += [float(active and i == idx) for i in range(len(gene.choices))]
        if "counts" in self.features:
            row += [float(arch.depth), float(arch.embed_dim)]
            for dim in LAYER_DIMS:
                values = [gene_value(layer, dim) for layer in arch.layers]
                row += [float(values.count(c)) for c in space.choices[dim]]
            row += [float(np.mean([getattr(layer, k) for layer in arch.layers])) for k in ("n_heads", "mlp_ratio", "weight_bits")]
        if "ends" in self.features:
            for layer in (arch.layers[0], arch.layers[-1]):
                for dim in LAYER_DIMS:
                    if dim != "placement":
                        value = gene_value(layer, dim)
                        row += [float(value == c) for c in space.choices[dim]]
        if "cost" in self.features:
            p = space.params(arch)
            row += [math.log(p["total"]), math.log(p["non_embedding"]), math.log(space.flops(arch)),
                    math.log(space.memory(arch)["weights"])]
        return row
