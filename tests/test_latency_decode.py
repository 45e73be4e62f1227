"""The decode workload of the latency tables: one new token over a cache of `decode_context`
tokens. Its attention pieces take and return the cache and compose to the real decoding step; every
piece runs on both backends (ONNX Runtime agrees with torch); a tiny decode table builds, names its
files `<device>-<runtime>-decode`, and reports its fidelity on held-out decoding steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hwnas.latency import LatencyConfig, LatencyTable, table_path
from hwnas.latency.backends import OnnxRuntimeBackend, TorchBackend
from hwnas.latency.keys import arch_pieces
from hwnas.latency.session import workload
from hwnas.latency.stage import run_latency_stage
from hwnas.search_space import ArchConfig, SearchSpace
from hwnas.supernet import extract_subnet
from hwnas.supernet.decode import DecodeCache, DecodeStep
from tests.test_latency_backends import SMALL, covering_archs
from tests.tiny import perturbed_supernet

CONTEXT = 9


@pytest.fixture(scope="module")
def net():
    return perturbed_supernet(SMALL).eval()


@pytest.mark.parametrize("arch", covering_archs(16)[:3], ids=["pre", "pre-32", "post"])
def test_the_decoding_step_is_a_decode_cache_step_and_its_pieces_run(net, arch):
    """`DecodeStep` (what a decode table times for a whole subnet) equals the subnet stepping its own
    DecodeCache after CONTEXT tokens; each decode piece runs and returns its updated cache."""
    space = SearchSpace(SMALL)
    sub = extract_subnet(net, arch).eval()
    seq = torch.randint(0, 32, (2, CONTEXT + 1), generator=torch.Generator().manual_seed(3))
    cache = DecodeCache.of(sub)
    with torch.no_grad():
        sub(seq[:, :CONTEXT], cache=cache)
        past = cache.tensors(sub)
        want = sub(seq[:, CONTEXT:], cache=cache)
        got = DecodeStep(sub, CONTEXT)(seq[:, CONTEXT:], *past)
    torch.testing.assert_close(got[0], want, rtol=0, atol=1e-6)
    for piece in arch_pieces(arch):
        module = piece.build(space.dims, CONTEXT)
        inputs = piece.inputs(2, 1, space.dims, CONTEXT)
        with torch.no_grad():
            out = module(*inputs)
        first = out[0] if isinstance(out, tuple) else out
        assert torch.isfinite(first).all() and first.shape[1] == 1, piece.key
        if piece.kind == "attn":
            grown = [o.shape[2] for o in out[1:]] if piece.attention != "linear" else [out[1].shape]
            want_len = {"softmax": CONTEXT + 1, "window": min(CONTEXT + 1, (piece.window or 1) - 1)}.get(piece.attention)
            assert grown == ([want_len] * 2 if want_len is not None else [inputs[1].shape]), piece.key


def test_onnxruntime_runs_the_decode_pieces_as_torch_does(net):
    """Each attention kind's decode piece (and a whole decoding step) exported to ONNX: the same outputs."""
    space = SearchSpace(SMALL)
    torch_be, ort_be = TorchBackend("cpu", 1), OnnxRuntimeBackend("cpu", 1)
    arch = covering_archs(16)[0]
    pieces = [p for p in arch_pieces(arch) if p.kind == "attn"]
    assert {p.attention for p in pieces} == {"softmax", "linear", "window"}
    step = DecodeStep(extract_subnet(net, arch).eval(), CONTEXT).eval()
    cases = [(p.build(space.dims, CONTEXT), p.inputs(1, 1, space.dims, CONTEXT)) for p in pieces]
    cases.append((step, step.inputs(1, torch.Generator().manual_seed(0))))
    for module, inputs in cases:
        with torch.no_grad():
            a, b = torch_be.prepare(module, inputs)(), ort_be.prepare(module, inputs)()
        a = a if isinstance(a, tuple) else (a,)
        b = b if isinstance(b, list | tuple) else (b,)
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_allclose(np.asarray(y), x.numpy(), atol=1e-4, rtol=1e-4)


