"""Latency tables: predict how long a subnet takes on a device without running it.

    from hwnas.latency import LatencyConfig, run_latency, fidelity_report, LatencyTable

    table = run_latency(space, LatencyConfig(), "runs/quickstart", device="cpu", backend="onnxruntime")
    table.predict(arch)                      # seconds, batch x seq_len of the table's workload
    report = fidelity_report(space, cfg, table, "runs/quickstart")
    LatencyTable.load("runs/quickstart/latency/cpu-onnxruntime.json", strict=False)

Modules, one concern each: `fingerprint` (device fingerprint), `protocol` (warm-up, repeat until
the median is stable), `modules` and `keys` (the timed pieces of a subnet), `backends` (torch eager,
ONNX Runtime with real int8 / int4 kernels), `session` (measurement sessions: which subnets, a
`Measurer`, fresh-process timing, and `TableTiming`, the one call that times a model the way a
run's table does), `speed` (the speed reference and window retakes), `correction` (what the piece
sum misses), `table` (`LatencyTable`: the measurements, prediction and the file format), `build`
(the resumable table build), `fidelity` (the held-out report), `userview` (timing as users do),
`stage` (`hwnas latency`: every table and its report, the run directory locked).
"""

from __future__ import annotations

from hwnas.core.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "BACKENDS": "backends", "Backend": "backends", "OnnxRuntimeBackend": "backends", "TorchBackend": "backends", "make_backend": "backends",
    "build_table": "build", "run_latency": "build",
    "LatencyConfig": "config",
    "Correction": "correction",
    "FingerprintMismatchError": "errors", "FingerprintWarning": "errors", "LatencyError": "errors", "TableError": "errors",
    "fidelity_report": "fidelity",
    "device_fingerprint": "fingerprint",
    "Piece": "keys", "arch_keys": "keys", "arch_pieces": "keys", "space_pieces": "keys",
    "Measurement": "protocol", "Protocol": "protocol", "measure": "protocol",
    "Measurer": "session", "calibration_archs": "session", "heldout_archs": "session",
    "run_latency_stage": "stage",
    "LatencyTable": "table", "load_table": "table", "table_path": "table",
})
