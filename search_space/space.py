"""`SearchSpace`: sample, mutate, cross, count, encode and decode archs; Optuna and pymoo adapters.

The space is a list of genes, each a list of choices. `depth` and `embed_dim` are global; every
per-layer dimension is either one gene per layer slot (`per_layer: true`) or one gene shared by all
layers. Sub-choices fold into their kind's gene ("window:32", "moe:4:2"), so every gene vector
within bounds decodes to a valid arch. The encoding is the vector of choice indices; genes of layers
beyond the active depth encode as 0 and are ignored by `decode`. Predictors, Optuna and pymoo all use
this one encoding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import numpy as np

from . import metrics
from .arch import ArchConfig, LayerConfig
from .config import SearchSpaceConfig
from .errors import ArchError

Rng = np.random.Generator | int | None
LAYER_DIMS = ("n_heads", "mlp_ratio", "norm", "placement", "attention", "ffn", "weight_bits")


def as_rng(rng: Rng) -> np.random.Generator:
    """A numpy Generator from a Generator or a seed (None: fresh entropy)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def legacy_seed(seed: int) -> int:
    """`seed` for a library that takes numpy's legacy RandomState seeds, 0..2**32-1 (pymoo, Optuna's
    samplers, scikit-learn): the seed itself when it fits, else a 32-bit seed derived from all of
    its bits (so seeds up to 2**63-1 work everywhere, and the usual small ones change nothing)."""
    return seed if 0 <= seed < 2**32 else int(np.random.SeedSequence(seed).generate_state(1)[0])


@dataclass(frozen=True)
class Gene:
    name: str  # "depth", "embed_dim", "norm" (shared by all layers) or "norm[2]" (layer 2's)
    dim: str
    layer: int | None  # the layer slot of a per-layer gene, else None
    choices: tuple[Any, ...]


def layer_fields(dim: str, value: Any) -> dict[str, Any]:
    """LayerConfig fields set by one gene value."""
    if dim == "placement":
        return {"placement": value}
    if dim == "attention":
        kind, _, window = value.partition(":")
        return {"attention": kind, "window": int(window) if window else None}
    if dim == "ffn":
        kind, *rest = value.split(":")
        return {"ffn": kind, "n_experts": int(rest[0]) if rest else None, "top_k": int(rest[1]) if rest else None}
    return {dim: value}


def _is_int(value: Any) -> bool:
    """An integer field's value must be an integer: 2.0 would compare equal to 2 but key differently."""
    return isinstance(value, Integral) and not isinstance(value, bool)


def gene_value(layer: LayerConfig, dim: str) -> Any:
    return {"attention": layer.attention_choice, "ffn": layer.ffn_choice}.get(dim, getattr(layer, dim, None))


