"""README.md of an export: the model card.

A short page for whoever receives the folder: what the model is (its arch key and layers), the
figures the export measured (parameters, validation loss and bits per byte, ONNX parity, latency on
the export's machine), where it sat on the search's Pareto front, the machine those figures come
from, and how to load it. `render_card(report)` reads the same report dict as report.md
(`export.report`, whose sections and snippets it shares); report.md keeps the details.
"""

from __future__ import annotations

import math
from typing import Any

from .report import count, decode_section, model_section, num, sample_lines, usage_lines, versions_line


def _figures(r: dict[str, Any]) -> list[str]:
    """The headline figures, one table row each."""
    p, v, par = r["params"], r["val_loss"], r["parity"]
    out = ["## Figures", "", "Measured by the export on the machine below (report.md has every figure and how it was taken).", "",
           "| figure | value |", "| --- | --- |",
           f"| parameters | {p['total']:,} ({count(p['total'])}; FLOPs and memory: see Architecture) |"]
    for label, key in (("torch, model.safetensors", "torch"), ("ONNX Runtime fp32, model.onnx", "onnxruntime_fp32"),
                       ("ONNX Runtime quantized, model.int8.onnx", "onnxruntime_int8")):
        out.append(f"| validation loss, {label} | {v[key]:.4f} nats/byte = {v[key] / math.log(2):.4f} bits/byte |")
    out.append(f"| validation tokens | {v['tokens']:,} of the run's validation split |")
    out.append(f"| ONNX Runtime fp32 vs torch | max abs logit difference {par['max_abs_diff']:.3g} (tolerance {par['tolerance']:g}) |")
    out += _latency_rows(r.get("latency"))
    if r.get("finetune"):
        ft = r["finetune"]
        out.append(f"| fine-tuning | {ft['steps']} steps, validation loss {ft['loss_before']:.4f} -> {ft['loss_after']:.4f} |")
    return out + [""]


def _latency_rows(lat: dict[str, Any] | None) -> list[str]:
    """One row per timed model (a prefill: one forward over batch x seq tokens) and per fresh-process timing."""
    if not lat:
        return ["| latency | not measured by this export (`export.measure_latency: false`) |"]
    out = []
    for row in lat["rows"]:
        stat = row.get("statistic", "median")
        median = f", median {row['median_ms']:.3f} ms" if stat != "median" and row.get("median_ms") is not None else ""
        predicted = f"; the latency table predicted {row['predicted_ms']:.3f} ms" if row["predicted_ms"] else ""
        out.append(f"| latency, {row['backend']}, {row['model']} | prefill of {row['batch_size']} x {row['seq_len']} tokens, "
                   f"{row['threads']} thread(s): {stat} {row['measured_ms']:.3f} ms{median}, p90 {num(row.get('p90_ms'), '.3f')} ms"
                   f"{predicted} |")
    fresh = lat.get("fresh") or {}
    for backend in ("torch", "onnxruntime"):
        f = fresh.get(backend)
        if f:
            out.append(f"| latency as a user sees it, {backend} | `{f['how']}` in a fresh process: median {f['median_ms']:.3f} ms, "
                       f"p90 {f['p90_ms']:.3f} ms, min {f['min_ms']:.3f} ms over {f['runs']} runs |")
    return out


def _front_section(r: dict[str, Any]) -> list[str]:
    """The search's objectives and where this member sat on the front."""
    front = r.get("front")
    out = ["## Where it sat on the Pareto front", ""]
    if not front:  # a report written before the front's summary was kept
        values = ", ".join(f"{k} {v:.4g}" for k, v in r["front_objectives"].items())
        return out + [f"Front member #{r['front_index']} (front values: {values}).", ""]
    searched = f" of {front['n_candidates']:,} candidates searched" if front.get("n_candidates") is not None else ""
    constraints = f"; constraints: {', '.join(f'`{c}`' for c in front['constraints'])}" if front["constraints"] else ""
    out += [f"The search minimized {', '.join(f'`{n}`' for n in front['objectives'])}{constraints}. This model is front "
            f"member #{r['front_index']} of {front['size']}{searched}, picked by `{r['pick']}` from `{r['run_dir']}`.", "",
            "| objective | this model | front's least | front's greatest | rank on the front (1: least) |",
            "| --- | --- | --- | --- | --- |"]
    for name in front["objectives"]:
        lo, hi = front["range"][name]
        out.append(f"| {name} | {r['front_objectives'][name]:.4g} | {lo:.4g} | {hi:.4g} | {front['rank'][name]} of {front['size']} |")
    return out + [""]


def _machine_section(r: dict[str, Any]) -> list[str]:
    """The fingerprint of the machine the figures were measured on."""
    fp = r.get("machine")
    if not fp:
        return []
    rows = [f"| {k} | {v} |" for k, v in fp.items() if v is not None]
    return ["## Machine", "", "The figures above were measured here (latency depends on it):", "",
            "| field | value |", "| --- | --- |", *rows, ""]


POSITIONS = {"rope": "rotary positions: cached decoding may run past that", "none": "no positional encoding: cached decoding may run "
             "past that"}


def render_card(r: dict[str, Any]) -> str:
    """The model card (README.md) of the export whose report (report.json) is `r`."""
    positions = r["model"].get("positions", "learned")
    context = (f"context {r['model']['block_size']} tokens" if positions == "learned" else
               f"trained on {r['model']['block_size']}-token contexts, {POSITIONS[positions]}")
    out = [f"# `{r['key']}`", "",
           f"A byte-level transformer language model (token id = UTF-8 byte value; {context}, "
           f"vocabulary {r['model']['vocab_size']}) found by hardware-aware neural architecture search with hwnas, "
           "exported as safetensors and ONNX (fp32 and quantized), checked against each other.", "",
           f"Arch key: `{r['key']}`", ""]
    out += _figures(r) + decode_section(r) + _front_section(r)
    out += model_section(r, "## Architecture")
    out += _machine_section(r)
    out += ["## How to load", "", *usage_lines(r["out_dir"], r.get("files"), pretrained=True),
            "`from_pretrained` (the same as `hwnas.export.load`) reads model.safetensors (no pickle), checked with config.json "
            "against manifest.json first; "
            "`ExportedModel.from_pretrained(path, real_kernels=True, threads=1)` runs the 8- and 4-bit layers on real "
            "low-bit kernels, the form the torch latency table times.", ""]
    out += sample_lines(r)
    files = r.get("files") or {}
    if files:
        out += ["## Files", "", "| file | bytes |", "| --- | --- |", *[f"| {f} | {n:,} |" for f, n in sorted(files.items())],
                "| config.json, report.json, report.md, README.md, manifest.json | the arch and settings, every figure, this card, "
                "sha256 of each file |", ""]
    out += [versions_line(r), ""]
    return "\n".join(out)
