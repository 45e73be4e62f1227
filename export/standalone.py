"""`load(path)`: an exported model as a plain PyTorch module, with a byte-level `generate`.

    from hwnas.export import load             # or: ExportedModel.from_pretrained, from_pretrained

    m = load("runs/quickstart/export")        # the export folder (or its model.safetensors)
    m.generate("def parse(", max_new_tokens=120, temperature=0.8, top_k=40, seed=0)
    logits = m(tokens)                         # (B, T) int64 byte ids -> (B, T, vocab)

Only `model.safetensors` (weights, arch and model dims in its metadata) is read, plus
`config.json` when present as a cross-check: no supernet, no run directory, no pickle. An export
folder's files are checked against its manifest.json first (a weights file given alone, against
the manifest beside it when there is one); weights holding NaN or inf are refused by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from hwnas.core.io import read_json
from hwnas.core.manifest import EXPORT_COMMAND, NAME, Manifest
from hwnas.search_space import ArchConfig, ArchError, ModelDims
from hwnas.supernet.subnet import Subnet, load_subnet

from .deploy import ExportError

EXPORT_FORMAT = "hwnas-export-1"


@dataclass
class ExportedModel:
    """A standalone subnet (`model`), its arch and the export's config.json (empty if absent)."""

    model: Subnet
    arch: ArchConfig
    config: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu", real_kernels: bool = False,
                        threads: int | None = None, pin_allocator: bool = True) -> ExportedModel:
        """The exported model at `path` (an `hwnas export` folder, or its model.safetensors): `load`
        under the name other model libraries use; the same checks, the same safe (no pickle) read."""
        return load(path, device=device, real_kernels=real_kernels, threads=threads, pin_allocator=pin_allocator)

    @property
    def dims(self) -> ModelDims:
        return self.model.dims

    def __call__(self, tokens: Tensor) -> Tensor:
        return self.model(tokens)

    def encode(self, text: str) -> list[int]:
        """UTF-8 bytes of `text` as token ids (the model is byte-level)."""
        ids = list(text.encode("utf-8"))
        if ids and max(ids) >= self.dims.vocab_size:
            raise ExportError(f"prompt: byte {max(ids)} is outside this model's vocabulary of {self.dims.vocab_size} "
                              "(a byte-level model needs vocab_size 256 for arbitrary UTF-8 text)")
        return ids

    @staticmethod
    def decode(ids: list[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")

    @torch.no_grad()
    @torch.no_grad()
    def generate(self, prompt: str = "", max_new_tokens: int = 200, temperature: float = 0.8, top_k: int | None = 50,
                 seed: int | None = None, cache: bool = True) -> str:
        """The text the model writes after `prompt` (the continuation only). Sampling at
        `temperature` from the `top_k` likeliest bytes (temperature 0: greedy). `seed` makes it
        repeatable; the generator is local.

        `cache` (default): the prompt is read once and every new byte is one decoding step over what
        each attention layer keeps (`supernet.decode`); until the context fills the block size the
        logits equal a full recomputation. When it is full, the last half block is read again and
        decoding goes on from there. `cache=False` recomputes the whole context, cropped to the last
        `block_size` bytes, for every new byte."""
        self.model.eval()
        ids = self.encode(prompt) or [ord("\n")]  # an empty prompt starts at a line break
        start = len(ids) if prompt else 1
        gen = torch.Generator(device="cpu")
        gen.manual_seed(seed) if seed is not None else gen.seed()
        step = self._cached_steps() if cache else self._full_steps()
        for _ in range(max_new_tokens):
            ids.append(_sample(step(ids), temperature, top_k, gen))
        return self.decode(ids[start:])

    def _tensor(self, ids: list[int]) -> Tensor:
        return torch.tensor([ids], dtype=torch.int64, device=next(self.model.parameters()).device)

    def _full_steps(self):
        """The next byte's logits of `ids`, recomputed from the last block_size bytes each time."""
        block = self.dims.block_size
        return lambda ids: self.model(self._tensor(ids[-block:]))[0, -1].float().cpu()

    def _cached_steps(self):
        """The next byte's logits of `ids`, one decoding step per new byte (the first call reads the prompt)."""
        from hwnas.supernet.decode import DecodeCache

        block, state = self.dims.block_size, {"cache": None, "read": 0}

        def step(ids: list[int]) -> Tensor:
            cache = state["cache"]
            if cache is None or cache.room() < len(ids) - state["read"]:  # start, or the block is full
                context = ids[-block:] if cache is None else ids[-(block // 2):]
                cache = state["cache"] = DecodeCache.of(self.model)
                logits = self.model(self._tensor(context), cache=cache)
            else:
                logits = self.model(self._tensor(ids[state["read"]:]), cache=cache)
            state["read"] = len(ids)
            return logits[0, -1].float().cpu()

        return step


def _sample(logits: Tensor, temperature: float, top_k: int | None, gen: torch.Generator) -> int:
    """A byte drawn from `logits` (vocab,) at `temperature` among the `top_k` likeliest (0: greedy)."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return int(torch.multinomial(torch.softmax(logits, -1), 1, generator=gen))


def _weights_file(path: Path) -> Path:
    """model.safetensors of the export at `path`; an `ExportError` naming the path and what is missing."""
    expected = "expected an `hwnas export` folder or its model.safetensors"
    if not path.exists():
        raise ExportError(f"{path}: no exported model here: no such file or folder ({expected})")
    weights = path / "model.safetensors" if path.is_dir() else path
    if not weights.is_file():
        what = "model.safetensors is missing from this folder" if path.is_dir() else "not a file"
        raise ExportError(f"{path}: no exported model here: {what} ({expected})")
    return weights


def load(path: str | Path, device: str | torch.device = "cpu", real_kernels: bool = False, threads: int | None = None,
         pin_allocator: bool = True) -> ExportedModel:
    """The exported model at `path` (an export folder, or its model.safetensors) in eval mode.

    `real_kernels`: its 8- and 4-bit layers run on real low-bit kernels (`kernels.LowBitLinear`:
    dynamic int8 and weight-only int4 on CPU, Triton on CUDA), the form the `torch` latency tables
    time; its outputs then differ from the trained function by the kernels' rounding. Default: the
    weights fake-quantized in every forward, exactly the function the export's report scored.

    The process settings the latency tables measured under, so that the model runs as fast as
    they predict: `threads` sets torch's intra-op threads (process-wide; the tables time 1 by
    default, see the export report), and `pin_allocator` (on CPU) pins glibc malloc's thresholds
    (`latency.backends.steady_allocator`: without it the same model ran 5-15% slower minutes later,
    from page faults, on the build machine)."""
    path = Path(path)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ExportError(f"threads: must be a positive integer (or None: torch's choice), got {threads!r}")
    if pin_allocator and torch.device(device).type == "cpu":
        from hwnas.latency.backends import steady_allocator

        steady_allocator()
    if threads is not None:
        torch.set_num_threads(threads)
    weights = _weights_file(path)
    cfg_path = weights.parent / "config.json"
    if path.is_dir() or (weights.parent / NAME).exists():
        Manifest(weights.parent, EXPORT_COMMAND).verify(weights.name, *(["config.json"] if cfg_path.exists() else []))
    try:
        model = load_subnet(weights, device=device).eval()
    except ExportError:
        raise
    except Exception as e:  # not a safetensors file, or not an hwnas subnet
        raise ExportError(f"{weights}: cannot load the exported model ({str(e).splitlines()[0]})") from None
    config: dict[str, Any] = {}
    if cfg_path.is_file():
        config = read_json(cfg_path, "export config", f"run `{EXPORT_COMMAND}`")
        try:
            saved = ArchConfig.from_dict(config["arch"]) if "arch" in config else None
        except (ArchError, TypeError, ValueError, AttributeError) as e:
            raise ExportError(f"{cfg_path}: arch: not an architecture ({e})") from None
        if saved is not None and saved != model.arch:
            raise ExportError(f"{cfg_path}: its arch {saved.key()} is not the arch of {weights.name} ({model.arch.key()})")
    if real_kernels:
        from hwnas.supernet.deploy import torch_deploy_copy

        model = torch_deploy_copy(model.cpu(), str(device)).to(device)
    return ExportedModel(model=model, arch=model.arch, config=config)


def from_pretrained(path: str | Path, device: str | torch.device = "cpu", real_kernels: bool = False,
                    threads: int | None = None, pin_allocator: bool = True) -> ExportedModel:
    """`ExportedModel.from_pretrained(path, ...)`: the exported model at `path` (see `load`)."""
    return ExportedModel.from_pretrained(path, device=device, real_kernels=real_kernels, threads=threads,
                                         pin_allocator=pin_allocator)
