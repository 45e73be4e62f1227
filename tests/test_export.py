"""Export: picking a front member, ONNX Runtime parity for every attention / norm / FFN kind and
weight width, the export folder (files, report, atomic replace), loading without the supernet,
byte-level generation, and fine-tuning."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import hwnas.export.stage as stage_mod
import hwnas.latency.session as session_mod
from hwnas.core.errors import HwnasError
from hwnas.core.manifest import Manifest
from hwnas.export import ExportConfig, ExportError, PickError, load, pick_member, run_export
from hwnas.export.deploy import (
    export_onnx_dynamic,
    low_bit_weights,
    op_counts,
    quantize,
    run_session,
    session,
)
from hwnas.export.stage import EXPORT_FILES
from hwnas.latency import LatencyTable, Measurement, Protocol, device_fingerprint, table_path
from hwnas.latency.keys import arch_keys
from hwnas.latency.speed import SpeedWindow
from hwnas.search.pareto import Candidate, ParetoFront
from hwnas.search_space import ArchConfig, LayerConfig, SearchSpace, SearchSpaceConfig
from hwnas.supernet import Supernet, extract_subnet, ops
from hwnas.supernet.config import TrainConfig
from hwnas.supernet.data import Corpus
from hwnas.supernet.deploy import export_form
from hwnas.supernet.evaluate import evaluate
from hwnas.supernet.train import train
from tests.tiny import perturbed_supernet as perturbed
from tests.tiny import wandb_when

TINY = SearchSpaceConfig(
    depth=[1, 2, 3], embed_dim=[16, 32], head_dim=8, block_size=32,
    n_heads={"choices": [1, 2]}, mlp_ratio={"choices": [2.0, 4.0]},
    norm_placement={"choices": ["pre", "post", "peri"], "per_layer": True},
    attention={"choices": ["softmax", "linear", "window"], "windows": [8]},
    ffn={"choices": ["mlp", "swiglu", "moe"], "experts": [2], "top_k": [1, 2]},
)
L = LayerConfig
# between them: every attention, norm, placement and FFN kind (MoE top-1 and top-2), every weight width
COVERING = [
    ArchConfig(32, (L(2, 4.0, "layernorm", "pre", "softmax", None, "mlp", weight_bits=16),
                    L(1, 2.0, "rmsnorm", "post", "linear", None, "swiglu", weight_bits=8),
                    L(2, 2.0, "dyt", "peri", "window", 8, "moe", 2, 1, weight_bits=4))),
    ArchConfig(16, (L(1, 2.0, "layernorm", "post", "window", 8, "moe", 2, 2, weight_bits=8),
                    L(2, 4.0, "rmsnorm", "peri", "softmax", None, "mlp", weight_bits=4),
                    L(2, 2.0, "dyt", "pre", "linear", None, "swiglu", weight_bits=16))),
]
FAST = ExportConfig(eval_tokens=2048, eval_batch_size=16, latency_max_seconds=0.2, threads=1, sample_tokens=16, wandb="disabled",
                    decode=False)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: the tests time nothing that needs more, and a loaded 2-core machine
    makes OpenMP barriers crawl."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- pick -----------------------------------------------------------------------------------------
def member(key: str, loss: float, ms: float, params: float) -> dict:
    return {"key": key, "arch": {}, "objectives": [loss, ms, params], "constraints": [], "extra": {}}


FRONT = {"objectives": ["loss", "latency@cpu", "params"], "constraints": [],
         "front": [member("e16-L1:a", 2.0, 7.2, 9e5), member("e16-L1:b", 1.5, 9.0, 2e6), member("e32-L2:c", 1.5, 12.0, 3e6)]}


@pytest.mark.parametrize("pick, index", [
    ("1", 1), (2, 2), ("e32-L2:c", 2), ("min loss", 1), ("max loss", 0), ("min latency@cpu", 0),
    ("min loss where latency@cpu <= 10ms", 1), ("min loss where latency@cpu > 9.0ms", 2),
    ("max params where params < 3e6 and latency@cpu >= 7.2", 1), ("  MIN   loss  WHERE params <= 3M ", 1),
])
def test_pick_by_index_key_and_rule(pick, index):
    i, m = pick_member(FRONT, pick)
    assert i == index and m is FRONT["front"][index]


@pytest.mark.parametrize("pick, message", [
    ("min loss where latency@cpu <= 5ms",
     "pick 'min loss where latency@cpu <= 5ms': no front member has latency@cpu <= 5ms (the fastest has 7.2 ms)"),
    ("min accuracy", "pick 'min accuracy': unknown objective 'accuracy'; the front has: loss, latency@cpu, params"),
    ("min loss where flops <= 1e6",
     "pick 'min loss where flops <= 1e6': unknown objective 'flops' in 'flops <= 1e6'; the front has: loss, latency@cpu, params"),
    ("3", "pick '3': no front member #3; the front has 3 members (indices 0..2)"),
    ("-1", "pick '-1': no front member #-1; the front has 3 members (indices 0..2)"),
    ("e16-L1:zzz", "pick 'e16-L1:zzz': no front member has this arch key; the front has 3 members "
                   "(list them with `hwnas pareto RUN_DIR`)"),
    ("fastest please", "pick 'fastest please': expected a front index (0..2), an arch key, or a rule "
                       "'min|max <objective> [where <constraint> [and <constraint> ...]]', e.g. 'min loss' "
                       "(objectives: loss, latency@cpu, params)"),
    ("max params where params >= 5M", "pick 'max params where params >= 5M': no front member has params >= 5M (the highest has 3e+06)"),
    ("min loss where latency@cpu <= 8ms and params >= 1M",
     "pick 'min loss where latency@cpu <= 8ms and params >= 1M': no front member meets latency@cpu <= 8ms and params >= 1M "
     "together (latency@cpu <= 8ms alone: 1 of 3; params >= 1M alone: 2 of 3)"),
    ("min loss where latency@cpu << 5", "pick 'min loss where latency@cpu << 5': constraint 'latency@cpu << 5': expected "
                                        "'<objective> <=|<|>=|> <number>[unit]', e.g. 'latency@cpu <= 5ms'"),
    ("min loss where", "pick 'min loss where': expected a constraint after 'where'/'and', e.g. 'latency@cpu <= 5ms'"),
    ("min loss having params < 1", "pick 'min loss having params < 1': expected 'where <constraint>' after 'loss', got "
                                   "'having params < 1'; form: 'min|max <objective> [where <constraint> [and <constraint> ...]]'"),
])
def test_bad_pick_is_one_clear_line(pick, message):
    with pytest.raises(PickError) as e:
        pick_member(FRONT, pick)
    assert str(e.value) == message
    assert isinstance(e.value, HwnasError) and isinstance(e.value, ValueError)


def test_pick_reads_a_bare_latency_as_the_fronts_runtime_and_refuses_it_when_ambiguous():
    members = [member("e16-L1:a", 2.0, 7.2, 3.0), member("e16-L1:b", 1.5, 9.0, 2.0)]
    one = {"objectives": ["loss", "latency@cpu/onnxruntime", "latency@cuda/torch"], "constraints": [], "front": members}
    assert pick_member(one, "min latency@cpu")[0] == 0
    assert pick_member(one, "min loss where latency@cpu <= 8ms")[0] == 0
    with pytest.raises(PickError, match=r"no front member has latency@cpu/onnxruntime <= 1ms \(the fastest has 7.2 ms\)"):
        pick_member(one, "min loss where latency@cpu <= 1ms")
    both = {"objectives": ["loss", "latency@cpu/onnxruntime", "latency@cpu/torch"], "constraints": [], "front": members}
    assert pick_member(both, "min latency@cpu/torch")[0] == 1
    with pytest.raises(PickError) as e:
        pick_member(both, "min loss where latency@cpu <= 8ms")
    assert str(e.value) == ("pick 'min loss where latency@cpu <= 8ms': 'latency@cpu' in 'latency@cpu <= 8ms' is ambiguous, the "
                            "front has latency on several runtimes: name one (latency@cpu/onnxruntime, latency@cpu/torch)")
    with pytest.raises(PickError, match="runtime 'trt' is not one of onnxruntime, torch"):
        pick_member(both, "min latency@cpu/trt")


def test_pick_rules_name_the_latency_statistic():
    members = [member("e16-L1:a", 2.0, 7.2, 3.0), member("e16-L1:b", 1.5, 9.0, 2.0)]
    front = {"objectives": ["loss", "latency@cpu/onnxruntime", "latency@cpu/onnxruntime:p90"], "constraints": [], "front": members}
    assert pick_member(front, "min latency@cpu:p90")[0] == 1
    assert pick_member(front, "min latency@cpu")[0] == 0  # the median
    assert pick_member(front, "min loss where latency@cpu:p90 <= 2.5ms")[0] == 1
    with pytest.raises(PickError, match=r"no front member has latency@cpu/onnxruntime:p90 <= 1ms \(the fastest has 2 ms\)"):
        pick_member(front, "min loss where latency@cpu:p90 <= 1ms")
    with pytest.raises(PickError, match="unknown objective 'latency@cpu:min'"):
        pick_member(front, "min latency@cpu:min")
    with pytest.raises(PickError, match="statistic 'mean' is not one of median, p90, p10, min"):
        pick_member(front, "min latency@cpu:mean")


def test_export_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown key; allowed keys: pick, out_dir"):
        ExportConfig(pikc="min loss")


# --- ONNX parity ----------------------------------------------------------------------------------
def test_decodings_recurrent_state_equals_the_chunked_linear_attention():
    gen = torch.Generator().manual_seed(0)
    for T in (1, 5, 8, 9, 31, 32, 33, 70):
        q, k, v = torch.randn(3, 2, 2, T, 8, generator=gen).unbind(0)
        torch.testing.assert_close(ops.linear_attention_state(q, k, v)[0], ops.linear_attention(q, k, v), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def perturbed_supernet() -> Supernet:
    return perturbed(TINY, scale=3.0).eval()


@pytest.mark.parametrize("arch", COVERING, ids=["mixed-a", "mixed-b"])
def test_onnxruntime_fp32_equals_torch_and_int8_follows_the_bits(perturbed_supernet, arch):
    sub = extract_subnet(perturbed_supernet, arch).eval()
    fp32, form = export_onnx_dynamic(sub)
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*fp32.graph.input, *fp32.graph.output)]
    assert dims == [["batch", "seq"], ["batch", "seq", 256]]
    sess = session(fp32, threads=1)
    gen = torch.Generator().manual_seed(1)
    for shape in [(2, 32), (1, 1), (3, 13), (1, 8), (4, 9)]:  # the export saw (2, 32) only
        x = torch.randint(0, 256, shape, generator=gen)
        with torch.no_grad():
            want = sub(x).numpy()
        assert np.abs(want).max() > 1.0  # a real signal, not a vanishing one
        assert np.abs(run_session(sess, x) - want).max() <= 1e-4, (arch.key(), shape)
    # model.int8.onnx: 4-bit layers in MatMulNBits, 8- and 16-bit layers in int8, routers and head fp32
    bits = low_bit_weights(form, "int8")
    for i, layer in enumerate(arch.layers):
        assert {b for n, b in bits.items() if n.startswith(f"blocks.{i}.")} == {4 if layer.weight_bits == 4 else 8}
    assert not any("router" in n or "emb" in n for n in bits)
    int8 = quantize(fp32, bits)
    ops_ = op_counts(int8)
    assert ops_.get("MatMulNBits", 0) == sum(b == 4 for b in bits.values())
    assert ops_.get("MatMulInteger", 0) + ops_.get("DynamicQuantizeMatMul", 0) == sum(b == 8 for b in bits.values())
    assert op_counts(fp32).get("MatMulNBits", 0) == 0  # quantizing left the fp32 model as it was
    x = torch.randint(0, 256, (2, 32), generator=gen)
    with torch.no_grad():
        want = sub(x).numpy()
    got = run_session(session(int8, threads=1), x)
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.98
    keep16 = low_bit_weights(form, "fp32")  # the arch's own bits only
    assert {b for n, b in keep16.items() if n.startswith(tuple(f"blocks.{i}." for i, ly in enumerate(arch.layers)
                                                                 if ly.weight_bits == 16))} == set()


def test_export_form_is_the_same_function(perturbed_supernet):
    for arch in COVERING:
        sub = extract_subnet(perturbed_supernet, arch).eval()
        x = torch.randint(0, 256, (2, 19), generator=torch.Generator().manual_seed(2))
        with torch.no_grad():
            torch.testing.assert_close(export_form(sub)(x), sub(x), rtol=1e-4, atol=1e-4)


# --- a tiny trained run with a saved front ----------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    text = tmp_path_factory.mktemp("text")
    stdlib = Path(json.__file__).parent.parent
    for name in ["json/decoder.py", "json/encoder.py", "textwrap.py", "glob.py", "shlex.py", "fnmatch.py"]:
        (text / Path(name).name).write_text((stdlib / name).read_text())
    run = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(corpus=str(text), steps=30, warmup_steps=3, batch_size=4, ckpt_every=30, eval_every=30, eval_tokens=1024,
                      log_every=10, wandb="disabled", lr=1e-2, min_lr=1e-3, val_fraction=0.2, n_random=1)
    train(TINY, cfg, run, progress=False)
    space = SearchSpace(TINY)
    others = [space.sample(np.random.default_rng(s)) for s in range(3)]
    # objective values are the search's predictions; made up here so that the first covering arch has the lowest loss
    cands = [Candidate(COVERING[0], (1.0, 9.0, space.params(COVERING[0])["total"]))]
    cands += [Candidate(a, (2.0 + i, 5.0 - i, space.params(a)["total"])) for i, a in enumerate(others)]
    front = ParetoFront(["loss", "latency@cpu", "params"], [10.0, 20.0, 1e7])
    front.add(cands)
    front.save(run / "search")
    for backend, ms in (("torch", 0.5), ("onnxruntime", 0.25)):  # tables that know the first covering arch only
        # the torch tables have a speed reference (the arch itself, 1 ms at the build): the export anchors them
        speed = {"reference": COVERING[0], "speed_windows": [SpeedWindow("pieces", Measurement(1e-3, 1e-3, 5, True))]} \
            if backend == "torch" else {}
        LatencyTable(device="cpu", backend=backend, fingerprint=device_fingerprint("cpu", 1),
                     protocol=Protocol(warmup=1, min_repeats=3, max_repeats=6, check_every=3),
                     workload={"batch_size": 1, "seq_len": 24}, dims=space.dims,
                     entries={k: Measurement(t, t, 5, True) for k in arch_keys(COVERING[0])
                              for t in [1e-4 if k == "call" else ms * 1e-3]},
                     meta={"complete": True}, **speed).save(table_path(run, "cpu", backend), Manifest.of(run, "latency"))
        LatencyTable(device="cpu", backend=backend, fingerprint=device_fingerprint("cpu", 1),  # one decoding step at context 12
                     protocol=Protocol(warmup=1, min_repeats=3, max_repeats=6, check_every=3),
                     workload={"batch_size": 1, "seq_len": 1, "context": 12}, dims=space.dims,
                     entries={k: Measurement(t, t, 5, True) for k in arch_keys(COVERING[0]) for t in [0.05 * ms * 1e-3]},
                     meta={"complete": True}, **speed).save(table_path(run, "cpu", backend, "decode"), Manifest.of(run, "latency"))
    return run


def front_of(run: Path) -> dict:
    return json.loads((run / "search" / "front.json").read_text())


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("shipped") / "export"
    with pytest.MonkeyPatch.context() as mp:  # the anchor's warm-up and spacing (seconds each) are not what is tested here
        mp.setattr(session_mod, "SPEED_NOW_WARM_S", 0.1)
        mp.setattr(session_mod, "SPEED_NOW_GAP_S", 0.0)
        report = run_export(run_dir, "min loss", out_dir=out, cfg=FAST.model_copy(update={"decode": True}), progress=False)
    return out, report


def test_export_writes_a_verified_model(run_dir, exported):
    out, report = exported
    decode_files = ["model.decode.int8.onnx", "model.decode.onnx"]  # the decoding step (export.decode)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "manifest.json", *decode_files, "model.int8.onnx",
                                                     "model.onnx", "model.safetensors", "report.json", "report.md"]
    assert sorted(Manifest(out, "hwnas export RUN_DIR --force").verify(*EXPORT_FILES, *decode_files)) == sorted(
        [*EXPORT_FILES, *decode_files])
    dec = report["decode"]
    assert dec["files"] == decode_files and dec["parity_max_abs_diff"] <= FAST.parity_atol and dec["parity_positions"] == 32
    timing = dec["timing"]
    assert [r["file"] for r in timing["rows"]][1:] == ["model.decode.onnx", "model.decode.int8.onnx"]
    assert timing["context"] + timing["new_tokens"] == 32 and all(r["tokens_per_s"] > 0 and r["prefill_ms"] > 0 for r in timing["rows"])
    for text in ((out / "report.md").read_text(), (out / "README.md").read_text()):
        assert "decode ms per token" in text and f"{timing['rows'][1]['tokens_per_s']:.0f} |" in text
    # against the run's decode tables: a step at their context, by their protocol, the prediction beside it
    tables = dec["tables"]["rows"]
    assert [(r["backend"], r["model"]) for r in tables] == [
        ("torch", "model.safetensors (real low-bit kernels)"), ("onnxruntime", "the table's form (its bits)"),
        ("onnxruntime", "model.decode.onnx"), ("onnxruntime", "model.decode.int8.onnx")]
    decode_tables = {b: LatencyTable.load(table_path(run_dir, "cpu", b, "decode")) for b in ("torch", "onnxruntime")}
    for r in tables:
        assert r["context"] == 12 and r["measured_ms"] > 0
        assert r["predicted_ms"] == pytest.approx(decode_tables[r["backend"]].predict_ms(COVERING[0]))
    assert "Against the run's decode tables" in (out / "report.md").read_text()
    config = json.loads((out / "config.json").read_text())
    assert ArchConfig.from_dict(config["arch"]) == COVERING[0] and config["key"] == COVERING[0].key()
    assert config["model"] | {"params": 0} == {"vocab_size": 256, "block_size": 32, "head_dim": 8, "positions": "learned", "embed_dim": 32, "depth": 3,
                                               "tokens": "bytes: token id = UTF-8 byte value", "params": 0}
    assert report == json.loads((out / "report.json").read_text())
    assert report["front_index"] == 0 and report["pick"] == "min loss"
    assert report["parity"]["max_abs_diff"] <= 1e-4 and report["parity"]["batches"] >= 1
    # the reported loss is the shipped weights' loss; ONNX fp32 agrees; the int8 delta is int8 - torch
    m = load(out)
    corpus = Corpus.load(run_dir / "corpus")
    assert evaluate(m.model, None, corpus, 16, 32, FAST.eval_tokens)["loss"] == pytest.approx(report["val_loss"]["torch"], abs=1e-6)
    v = report["val_loss"]
    assert v["onnxruntime_fp32"] == pytest.approx(v["torch"], abs=1e-4)
    assert v["int8_delta"] == pytest.approx(v["onnxruntime_int8"] - v["torch"]) and v["int8_delta"] != 0
    assert report["params"]["total"] == sum(p.numel() for p in m.model.parameters()) == report["params"]["analytic_total"]
    # latency: each table's prediction sits next to the model of its form (the ONNX Runtime table times the arch's own
    # bits, 16-bit layers in fp32: neither shipped file here), re-measured at the table's workload and protocol
    rows = report["latency"]["rows"]
    n = len(arch_keys(COVERING[0])) - 1  # pieces besides the call, each net of the call's 0.1 ms
    assert [(r["backend"], r["model"], r["predicted_ms"]) for r in rows] == [
        ("torch", "model.safetensors (torch eager; 8/4-bit layers on int8/int4 kernels)", pytest.approx(0.1 + n * 0.4)), ("onnxruntime", "model.onnx (fp32)", None),
        ("onnxruntime", "model.int8.onnx", None), ("onnxruntime", "arch's own bits (the table's form)", pytest.approx(0.1 + n * 0.15))]
    assert all(r["measured_ms"] > 0 and 3 <= r["runs"] <= 6 and (r["batch_size"], r["seq_len"]) == (1, 24) for r in rows)
    assert rows[0]["measured_over_predicted"] == pytest.approx(rows[0]["measured_ms"] / rows[0]["predicted_ms"])
    # the torch table anchored to the machine's speed here: its reference timed by the export, the prediction scaled
    for r in (rows[0], tables[0]):
        assert r["speed_now"] > 0 and r["predicted_now_ms"] == pytest.approx(r["speed_now"] * r["predicted_ms"])
        assert r["measured_over_predicted_now"] == pytest.approx(r["measured_ms"] / r["predicted_now_ms"])
    assert all("speed_now" not in r for r in rows[1:] + tables[1:])  # the ONNX Runtime tables have no reference
    assert (out / "report.md").read_text().count("anchored to this speed the table predicts") == 2
    # as a user sees it: the written files loaded the documented way in a fresh process, a plain wall-clock loop
    fresh = report["latency"]["fresh"]
    assert "onnxruntime" not in fresh  # no shipped file has the arch's own bits, the form the ORT table times
    t = fresh["torch"]
    assert 0 < t["min_ms"] <= t["median_ms"] <= t["p90_ms"] and 1 <= t["runs"] <= 200 and fresh["threads"] == rows[0]["threads"]
    assert t["predicted_median_ms"] == rows[0]["predicted_median_ms"] and t["predicted_p90_ms"] == rows[0]["predicted_p90_ms"]
    assert t["median_over_predicted"] == pytest.approx(t["median_ms"] / t["predicted_median_ms"])
    assert "real_kernels=True, threads=1" in t["how"]
    md = (out / "report.md").read_text()
    assert "As a user sees it" in md and f"{t['median_ms']:.3f} ({t['predicted_median_ms']:.3f})" in md
    for text in ("## Parity", "## Validation loss", "## Latency on this machine", "## Quantization policy", "int4 (MatMulNBits)",
                 f"{report['parity']['max_abs_diff']:.3g}", f"{v['onnxruntime_int8']:.4f}", "hwnas.export import load"):
        assert text in md, text
    # the int8 file follows the arch: layer 2 is 4-bit, layers 0 (16-bit, policy int8) and 1 (8-bit) int8
    assert [q["int8_model"] for q in report["quantization"]["layers"]] == ["int8 (dynamic, per channel)"] * 2 + ["int4 (MatMulNBits)"]
    ops_ = op_counts(onnx.load(out / "model.int8.onnx"))
    assert ops_["MatMulNBits"] == 2 + 2 * 2 and ops_.get("MatMulInteger", 0) + ops_.get("DynamicQuantizeMatMul", 0) == 2 + 2 + 2 + 3



def test_a_table_measured_on_another_machine_is_not_compared_with_timings_here(run_dir, tmp_path):
    """The run's torch tables came from the deployment target: the export states their prediction
    there in a note and leaves it out of the comparison with its timings here (prefill and decode);
    the ONNX Runtime tables, measured here, are compared as before."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    for workload in ("prefill", "decode"):
        path = table_path(run, "cpu", "torch", workload)
        table = LatencyTable.load(path)
        table.fingerprint = table.fingerprint | {"cpu": "Imagined ARM board", "machine": "aarch64"}
        table.save(path, Manifest.of(run, "latency"))
    report = run_export(run, "min loss", out_dir=tmp_path / "shipped", cfg=FAST.model_copy(update={"decode": True}), progress=False)
    lat, dec = report["latency"], report["decode"]["tables"]
    assert lat["foreign_tables"] == ["latency/cpu-torch.json"]
    torch_row, *ort_rows = lat["rows"]
    assert torch_row["predicted_ms"] is None and torch_row["measured_over_predicted"] is None and "speed_now" not in torch_row
    assert ort_rows[-1]["predicted_ms"] is not None and ort_rows[-1]["measured_over_predicted"] is not None
    n = len(arch_keys(COVERING[0])) - 1
    there = "torch table: measured on another machine (cpu: table 'Imagined ARM board', here "
    (note,) = [x for x in lat["notes"] if x.startswith(there)]
    assert note.endswith(f"it predicts {0.1 + n * 0.4:.3f} ms there, not compared with the timing here")
    assert dec["rows"][0]["backend"] == "torch" and dec["rows"][0]["predicted_ms"] is None
    assert dec["rows"][1]["predicted_ms"] is not None and any(x.startswith(there) for x in dec["notes"])
    text = (tmp_path / "shipped/report.md").read_text()
    assert "The run's tables latency/cpu-torch.json predict another machine" in text and "No latency table" not in text

