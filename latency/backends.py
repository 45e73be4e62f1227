"""Backends: turn a module and its inputs into a zero-argument callable that runs one forward.

- `torch`: the module as eager PyTorch deploys it (`supernet.deploy.torch_deploy_copy`), under
  `torch.inference_mode` (CPU or CUDA): 16-bit layers as they are, 8- and 4-bit layers on real
  low-bit kernels (`kernels.LowBitLinear`: on CPU dynamic int8 through `torch._int_mm` and
  weight-only int4 through `_weight_int4pack_mm_for_cpu`; on CUDA the Triton weight-only kernel),
  never fake quantization. On CPU, glibc's malloc thresholds are pinned first
  (`steady_allocator`), so a timing does not depend on what the process allocated before.
- `onnxruntime`: the module's deployment form (`supernet.deploy.deploy_copy`) exported to ONNX, its
  quantized layers converted to real low-bit kernels (8 bits: `quantize_dynamic`, int8 weights
  per output channel with dynamically quantized activations, i.e. `DynamicQuantizeMatMul` /
  `MatMulInteger`; 4 bits: `MatMulNBits`, block-wise int4 weights), run by an `InferenceSession`
  with a fixed intra-op thread count (CPU execution provider; CUDA's on `cuda`).

Each backend times with the protocol's timer for its device (CUDA events on GPU).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from hwnas.supernet.decode import DecodeStep
from hwnas.supernet.deploy import DeployAttention, DeployFFN, deploy_copy, torch_deploy_copy

from .errors import LatencyError
from .protocol import (
    CLOCKS,
    Measurement,
    Protocol,
    Timer,
    cpu_timer,
    cuda_timer,
    fixed_threads,
    measure,
    pooled,
    time_runs,
    time_runs_interleaved,
)
from .runtimes import BACKENDS

_REGISTRY: dict[str, type] = {}


def register_backend(cls: type) -> type:
    """Class decorator: make a `Backend` subclass available as `latency.backends: [<cls.name>]`."""
    _REGISTRY[cls.name] = cls
    return cls


class Backend:
    """Runs and times modules on one device with a fixed thread count. A new backend subclasses
    it, sets `name` (and `options`, the keyword arguments it takes from the latency config),
    implements `measure_groups`/`measure_each` (or `prepare`), and is decorated with
    `@register_backend`."""

    name = "base"
    options: tuple[str, ...] = ()
    # how a decoding step deploys on this runtime: the position a graph input (the exported
    # model.decode.onnx, traced with dynamic dims), or a Python int (eager torch's generate)
    position_input = False

    def __init__(self, device: str = "cpu", threads: int = 1):
        if device not in ("cpu", "cuda"):
            raise LatencyError(f"device {device!r} is not one of cpu, cuda")
        if device == "cuda" and not torch.cuda.is_available():
            raise LatencyError("device cuda: torch sees no CUDA GPU on this machine (use --device cpu)")
        self.device, self.threads = device, threads

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Callable[[], object]:
        raise NotImplementedError

    def timer(self, clock: str = "wall") -> Timer:
        if self.device == "cuda" and self.name == "torch":
            return cuda_timer()
        if clock == "thread" and self.threads != 1:
            raise LatencyError(f"clock 'thread' times the calling thread only; it needs 1 thread, not {self.threads} "
                               "(use clock: wall)")
        return cpu_timer(CLOCKS[clock])

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Fixed threads and no autograd for the duration of a build or a report."""
        with fixed_threads(self.threads), torch.inference_mode():
            yield

    def measure(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], protocol: Protocol) -> Measurement:
        """Time one module in a tight loop (a whole subnet's steady state), one pass."""
        with torch.no_grad():
            run = self.prepare(module, inputs)
        with self.session():
            return measure(run, protocol, self.timer(protocol.clock))

    def measure_each(self, modules: dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]], protocol: Protocol,
                     seed: int = 0) -> dict[str, Measurement]:
        """Time each module in a tight loop, all of them `protocol.passes` times over in a fresh
        order per pass, runs pooled (whole subnets)."""
        with torch.no_grad():
            runs = {k: self.prepare(m, inputs) for k, (m, inputs) in modules.items()}
        rng, timer = np.random.default_rng(seed), self.timer(protocol.clock)
        samples: dict[str, list] = {k: [] for k in runs}
        with self.session():
            for _ in range(protocol.passes):
                for i in rng.permutation(len(runs)):
                    k = list(runs)[i]
                    samples[k].append(time_runs(runs[k], protocol, timer))
        return {k: pooled(v) for k, v in samples.items()}

    def measure_groups(self, groups: list[dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]], protocol: Protocol,
                       seed: int = 0) -> dict[str, Measurement]:
        """Time the modules of each group interleaved with each other (table pieces, each in the
        context of others), every group `protocol.passes` times over in a fresh order, pooled."""
        with torch.no_grad():
            runs = [{k: self.prepare(m, inputs) for k, (m, inputs) in g.items()} for g in groups]
        rng, timer = np.random.default_rng(seed), self.timer(protocol.clock)
        samples: dict[str, list] = {k: [] for g in runs for k in g}
        with self.session():
            for _ in range(protocol.passes):
                for i in rng.permutation(len(runs)):
                    for k, v in time_runs_interleaved(runs[i], protocol, timer, rng).items():
                        samples[k].append(v)
        return {k: pooled(v) for k, v in samples.items()}

    def measure_many(self, modules: dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]], protocol: Protocol,
                     seed: int = 0) -> dict[str, Measurement]:
        """One group of modules timed interleaved (`measure_groups` with a single group)."""
        return self.measure_groups([modules], protocol, seed)


