"""hwnas.export: a Pareto-front member as a standalone, verified deployable model.

    from hwnas.export import run_export, load

    report = run_export("runs/quickstart", "min loss where latency@cpu <= 5ms")   # `hwnas export`
    m = load("runs/quickstart/export")      # plain PyTorch module + arch, no supernet
    print(m.generate("def ", max_new_tokens=100, seed=0))

Modules: `config` (the `export:` section), `pick` (choose a front member by index, key or rule),
`deploy` (export form, ONNX with dynamic axes, int8 / int4 quantization, ONNX Runtime helpers),
`standalone` (`load`, `generate`), `report` (report.md), `stage` (`run_export`: pick, extract,
optionally fine-tune with `supernet.finetune.train_standalone`, verify, write atomically).
"""

from .config import ExportConfig
from .deploy import ExportError, export_form, export_onnx_dynamic, low_bit_weights, quantize
from .pick import PickError, pick_member
from .stage import run_export
from .standalone import ExportedModel, load

__all__ = [
    "ExportConfig", "ExportError", "ExportedModel", "PickError", "export_form", "export_onnx_dynamic", "load",
    "low_bit_weights", "pick_member", "quantize", "run_export",
]