def test_fresh_latency_times_the_written_files_as_loaded(exported):
    from hwnas.export.fresh import _fresh_latency

    out, _ = exported
    got = _fresh_latency(out, "model.onnx", 1, 1, 24, 0, 10.0)
    assert {"torch", "onnxruntime"} <= set(got) and got["clock"] == "wall (time.perf_counter)"
    assert all(got[b]["runs"] == 200 and got[b]["complete"] and got[b]["min_ms"] <= got[b]["median_ms"] for b in ("torch", "onnxruntime"))
    assert got["onnxruntime"]["how"] == "session('model.onnx', threads=1)"
    with pytest.raises(ExportError, match="threads: must be a positive integer"):
        load(out, threads=0)


def test_plain_loop_times_a_fixed_number_of_runs_and_says_when_a_cap_cut_it():
    from hwnas.latency.protocol import plain_loop

    calls = []
    m = plain_loop(lambda: calls.append(1), warmup=5, runs=40)
    assert len(calls) == 45 and m.n == 40 and m.stable
    slow = plain_loop(lambda: time.sleep(0.01), warmup=0, runs=1000, max_seconds=0.1)
    assert slow.n < 20 and not slow.stable and slow.min >= 0.01


def test_load_and_generate_without_the_supernet(run_dir, exported, tmp_path, monkeypatch):
    out, _ = exported
    shipped = tmp_path / "elsewhere"
    shutil.copytree(out, shipped)
    ckpt = run_dir / "train" / "checkpoint.safetensors"
    hidden = ckpt.with_name("hidden.safetensors")
    os.rename(ckpt, hidden)  # no supernet weights anywhere

    def no_supernet(*args, **kwargs):
        raise AssertionError("load built a supernet")

    monkeypatch.setattr(Supernet, "__init__", no_supernet)
    try:
        m = load(shipped)
        m2 = load(shipped / "model.safetensors")
    finally:
        os.rename(hidden, ckpt)
    assert m.arch == COVERING[0] and isinstance(m.model, torch.nn.Module) and not m.model.training
    fast = load(shipped, real_kernels=True)  # low-bit layers on int8 / int4 kernels, as the torch table times them
    kinds = [(type(x).__name__, getattr(x, "bits", None)) for x in fast.model.modules()]
    # layer 1 (8 bits): q/k/v and output projections, SwiGLU's three; layer 2 (4 bits): two projections, 2 experts x 2
    assert kinds.count(("LowBitLinear", 8)) == 5 and kinds.count(("LowBitLinear", 4)) == 6 and fast.arch == m.arch
    x = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = m(x).numpy()
        assert np.corrcoef(fast(x).numpy().ravel(), logits.ravel())[0, 1] > 0.99  # the same function, up to rounding
    assert np.abs(run_session(session(shipped / "model.onnx", 1), x) - logits).max() <= 1e-4
    torch.testing.assert_close(m2.model(x), m(x), rtol=0, atol=0)
    a = m.generate("def ", max_new_tokens=40, seed=0)  # 4 + 40 > block_size 32: the context is cropped
    assert isinstance(a, str) and a == m.generate("def ", max_new_tokens=40, seed=0)
    assert 0 < len(a) <= 40  # one character per byte at most (invalid bytes decode to U+FFFD)
    greedy = m.generate("import ", max_new_tokens=12, temperature=0)
    assert greedy == m.generate("import ", max_new_tokens=12, temperature=0, seed=123)
    assert m.generate("", max_new_tokens=5, seed=1) != "" and m.generate("x", max_new_tokens=0) == ""
    # the greedy continuation is the argmax of the model's own next-byte logits
    ids = list(b"import ")
    with torch.no_grad():
        first = int(m(torch.tensor([ids]))[0, -1].argmax())
    assert first >= 128 or greedy[0] == chr(first)
    # cached decoding (the default) writes what recomputing the whole context writes, within the block size
    long = m.generate("import ", max_new_tokens=25, temperature=0)  # 7 + 25 = block_size 32
    assert long == m.generate("import ", max_new_tokens=25, temperature=0, cache=False)
    assert m.generate("def ", max_new_tokens=28, seed=4) == m.generate("def ", max_new_tokens=28, seed=4, cache=False)
    assert fast.generate("def ", max_new_tokens=20, temperature=0) == fast.generate("def ", max_new_tokens=20, temperature=0,
                                                                                    cache=False)