_ALLOCATOR_FIXED = False


def steady_allocator() -> bool:
    """Pin glibc malloc's adaptive thresholds (mmap above 256 MiB only, never trim the heap), once
    per process. Eager torch on CPU allocates every activation with malloc, and glibc's defaults
    move the mmap threshold and trim the heap as the process's history changes, so the same subnet
    timed again minutes later ran 5-15% slower (page faults) on the build machine; with the
    thresholds pinned, repeated passes agree. Returns whether the setting is in effect (Linux
    glibc only); ONNX Runtime has its own arena and needs none of this."""
    global _ALLOCATOR_FIXED
    if not _ALLOCATOR_FIXED:
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            m_trim_threshold, m_mmap_threshold = -1, -3
            _ALLOCATOR_FIXED = bool(libc.mallopt(m_mmap_threshold, 256 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))
        except (OSError, AttributeError):  # not glibc
            _ALLOCATOR_FIXED = False
    return _ALLOCATOR_FIXED


@register_backend
class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device: str = "cpu", threads: int = 1):
        super().__init__(device, threads)
        if device == "cpu":
            steady_allocator()

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Callable[[], object]:
        module = torch_deploy_copy(module.cpu(), self.device).to(self.device).eval()
        args = tuple(x.to(self.device) for x in inputs)

        def run() -> object:
            return module(*args)

        return run


# --- ONNX export and quantization -----------------------------------------------------------------
def quantized_weights(module: nn.Module) -> dict[str, int]:
    """Names of the deployment form's weights to store in low bits -> bits (the router and
    everything outside attention and FFN cores stay float)."""
    out = {}
    for prefix, m in module.named_modules():
        bits = getattr(m, "weight_bits", 16)
        if isinstance(m, DeployAttention | DeployFFN) and bits < 16:
            for name, _ in m.named_parameters():
                if name != "router":
                    out[f"{prefix}.{name}" if prefix else name] = bits
    return out


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter warns and logs at length (missing torchvision ops, decomposition notes)."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript", "onnx_ir", "torch.fx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_onnx(module: nn.Module, inputs: tuple[torch.Tensor, ...], exporter: str = "torchscript"):
    """Export the deployment form of `module` to an `onnx.ModelProto` (fp32 weights)."""
    import onnx

    dep = deploy_copy(module)
    names = [f"in{i}" for i in range(len(inputs))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(dep, DecodeStep) and dep.context is None:  # the decoding graph, traced as the export traces it
            with quiet_exporter():
                prog = torch.onnx.export(dep, dep.trace_inputs(), dynamo=True, optimize=True, input_names=names,
                                         dynamic_shapes=dep.dynamic_shapes(), verbose=False)
            model = prog.model_proto
        elif exporter == "dynamo":
            with contextlib.redirect_stdout(io.StringIO()):
                prog = torch.onnx.export(dep, inputs, dynamo=True, optimize=True, input_names=names, verbose=False)
            model = prog.model_proto
        else:
            buf = io.BytesIO()
            torch.onnx.export(dep, inputs, buf, dynamo=False, opset_version=17, input_names=names,
                              do_constant_folding=True)
            model = onnx.load_from_string(buf.getvalue())
    return model, quantized_weights(dep)


def quantize_onnx(model, weight_bits: dict[str, int], workdir: str | Path, block_size: int = 32):
    """Store the MatMul weights named in `weight_bits` in 8 bits (dynamic int8 quantization, per
    output channel) or 4 bits (`MatMulNBits`, symmetric, `block_size` per block); return the model.

    The int8 weights use 7 bits of range (`reduce_range`): on x86 CPUs without VNNI (AVX2, AVX-512
    before VNNI) ONNX Runtime multiplies uint8 activations by int8 weights with VPMADDUBSW, whose
    int16 pair sums saturate. On such a CPU (a 2-core AMD EPYC with AVX2) a tiny subnet's int8
    logits fell to correlation 0.72-0.89 with its fp32 logits; with 7-bit weights 0.97-0.99, at the
    same speed (the same kernel). The file may run on another CPU than the one that exported it,
    so the range does not depend on this one's."""
    import onnx

    if not weight_bits:
        return model
    by_bits: dict[int, list[str]] = {8: [], 4: []}
    for node in model.graph.node:
        if node.op_type == "MatMul" and len(node.input) == 2 and node.input[1] in weight_bits:
            by_bits[weight_bits[node.input[1]]].append(node.name)
    found = len(by_bits[8]) + len(by_bits[4])
    if found != len(weight_bits):
        raise LatencyError(f"ONNX quantization: found {found} MatMul nodes for {len(weight_bits)} low-bit weights")
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        MatMulNBitsQuantizer,  # its import configures logging
    )

    quiet = [logging.getLogger(n) for n in ("", "onnxruntime.quantization.matmul_nbits_quantizer")]
    levels = [log.level for log in quiet]
    for log in quiet:  # the quantizers log every node at INFO, and a pre-processing hint
        log.setLevel(logging.ERROR)
    try:
        if by_bits[4]:
            keep = [n.name for n in model.graph.node if n.name not in set(by_bits[4])]
            q = MatMulNBitsQuantizer(model, bits=4, block_size=block_size, is_symmetric=True, nodes_to_exclude=keep)
            q.process()
            model = q.model.model
        if by_bits[8]:
            src, dst = Path(workdir) / "fp32.onnx", Path(workdir) / "int8.onnx"
            onnx.save(model, src)
            quantize_dynamic(src, dst, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                             nodes_to_quantize=by_bits[8],
                             op_types_to_quantize=["MatMul"])
            model = onnx.load(dst)
    finally:
        for log, level in zip(quiet, levels, strict=True):
            log.setLevel(level)
    ops = {n.op_type for n in model.graph.node}
    if (by_bits[4] and "MatMulNBits" not in ops) or (by_bits[8] and not ops & {"DynamicQuantizeMatMul", "MatMulInteger"}):
        raise LatencyError(f"ONNX quantization left no low-bit MatMul in the graph (ops: {sorted(ops)})")
    return model


