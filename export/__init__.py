"""hwnas.export: a Pareto-front member as a standalone, verified deployable model.

    from hwnas.export import ExportedModel, run_export

    report = run_export("runs/quickstart", "min loss where latency@cpu <= 5ms")   # `hwnas export`
    m = ExportedModel.from_pretrained("runs/quickstart/export")   # plain PyTorch module + arch, no supernet
    print(m.generate("def ", max_new_tokens=100, seed=0))

`load(path)` and `from_pretrained(path)` are the same loader (`ExportedModel.from_pretrained`
too): safetensors only, every file checked against the folder's manifest.json first. An export
folder holds config.json, model.safetensors, model.onnx, model.int8.onnx, report.json, report.md
(every figure) and README.md, the model card (arch, headline figures, its place on the front, the
machine, how to load it).

Modules: `config` (the `export:` section), `pick` (choose a front member by index, key or rule),
`deploy` (export form, ONNX with dynamic axes, int8 / int4 quantization, ONNX Runtime helpers),
`standalone` (`load`, `from_pretrained`, `generate`), `report` (report.md), `card` (README.md, the
model card), `stage` (`run_export`: pick, extract, optionally fine-tune with
`supernet.finetune.train_standalone`, verify, write atomically).
"""

from .config import ExportConfig
from .deploy import ExportError, export_form, export_onnx_dynamic, low_bit_weights, quantize
from .pick import PickError, pick_member
from .stage import run_export
from .standalone import ExportedModel, from_pretrained, load

__all__ = [
    "ExportConfig", "ExportError", "ExportedModel", "PickError", "export_form", "export_onnx_dynamic", "from_pretrained",
    "load", "low_bit_weights", "pick_member", "quantize", "run_export",
]