def test_load_of_a_wrong_path_is_a_clear_error(tmp_path):
    with pytest.raises(ExportError, match="no exported model here"):
        load(tmp_path)


# --- the export folder ------------------------------------------------------------------------------
def listing(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_existing_folder_is_not_clobbered_without_force(run_dir, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"taken: export folder already exists; pass --force to replace it"):
        run_export(run_dir, "min loss", out_dir=out, cfg=FAST, progress=False)
    assert listing(out) == {"notes.txt": b"mine"} and sorted(os.listdir(tmp_path)) == ["taken"]
    with pytest.raises(ExportError, match="is not an hwnas export .* refusing to replace it even with --force"):
        run_export(run_dir, "min loss", out_dir=out, force=True, cfg=FAST, progress=False)
    assert listing(out) == {"notes.txt": b"mine"}
    with pytest.raises(ExportError, match="would replace the run directory"):
        run_export(run_dir, "min loss", out_dir=run_dir, force=True, cfg=FAST, progress=False)


def test_bad_pick_writes_nothing(run_dir, tmp_path):
    with pytest.raises(PickError, match=r"no front member has latency@cpu <= 1ms \(the fastest has 3 ms\)"):
        run_export(run_dir, "min loss where latency@cpu <= 1ms", out_dir=tmp_path / "x", cfg=FAST, progress=False)
    assert os.listdir(tmp_path) == []


def test_failed_parity_leaves_the_earlier_export(run_dir, exported, tmp_path, monkeypatch):
    out, _ = exported
    target = tmp_path / "export"
    shutil.copytree(out, target)
    before = listing(target)
    real = stage_mod.export_onnx_dynamic

    def broken(subnet, example=None):  # an exporter that gets one weight wrong
        model, form = real(subnet, example)
        init = next(i for i in model.graph.initializer if i.name.endswith("ffn.down"))
        arr = onnx.numpy_helper.to_array(init).copy()
        arr[0, 0] += 0.5
        init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))
        return model, form

    monkeypatch.setattr(stage_mod, "export_onnx_dynamic", broken)
    with pytest.raises(ExportError, match=r"parity: ONNX Runtime fp32 logits differ from torch by .* \(> 0.0001\)"):
        run_export(run_dir, "min loss", out_dir=target, force=True, cfg=FAST, progress=False)
    assert listing(target) == before and sorted(os.listdir(tmp_path)) == ["export"]


