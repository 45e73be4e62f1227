"""Data loss and integrity, on copies of a finished tiny run:

- every artifact a later stage reads is listed with its sha256 in its folder's manifest, and each
  one, damaged in turn (truncated, a flipped byte, a same-size edit), is refused by the stage that
  reads it with one line naming it, before that stage writes anything; `hwnas run` does not count
  the stage that wrote it as complete;
- the advice in that line works: doing what it says makes the reader succeed again;
- torn or malformed JSON is refused with one line, or recovered (a torn last log line);
- non-finite weights are refused with the tensor's name.

The run directory's ownership (another experiment's config) is in test_run_dir.py.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from hwnas.config import load_config
from hwnas.core.errors import HwnasError
from hwnas.core.manifest import EXPORT_COMMAND, NAME, Manifest
from hwnas.export import load as load_export
from hwnas.export import run_export
from hwnas.pipeline import Pipeline
from hwnas.predictors.stage import run_predictors
from hwnas.search.choices import read_choices
from hwnas.search.stage import run_search, write_plots
from hwnas.supernet.train import train
from tests.tiny import assert_refused, digest, hwnas

DAMAGES = ("truncate", "flip", "edit")


def damage(path: Path, how: str, seed: int = 0) -> None:
    """Truncate `path` to half, flip one bit of one byte, or overwrite a few bytes with other
    bytes (same size: only a checksum can tell), at a seeded position."""
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng([seed, len(data), DAMAGES.index(how)])
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
        return
    at = int(rng.integers(0, len(data)))
    if how == "flip":
        data[at] ^= 1 << int(rng.integers(0, 8))
    else:
        width = min(4, len(data) - at)
        data[at:at + width] = bytes((b + 1 + int(rng.integers(0, 250))) % 256 for b in data[at:at + width])
    path.write_bytes(data)


def listed(run: Path) -> list[str]:
    """Every file a manifest of the run lists, relative to the run directory."""
    return sorted(str((m.parent / name).relative_to(run)) for m in run.rglob(NAME) for name in json.loads(m.read_text())["files"])


def readers(config: Path, run: Path) -> dict[str, object]:
    """The stage (in this process) that reads each artifact; files no stage reads map to None."""
    cfg = load_config(config)

    def predictors():
        run_predictors(cfg.search_space, cfg.predictors, run, seed=cfg.seed, progress=False)

    def search():
        run_search(cfg.search_space, cfg.search, run, seed=cfg.seed, latency_cfg=cfg.latency, progress=False)

    def export():
        run_export(run, "min loss", force=True, cfg=cfg.export, progress=False)

    return {
        "train/checkpoint.safetensors": predictors, "train/summary.json": predictors, "corpus/train.bin": predictors,
        "corpus/val.bin": predictors, "corpus/corpus.json": predictors, "predictors/records.jsonl": predictors,
        "latency/cpu-torch.json": search, "predictors/predictor.skops": search, "predictors/predictor.json": search,
        "predictors/report.json": search, "search/front.json": export, "search/validation.json": export,
        "search/candidates.csv": lambda: write_plots(run / "search"), "search/choices.json": lambda: read_choices(run / "search"), "export/model.safetensors": lambda: load_export(run / "export"),
        "export/config.json": lambda: load_export(run / "export"),
    }


def test_every_artifact_is_listed(tiny_run):
    config, run = tiny_run
    assert set(readers(config, run)) <= set(listed(run))
    assert {"predictors/plan.json", "search/front.csv", "search/summary.json", "export/model.onnx", "export/model.int8.onnx",
            "export/report.json"} <= set(listed(run))
    for manifest in run.rglob(NAME):
        doc = json.loads(manifest.read_text())
        assert doc["command"].startswith("hwnas ") and all("previous" not in e for e in doc["files"].values())
        Manifest(manifest.parent, doc["command"]).verify(*doc["files"])


def test_each_damaged_artifact_is_refused_by_its_reader_and_the_pipeline(tiny_run):
    """The property: for every listed file and every kind of damage, the stage that reads it
    refuses it naming it and writes nothing, and `hwnas run` would not skip the stage that wrote it."""
    config, run = tiny_run
    cfg = load_config(config)
    read = readers(config, run)
    stage_of = {"train": "train", "corpus": "train", "latency": "latency", "predictors": "predictors", "search": "search",
                "export": "export"}
    stages = {s.name: s for s in Pipeline(cfg, progress=False, log=lambda _: None).stages()}
    files = listed(run)
    assert len(files) >= 20
    for rel in files:
        path = run / rel
        good = path.read_bytes()
        for how in DAMAGES:
            damage(path, how, seed=len(rel))
            before = digest(run)
            why = stages[stage_of[rel.split("/")[0]]].damaged()
            assert why is not None and why.startswith(f"{path}: "), (rel, how, why)
            if read.get(rel):
                with pytest.raises(HwnasError) as err:
                    read[rel]()
                assert str(err.value).startswith(f"{path}: ") and "\n" not in str(err.value), (rel, how, str(err.value))
                assert digest(run) == before, (rel, how)
            path.write_bytes(good)
    for stage in stages.values():
        assert stage.damaged() is None


def test_cli_refuses_a_damaged_checkpoint_and_run_does_not_skip_it(tiny_run):
    config, run = tiny_run
    ckpt = run / "train" / "checkpoint.safetensors"
    damage(ckpt, "edit")
    before = digest(run)
    for command in ("predictors", "search", "run", "train"):
        proc = hwnas(command, str(config), "--no-progress")
        line = assert_refused(proc, f"{ckpt}: changed since `hwnas train CONFIG` wrote it", "delete it and run `hwnas train CONFIG`")
        assert "complete, skipped" not in proc.stdout, (command, proc.stdout)
        assert digest(run) == before, (command, line)
    assert_refused(hwnas("export", str(run)), str(ckpt))


def _follow(line: str, config: Path, run: Path) -> None:
    """Do what a refusal says: delete the file it names (if it says so), then run its command."""
    deleted = re.search(r"delete (\S+) and run", line)
    if deleted:  # "delete it": the file the line starts with
        Path(line.split(": ")[0] if deleted.group(1) == "it" else deleted.group(1)).unlink()
    command = re.findall(r"`(hwnas [^`]+)`", line)[-1].replace("CONFIG", str(config)).replace("RUN_DIR", str(run))
    proc = hwnas(*command.split()[1:], "--no-progress")
    assert proc.returncode == 0, (command, proc.stderr[-2000:])


@pytest.mark.parametrize("rel, how, reader", [
    ("latency/cpu-torch.json", "truncate", ("search",)),
    pytest.param("corpus/train.bin", "edit", ("predictors",), marks=pytest.mark.slow),
    pytest.param("search/front.json", "flip", ("export", "RUN_DIR", "--force"), marks=pytest.mark.slow),
    pytest.param("train/checkpoint.safetensors", "truncate", ("predictors",), marks=pytest.mark.slow),
])
def test_the_advice_in_a_refusal_makes_the_reader_work_again(tiny_run, rel, how, reader):
    config, run = tiny_run
    damage(run / rel, how)
    args = [str(run) if a == "RUN_DIR" else a for a in reader] + ([str(config)] if "RUN_DIR" not in reader else [])
    line = assert_refused(hwnas(*args, "--no-progress"), str(run / rel))
    _follow(line.removeprefix("hwnas: error: "), config, run)
    again = hwnas(*args, "--no-progress")
    assert again.returncode == 0, again.stderr[-2000:]


# --- torn and malformed JSON --------------------------------------------------------------------------
def _rewrite(path: Path, text: str) -> None:
    """Replace a listed file and list the new content, as a writer that knew the manifest would:
    what is left to catch it is the reader's own check."""
    path.write_text(text)
    Manifest(path.parent, json.loads((path.parent / NAME).read_text())["command"]).add(path.name)


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["front"][0].pop("key"), "front[0].key: missing"),
    (lambda d: d["front"][0]["objectives"].pop(), "front[0].objectives: expected 2 finite numbers"),
    (lambda d: d["front"][0]["objectives"].__setitem__(0, float("nan")), "front[0].objectives"),
    (lambda d: d["front"][0].__setitem__("key", "e16-L1:x"), "front[0].key: 'e16-L1:x' is not the key of its arch"),
    (lambda d: d.__setitem__("front", {}), "front: expected a list"),
    (lambda d: d.pop("objectives"), "objectives: expected a list"),
])
def test_a_malformed_front_is_refused_by_field(tiny_run, edit, field):
    config, run = tiny_run
    path = run / "search" / "front.json"
    doc = json.loads(path.read_text())
    edit(doc)
    _rewrite(path, json.dumps(doc))
    before = digest(run)
    for read in (lambda: run_export(run, "min loss", force=True, progress=False), lambda: write_plots(run / "search")):
        with pytest.raises(HwnasError) as err:
            read()
        assert str(err.value).startswith(f"{path}: {field}")
    assert digest(run) == before


