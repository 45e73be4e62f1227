"""The export stage (`hwnas export RUN_DIR --pick ...`): one front member as a shippable model.

    run_export("runs/quickstart", "min loss where latency@cpu <= 5ms")

Reads the run (the supernet checkpoint holds the search space and training settings, so no YAML
is needed), picks the member, extracts its weights (optionally fine-tunes them), and writes

    <out>/config.json          the arch, the model hyperparameters, where it came from
    <out>/model.safetensors    the standalone subnet (`hwnas.export.load`)
    <out>/model.onnx           fp32, dynamic batch and sequence axes
    <out>/model.int8.onnx      ONNX Runtime quantization following the arch's weight bits
    <out>/report.md, report.json   params, validation loss (torch, ONNX fp32, int8), parity,
                               predicted vs re-measured latency, fine-tuning, a sample
    <out>/README.md            the model card (`export.card`): arch, headline figures, place on the
                               front, machine, how to load (`ExportedModel.from_pretrained`)
    <out>/manifest.json        size and sha256 of each file above (`hwnas.export.load` checks it)

Everything is built in a temporary folder beside the target and renamed into place only after
ONNX Runtime matched torch, so a failed export leaves the target as it was. Every input (the
supernet, the corpus, front.json, validation.json, the latency tables) is checked against the
manifest of the stage that wrote it first.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hwnas.core.device import resolve_device
from hwnas.core.io import atomic_write_text
from hwnas.core.manifest import EXPORT_COMMAND, Manifest
from hwnas.core.progress import progress_bar
from hwnas.core.rundir import stage_lock
from hwnas.core.tracking import check_wandb
from hwnas.latency.fingerprint import device_fingerprint
from hwnas.search.pareto import read_front, read_validation
from hwnas.search_space import ArchConfig, SearchSpace, SearchSpaceConfig
from hwnas.supernet.checkpoint import check_finite, read_meta
from hwnas.supernet.config import TrainConfig
from hwnas.supernet.data import Corpus
from hwnas.supernet.finetune import train_standalone
from hwnas.supernet.memory import check_fits
from hwnas.supernet.subnet import Subnet, extract_subnet, save_subnet
from hwnas.supernet.train import load_supernet, verify_supernet

from .card import render_card
from .config import ExportConfig
from .decode import export_decode_onnx, onnx_decode, time_decoding
from .deploy import (
    ExportError,
    cross_entropy_sum,
    export_onnx_dynamic,
    low_bit_weights,
    op_counts,
    quantize,
    quantized_weights,
    run_session,
    session,
)
from .pick import pick_member
from .report import render_report
from .standalone import EXPORT_FORMAT, ExportedModel
from .tracking import log_export

STAGES = ("extract", "onnx", "quantize", "parity", "latency", "write")  # progress steps (plus fine-tuning steps)
EXPORT_FILES = ("config.json", "model.safetensors", "model.onnx", "model.int8.onnx", "report.json", "report.md", "README.md")


# --- the run ----------------------------------------------------------------------------------------
def read_run(run_dir: Path) -> tuple[SearchSpaceConfig, TrainConfig, dict[str, Any]]:
    """The search space and training settings stored in the run's checkpoint, and front.json."""
    ckpt = run_dir / "train" / "checkpoint.safetensors"
    if not ckpt.is_file():
        raise ExportError(f"{ckpt}: no trained supernet; run `hwnas train CONFIG` first")
    verify_supernet(run_dir)
    meta = read_meta(ckpt)
    try:
        space_cfg = SearchSpaceConfig.model_validate(meta["space"])
        train_cfg = TrainConfig.model_validate(meta["train"])
    except (KeyError, ValueError) as e:
        reason = " ".join(str(e).split())[:200]
        raise ExportError(f"{ckpt}: checkpoint metadata lacks a valid search space or train config ({reason})") from None
    front_path = run_dir / "search" / "front.json"
    if not front_path.is_file():
        raise ExportError(f"{front_path}: no search results; run `hwnas search CONFIG` first")
    return space_cfg, train_cfg, read_front(front_path.parent)


