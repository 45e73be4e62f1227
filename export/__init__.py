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

from __future__ import annotations

from hwnas.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "ExportConfig": "config",
    "ExportError": "deploy", "export_form": "deploy", "export_onnx_dynamic": "deploy", "low_bit_weights": "deploy", "quantize": "deploy",
    "PickError": "pick", "pick_member": "pick",
    "run_export": "stage",
    "ExportedModel": "standalone", "from_pretrained": "standalone", "load": "standalone",
})