def test_a_member_without_key_is_one_line_from_the_cli(tiny_run):
    config, run = tiny_run
    path = run / "search" / "front.json"
    doc = json.loads(path.read_text())
    doc["front"][0].pop("key")
    _rewrite(path, json.dumps(doc))
    for args in (("export", str(run), "--force"), ("pareto", str(run))):
        assert_refused(hwnas(*args), f"{path}: front[0].key: missing")


def test_truncated_front_and_not_json_export_config_are_one_line(tiny_run):
    config, run = tiny_run
    front = run / "search" / "front.json"
    _rewrite(front, front.read_text()[:100])
    assert_refused(hwnas("export", str(run), "--force"), f"{front}: the Pareto front is not valid JSON")
    cfg_path = run / "export" / "config.json"
    _rewrite(cfg_path, "{not json")
    with pytest.raises(HwnasError, match=re.escape(f"{cfg_path}: the export config is not valid JSON")):
        load_export(run / "export")


def test_checkpoint_metadata_that_is_not_json_is_refused(tiny_run):
    config, run = tiny_run
    ckpt = run / "train" / "checkpoint.safetensors"
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as f:
        meta = f.metadata()
    save_file(load_file(str(ckpt)), str(ckpt), metadata=meta | {"meta": "{\"state\": "})
    Manifest(ckpt.parent, "hwnas train CONFIG").add(ckpt.name)
    assert_refused(hwnas("predictors", str(config)), f"{ckpt}: checkpoint metadata 'meta' is missing or not JSON")
    assert_refused(hwnas("train", str(config)), f"{ckpt}: checkpoint metadata 'meta' is missing or not JSON")