def test_force_replaces_an_export_with_a_finetuned_one(run_dir, exported, tmp_path):
    out, first = exported
    target = tmp_path / "export"
    shutil.copytree(out, target)
    (target / "stale.txt").write_text("old")
    idx = next(i for i, m in enumerate(front_of(run_dir)["front"]) if m["key"] != first["key"])
    cfg = FAST.model_copy(update={"finetune_lr": 3e-3, "measure_latency": False})
    report = run_export(run_dir, str(idx), out_dir=target, force=True, finetune_steps=25, cfg=cfg, progress=False)
    assert not (target / "stale.txt").exists() and json.loads((target / "config.json").read_text())["key"] == report["key"] != first["key"]
    assert sorted(os.listdir(tmp_path)) == ["export"]  # no temp or old folder left
    ft = report["finetune"]
    assert ft["steps"] == 25 and ft["loss_after"] < ft["loss_before"] - 0.05
    assert report["val_loss"]["torch"] == pytest.approx(ft["loss_after"], abs=1e-5)  # the fine-tuned weights are shipped
    corpus = Corpus.load(run_dir / "corpus")
    shipped = evaluate(load(target).model, None, corpus, 16, 32, FAST.eval_tokens)["loss"]
    assert shipped == pytest.approx(ft["loss_after"], abs=1e-5)
    assert "## Fine-tuning" in (target / "report.md").read_text() and report["latency"] is None