@register_backend
class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    options = ("exporter", "int4_block_size")
    position_input = True

    def __init__(self, device: str = "cpu", threads: int = 1, exporter: str = "torchscript", int4_block_size: int = 32):
        super().__init__(device, threads)
        import onnxruntime as ort

        self.provider = "CUDAExecutionProvider" if device == "cuda" else "CPUExecutionProvider"
        if self.provider not in ort.get_available_providers():
            raise LatencyError(f"onnxruntime {ort.__version__} has no {self.provider} here "
                               f"(available: {', '.join(ort.get_available_providers())})")
        self.exporter, self.block_size = exporter, int4_block_size

    def session_options(self):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.log_severity_level = 3
        return so

    def to_onnx(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]):
        """The quantized ONNX model of `module` (an `onnx.ModelProto`)."""
        model, bits = export_onnx(module, inputs, self.exporter)
        with tempfile.TemporaryDirectory(prefix="hwnas-onnx-") as tmp:
            return quantize_onnx(model, bits, tmp, self.block_size)

    def session_for(self, model):
        import onnxruntime as ort

        return ort.InferenceSession(model.SerializeToString(), self.session_options(), providers=[self.provider])

    def prepare(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Callable[[], object]:
        with torch.no_grad():
            sess = self.session_for(self.to_onnx(module.cpu().eval(), tuple(x.cpu() for x in inputs)))
        wanted = {i.name for i in sess.get_inputs()}  # an input the graph never reads is dropped by the exporter
        feeds = {f"in{i}": np.ascontiguousarray(x.cpu().numpy()) for i, x in enumerate(inputs) if f"in{i}" in wanted}

        def run() -> object:
            return sess.run(None, feeds)

        return run


if tuple(_REGISTRY) != BACKENDS:  # the names the config accepts (runtimes.py) are the classes registered here
    raise ImportError(f"latency backends registered {tuple(_REGISTRY)}, latency.runtimes names {BACKENDS}")


def backend_class(name: str) -> type[Backend]:
    """The registered backend class `name` (its class attributes, e.g. `position_input`, without
    starting the runtime)."""
    if name not in _REGISTRY:
        raise LatencyError(f"backend {name!r} is not one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def make_backend(name: str, device: str = "cpu", threads: int | None = None, **options) -> Backend:
    """The registered backend `name`, given the options it takes (others are ignored)."""
    from .fingerprint import usable_cores

    cls = backend_class(name)
    return cls(device, threads or usable_cores(), **{k: v for k, v in options.items() if k in cls.options})