def is_export(path: Path) -> bool:
    try:
        return json.loads((path / "config.json").read_text()).get("format") == EXPORT_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def export_source(path: Path) -> str | None:
    """The run directory (resolved) the export in `path` was made from (its report.json), or None."""
    try:
        source = json.loads((path / "report.json").read_text()).get("run_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return source if isinstance(source, str) else None


def check_own_export(target: Path, run_dir: Path) -> None:
    """What `hwnas run` may replace without --force: an export inside the run directory (its own, also
    after the run was copied or moved) or one made from this run, never another run's (nor anything
    else: `check_target`)."""
    if target.resolve().is_relative_to(run_dir.resolve()):
        return
    if target.is_dir() and any(target.iterdir()) and is_export(target):
        source = export_source(target)
        if source != str(run_dir.resolve()):
            raise ExportError(f"{target}: holds an export of another run ({source or 'unknown'}); `hwnas run` replaces only "
                              "its own run's export: set export.out_dir to another folder, or replace it with "
                              "`hwnas export RUN_DIR --out ... --force`")


def check_target(target: Path, run_dir: Path, force: bool) -> None:
    """Refuse, before any work, a target that exists (unless `force` and it is an earlier export),
    is not a folder, or holds the run itself."""
    t, r = target.resolve(), run_dir.resolve()
    if t == r or t in r.parents:
        raise ExportError(f"{target}: the export folder would replace the run directory {run_dir}; choose another --out")
    if not target.exists():
        return
    if not target.is_dir():
        raise ExportError(f"{target}: exists and is not a folder; choose another --out")
    if not any(target.iterdir()):
        return
    if not force:
        raise ExportError(f"{target}: export folder already exists; pass --force to replace it (or choose another --out)")
    if not is_export(target):
        raise ExportError(f"{target}: exists and is not an hwnas export (no config.json of format {EXPORT_FORMAT!r}); "
                          "refusing to replace it even with --force; choose another --out")


def commit(tmp: Path, target: Path, force: bool) -> None:
    """Rename the finished temp folder onto `target`; an earlier export there (with `force`) is
    moved aside first and deleted only once the new one is in place."""
    if target.exists() and target.is_dir() and not any(target.iterdir()):
        target.rmdir()
    if not target.exists():
        os.rename(tmp, target)
        return
    if not force or not is_export(target):  # appeared, or changed, while we worked
        raise ExportError(f"{target}: a folder appeared there during the export; nothing was replaced")
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


# --- checks -----------------------------------------------------------------------------------------
def check_onnx(subnet: Subnet, fp32, int8, corpus: Corpus, cfg: ExportConfig, seq_len: int, threads: int | None) -> dict[str, Any]:
    """Validation loss of torch, ONNX Runtime fp32 and int8 on the same windows, and the largest
    |fp32 - torch| logit difference there and at a second (batch, length) shape."""
    s32, s8 = session(fp32, threads), session(int8, threads)
    sums = {"torch": 0.0, "onnxruntime_fp32": 0.0, "onnxruntime_int8": 0.0}
    count, max_diff, batches, logit_max = 0, 0.0, 0, 0.0
    first = None
    with torch.no_grad():
        for x, y in corpus.val_batches(cfg.eval_batch_size, seq_len, cfg.eval_tokens):
            first = x if first is None else first
            want = subnet(x)
            got32, got8 = run_session(s32, x), run_session(s8, x)
            max_diff = max(max_diff, float(np.abs(got32 - want.numpy()).max()))
            logit_max = max(logit_max, float(want.abs().max()))
            sums["torch"] += cross_entropy_sum(want, y)
            sums["onnxruntime_fp32"] += cross_entropy_sum(got32, y)
            sums["onnxruntime_int8"] += cross_entropy_sum(got8, y)
            count += y.numel()
            batches += 1
        length = max(1, (seq_len // 2) | 1)  # odd: a length the export never saw, off every block size
        other = first[: min(3, len(first)), :length]
        other_diff = float(np.abs(run_session(s32, other) - subnet(other).numpy()).max())
    loss = {k: v / count for k, v in sums.items()}
    return {
        "loss": loss, "tokens": count, "int8_delta": loss["onnxruntime_int8"] - loss["torch"],
        "parity": {"max_abs_diff": max(max_diff, other_diff), "max_abs_diff_val": max_diff, "batches": batches,
                   "batch_shape": list(first.shape), "other_shape": list(other.shape), "max_abs_diff_other_shape": other_diff,
                   "max_abs_logit": logit_max, "tolerance": cfg.parity_atol},
    }


def measure_latency(run_dir: Path, arch: ArchConfig, subnet: Subnet, form, fp32, int8, cfg: ExportConfig,
                    block_size: int) -> dict[str, Any]:
    """`_measure_latency` in a freshly spawned process: the export has evaluated and exported
    models in this one, and a process with that history times the same model slower
    (`core.isolate`)."""
    from hwnas.core.isolate import run_isolated

    return run_isolated(_measure_latency, run_dir, arch, subnet, form, fp32, int8, cfg, block_size)


def _timed(m, statistic: str) -> dict[str, Any]:
    """A re-measurement as report columns: `measured_ms` is the statistic the table predicts."""
    return {"measured_ms": 1e3 * m.value(statistic), "median_ms": 1e3 * m.median, "p90_ms": 1e3 * m.p90, "runs": m.n,
            "stable": m.stable}


def _measure_latency(run_dir: Path, arch: ArchConfig, subnet: Subnet, form, fp32, int8, cfg: ExportConfig,
                     block_size: int) -> dict[str, Any]:
    """Predicted (latency tables of the run, CPU) vs re-measured on this machine: the torch module,
    and ONNX Runtime on model.onnx, model.int8.onnx and, when neither has the arch's own bits,
    the very form the latency table times (`OnnxRuntimeBackend.to_onnx`: a static-shape export,
    16-bit layers in fp32, the others at their bits)."""
    from hwnas.latency.backends import OnnxRuntimeBackend
    from hwnas.latency.errors import LatencyError
    from hwnas.latency.session import TableTiming, add_ratios

    rows, notes, protocols, foreign_tables = [], [], {}, []
    for backend in ("torch", "onnxruntime"):
        timing = TableTiming(run_dir, "cpu", backend, block_size, cfg.threads, cfg.latency_max_seconds)
        notes += timing.notes
        predicted, spread = None, {}
        if timing.table is not None:
            try:
                if foreign := timing.foreign_note(arch):  # predicts another machine: nothing here compares
                    notes.append(foreign)
                    foreign_tables.append(str(timing.path.relative_to(run_dir)))
                else:
                    predicted = timing.predict_ms(arch)
                    spread = {f"predicted_{s}_ms": timing.predict_ms(arch, s) for s in ("median", "p90")}
                    spread |= timing.anchored_prediction(arch)
            except LatencyError as e:
                notes.append(f"{backend} table unusable: {e}")
        protocols[backend] = timing.protocol.to_dict()
        work, threads, stat = timing.workload, timing.threads, timing.statistic
        tokens = torch.randint(0, subnet.dims.vocab_size, (work["batch_size"], work["seq_len"]),
                               generator=torch.Generator().manual_seed(cfg.seed))
        base = {"backend": backend, "statistic": stat, "batch_size": work["batch_size"], "seq_len": work["seq_len"], "threads": threads,
                "table": str(timing.path.relative_to(run_dir)) if timing.table else None}
        if backend == "torch":
            m = timing.time_module(subnet, (tokens,))
            rows.append({**base, "model": "model.safetensors (torch eager; 8/4-bit layers on int8/int4 kernels)", "file": "model.safetensors", "predicted_ms": predicted,
                         **spread, **_timed(m, stat)})
            continue
        arch_bits = quantized_weights(form)  # what the latency table times: 16-bit layers stay fp32
        # (label, model, the file it is written to, whether it is the form the table times)
        models = [("model.onnx (fp32)", fp32, "model.onnx", not arch_bits),
                  ("model.int8.onnx", int8, "model.int8.onnx",
                   bool(arch_bits) and low_bit_weights(form, cfg.full_precision_layers) == arch_bits)]
        if predicted is not None and not any(match for *_, match in models):
            table_form = OnnxRuntimeBackend("cpu", threads, int4_block_size=cfg.int4_block_size).to_onnx(subnet.cpu().eval(), (tokens,))
            models.append(("arch's own bits (the table's form)", table_form, None, True))
        for label, model, file, match in models:
            sess = session(model, threads)
            feeds = {sess.get_inputs()[0].name: tokens.numpy()}
            m = timing.time_call(lambda s=sess, f=feeds: s.run(None, f))
            rows.append({**base, "model": label, "file": file, "predicted_ms": predicted if match else None,
                         **(spread if match else {}), **_timed(m, stat)})
    return {"rows": add_ratios(rows), "notes": notes, "protocols": protocols, "foreign_tables": foreign_tables}


# --- the stage --------------------------------------------------------------------------------------
def _device(kind: str) -> torch.device:
    return torch.device(resolve_device(kind, "export.device", ExportError))


def run_export(run_dir: str | Path, pick: str | int | None = None, out_dir: str | Path | None = None, force: bool = False,
               finetune_steps: int | None = None, cfg: ExportConfig | None = None, progress: bool = True) -> dict[str, Any]:
    """Export the front member `pick` (default `cfg.pick`) of the run in `run_dir` into `out_dir`
    (default `cfg.out_dir`, else <run_dir>/export); returns the report (also in report.json)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ExportError(f"{run_dir}: no such run directory")
    check_wandb((cfg or ExportConfig()).wandb, "export.wandb")
    with stage_lock(run_dir, "export"):
        return _run_export(run_dir, pick, out_dir, force, finetune_steps, cfg or ExportConfig(), progress)


def _run_export(run_dir: Path, pick: str | int | None, out_dir: str | Path | None, force: bool, finetune_steps: int | None,
                cfg: ExportConfig, progress: bool) -> dict[str, Any]:
    t_start = time.perf_counter()
    pick = cfg.pick if pick is None else pick
    steps = cfg.finetune_steps if finetune_steps is None else int(finetune_steps)
    if steps < 0:
        raise ExportError(f"finetune_steps: must be >= 0, got {steps}")
    target = Path(out_dir or cfg.out_dir or run_dir / "export")
    space_cfg, train_cfg, front = read_run(run_dir)
    check_fits(space_cfg, "evaluate", cfg.eval_batch_size, train_cfg.seq_len or space_cfg.block_size, "export.eval_batch_size")
    index, member = pick_member(front, pick)
    check_target(target, run_dir, force)
    arch = ArchConfig.from_dict(member["arch"])
    space = SearchSpace(space_cfg)
    space.validate(arch)  # a front of another space fails here, naming the field
    corpus = Corpus.load(run_dir / "corpus")
    seq_len = min(train_cfg.seq_len or space_cfg.block_size, space_cfg.block_size)
    if cfg.eval_tokens < seq_len:
        raise ExportError(f"export.eval_tokens: {cfg.eval_tokens} is less than one validation window of the run's {seq_len} "
                          f"tokens; at least {seq_len}")
    device = _device(cfg.device)
    report: dict[str, Any] = {"format": EXPORT_FORMAT, "run_dir": str(run_dir.resolve()), "pick": str(pick), "front_index": index,
                              "key": arch.key(), "front_objectives": dict(zip(front["objectives"], member["objectives"], strict=True)),
                              "front": front_position(front, index)}

    with progress_bar("export", len(STAGES) + steps, progress, unit="step") as advance:
        advance(0, description=f"export: extracting front member #{index}")
        supernet = load_supernet(run_dir, space_cfg, device=str(device))
        subnet = extract_subnet(supernet, arch)
        del supernet
        report["finetune"] = None
        if steps:
            advance(1, description=f"export: fine-tuning {steps} steps")
            ft_cfg = train_cfg.model_copy(update={
                "lr": cfg.finetune_lr, "min_lr": min(train_cfg.min_lr, cfg.finetune_lr), "warmup_steps": max(1, steps // 10),
                "batch_size": cfg.finetune_batch_size or train_cfg.batch_size, "seq_len": seq_len})
            ft = train_standalone(subnet, corpus, steps, ft_cfg, seed=cfg.seed, eval_tokens=cfg.eval_tokens, progress=False)
            report["finetune"] = {**ft, "lr": cfg.finetune_lr, "batch_size": ft_cfg.batch_size}
            advance(steps, description="export: ONNX export")
        else:
            advance(1, description="export: ONNX export")
        subnet = subnet.cpu().float().eval()
        fp32, form = export_onnx_dynamic(subnet)
        advance(1, description="export: int8 quantization")
        bits = low_bit_weights(form, cfg.full_precision_layers)
        int8 = quantize(fp32, bits, cfg.int4_block_size) if bits else fp32
        advance(1, description="export: ONNX Runtime parity")
        threads = cfg.threads
        checks = check_onnx(subnet, fp32, int8, corpus, cfg, seq_len, threads)
        parity = checks["parity"]
        if not parity["max_abs_diff"] <= cfg.parity_atol:
            raise ExportError(f"parity: ONNX Runtime fp32 logits differ from torch by {parity['max_abs_diff']:.3g} "
                              f"(> {cfg.parity_atol:g}) for {arch.key()}; nothing was written")
        advance(1, description="export: latency on this machine" if cfg.measure_latency else "export: writing")
        latency = measure_latency(run_dir, arch, subnet, form, fp32, int8, cfg, space_cfg.block_size) if cfg.measure_latency else None
        decode = decode_graphs(subnet, cfg, seq_len, latency, run_dir) if cfg.decode else None
        advance(1 if cfg.measure_latency else 0, description="export: writing")
        report.update(_facts(space, arch, subnet, train_cfg, corpus, cfg, checks, latency, fp32, int8, bits, form, run_dir))
        report["decode"] = decode and decode["report"]
        report["model"] = {"vocab_size": space_cfg.vocab_size, "block_size": space_cfg.block_size, "head_dim": space_cfg.head_dim,
                           "positions": space_cfg.positions, "embed_dim": arch.embed_dim, "depth": arch.depth, "tokens": "bytes: token id = UTF-8 byte value",
                           "params": report["params"]["total"]}
        report["out_dir"] = str(target)
        report["seconds"] = time.perf_counter() - t_start
        _write(target, force, subnet, fp32, int8, report, space_cfg, decode and decode["files"],
               lambda folder: _add_fresh(report["latency"], folder, cfg) if latency else None)
        advance(1 if cfg.measure_latency else 2, description=f"export: written to {target}")
    log_export(run_dir, target, report, cfg)  # W&B: the figures, and the folder as a model artifact
    return report


def decode_graphs(subnet: Subnet, cfg: ExportConfig, seq_len: int, latency: dict[str, Any] | None, run_dir: Path
                  ) -> dict[str, Any]:
    """The decoding step as ONNX (fp32, and the arch's bits when it has low-bit layers), checked
    against torch (greedy decoding of a prompt then one token per call vs recomputing the sequence)
    and, with `measure_latency`, timed on this machine in a fresh process: {"files": {name: model},
    "report": ...}. An `ExportError` when ONNX Runtime disagrees with torch beyond `parity_atol`."""
    from hwnas.core.isolate import run_isolated

    fp32, form = export_decode_onnx(subnet)
    files = {"model.decode.onnx": fp32}
    bits = low_bit_weights(form, cfg.full_precision_layers)
    if bits:  # as model.int8.onnx: the arch's 8- and 4-bit layers (and its 16-bit ones at 8 unless kept in fp32)
        files["model.decode.int8.onnx"] = quantize(fp32, bits, cfg.int4_block_size)
    block = subnet.dims.block_size
    prompt = torch.randint(0, subnet.dims.vocab_size, (1, max(1, min(8, block // 4))), generator=torch.Generator().manual_seed(cfg.seed))
    logits, chosen = onnx_decode(session(fp32, cfg.threads), form, prompt, block - prompt.shape[1])
    with torch.no_grad():
        full = subnet.cpu().float().eval()(torch.tensor([prompt[0].tolist() + chosen]))[0].numpy()
    diff = float(np.abs(logits - full).max())
    if not diff <= cfg.parity_atol:
        raise ExportError(f"decode parity: ONNX Runtime's cached decoding differs from torch by {diff:.3g} (> {cfg.parity_atol:g}) "
                          f"for {subnet.arch.key()}; nothing was written")
    report: dict[str, Any] = {"files": sorted(files), "parity_max_abs_diff": diff, "parity_positions": int(full.shape[0]),
                              "timing": None}
    if cfg.measure_latency:
        threads = latency["rows"][0]["threads"] if latency and latency["rows"] else cfg.threads
        graphs = {name: m.SerializeToString() for name, m in files.items()}
        context = max(1, min(seq_len, block) // 2)
        # one fresh process: a generation timed, then (when the run has decode tables) one step at their
        # context by their protocol
        report["timing"], report["tables"] = run_isolated(time_decoding, run_dir, subnet.cpu().float().eval(), graphs, context,
                                                          block - context, threads, cfg)
    return {"files": files, "report": report}


def front_position(front: dict[str, Any], index: int) -> dict[str, Any]:
    """Where front member `index` sits on the saved front: per objective (each minimized) the front's
    least and greatest value and the member's rank among the front's members (1: the least)."""
    names, members = front["objectives"], front["front"]
    values = {n: [m["objectives"][j] for m in members] for j, n in enumerate(names)}
    mine = members[index]["objectives"]
    return {"size": len(members), "objectives": list(names), "constraints": list(front.get("constraints", [])),
            "n_candidates": front.get("n_candidates"),
            "range": {n: [min(v), max(v)] for n, v in values.items()},
            "rank": {n: 1 + sum(x < mine[j] for x in values[n]) for j, n in enumerate(names)}}


def _facts(space: SearchSpace, arch: ArchConfig, subnet: Subnet, train_cfg: TrainConfig, corpus: Corpus, cfg: ExportConfig,
           checks: dict[str, Any], latency, fp32, int8, bits: dict[str, int], form, run_dir: Path) -> dict[str, Any]:
    import onnx
    import onnxruntime

    n_params = sum(p.numel() for p in subnet.parameters())
    per_layer = []
    for i, layer in enumerate(arch.layers):
        got = {b for name, b in bits.items() if name.startswith(f"blocks.{i}.")}
        per_layer.append({"layer": i, "arch_bits": layer.weight_bits,
                          "int8_model": {4: "int4 (MatMulNBits)", 8: "int8 (dynamic, per channel)"}.get(max(got) if got else 0, "fp32")})
    search_row = next((r for r in read_validation(run_dir / "search") if r["key"] == arch.key()), None)
    sample = None
    if cfg.sample_tokens and space.dims.vocab_size >= 256:
        text = ExportedModel(subnet, arch).generate(cfg.sample_prompt, cfg.sample_tokens, temperature=0.8, top_k=40, seed=cfg.seed)
        sample = {"prompt": cfg.sample_prompt, "text": text, "temperature": 0.8, "top_k": 40, "seed": cfg.seed}
    threads = latency["rows"][0]["threads"] if latency and latency["rows"] else (cfg.threads or torch.get_num_threads())
    return {
        "machine": device_fingerprint("cpu", threads),  # where every figure of the report was measured (ONNX Runtime runs on CPU)
        "arch": arch.to_dict(),
        "params": {"total": n_params, **{k: v for k, v in space.params(arch).items() if k != "total"},
                   "analytic_total": space.params(arch)["total"]},
        "flops_per_token": space.flops(arch) / space.config.block_size,
        "memory_bytes": space.memory(arch)["total"],
        "val_loss": {**checks["loss"], "tokens": checks["tokens"], "int8_delta": checks["int8_delta"],
                     "bpb_torch": checks["loss"]["torch"] / np.log(2), "unigram_entropy_bpb": corpus.unigram_entropy("val")},
        "parity": checks["parity"],
        "quantization": {"full_precision_layers": cfg.full_precision_layers, "int4_block_size": cfg.int4_block_size,
                         "layers": per_layer, "int8_ops": {k: v for k, v in op_counts(int8).items() if "MatMul" in k},
                         "fp32_ops": {k: v for k, v in op_counts(fp32).items() if "MatMul" in k}},
        "latency": latency,
        "search_validation": search_row,
        "sample": sample,
        "train_seq_len": train_cfg.seq_len,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "opset": next((o.version for o in fp32.opset_import if o.domain in ("", "ai.onnx")), None)},
    }


def _add_fresh(latency: dict[str, Any], folder: Path, cfg: ExportConfig) -> None:
    """Time the written model files as a user would (`export.fresh`) and put the figures, beside
    the tables' median and p90 predictions, into `latency["fresh"]`."""
    from .fresh import fresh_latency

    rows = latency["rows"]
    # the row of each backend whose model the table predicts; for ONNX Runtime only if a written file is that model
    timed = {r["backend"]: r for r in rows if r["predicted_ms"] is not None and (r["backend"] == "torch" or r.get("file"))}
    ort = timed["onnxruntime"]["file"] if "onnxruntime" in timed else None
    first = rows[0]
    fresh = fresh_latency(folder, ort, first["threads"], first["batch_size"], first["seq_len"], cfg.seed,
                          max_seconds=cfg.latency_max_seconds or 20.0)
    for backend, row in timed.items():
        if backend in fresh:
            for stat in ("median", "p90"):
                predicted = row.get(f"predicted_{stat}_ms")
                fresh[backend][f"predicted_{stat}_ms"] = predicted
                fresh[backend][f"{stat}_over_predicted"] = fresh[backend][f"{stat}_ms"] / predicted if predicted else None
    latency["fresh"] = fresh


def _write(target: Path, force: bool, subnet: Subnet, fp32, int8, report: dict[str, Any], space_cfg: SearchSpaceConfig,
           extra: dict[str, Any] | None = None, before_report: Callable[[Path], None] | None = None) -> None:
    """Write the export into a temporary folder beside `target`, then move it into place;
    `before_report(folder)` runs once the model files are there, before the report is written."""
    import onnx

    check_finite(subnet.state_dict(), f"the subnet {report['key']}")  # a diverged fine-tuning is not shipped
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700
        save_subnet(subnet, tmp / "model.safetensors")
        onnx.save(fp32, tmp / "model.onnx")
        onnx.save(int8, tmp / "model.int8.onnx")
        for name, model in (extra or {}).items():  # the decoding-step graphs
            onnx.save(model, tmp / name)
        if before_report:
            before_report(tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir())}
        report["files"] = files
        config = {
            "format": EXPORT_FORMAT, "key": report["key"], "arch": report["arch"],
            "model": report["model"],
            "onnx": {"input": {"name": "tokens", "dtype": "int64", "shape": ["batch", "seq"]},
                     "output": {"name": "logits", "dtype": "float32", "shape": ["batch", "seq", space_cfg.vocab_size]},
                     "seq_max": space_cfg.block_size, "opset": report["versions"]["opset"]},
            "quantization": report["quantization"]["layers"],
            "source": {"run_dir": report["run_dir"], "pick": report["pick"], "front_index": report["front_index"],
                       "front_objectives": report["front_objectives"], "finetune_steps": (report["finetune"] or {}).get("steps", 0)},
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (tmp / "report.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
        (tmp / "report.md").write_text(render_report(report))
        atomic_write_text(tmp / "README.md", render_card(report))  # the model card
        Manifest(tmp, EXPORT_COMMAND).add(*EXPORT_FILES, *(extra or {}))
        for f in tmp.iterdir():
            os.chmod(f, 0o666 & ~umask)
        commit(tmp, target, force)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