def test_export_logs_its_figures_and_the_folder_as_a_wandb_model_artifact(run_dir, tmp_path):
    import shutil

    from hwnas.core.tracking import read_wandb_runs

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    cfg = FAST.model_copy(update={"wandb": "offline", "measure_latency": False})
    report = run_export(run, "min loss", out_dir=tmp_path / "shipped", cfg=cfg, progress=False)
    runs = wandb_when(run, lambda runs: runs and runs[0]["artifacts"], read=read_wandb_runs)
    (logged,) = runs
    assert (logged["name"], logged["group"], logged["job_type"]) == (f"{run.name}-export", run.name, "export")
    (art,) = [a for a in logged["artifacts"] if a["type"] == "model"]
    assert art["name"] == f"{run.name}-model"
    assert set(art["files"]) == set(report["files"]) | {"config.json", "report.json", "report.md", "README.md", "manifest.json"}
    row = next(r for r in wandb_when(run, lambda h: any("params" in r for r in h)) if "params" in r)
    assert row["params"] == report["params"]["total"] and row["val_loss/torch"] == pytest.approx(report["val_loss"]["torch"])


def test_the_pipeline_replaces_its_own_runs_export_never_another_runs(tmp_path):
    from hwnas.export.stage import EXPORT_FORMAT, check_own_export

    target, mine, other = tmp_path / "export", tmp_path / "run-a", tmp_path / "run-b"
    check_own_export(target, mine)  # nothing there yet
    target.mkdir()
    (target / "config.json").write_text(json.dumps({"format": EXPORT_FORMAT}))
    (target / "report.json").write_text(json.dumps({"run_dir": str(other.resolve())}))
    with pytest.raises(ExportError, match=rf"^{target}: holds an export of another run \({other.resolve()}\); `hwnas run` "
                                          "replaces only its own run's export"):
        check_own_export(target, mine)
    (target / "report.json").write_text(json.dumps({"run_dir": str(mine.resolve())}))
    check_own_export(target, mine)
    inside = mine / "export"  # a run's own folder: its export, also after the run was copied from `other`
    shutil.copytree(target, inside)
    (inside / "report.json").write_text(json.dumps({"run_dir": str(other.resolve())}))
    check_own_export(inside, mine)
