"""The weight-sharing supernet: the model, its standalone subnets, and FLOP counting."""

from __future__ import annotations

from hwnas.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "count_flops": "flops",
    "Block": "model", "InputError": "model", "Supernet": "model",
    "Subnet": "subnet", "extract_subnet": "subnet", "load_subnet": "subnet", "save_subnet": "subnet",
})
