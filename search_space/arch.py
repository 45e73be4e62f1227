"""`ArchConfig`: one subnet of the search space, as a frozen, hashable value with a canonical key.

An arch is the global embedding width plus one `LayerConfig` per active layer; layers beyond the
active depth do not exist in the value, so they carry no choices. Fields that a choice makes
irrelevant are None (e.g. `window` unless the attention kind is "window"), so two archs that build
the same network are equal and share one key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any

from .errors import ArchError
from .kinds import attention_tag, ffn_tag, norm_tag


def _ratio_tag(ratio: float) -> str:
    """Shortest exact text of a ratio ("2", "2.5"): unlike `:g`, distinct ratios get distinct text."""
    text = repr(float(ratio))
    return text.removesuffix(".0")


@dataclass(frozen=True)
class LayerConfig:
    n_heads: int
    mlp_ratio: float
    norm: str = "layernorm"
    placement: str = "pre"
    attention: str = "softmax"
    window: int | None = None
    ffn: str = "mlp"
    n_experts: int | None = None
    top_k: int | None = None
    weight_bits: int = 16

    def __post_init__(self) -> None:
        # canonical form: irrelevant fields are None, ratios are floats
        object.__setattr__(self, "mlp_ratio", float(self.mlp_ratio))
        if self.attention != "window":
            object.__setattr__(self, "window", None)
        if self.ffn != "moe":
            object.__setattr__(self, "n_experts", None)
            object.__setattr__(self, "top_k", None)

    @property
    def attention_choice(self) -> str:
        """The attention gene: kind, plus the window size for sliding-window attention."""
        return f"window:{self.window}" if self.attention == "window" else self.attention

    @property
    def ffn_choice(self) -> str:
        """The FFN gene: kind, plus experts and top-k for mixture-of-experts."""
        return f"moe:{self.n_experts}:{self.top_k}" if self.ffn == "moe" else self.ffn

    def hidden(self, embed_dim: int) -> int:
        """FFN hidden units (all experts together for MoE)."""
        return int(round(self.mlp_ratio * embed_dim))

    def key(self) -> str:
        attn, ffn = attention_tag(self.attention, self.window), ffn_tag(self.ffn, self.n_experts, self.top_k)
        return f"h{self.n_heads}r{_ratio_tag(self.mlp_ratio)}-{norm_tag(self.norm)}-{self.placement}-{attn}-{ffn}-q{self.weight_bits}"


@dataclass(frozen=True)
class ArchConfig:
    embed_dim: int
    layers: tuple[LayerConfig, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))

    @property
    def depth(self) -> int:
        return len(self.layers)

    def key(self) -> str:
        """Canonical string key: equal archs have equal keys, and the key is stable across processes."""
        return f"e{self.embed_dim}-L{self.depth}:" + "|".join(layer.key() for layer in self.layers)

    def __str__(self) -> str:
        return self.key()

    # --- serialization -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"embed_dim": self.embed_dim, "layers": [asdict(layer) for layer in self.layers]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchConfig:
        if not isinstance(data, dict) or set(data) != {"embed_dim", "layers"}:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ArchError("arch", f"expected keys ['embed_dim', 'layers'], got {got}")
        if not isinstance(data["layers"], list | tuple):
            raise ArchError("layers", f"expected a list of layers, got {data['layers']!r}")
        names = {f.name for f in fields(LayerConfig)}
        layers = []
        for i, layer in enumerate(data["layers"]):
            if not isinstance(layer, dict):
                raise ArchError(f"layers[{i}]", f"expected a mapping, got {layer!r}")
            unknown = sorted(set(layer) - names)
            if unknown:
                raise ArchError(f"layers[{i}].{unknown[0]}", f"unknown field; allowed: {', '.join(sorted(names))}")
            try:
                layers.append(LayerConfig(**layer))
            except (TypeError, ValueError) as e:  # a missing required field, or a ratio that is not a number
                raise ArchError(f"layers[{i}]", str(e)) from None
        return cls(embed_dim=data["embed_dim"], layers=tuple(layers))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ArchConfig:
        return cls.from_dict(json.loads(text))

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_yaml(cls, text: str) -> ArchConfig:
        import yaml

        return cls.from_dict(yaml.safe_load(text))

    def validate(self, space) -> ArchConfig:
        """Raise `ArchError` naming the first field that is not in `space`; return self if valid."""
        space.validate(self)
        return self