def test_onnxruntime_tables_time_the_decoding_graph_the_export_writes(net):
    """A whole decoding step as the ONNX Runtime table times it is the exported model.decode.onnx's
    graph (the position an input, dynamic dims): the same operators, the same outputs; eager torch
    times the step with the position fixed, as `generate` runs it."""
    import collections

    from hwnas.export.decode import export_decode_onnx
    from hwnas.latency.backends import export_onnx
    from hwnas.latency.session import decode_step

    arch = covering_archs(16)[0]
    sub = extract_subnet(net, arch).eval()
    step, inputs = decode_step(sub, CONTEXT, 1, OnnxRuntimeBackend.position_input)
    assert step.context is None and inputs[1].ndim == 0 and int(inputs[1]) == CONTEXT
    assert decode_step(sub, CONTEXT, 1, TorchBackend.position_input)[0].context == CONTEXT
    timed, exported = export_onnx(step, inputs)[0], export_decode_onnx(sub)[0]
    ops = [collections.Counter(n.op_type for n in m.graph.node) for m in (timed, exported)]
    assert ops[0] == ops[1] and ops[0]["MatMul"] > 0
    with torch.no_grad():
        want = step(*inputs)
    got = OnnxRuntimeBackend("cpu", 1).prepare(step, inputs)()
    for x, y in zip(want, got, strict=True):
        np.testing.assert_allclose(np.asarray(y), x.numpy(), atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # about 25 s: the pieces and whole steps are checked by default above; this builds, reports and searches
def test_a_decode_table_builds_beside_the_prefill_one_and_reports_its_fidelity(tmp_path):
    cfg = LatencyConfig(workloads=["prefill", "decode"], decode_context=CONTEXT, backends=["torch"], threads=1, warmup=1,
                        min_repeats=3, max_repeats=5, check_every=3, max_seconds=0.2, n_correction=6, n_fidelity=6,
                        passes=1, wandb="disabled", speed_backoff_s=0)
    space = SearchSpace(SMALL.model_copy(update={"depth": [1, 2], "embed_dim": [16]}))
    out = run_latency_stage(space.config, cfg, tmp_path, progress=False)
    assert set(out) == {"cpu/torch", "cpu/torch:decode"}
    prefill = LatencyTable.load(table_path(tmp_path, "cpu", "torch"))
    decode = LatencyTable.load(table_path(tmp_path, "cpu", "torch", "decode"))
    assert table_path(tmp_path, "cpu", "torch", "decode").name == "cpu-torch-decode.json"
    assert decode.workload == {"batch_size": 1, "seq_len": 1, "context": CONTEXT} and decode.workload_kind == "decode"
    assert prefill.workload_kind == "prefill" and set(decode.entries) == set(prefill.entries)  # the same pieces
    report = json.loads((tmp_path / "latency" / "fidelity-cpu-torch-decode.json").read_text())
    assert report["workload"]["context"] == CONTEXT and report["n"] == 6
    assert {"within_10pct", "kendall_tau", "mape_pct"} <= set(report["prediction"])
    for arch, measured in decode.calibration.values():  # the calibration subnets: each timed as a decoding step
        assert decode.predict(arch) > 0 and measured.median > 0
    # a search on the time of each generated token, its front re-measured as decoding steps
    from hwnas.search.config import SearchConfig
    from hwnas.search.stage import run_search

    scfg = SearchConfig(objectives=["params", "latency@cpu/torch:decode"], engine="random", algorithm="random", budget=30,
                        validate_top=2, wandb="disabled")
    summary = run_search(space.config, scfg, tmp_path, latency_cfg=cfg, progress=False)
    assert summary["units"]["latency@cpu/torch:decode"] == "ms/token" and "cpu/torch:decode" in summary["measured_on"]
    front = json.loads((tmp_path / "search" / "front.json").read_text())
    rows = json.loads((tmp_path / "search" / "validation.json").read_text())["rows"]
    assert len(rows) == 2 and all(r["measured:latency@cpu/torch:decode"] > 0 for r in rows)
    arch = ArchConfig.from_dict(front["front"][0]["arch"])
    assert front["front"][0]["objectives"][1] == pytest.approx(1e3 * decode.predict(arch))
    from rich.console import Console

    from hwnas.report import print_front

    console = Console(width=400, record=True)
    print_front(tmp_path / "search", console)
    text = console.export_text()
    assert "latency@cpu/torch:decode tokens/s" in text and "latency@cpu/torch:decode ms/token" in text
    assert f"{1e3 / front['front'][0]['objectives'][1]:,.0f}" in text


def test_the_decode_context_must_leave_room_for_a_token():
    from hwnas.core.errors import HwnasError

    space = SearchSpace(SMALL)
    assert workload(space, LatencyConfig(), "decode")["context"] == 8  # half the block size by default
    with pytest.raises(HwnasError, match="decode_context: 16 leaves no room"):
        workload(space, LatencyConfig(decode_context=16), "decode")


def test_a_latency_name_says_its_workload_and_statistic_in_any_order():
    from hwnas.search.config import SearchConfig
    from hwnas.search.objectives import (
        ObjectiveError,
        canonical_name,
        latency_statistic,
        latency_workload,
        split_table_key,
        table_key,
    )

    for name, work, stat, key in [("latency@cpu/torch", "prefill", "median", "cpu/torch"),
                                  ("latency@cpu/onnxruntime:decode", "decode", "median", "cpu/onnxruntime:decode"),
                                  ("latency@cpu/torch:p90:decode", "decode", "p90", "cpu/torch:decode"),
                                  ("latency@cpu/torch:min", "prefill", "min", "cpu/torch")]:
        assert (latency_workload(name), latency_statistic(name), table_key(name)) == (work, stat, key)
    assert canonical_name("latency@cpu:p90:decode", "onnxruntime") == "latency@cpu/onnxruntime:decode:p90"
    assert split_table_key("cpu/torch:decode") == ("cpu", "torch", "decode") and latency_workload("loss") is None
    for bad, needle in [("latency@cpu/torch:fast", "'fast' is not one of median, p90, p10, min \\(nor a workload: prefill, decode\\)"), ("latency@cpu:decode:decode", "a workload twice"),
                        ("latency@cpu:p90:min", "a statistic twice")]:
        with pytest.raises(ObjectiveError, match=needle):
            latency_statistic(bad)
    assert SearchConfig(objectives=["loss", "latency@cpu:decode"]).objectives == ["loss", "latency@cpu/onnxruntime:decode"]


def test_a_decode_objective_needs_the_decode_workload(tmp_path):
    from tests.tiny import assert_refused, hwnas, stdlib_text, tiny_yaml

    config = tiny_yaml(tmp_path, stdlib_text(tmp_path / "text"))
    assert_refused(hwnas("config", str(config), "--set", "search.objectives=[loss, 'latency@cpu/torch:decode']"),
                   "search.objectives", "latency.workloads to include decode")
    shown = hwnas("config", str(config), "--set", "search.objectives=[loss, 'latency@cpu/torch:decode']",
                  "--set", "latency.workloads=[prefill, decode]")
    assert shown.returncode == 0, shown.stderr


def test_decode_latencies_read_as_tokens_per_second_in_tables_and_plots(tmp_path):
    from hwnas.search.choices import latency_headers, row_cells
    from hwnas.search.objectives import decode_objectives, tokens_per_s
    from hwnas.search.plots import PlotContext, front_plots

    name = "latency@cpu/onnxruntime:decode"
    assert tokens_per_s(name, 0.25) == pytest.approx(4000) and tokens_per_s("latency@cpu/onnxruntime", 0.25) is None
    assert decode_objectives(["loss", "latency@cpu/torch", name]) == [name]
    row = {"dim": "attention", "choice": "linear", "front_archs": 0.5, "front_layers": 0.25, "space_archs": 0.5,
           "space_layers": 0.3, "latency_ms": {"cpu/onnxruntime": 2.0, "cpu/onnxruntime:decode": 0.2}}
    targets = ["cpu/onnxruntime", "cpu/onnxruntime:decode"]
    assert row_cells(row, targets)[-2:] == ["2.000", "0.200 (5,000 tokens/s)"]
    assert latency_headers(targets) == ["latency@cpu/onnxruntime ms", "latency@cpu/onnxruntime:decode ms/token"]
    cands = [{"key": f"a{i}", "loss": 2.0 - 0.1 * i, name: 0.2 + 0.05 * i} for i in range(4)]
    ctx = PlotContext("exp", {"loss": "nats/byte", name: "ms/token"})
    paths = front_plots(cands, cands, ["loss", name], tmp_path, ctx)
    html = next(p for p in paths if p.suffix == ".html").read_text()
    html = html.replace("\\u002f", "/")  # (plotly escapes the slash in its JSON)
    assert "5,000 tokens/s" in html and "2,857 tokens/s" in html  # 1000 / 0.2 and 1000 / 0.35, on hover
