"""A run directory belongs to one experiment: every stage refuses, before it writes anything, a run
directory of another experiment (another name, search space or seed) or a folder that is not a
run directory, with one line saying what differs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from hwnas.config import load_config
from hwnas.core.rundir import RunDirError, claim_run_dir, stage_lock
from hwnas.latency.build import run_latency
from hwnas.search_space import SearchSpace
from hwnas.supernet.train import train
from tests.tiny import assert_refused, digest, hwnas, write_config


def other_config(config: Path, tmp_path: Path, **changes) -> Path:
    """A copy of `config` with top-level `changes` (nested dicts merged one level deep)."""
    cfg = yaml.safe_load(config.read_text())
    for key, value in changes.items():
        cfg[key] = cfg[key] | value if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    return write_config(tmp_path / "other.yaml", cfg)


def test_latency_with_another_experiments_config_keeps_the_table(tiny_run, tmp_path):
    """The reported data loss: `hwnas latency` with another experiment's config replaced the run's table."""
    config, run = tiny_run
    other = other_config(config, tmp_path, name="other", search_space={"embed_dim": [16, 48]})
    before = digest(run)
    assert_refused(hwnas("latency", str(other), "--no-progress"), f"{run}: belongs to experiment 'tiny'")
    assert digest(run) == before


CHANGES = {
    "name": ({"name": "other"}, "belongs to experiment 'tiny', not to this config's experiment 'other'"),
    "seed": ({"seed": 7}, "belongs to experiment 'tiny' with seed 0; this config has seed 7"),
    "depth": ({"search_space": {"depth": [1, 3]}},
              "belongs to experiment 'tiny' with another search space (search_space.depth[1]: 2 there, 3 in this config)"),
    "bits": ({"search_space": {"weight_bits": {"choices": [16, 8, 4]}}},
             "belongs to experiment 'tiny' with another search space (search_space.weight_bits.choices"),
}


@pytest.mark.parametrize("command, change", [(c, "name") for c in ("train", "latency", "predictors", "search", "run")]
                         + [("train", "seed"), ("search", "seed"), ("predictors", "depth"), ("run", "depth"), ("latency", "bits")])
def test_every_stage_refuses_another_experiments_run_dir(tiny_run, tmp_path, command, change):
    change, says = CHANGES[change]
    config, run = tiny_run
    other = other_config(config, tmp_path, **change)
    before = digest(run)
    assert_refused(hwnas(command, str(other), "--no-progress"), f"{run}: {says}", "set run_dir (or name) to a new folder")
    assert digest(run) == before


def test_export_with_another_experiments_config_is_refused(tiny_run, tmp_path):
    config, run = tiny_run
    other = other_config(config, tmp_path, name="other")
    before = digest(run)
    assert_refused(hwnas("export", str(run), "--config", str(other), "--force"), "belongs to experiment 'tiny'")
    assert digest(run) == before


def test_a_folder_that_is_not_a_run_is_left_alone(tiny_run, tmp_path):
    config, _ = tiny_run
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "cat.jpg").write_bytes(b"\xff\xd8 a cat")
    other = other_config(config, tmp_path, run_dir=str(mine))
    for command in ("train", "run"):
        assert_refused(hwnas(command, str(other), "--no-progress"), f"{mine}: holds files but no run.json")
    assert sorted(p.name for p in mine.iterdir()) == ["cat.jpg"]


def test_a_run_dir_that_is_a_file_is_one_line(tiny_run, tmp_path):
    config, _ = tiny_run
    (tmp_path / "afile").write_text("mine")
    other = other_config(config, tmp_path, run_dir=str(tmp_path / "afile"))
    assert_refused(hwnas("train", str(other), "--no-progress"), f"run_dir {tmp_path / 'afile'}: exists and is not a folder")
    with pytest.raises(RunDirError, match="run_dir exists and is not a folder"):  # a library call
        claim_run_dir(tmp_path / "afile", {})
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_damaged_run_record_is_one_line(tiny_run):
    config, run = tiny_run
    (run / "run.json").write_text('{"format": "hwnas-run-1", "na')
    before = digest(run)
    assert_refused(hwnas("search", str(config), "--no-progress"), f"{run / 'run.json'}: the run record is not valid JSON")
    assert digest(run) == before


def test_the_first_stage_records_the_owner_and_library_calls_check_the_space(tiny_run, tmp_path):
    config, run = tiny_run
    cfg = load_config(config)
    record = json.loads((run / "run.json").read_text())
    assert record["name"] == "tiny" and record["seed"] == 0 and record["search_space"] == cfg.search_space.model_dump(mode="json")
    other_space = cfg.search_space.model_copy(update={"embed_dim": [16, 48]})
    before = digest(run)
    with pytest.raises(RunDirError, match=r"another search space \(search_space.embed_dim\[1\]: 32 there, 48"):
        run_latency(SearchSpace(other_space), cfg.latency, run, progress=False)
    with pytest.raises(RunDirError, match="seed 0; this config has seed 3"):
        train(cfg.search_space, cfg.train, run, seed=3, progress=False)
    assert digest(run) == before
    # a library call that knows no name claims a new folder; the first call that knows the name records it
    fresh = tmp_path / "fresh"
    claim_run_dir(fresh, cfg.search_space.model_dump(mode="json"))
    assert json.loads((fresh / "run.json").read_text())["name"] is None
    claim_run_dir(fresh, cfg.search_space.model_dump(mode="json"), 0, "tiny")
    assert json.loads((fresh / "run.json").read_text())["name"] == "tiny"
    with pytest.raises(RunDirError, match="not to this config's experiment 'other'"):
        claim_run_dir(fresh, cfg.search_space.model_dump(mode="json"), 0, "other")


@pytest.mark.parametrize("command", ["train", "latency", "predictors", "search"])
def test_a_stage_running_on_the_run_dir_keeps_a_second_one_out(tiny_run, command):
    """Two commands running one stage on one run directory at once would interleave their writes;
    the second is refused, naming the first (here this test process holds the lock)."""
    config, run = tiny_run
    with stage_lock(run, command):
        before = digest(run)
        line = assert_refused(hwnas(command, str(config), "--no-progress"),
                              f"{run}: another `hwnas {command}` (pid {os.getpid()}) is writing this run directory now")
        assert digest(run) == before, line
    assert not (run / f".{command}.lock").exists()
    with stage_lock(run, "export"):
        assert_refused(hwnas("export", str(run), "--force"), f"another `hwnas export` (pid {os.getpid()})")


def test_a_lock_left_by_a_killed_command_does_not_block(tiny_run):
    config, run = tiny_run
    (run / ".search.lock").write_text("pid 999999")  # the file stays when its holder is killed; the flock does not
    proc = hwnas("search", str(config), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not (run / ".search.lock").exists()


def test_a_run_recorded_before_a_space_field_existed_still_belongs_to_its_experiment(tiny_run, tmp_path):
    """A run.json an older hwnas wrote lacks `search_space.positions` (added later, learned before):
    the same config still owns it, and a config that changes the new field is refused by name."""
    from hwnas.core.rundir import recorded_space

    config, run = tiny_run
    record = json.loads((run / "run.json").read_text())
    del record["search_space"]["positions"]
    (run / "run.json").write_text(json.dumps(record))
    proc = hwnas("search", str(config), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rope = other_config(config, tmp_path, search_space={"positions": "rope"})
    assert_refused(hwnas("latency", str(rope), "--no-progress"),
                   f"{run}: belongs to experiment 'tiny' with another search space (search_space.positions: 'learned' there, "
                   "'rope' in this config)")
    assert recorded_space({"depth": [2]}) == {"positions": "learned", "depth": [2]}
    assert recorded_space({"positions": "none"})["positions"] == "none" and recorded_space(None) is None