class SearchSpace:
    """All subnets a supernet of `config` can run."""

    def __init__(self, config: SearchSpaceConfig | None = None):
        self.config = config or SearchSpaceConfig()
        c = self.config
        self.dims = metrics.ModelDims(c.vocab_size, c.block_size, c.head_dim, c.positions)
        self.choices: dict[str, tuple[Any, ...]] = {
            "n_heads": tuple(c.n_heads.choices),
            "mlp_ratio": tuple(c.mlp_ratio.choices),
            "norm": tuple(c.norm.choices),
            "placement": tuple(c.norm_placement.choices),
            "attention": tuple(
                f"window:{w}" if kind == "window" else kind
                for kind in c.attention.choices
                for w in (c.attention.windows if kind == "window" else [None])
            ),
            "ffn": tuple(
                f"moe:{e}:{k}" if kind == "moe" else kind
                for kind in c.ffn.choices
                for e in (c.ffn.experts if kind == "moe" else [None])
                for k in (c.ffn.top_k if kind == "moe" else [None])
                if kind != "moe" or k <= e
            ),
            "weight_bits": tuple(c.weight_bits.choices),
        }
        sections = {"placement": c.norm_placement}
        self.per_layer = {dim: getattr(c, dim, sections.get(dim)).per_layer for dim in LAYER_DIMS}
        genes = [Gene("depth", "depth", None, tuple(c.depth)), Gene("embed_dim", "embed_dim", None, tuple(c.embed_dim))]
        genes += [Gene(dim, dim, None, self.choices[dim]) for dim in LAYER_DIMS if not self.per_layer[dim]]
        for i in range(self.max_depth):
            genes += [Gene(f"{dim}[{i}]", dim, i, self.choices[dim]) for dim in LAYER_DIMS if self.per_layer[dim]]
        self.genes: tuple[Gene, ...] = tuple(genes)
        self._index = {g.name: j for j, g in enumerate(self.genes)}

    # --- basic facts ------------------------------------------------------------------------------
    @property
    def max_depth(self) -> int:
        return max(self.config.depth)

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    def size(self) -> int:
        """Exact number of distinct archs (a Python int, however large)."""
        shared = 1
        per_layer = 1
        for dim in LAYER_DIMS:
            if self.per_layer[dim]:
                per_layer *= len(self.choices[dim])
            else:
                shared *= len(self.choices[dim])
        return len(self.config.embed_dim) * shared * sum(per_layer**d for d in self.config.depth)

    # --- validation -------------------------------------------------------------------------------
    def validate(self, arch: ArchConfig) -> None:
        """Raise `ArchError` naming the first field of `arch` that this space does not allow."""
        if not isinstance(arch, ArchConfig):
            raise ArchError("arch", f"expected an ArchConfig, got {type(arch).__name__}")
        c = self.config
        if arch.depth not in c.depth:
            raise ArchError("depth", f"{arch.depth} is not one of {list(c.depth)}")
        if not _is_int(arch.embed_dim) or arch.embed_dim not in c.embed_dim:
            raise ArchError("embed_dim", f"{arch.embed_dim!r} is not one of {list(c.embed_dim)}")
        first = arch.layers[0]
        for i, layer in enumerate(arch.layers):
            if not isinstance(layer, LayerConfig):
                raise ArchError(f"layers[{i}]", f"expected a LayerConfig, got {type(layer).__name__}")
            for dim in LAYER_DIMS:
                self._validate_gene(layer, dim, f"layers[{i}]")
                if not self.per_layer[dim] and gene_value(layer, dim) != gene_value(first, dim):
                    raise ArchError(
                        f"layers[{i}].{dim}",
                        f"{gene_value(layer, dim)!r} differs from layers[0] ({gene_value(first, dim)!r}), "
                        f"but {dim} is shared by all layers (per_layer: false)",
                    )

    def _validate_gene(self, layer: LayerConfig, dim: str, where: str) -> None:
        c = self.config
        if dim == "attention":
            if layer.attention not in c.attention.choices:
                raise ArchError(f"{where}.attention", f"{layer.attention!r} is not one of {list(c.attention.choices)}")
            if layer.attention == "window" and (not _is_int(layer.window) or layer.window not in c.attention.windows):
                raise ArchError(f"{where}.window", f"{layer.window!r} is not one of {list(c.attention.windows)}")
            return
        if dim == "ffn":
            if layer.ffn not in c.ffn.choices:
                raise ArchError(f"{where}.ffn", f"{layer.ffn!r} is not one of {list(c.ffn.choices)}")
            if layer.ffn == "moe":
                if not _is_int(layer.n_experts) or layer.n_experts not in c.ffn.experts:
                    raise ArchError(f"{where}.n_experts", f"{layer.n_experts!r} is not one of {list(c.ffn.experts)}")
                if not _is_int(layer.top_k) or layer.top_k not in c.ffn.top_k or layer.top_k > layer.n_experts:
                    allowed = [k for k in c.ffn.top_k if k <= layer.n_experts]
                    raise ArchError(f"{where}.top_k", f"{layer.top_k!r} is not one of {allowed}")
            return
        value = getattr(layer, dim)
        if value not in self.choices[dim] or (dim in ("n_heads", "weight_bits") and not _is_int(value)):
            raise ArchError(f"{where}.{dim}", f"{value!r} is not one of {list(self.choices[dim])}")

    def contains(self, arch: ArchConfig) -> bool:
        try:
            self.validate(arch)
        except ArchError:
            return False
        return True

    # --- encoding ---------------------------------------------------------------------------------
    def encode(self, arch: ArchConfig) -> np.ndarray:
        """Choice index per gene (int64); genes of layers beyond the depth are 0."""
        self.validate(arch)
        vec = np.zeros(self.n_genes, dtype=np.int64)
        vec[0] = self.genes[0].choices.index(arch.depth)
        vec[1] = self.genes[1].choices.index(arch.embed_dim)
        for j, gene in enumerate(self.genes[2:], start=2):
            layer_idx = 0 if gene.layer is None else gene.layer
            if layer_idx < arch.depth:
                vec[j] = gene.choices.index(gene_value(arch.layers[layer_idx], gene.dim))
        return vec

    def decode(self, vector: Sequence[float] | np.ndarray) -> ArchConfig:
        """The arch of a gene vector; entries must be whole numbers within each gene's bounds."""
        vec = np.asarray(vector)
        if vec.shape != (self.n_genes,):
            raise ArchError("vector", f"expected shape ({self.n_genes},), got {vec.shape}")
        idx = []
        for gene, x in zip(self.genes, vec, strict=True):
            try:
                ok = bool(np.isfinite(x)) and x == int(x) and 0 <= x < len(gene.choices)
            except (TypeError, ValueError):  # not a number at all, e.g. a string or None
                ok = False
            if not ok:
                raise ArchError(gene.name, f"gene value {x!r} is not an integer in [0, {len(gene.choices) - 1}]")
            idx.append(int(x))
        return self._build(lambda gene: gene.choices[idx[self._index[gene.name]]])

    def _build(self, pick: Callable[[Gene], Any]) -> ArchConfig:
        """Build an arch by asking `pick` for the value of each active gene, in gene order."""
        depth = pick(self.genes[0])
        embed = pick(self.genes[1])
        shared = {g.dim: pick(g) for g in self.genes[2:] if g.layer is None}
        per_slot: dict[int, dict[str, Any]] = {i: dict(shared) for i in range(depth)}
        for g in self.genes[2:]:
            if g.layer is not None and g.layer < depth:
                per_slot[g.layer][g.dim] = pick(g)
        layers = []
        for i in range(depth):
            kwargs: dict[str, Any] = {}
            for dim, value in per_slot[i].items():
                kwargs.update(layer_fields(dim, value))
            layers.append(LayerConfig(**kwargs))
        return ArchConfig(embed_dim=embed, layers=tuple(layers))

    # --- sampling and variation -------------------------------------------------------------------
    def sample(self, rng: Rng = None) -> ArchConfig:
        """A uniformly random arch: each active gene uniform over its choices."""
        gen = as_rng(rng)
        return self._build(lambda g: g.choices[gen.integers(len(g.choices))])

    def mutate(self, arch: ArchConfig, rng: Rng = None, p: float = 0.2) -> ArchConfig:
        """Resample each active gene with probability `p` (to a different choice); layers that a
        deeper depth adds get random choices."""
        gen = as_rng(rng)
        vec = self.encode(arch)
        for j, gene in enumerate(self.genes):
            n = len(gene.choices)
            newly_active = gene.layer is not None and gene.layer >= arch.depth
            if newly_active:
                vec[j] = gen.integers(n)
            elif n > 1 and gen.random() < p:
                vec[j] = (vec[j] + 1 + gen.integers(n - 1)) % n
        return self.decode(vec)

    def crossover(self, a: ArchConfig, b: ArchConfig, rng: Rng = None) -> ArchConfig:
        """Uniform crossover: each gene from a random parent; a layer slot that only one parent has
        comes from that parent."""
        gen = as_rng(rng)
        va, vb = self.encode(a), self.encode(b)
        child = np.where(gen.random(self.n_genes) < 0.5, va, vb)
        for j, gene in enumerate(self.genes):
            if gene.layer is not None:
                if gene.layer >= a.depth:
                    child[j] = vb[j]
                elif gene.layer >= b.depth:
                    child[j] = va[j]
        return self.decode(child)

    def _extreme(self, largest: bool) -> ArchConfig:
        """Greedy per dimension: numeric dims at their max/min, categorical genes at the choice that
        maximizes/minimizes (FLOPs, params, memory) of the arch at the block size."""
        pick_num = max if largest else min
        base = {g.name: (pick_num(g.choices) if g.dim in ("depth", "embed_dim", "n_heads", "mlp_ratio", "weight_bits") else g.choices[0]) for g in self.genes}

        def cost(values: dict[str, Any]) -> tuple:
            arch = self._build(lambda g: values[g.name])
            t = self.config.block_size
            return (metrics.flops(arch, t, self.dims), metrics.params(arch, self.dims)["total"], metrics.memory(arch, t, self.dims)["total"])

        for g in self.genes[2:]:
            if g.dim in ("n_heads", "mlp_ratio", "weight_bits") or len(g.choices) == 1:
                continue
            scored = [(cost({**base, g.name: v}), i) for i, v in enumerate(g.choices)]
            best = max(scored, key=lambda s: (s[0], -s[1])) if largest else min(scored)  # ties: first listed
            base[g.name] = g.choices[best[1]]
        return self._build(lambda g: base[g.name])

    def smallest(self) -> ArchConfig:
        return self._extreme(largest=False)

    def largest(self) -> ArchConfig:
        return self._extreme(largest=True)

    # --- analytic metrics -------------------------------------------------------------------------
    def params(self, arch: ArchConfig) -> dict[str, int]:
        return metrics.params(arch, self.dims)

    def flops(self, arch: ArchConfig, seq_len: int | None = None) -> int:
        return metrics.flops(arch, seq_len or self.config.block_size, self.dims)

    def memory(self, arch: ArchConfig, seq_len: int | None = None, batch: int = 1) -> dict[str, int]:
        return metrics.memory(arch, seq_len or self.config.block_size, self.dims, batch)

    # --- Optuna and pymoo -------------------------------------------------------------------------
    def suggest(self, trial) -> ArchConfig:
        """Ask an Optuna trial for an arch; per-layer parameters exist only for active layers."""
        return self._build(lambda g: trial.suggest_categorical(g.name, list(g.choices)))

    def from_params(self, params: dict[str, Any]) -> ArchConfig:
        """The arch of a finished Optuna trial's `params`."""
        return self._build(lambda g: params[g.name])

    def pymoo_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of the integer gene vector (the pymoo `xl`, `xu`)."""
        return np.zeros(self.n_genes, dtype=np.int64), np.array([len(g.choices) - 1 for g in self.genes])

    def pymoo_variables(self) -> dict[str, Any]:
        """pymoo mixed-variable description: one `Integer` choice index per gene."""
        from pymoo.core.variable import Integer

        return {g.name: Integer(bounds=(0, len(g.choices) - 1)) for g in self.genes}

    def decode_pymoo(self, x: dict[str, Any] | np.ndarray) -> ArchConfig:
        """Decode a pymoo solution: a gene vector, or a dict from `pymoo_variables` names."""
        if isinstance(x, dict):
            x = np.array([x[g.name] for g in self.genes])
        return self.decode(x)