def test_a_torn_last_metrics_line_is_dropped_when_training_resumes(tiny_run):
    config, run = tiny_run
    cfg = load_config(config)
    metrics = run / "train" / "metrics.jsonl"
    with metrics.open("a") as f:
        f.write('{"step": 11, "loss_lar')  # a writer killed mid-line
    more = cfg.train.model_copy(update={"steps": cfg.train.steps + 4})
    train(cfg.search_space, more, run, seed=cfg.seed, progress=False)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert rows and max(r["step"] for r in rows) == more.steps - 1


@pytest.mark.slow
def test_an_unreadable_pipeline_state_is_recovered(tiny_run):
    config, run = tiny_run
    (run / "pipeline.json").write_text('{"stages": {"train"')
    proc = hwnas("run", str(config), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "unreadable (kept as pipeline.json.damaged); re-checking every stage" in proc.stdout
    assert set(json.loads((run / "pipeline.json").read_text())["stages"]) == {"train", "latency", "predictors", "search", "export"}
    assert (run / "pipeline.json.damaged").read_text() == '{"stages": {"train"'  # nothing the user had is lost


# --- non-finite weights -----------------------------------------------------------------------------
def _poison(path: Path, prefix: str, value: float) -> str:
    """Put `value` into the first floating-point tensor whose name starts with `prefix`; its name."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    name = next(k for k, v in tensors.items() if k.startswith(prefix) and v.is_floating_point())
    tensors[name] = tensors[name].clone().reshape(-1).index_fill_(0, torch.tensor([0]), value).reshape(tensors[name].shape)
    save_file(tensors, str(path), metadata=meta)
    return name


@pytest.mark.parametrize("prefix, value", [("model/", float("nan")), ("average/", float("inf")), ("optim/", float("-inf"))])
def test_non_finite_checkpoint_tensors_are_refused_by_name(tiny_run, prefix, value):
    config, run = tiny_run
    ckpt = run / "train" / "checkpoint.safetensors"
    name = _poison(ckpt, prefix, value)
    Manifest(ckpt.parent, "hwnas train CONFIG").add(ckpt.name)
    before = digest(run)
    cfg = load_config(config)
    for stage in (lambda: run_predictors(cfg.search_space, cfg.predictors, run, seed=cfg.seed, progress=False),
                  lambda: train(cfg.search_space, cfg.train, run, seed=cfg.seed, progress=False)):
        with pytest.raises(HwnasError, match=re.escape(f"{ckpt}: tensor {name!r} holds 1 non-finite value")):
            stage()
    if prefix == "model/":  # and from the command line, one line
        assert_refused(hwnas("predictors", str(config)), str(ckpt), f"tensor {name!r} holds 1 non-finite value")
    assert digest(run) == before


def test_non_finite_export_weights_are_refused_by_name(tiny_run):
    config, run = tiny_run
    weights = run / "export" / "model.safetensors"
    name = _poison(weights, "", float("nan"))
    Manifest(weights.parent, EXPORT_COMMAND).add(weights.name)
    with pytest.raises(HwnasError, match=re.escape(f"tensor {name!r} holds 1 non-finite value")):
        load_export(run / "export")
    shutil.copy(weights, run / "alone.safetensors")  # a weights file on its own (no manifest beside it): still checked
    with pytest.raises(HwnasError, match=re.escape(f"tensor {name!r}")):
        load_export(run / "alone.safetensors")


def test_an_export_folder_without_its_manifest_is_refused(tiny_run):
    config, run = tiny_run
    (run / "export" / NAME).unlink()
    with pytest.raises(HwnasError, match=re.escape(f"{run / 'export' / 'model.safetensors'}: no ")):
        load_export(run / "export")


@pytest.mark.slow
def test_a_resumed_run_of_a_damaged_stage_reruns_it(tiny_run):
    """A damaged output that its own stage rewrites whole (here the predictor) makes `hwnas run`
    rerun that stage and every later one, and the result is intact again."""
    config, run = tiny_run
    damage(run / "predictors" / "predictor.skops", "flip")
    proc = hwnas("run", str(config), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[train] complete, skipped" in proc.stdout and "[latency] complete, skipped" in proc.stdout
    assert "[predictors] running (it finished before, but its outputs are not intact" in proc.stdout
    assert "[search] running" in proc.stdout and "[export] running" in proc.stdout
    Manifest.of(run, "predictors").verify("predictor.skops")


# --- artifacts that are whole and listed, yet not this run's --------------------------------------------
def test_a_latency_table_of_other_model_dims_is_refused(tiny_run):
    from dataclasses import replace

    from hwnas.latency.table import LatencyTable

    config, run = tiny_run
    path = run / "latency" / "cpu-torch.json"
    table = LatencyTable.load(path)
    table.dims = replace(table.dims, head_dim=table.dims.head_dim * 2)
    table.save(path, Manifest.of(run, "latency"))  # a whole table, listed: only its dims tell
    cfg = load_config(config)
    with pytest.raises(HwnasError, match=re.escape(f"{path}: measured for model dims")):
        run_search(cfg.search_space, cfg.search, run, seed=cfg.seed, latency_cfg=cfg.latency, progress=False)


def test_a_damaged_optuna_study_is_refused_before_anything_is_written(tiny_run):
    config, run = tiny_run
    cfg = yaml.safe_load(config.read_text())
    cfg["search"] |= {"engine": "optuna", "budget": 30, "population": 10}
    config.write_text(yaml.safe_dump(cfg))
    (run / "search" / "study.db").write_bytes(b"SQLite format 3\0" + b"\x07" * 4000)
    before = digest(run)
    assert_refused(hwnas("search", str(config), "--no-progress"), f"search.storage {run / 'search' / 'study.db'}: cannot open")
    assert digest(run) == before


def test_a_pipeline_state_that_is_a_folder_is_one_line(tiny_run):
    config, run = tiny_run
    (run / "pipeline.json").unlink()
    (run / "pipeline.json").mkdir()
    assert_refused(hwnas("run", str(config), "--no-progress"), f"{run / 'pipeline.json'}: exists and is not a file")


def test_a_search_that_finds_nothing_feasible_keeps_the_last_front(tiny_run):
    config, run = tiny_run
    cfg = load_config(config)
    before = digest(run / "search")
    infeasible = cfg.search.model_copy(update={"constraints": ["params <= 1"]})
    with pytest.raises(HwnasError, match="no feasible candidate"):
        run_search(cfg.search_space, infeasible, run, seed=cfg.seed, latency_cfg=cfg.latency, progress=False)
    assert digest(run / "search") == before
    manifest = Manifest.of(run, "search")
    assert {"front.json", "summary.json"} <= set(manifest.files())  # still listed, so the export can read it
    assert manifest.check(*manifest.files()) is None
