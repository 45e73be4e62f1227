"""The Python API (`hwnas.api`, re-exported by `hwnas`): every stage of the tiny experiment run from
Python gives what the CLI gives; `import hwnas` stays cheap; the export folder's model card and
`from_pretrained`; bad input is a named `HwnasError`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import hwnas
from hwnas.core.errors import ConfigError, HwnasError
from hwnas.core.manifest import EXPORT_COMMAND, Manifest
from hwnas.export import ExportedModel, ExportError, from_pretrained, load
from hwnas.stages import ExportResult, LatencyResult, PredictorsResult, SearchResult, TrainResult


def test_import_hwnas_does_not_import_torch():
    code = ("import sys, hwnas; assert 'torch' not in sys.modules, 'torch imported'; "
            "names = set(dir(hwnas)); assert {'pareto_search', 'export_model', 'Pipeline', 'from_pretrained'} <= names; "
            "assert 'torch' not in sys.modules; print(hwnas.__version__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == hwnas.__version__
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        hwnas.nope  # noqa: B018


def test_reading_a_config_loads_no_runtime_or_numeric_library():
    """`hwnas config`, `--help` and a refused value answer at once: the config and the CLI import
    neither torch nor ONNX Runtime, SciPy or scikit-learn (the stages load them when they run)."""
    heavy = ("torch", "onnxruntime", "scipy.stats", "sklearn", "optuna", "pymoo")
    code = ("import sys; import hwnas.cli, hwnas.config; from hwnas.latency import LatencyConfig; from hwnas.export import ExportConfig; "
            f"print([m for m in {heavy!r} if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"


def test_the_api_runs_the_stages_and_matches_the_cli(tiny_run):
    """tiny_run is a copy of a run the CLI made (`hwnas run`); each stage run again from Python, in
    this process, gives the same results (the search: the same front)."""
    config, rd = tiny_run
    cli_front = json.loads((rd / "search" / "front.json").read_text())
    cfg = hwnas.load_config(config)
    assert isinstance(hwnas.train(cfg, progress=False), TrainResult)  # finished: resumes to the end at once
    lat = hwnas.build_latency_tables(config, progress=False)  # a path does as well as a loaded config
    assert isinstance(lat, LatencyResult) and "latency table cpu/torch" in lat.lines(cfg)[0]
    pred = hwnas.fit_predictors(cfg, progress=False)
    assert isinstance(pred, PredictorsResult) and pred.n_fit == 12 and pred.record["model"] in ("ridge", "gbr")
    found = hwnas.pareto_search(cfg, progress=False)
    assert isinstance(found, SearchResult)
    assert found.record == json.loads((rd / "search" / "summary.json").read_text())
    front = hwnas.front(cfg)
    assert [(m["key"], m["objectives"]) for m in front["front"]] == [(m["key"], m["objectives"]) for m in cli_front["front"]]
    assert hwnas.front(rd) == front  # the run directory does too
    shipped = hwnas.export_model(cfg, pick=0, force=True, progress=False)
    assert isinstance(shipped, ExportResult) and shipped.record["key"] == cli_front["front"][0]["key"]
    assert shipped.record == json.loads((rd / "export" / "report.json").read_text())
    with pytest.raises(ExportError, match="already exists; pass --force"):  # force=False, as the CLI's default
        hwnas.export_model(rd, progress=False)
    logged: list[str] = []
    state = hwnas.run(cfg, progress=False, log=logged.append)  # hwnas run: every stage finished, skipped
    assert set(state["stages"]) == {"train", "latency", "predictors", "search", "export"}
    assert logged == [f"[{s}] complete, skipped" for s in ("train", "latency", "predictors", "search", "export")]


def test_the_export_folder_has_a_model_card(tiny_run):
    _, rd = tiny_run
    out = rd / "export"
    report = json.loads((out / "report.json").read_text())
    assert "README.md" in Manifest(out, EXPORT_COMMAND).verify("README.md")  # listed and intact like every file
    card = (out / "README.md").read_text()
    v, front = report["val_loss"], report["front"]
    assert card.startswith(f"# `{report['key']}`") and f"Arch key: `{report['key']}`" in card
    for text in (f"{report['params']['total']:,}", f"{v['torch']:.4f} nats/byte", f"{v['torch'] / 0.6931471805599453:.4f} bits/byte",
                 f"{v['onnxruntime_int8']:.4f} nats/byte", f"{report['parity']['max_abs_diff']:.3g}",
                 f"front member #{report['front_index']} of {front['size']}", "`loss`, `latency@cpu/torch`",
                 f"| loss | {report['front_objectives']['loss']:.4g} |", f"| cpu | {report['machine']['cpu']} |",
                 "ExportedModel.from_pretrained(", "ort.InferenceSession(", "model.int8.onnx",
                 "| layer | heads | MLP ratio |", "not measured by this export"):
        assert text in card, text
    assert card.count("\n| 0 | ") == 1 and f"| {len(report['arch']['layers']) - 1} | " in card  # one row per layer
    assert front["rank"]["loss"] == 1 and report["pick"] == "min loss"  # the least loss on the front


def test_the_model_card_shows_the_latency_the_export_measured(tiny_run):
    from hwnas.export.card import render_card

    _, rd = tiny_run
    report = json.loads((rd / "export" / "report.json").read_text())
    row = {"backend": "torch", "model": "model.safetensors", "batch_size": 1, "seq_len": 24, "threads": 1, "statistic": "min",
           "measured_ms": 0.3125, "median_ms": 0.34375, "p90_ms": 0.40625, "predicted_ms": 0.328125, "runs": 40, "stable": True}
    fresh = {"torch": {"how": "load(folder, threads=1)", "median_ms": 0.5, "p90_ms": 0.625, "min_ms": 0.25, "runs": 200}}
    card = render_card(report | {"latency": {"rows": [row], "notes": [], "fresh": fresh}})
    assert ("| latency, torch, model.safetensors | prefill of 1 x 24 tokens, 1 thread(s): min 0.312 ms, median 0.344 ms, "
            "p90 0.406 ms; the latency table predicted 0.328 ms |") in card
    assert "`load(folder, threads=1)` in a fresh process: median 0.500 ms, p90 0.625 ms, min 0.250 ms over 200 runs" in card
    assert "not measured" not in card


def test_from_pretrained_is_load(tiny_run):
    _, rd = tiny_run
    out = rd / "export"
    a, b, c = load(out), ExportedModel.from_pretrained(out), from_pretrained(out / "model.safetensors")
    assert a.arch == b.arch == c.arch and a.config == b.config and not b.model.training
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
        torch.testing.assert_close(c(x), a(x), rtol=0, atol=0)
    assert hwnas.from_pretrained is from_pretrained


def test_from_pretrained_of_a_bad_path_names_it(tmp_path):
    for path, needle in ((tmp_path / "nowhere", "no such file or folder"), (tmp_path, "model.safetensors is missing")):
        with pytest.raises(ExportError) as e:
            ExportedModel.from_pretrained(path)
        assert str(e.value).startswith(f"{path}: no exported model here") and needle in str(e.value)
        assert isinstance(e.value, HwnasError)


def test_bad_input_is_a_named_error(tiny_run, tmp_path):
    config, rd = tiny_run
    missing = tmp_path / "missing.yaml"
    for call in (lambda: hwnas.load_config(missing), lambda: hwnas.train(missing), lambda: hwnas.run(str(missing))):
        with pytest.raises(ConfigError, match=f"{missing}: config file not found"):
            call()
    with pytest.raises(ConfigError, match=r"with --set: train\.stepz: unknown key; allowed keys: corpus"):
        hwnas.load_config(config, ["train.stepz=3"])
    with pytest.raises(ConfigError, match=r"with --set: train\.steps: .*got 'many'"):
        hwnas.load_config(config, {"train.steps": "many"})
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        hwnas.load_config(config, ["train.steps"])
    cfg = hwnas.load_config(config, {"train.steps": 20, "search.objectives": ["loss", "latency@cpu/torch"]})
    assert cfg.train.steps == 20
    with pytest.raises(ConfigError, match=r"experiment 'tiny' with --set: search\.engine"):  # overrides on a loaded config
        hwnas.pareto_search(cfg, {"search.engine": "magic"})
    with pytest.raises(ConfigError, match=r"hwnas search: argument --workers: must be an integer in 1\.\.\d+, got '0'"):
        hwnas.pareto_search(cfg, workers=0)  # checked as the command line checks it
    with pytest.raises(ConfigError, match="expected an experiment YAML's path or an ExperimentConfig, got int"):
        hwnas.train(42)
    with pytest.raises(ConfigError, match="is a run directory; overrides need an experiment config"):
        hwnas.export_model(rd, {"export.pick": "0"})
    with pytest.raises(HwnasError, match="no search results"):
        hwnas.front(tmp_path)
