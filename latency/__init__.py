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

from .backends import BACKENDS, Backend, OnnxRuntimeBackend, TorchBackend, make_backend
from .build import build_table, run_latency
from .config import LatencyConfig
from .correction import Correction
from .errors import FingerprintMismatchError, FingerprintWarning, LatencyError, TableError
from .fidelity import fidelity_report
from .fingerprint import device_fingerprint
from .keys import Piece, arch_keys, arch_pieces, space_pieces
from .protocol import Measurement, Protocol, measure
from .session import Measurer, calibration_archs, heldout_archs
from .stage import run_latency_stage
from .table import LatencyTable, load_table, table_path

__all__ = [
    "BACKENDS", "Backend", "Correction", "FingerprintMismatchError", "FingerprintWarning", "LatencyConfig",
    "LatencyError", "LatencyTable", "Measurement", "Measurer", "OnnxRuntimeBackend", "Piece", "Protocol", "TableError",
    "TorchBackend", "arch_keys", "arch_pieces", "build_table", "calibration_archs", "device_fingerprint",
    "fidelity_report", "heldout_archs", "load_table", "make_backend", "measure", "run_latency", "run_latency_stage",
    "space_pieces",
    "table_path",
]
