"""`hwnas run`: the whole pipeline on a tiny experiment; killed at random points and run again, it
finishes without redoing completed stages and without corrupt files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.test_train import text_dir  # noqa: F401  (fixture)
from tests.tiny import tiny_yaml, write_config

HWNAS = [sys.executable, "-m", "hwnas.cli"]


def run(config: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([*HWNAS, "run", str(config), "--no-progress", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.mark.slow  # about a minute: the whole tiny pipeline, twice killed (the default run keeps the rerun tests)
def test_pipeline_survives_kills_and_skips_finished_stages(tmp_path, text_dir):  # noqa: F811
    config = tiny_yaml(tmp_path, text_dir)
    rd = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # kill it twice: once during training, once during a later stage
    for marker in ("[train] running", "[predictors] running"):
        proc = subprocess.Popen([*HWNAS, "run", str(config), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)
        seen = ""
        deadline = time.time() + 300
        while marker not in seen and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen += line
        time.sleep(1.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert marker in seen, seen
    ckpt = rd / "train" / "checkpoint.safetensors"
    before = ckpt.stat().st_mtime_ns
    done = run(config)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[train] complete, skipped" in done.stdout
    assert ckpt.stat().st_mtime_ns == before  # training was not redone
    for path in ["train/summary.json", "latency/cpu-torch.json", "predictors/report.json", "search/front.json",
                 "export/report.json", "export/model.onnx", "export/model.safetensors", "pipeline.json"]:
        assert (rd / path).exists(), path
    for path in rd.rglob("*.json"):
        json.loads(path.read_text())  # no corrupt (half-written) JSON anywhere
    assert not list(rd.rglob("*.tmp")), "temp files left behind"
    assert "Pareto front" in done.stdout and "sample:" in done.stdout
    again = run(config)
    assert again.returncode == 0
    for stage in ("train", "latency", "predictors", "search", "export"):
        assert f"[{stage}] complete, skipped" in again.stdout


def test_changed_search_section_reruns_search_and_export_only(tiny_run):
    config, rd = tiny_run  # a copy of a finished run
    cfg = yaml.safe_load(config.read_text())
    cfg["search"]["budget"] = 240
    config.write_text(yaml.safe_dump(cfg))
    out = run(config)
    assert out.returncode == 0, out.stderr[-2000:]
    for stage in ("train", "latency", "predictors"):
        assert f"[{stage}] complete, skipped" in out.stdout
    assert "[search] running" in out.stdout and "[export] running" in out.stdout
    assert 200 < json.loads((rd / "search/summary.json").read_text())["candidates"] <= 240  # distinct archs of 240


@pytest.mark.parametrize("bad", [{"search": {"engine": "magic"}}, {"trian": {}}])
def test_bad_config_fails_before_any_stage(tmp_path, text_dir, bad):  # noqa: F811
    config = tiny_yaml(tmp_path, text_dir)
    cfg = yaml.safe_load(config.read_text())
    for k, v in bad.items():
        cfg[k] = {**cfg.get(k, {}), **v} if k in cfg else v
    config.write_text(yaml.safe_dump(cfg))
    out = run(config)
    assert out.returncode == 2
    assert out.stderr.startswith("hwnas: error:") and "Traceback" not in out.stderr
    assert not (tmp_path / "run").exists()


def test_stages_rerun_only_for_what_they_read(tiny_run):
    """A reporting edit (W&B modes) re-runs nothing; a training edit changes what predictors, search and
    export read, never the latency tables (which time a randomly initialized supernet)."""
    from hwnas.config import load_config
    from hwnas.pipeline import _hash, stage_inputs

    config, rd = tiny_run
    before = load_config(config)
    cfg = yaml.safe_load(config.read_text())
    for section in ("train", "latency", "predictors", "search"):
        cfg[section]["wandb"] = "offline"
    config.write_text(yaml.safe_dump(cfg))
    out = run(config)
    assert out.returncode == 0, out.stderr[-2000:]
    for stage in ("train", "latency", "predictors", "search", "export"):
        assert f"[{stage}] complete, skipped" in out.stdout
    cfg["train"]["steps"] += 2
    after = load_config(write_config(rd.parent / "steps.yaml", cfg))
    changed = {s for s in ("train", "latency", "predictors", "search", "export")
               if _hash(stage_inputs(before, s)) != _hash(stage_inputs(after, s))}
    assert changed == {"train", "predictors", "search", "export"}


def test_overrides_rerun_what_they_change_and_are_recorded_in_the_run_dir(tiny_run):
    config, rd = tiny_run
    out = run(config, "--set", "search.budget=160", "--set", "export.sample_tokens=4")
    assert out.returncode == 0, out.stderr[-2000:]
    for stage in ("train", "latency", "predictors"):
        assert f"[{stage}] complete, skipped" in out.stdout
    state = json.loads((rd / "pipeline.json").read_text())["stages"]
    assert state["search"]["overrides"] == state["export"]["overrides"] == ["search.budget=160", "export.sample_tokens=4"]
    assert state["search"]["config_file"] == str(config) and state["train"]["overrides"] == []
    resolved = (rd / "config.yaml").read_text()
    assert resolved.splitlines()[:3] == [f"# resolved by hwnas from {config}", "#   --set search.budget=160",
                                         "#   --set export.sample_tokens=4"]
    doc = yaml.safe_load(resolved)
    assert doc["search"]["budget"] == 160 and doc["export"]["sample_tokens"] == 4 and doc["predictors"]["cv_folds"] == 3
    summary = json.loads((rd / "search/summary.json").read_text())  # the budget caps the candidates (pymoo drops repeats)
    assert summary["algorithm"] == "nsga2" and 120 <= summary["candidates"] <= 160


def test_stages_recorded_before_a_config_field_existed_are_still_done(tiny_run):
    """A pipeline.json an older hwnas wrote: each stage's hash taken without the fields added since
    (`FIELDS_ADDED`), and no recorded config. Every stage is still complete; a changed key then re-runs
    the stages that read it, and the log names the key with its old and new value."""
    from hwnas.config import load_config
    from hwnas.core.rundir import FIELDS_ADDED
    from hwnas.pipeline import _hash, _without, stage_inputs

    config, rd = tiny_run
    cfg = load_config(config)
    state = json.loads((rd / "pipeline.json").read_text())
    assert state["stages"]["search"]["inputs"] == stage_inputs(cfg, "search")  # what a re-run compares against
    for stage, entry in state["stages"].items():
        old = stage_inputs(cfg, stage)
        for key in FIELDS_ADDED:
            if key.split(".")[0] in old:
                old = _without(old, key)
        assert old != stage_inputs(cfg, stage)  # every stage reads the space, so each lost a field
        entry["config"] = _hash(old)
        del entry["inputs"]
    (rd / "pipeline.json").write_text(json.dumps(state))
    out = run(config)
    assert out.returncode == 0, out.stderr[-2000:]
    for stage in ("train", "latency", "predictors", "search", "export"):
        assert f"[{stage}] complete, skipped" in out.stdout
    out = run(config, "--set", "search.budget=150")
    assert "[search] running (its config changed since it ran)" in out.stdout, out.stdout  # no recorded config to name
    assert "[export] running (it reads the outputs of search, made again in this run)" in out.stdout
    out = run(config, "--set", "search.budget=160")  # recorded by this hwnas: the key is named
    assert "[predictors] complete, skipped" in out.stdout
    assert "[search] running (search.budget: 150 when it ran, 160 now)" in out.stdout, out.stdout


def test_an_added_field_away_from_its_old_value_reruns_the_stages_that_read_it(tiny_run):
    from hwnas.config import load_config
    from hwnas.pipeline import Pipeline, _hash, _without, as_recorded, config_change, stage_inputs

    config, rd = tiny_run
    before = stage_inputs(load_config(config), "latency")
    assert len(list(as_recorded(before))) == 2 ** 4  # positions, workloads, decode_context, n_user_view at their old values
    decode = load_config(config, ["latency.workloads=[prefill, decode]"])
    inputs = stage_inputs(decode, "latency")
    assert _hash(_without(_without(before, "latency.workloads"), "search_space.positions")) not in {
        _hash(doc) for doc in as_recorded(inputs)}
    assert config_change(_without(before, "latency.workloads"), inputs) == \
        "latency.workloads: ['prefill'] when it ran, ['prefill', 'decode'] now"
    pipeline = Pipeline(decode, log=lambda _: None)
    latency = next(s for s in pipeline.stages() if s.name == "latency")
    assert pipeline.why_run(latency, pipeline.state(), set()).startswith("latency.workloads: ['prefill'] when it ran")
    state = pipeline.state()
    state["stages"]["latency"] |= {"config": ["a list"], "inputs": "a string"}  # a damaged entry: runs again, no traceback
    assert pipeline.why_run(latency, state, set()) == "its config changed since it ran"
    state["stages"]["latency"] |= {"inputs": {"latency": 3}}
    assert pipeline.why_run(latency, state, set()).startswith("latency: 3 when it ran, {")


def test_a_dry_run_says_what_would_run_and_why_and_writes_nothing(tiny_run):
    from tests.tiny import digest

    config, rd = tiny_run
    before = digest(rd)
    out = run(config, "--dry-run", "--set", "predictors.cv_folds=4")
    assert out.returncode == 0, out.stderr[-2000:]
    made_again = "(it reads the outputs of {}, made again in this run)"
    assert out.stdout.splitlines() == [
        "[train] complete, would be skipped", "[latency] complete, would be skipped",
        "[predictors] would run (predictors.cv_folds: 3 when it ran, 4 now)",
        f"[search] would run {made_again.format('predictors')}", f"[export] would run {made_again.format('search')}"]
    assert digest(rd) == before
    (rd / "search/front.json").unlink()  # outputs no longer intact
    out = run(config, "--dry-run")
    assert out.stdout.splitlines()[3:] == [
        f"[search] would run (it finished before, but its outputs are not intact: {rd / 'search/front.json'}: missing "
        f"(listed in {rd / 'search/manifest.json'}); run `hwnas search CONFIG` to write it again)",
        f"[export] would run {made_again.format('search')}"]
    (rd / "pipeline.json").write_text("{")  # an unreadable record is left as it is
    before = digest(rd)
    out = run(config, "--dry-run")
    assert out.returncode == 0 and "unreadable; a run would keep it as pipeline.json.damaged" in out.stdout
    assert all(line.endswith("would run (not run before)") for line in out.stdout.splitlines()[1:]), out.stdout
    assert digest(rd) == before and not (rd / "pipeline.json.damaged").exists()
