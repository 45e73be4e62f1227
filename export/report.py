"""report.md of an export: what was shipped, how well it does, and whether ONNX Runtime agrees."""

from __future__ import annotations

import math
from typing import Any

from hwnas.search_space.metrics import human_count as count


def num(x: float | None, fmt: str = ".4f") -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def model_section(r: dict[str, Any], heading: str = "## Model") -> list[str]:
    """Parameters, FLOPs, memory and the layers."""
    out: list[str] = []
    p = r["params"]
    out += [heading, "", "| | |", "| --- | --- |",
            f"| parameters | {p['total']:,} ({count(p['embedding'])} embedding, {count(p['non_embedding'])} other; the head is tied) |",
            f"| FLOPs per token | {count(r['flops_per_token'])} (at the full context) |",
            f"| memory at deploy precision | {r['memory_bytes'] / 2**20:.2f} MiB (weights, KV cache, activations; batch 1) |",
            f"| context, vocabulary | {r['model']['block_size']} tokens, {r['model']['vocab_size']} (bytes) |", ""]
    out += ["| layer | heads | MLP ratio | norm | placement | attention | FFN | weight bits | in model.int8.onnx |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for layer, q in zip(r["arch"]["layers"], r["quantization"]["layers"], strict=True):
        attn = layer["attention"] + (f" (window {layer['window']})" if layer["window"] else "")
        ffn = layer["ffn"] + (f" ({layer['n_experts']} experts, top-{layer['top_k']})" if layer["ffn"] == "moe" else "")
        out.append(f"| {q['layer']} | {layer['n_heads']} | {layer['mlp_ratio']:g} | {layer['norm']} | {layer['placement']} | "
                   f"{attn} | {ffn} | {layer['weight_bits']} | {q['int8_model']} |")
    out.append("")
    return out


def _loss_section(r: dict[str, Any]) -> list[str]:
    """Validation loss of the three written models."""
    out: list[str] = []
    v = r["val_loss"]
    out += [f"## Validation loss ({v['tokens']:,} tokens of the run's validation split)", "",
            "| model | loss (nats/byte) | bits/byte | vs torch |", "| --- | --- | --- | --- |"]
    for label, key in (("torch, model.safetensors", "torch"), ("ONNX Runtime fp32, model.onnx", "onnxruntime_fp32"),
                       ("ONNX Runtime quantized, model.int8.onnx", "onnxruntime_int8")):
        delta = v[key] - v["torch"]
        out.append(f"| {label} | {v[key]:.4f} | {v[key] / math.log(2):.4f} | {'' if key == 'torch' else f'{delta:+.4f}'} |")
    out += ["", f"Unigram entropy of the validation bytes: {v['unigram_entropy_bpb']:.3f} bits/byte.", ""]
    sv = r.get("search_validation")
    if sv and "measured:loss" in sv:
        out += [f"The search predicted loss {sv.get('predicted:loss', float('nan')):.4f} and measured {sv['measured:loss']:.4f} "
                "on the supernet (with its own evaluation tokens).", ""]
    return out


def _parity_section(r: dict[str, Any]) -> list[str]:
    """ONNX Runtime fp32 against torch."""
    out: list[str] = []
    par = r["parity"]
    out += ["## Parity: ONNX Runtime fp32 vs torch", "",
            f"max |logit difference| {par['max_abs_diff']:.3g} (tolerance {par['tolerance']:g}; the largest |logit| is "
            f"{par['max_abs_logit']:.3g}): {par['max_abs_diff_val']:.3g} over {par['batches']} validation batches of shape "
            f"{tuple(par['batch_shape'])}, {par['max_abs_diff_other_shape']:.3g} at shape {tuple(par['other_shape'])} "
            "(the graph has dynamic batch and sequence axes).", ""]
    return out


def _quantization_section(r: dict[str, Any]) -> list[str]:
    """What model.int8.onnx holds per layer."""
    out: list[str] = []
    q = r["quantization"]
    full = ("int8 too" if q["full_precision_layers"] == "int8" else "fp32") + f" (`export.full_precision_layers: {q['full_precision_layers']}`)"
    ops = ", ".join(f"{k} x{n}" for k, n in sorted(q["int8_ops"].items()))
    out += ["## Quantization policy (model.int8.onnx)", "",
            "Each layer's attention and FFN weight matrices follow the arch's `weight_bits`: 8 bits -> int8 weights per "
            "output channel, in 7 bits of range so that CPUs without VNNI do not saturate (`reduce_range`), with dynamically "
            "quantized activations (ONNX Runtime `quantize_dynamic`); 4 bits -> int4 "
            f"`MatMulNBits`, symmetric, blocks of {q['int4_block_size']}; 16-bit layers -> {full}. The embeddings, the tied "
            "head, norms and MoE routers stay fp32. The fp32 model carries the arch's fake-quantized weights, so it computes "
            f"exactly what the supernet trained. MatMul kernels in model.int8.onnx: {ops}.", ""]
    return out


def _latency_section(r: dict[str, Any]) -> list[str]:
    """Predicted and re-measured latency, and the fresh-process timings."""
    out: list[str] = []
    lat = r.get("latency")
    if not lat:
        return out
    out += ["## Latency on this machine (CPU)", "",
            "Predicted: the run's latency table for the backend (`hwnas latency`), shown next to the model it times. "
            "Re-measured: the protocol's runs here, one forward of the workload; `re-measured` is the statistic "
            "of the run times the table predicts (its `statistic`), shown with the median and p90, each beside the "
            "table's prediction of it.", "",
            "| backend | model | batch x seq | threads | predicted ms | re-measured ms | median ms (predicted) "
            "| p90 ms (predicted) | measured / predicted | runs |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in lat["rows"]:
        median, p90 = row.get("median_ms", row["measured_ms"]), row.get("p90_ms")
        out.append(f"| {row['backend']} | {row['model']} | {row['batch_size']} x {row['seq_len']} | {row['threads']} | "
                   f"{num(row['predicted_ms'], '.3f')} | {row['measured_ms']:.3f} ({row.get('statistic', 'median')}) | "
                   f"{median:.3f} ({num(row.get('predicted_median_ms'), '.3f')}) | "
                   f"{num(p90, '.3f')} ({num(row.get('predicted_p90_ms'), '.3f')}) | "
                   f"{num(row['measured_over_predicted'], '.2f')} | {row['runs']}{'' if row['stable'] else ' (cap)'} |")
    out += _anchored_lines(lat["rows"])
    out += _fresh_rows(lat.get("fresh"))
    front_lat = {k: val for k, val in r["front_objectives"].items() if k.startswith("latency@")}
    if front_lat:
        out += ["", "The search's front value: " + ", ".join(f"{k} {val:.3f} ms" for k, val in front_lat.items()) + "."]
    if lat.get("foreign_tables"):
        out += ["", f"The run's tables {', '.join(lat['foreign_tables'])} predict another machine (notes below): the "
                "timings here are not compared with them."]
    elif not any(row["predicted_ms"] for row in lat["rows"]):
        out += ["", "No latency table in the run: only re-measured values (run `hwnas latency CONFIG` for predictions)."]
    out += ["", "The exported graph takes any sequence length (its `seq` axis is dynamic); the table timed the same "
            "kernels at the table's length with that length fixed in the graph, so small differences are expected."]
    out += [f"- {n}" for n in lat["notes"]]
    out.append("")
    return out


def _anchored_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per backend, the table's prediction anchored to the machine's speed here (`TableTiming.speed_now`)."""
    out, seen = [], set()
    for row in rows:
        if not row.get("predicted_now_ms") or row["backend"] in seen:
            continue
        seen.add(row["backend"])
        pct = 100 * (row["speed_now"] - 1)
        out.append(f"- {row['backend']}: the table's speed reference subnet ran {abs(pct):.1f}% "
                   f"{'slower' if pct > 0 else 'faster'} here than at the table build; anchored to this speed the table "
                   f"predicts {row['predicted_now_ms']:.3f} ms (measured / anchored "
                   f"{num(row.get('measured_over_predicted_now'), '.2f')}).")
    return ["", *out] if out else []


def decode_section(r: dict[str, Any]) -> list[str]:
    """The decoding-step graphs and how fast the model generates on this machine."""
    dec = r.get("decode")
    if not dec:
        return []
    out = ["## Generating: prefill and decoding on this machine (CPU)", "",
           f"`model.decode.onnx` (and `model.decode.int8.onnx`, the arch's bits) run one decoding step: the new tokens, "
           f"their first position and each attention layer's cache in, the logits and the updated cache out "
           f"(`hwnas.export.decode`). ONNX Runtime decoding of a prompt then one token per call matched torch "
           f"recomputing the whole sequence within {dec['parity_max_abs_diff']:.2g} (fp32 logits).", ""]
    timing = dec.get("timing")
    if not timing:
        return out + ["Not timed (`export.measure_latency: false`).", ""]
    out += [f"A prompt of {timing['context']} tokens read in one call (prefill), then {timing['new_tokens']} tokens "
            f"generated one per call over the cache; batch 1, {timing['threads']} thread(s), medians of {timing['repeats']} runs.", "",
            "| runtime | model | prefill ms | decode ms per token | tokens/s |", "| --- | --- | --- | --- | --- |"]
    out += [f"| {row['runtime']} | {row['file']} | {row['prefill_ms']:.3f} | {row['decode_ms_per_token']:.3f} | "
            f"{row['tokens_per_s']:.0f} |" for row in timing["rows"]]
    tables = (dec.get("tables") or {}).get("rows") or []
    if tables:
        out += ["", "Against the run's decode tables (`latency.workloads: [decode]`): one decoding step at the table's "
                "context, timed with the table's protocol, threads and statistic, beside its prediction:", "",
                "| backend | model | context | threads | predicted ms | measured ms | measured / predicted | tokens/s measured |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        out += [f"| {r['backend']} | {r['model']} | {r['context']} | {r['threads']} | {num(r['predicted_ms'], '.3f')} | "
                f"{r['measured_ms']:.3f} ({r['statistic']}) | {num(r['measured_over_predicted'], '.2f')} | "
                f"{1e3 / r['measured_ms']:.0f} |" for r in tables]
        out += _anchored_lines(tables)
    return out + [f"- {n}" for n in (dec.get("tables") or {}).get("notes", [])] + [""]


def _fresh_rows(fresh: dict[str, Any] | None) -> list[str]:
    """The export's files timed as a user times them, in a fresh process."""
    out: list[str] = []
    if not fresh:
        return out
    out += ["", f"As a user sees it: the written files loaded the documented way in a fresh process (the process settings the "
            f"tables measured under: {fresh['threads']} thread(s), malloc thresholds pinned by `load`) and timed with a "
            f"plain {fresh['clock']} loop, {fresh['warmup']} warm-up runs then {fresh['runs']}:", "",
            "| backend | loaded as | median ms (predicted) | p90 ms (predicted) | min ms | median / predicted | runs |",
            "| --- | --- | --- | --- | --- | --- | --- |"]
    for backend in ("torch", "onnxruntime"):
        f = fresh.get(backend)
        if f:
            out.append(f"| {backend} | `{f['how']}` | {f['median_ms']:.3f} ({num(f.get('predicted_median_ms'), '.3f')}) | "
                       f"{f['p90_ms']:.3f} ({num(f.get('predicted_p90_ms'), '.3f')}) | {f['min_ms']:.3f} | "
                       f"{num(f.get('median_over_predicted'), '.2f')} | {f['runs']}{'' if f['complete'] else ' (time cap)'} |")
    return out


def _finetune_section(r: dict[str, Any]) -> list[str]:
    """Fine-tuning before the export, if any."""
    out: list[str] = []
    ft = r.get("finetune")
    if ft:
        out += ["## Fine-tuning", "",
                f"{ft['steps']} AdamW steps on the train split (peak lr {ft['lr']:g}, batch {ft['batch_size']}, warmup then "
                f"cosine, the supernet's recipe; {ft['train_seconds']:.1f} s): validation loss {ft['loss_before']:.4f} -> "
                f"{ft['loss_after']:.4f} ({ft['loss_after'] - ft['loss_before']:+.4f}). The exported weights are the fine-tuned ones.", ""]
    return out


def usage_lines(out_dir: str, files: dict[str, int] | None = None, pretrained: bool = False) -> list[str]:
    """How to load the export in `out_dir`, as Python snippets: torch through `load` (with `pretrained`,
    `ExportedModel.from_pretrained`), and ONNX Runtime when an ONNX file is among `files` (None: every file was written)."""
    how = (["from hwnas.export import ExportedModel", "", f"m = ExportedModel.from_pretrained({out_dir!r})"] if pretrained
           else ["from hwnas.export import load", "", f"m = load({out_dir!r})"])
    out = ["```python", *how, "print(m.generate('def ', max_new_tokens=200, temperature=0.8, top_k=40, seed=0))", "```", ""]
    onnx_file = next((f for f in ("model.int8.onnx", "model.onnx") if files is None or f in files), None)
    if onnx_file:
        out += ["```python", "import numpy as np, onnxruntime as ort", "",
                f"sess = ort.InferenceSession({out_dir + '/' + onnx_file!r})",
                "tokens = np.frombuffer(b'def main():', dtype=np.uint8).astype(np.int64)[None]  # (batch, seq)",
                "logits = sess.run(['logits'], {'tokens': tokens})[0]  # (batch, seq, vocab)", "```", ""]
    return out


def sample_lines(r: dict[str, Any]) -> list[str]:
    """The text the exported model wrote at export time, if it wrote one."""
    s = r.get("sample")
    if not s:
        return []
    return [f"A sample (temperature {s['temperature']}, top-k {s['top_k']}, seed {s['seed']}), prompt `{s['prompt']}`:", "",
            "```", (s["prompt"] + s["text"]).replace("```", "'''"), "```", ""]


def versions_line(r: dict[str, Any]) -> str:
    """The versions the export was made and checked with, and how long it took."""
    ver = r["versions"]
    return (f"torch {ver['torch']}, onnx {ver['onnx']} (opset {ver['opset']}), onnxruntime {ver['onnxruntime']}; "
            f"export took {r['seconds']:.1f} s.")


def _try_section(r: dict[str, Any]) -> list[str]:
    """How to load and run the files, a sample, the versions."""
    return ["## Try it", "", *usage_lines(r["out_dir"], r.get("files")), *sample_lines(r), versions_line(r), ""]


def render_report(r: dict[str, Any]) -> str:
    arch_objectives = ", ".join(f"{k} {v:.4g}" for k, v in r["front_objectives"].items())
    out = [f"# Export of `{r['key']}`", "",
           f"Front member #{r['front_index']} of `{r['run_dir']}`, picked by `{r['pick']}` (front values: {arch_objectives}).", ""]
    for section in (model_section, _loss_section, _parity_section, _quantization_section, _latency_section,
                    decode_section, _finetune_section, _try_section):
        out += section(r)
    return "\n".join(out)
