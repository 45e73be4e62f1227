"""The `hwnas` command line: `hwnas space`, help, and one-line errors with exit status 2."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import yaml

from hwnas.cli import main
from hwnas.core.errors import ConfigError
from tests.conftest import QUICKSTART, QUICKSTART_SIZE, REPO, VENV_BIN

HWNAS = str(VENV_BIN / "hwnas")
SIZE_TEXT = f"{QUICKSTART_SIZE:,}"


def run_hwnas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HWNAS, *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def sample_rows(out: str) -> list[int]:
    return [int(m) for m in re.findall(r"^\S\s*sample (\d+)\s", out, flags=re.M)]


def test_space_command_via_console_script():
    proc = run_hwnas("space", "experiments/quickstart.yaml", "-n", "4")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    out = proc.stdout
    assert SIZE_TEXT == "1,589,326,982,208"
    assert f"archs: {SIZE_TEXT} " in out
    assert "genes: 27" in out
    assert re.search(r"^\S\s*smallest\s", out, flags=re.M)
    assert re.search(r"^\S\s*largest\s", out, flags=re.M)
    assert sample_rows(out) == [0, 1, 2, 3]
    assert "Traceback" not in out


def test_space_command_in_process(capsys, quickstart_space):
    assert main(["space", str(QUICKSTART), "--samples", "3", "--seed", "5"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert SIZE_TEXT in out
    assert sample_rows(out) == [0, 1, 2]
    # the rows show the space's smallest and largest arch
    assert quickstart_space.smallest().key() in out and quickstart_space.largest().key() in out
    small = re.search(r"^\S\s*smallest\s*\S\s*(\d+)\s*\S\s*(\d+)\s", out, flags=re.M)
    assert small and small.groups() == ("2", "64")
    large = re.search(r"^\S\s*largest\s*\S\s*(\d+)\s*\S\s*(\d+)\s", out, flags=re.M)
    assert large and large.groups() == ("4", "128")
    for dim in ("depth", "embed_dim", "n_heads", "mlp_ratio", "norm", "placement", "attention", "ffn", "weight_bits"):
        assert re.search(rf"^\S\s*{dim}\s", out, flags=re.M), dim
    assert "moe:4:1, moe:4:2" in out


def test_space_samples_follow_the_seed(capsys):
    outputs = {}
    for seed in ("1", "1", "2"):
        assert main(["space", str(QUICKSTART), "-n", "6", "--seed", seed]) == 0
        outputs.setdefault(seed, []).append(capsys.readouterr().out)
    assert outputs["1"][0] == outputs["1"][1]
    assert outputs["1"][0] != outputs["2"][0]
    # without --seed the config's seed (0) is used
    assert main(["space", str(QUICKSTART), "-n", "6"]) == 0
    default = capsys.readouterr().out
    assert main(["space", str(QUICKSTART), "-n", "6", "--seed", "0"]) == 0
    assert capsys.readouterr().out == default


def test_zero_samples(capsys):
    assert main(["space", str(QUICKSTART), "-n", "0"]) == 0
    out = capsys.readouterr().out
    assert sample_rows(out) == [] and "smallest" in out and "largest" in out


def test_bad_config_exits_2_with_one_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nsearch_space:\n  norm: {choices: [layernorm, batchnorm]}\n")
    proc = run_hwnas("space", str(path))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [
        f"hwnas: error: {path}: search_space.norm.choices[1]: Input should be 'layernorm', 'rmsnorm', 'dyt' or 'crmsnorm' "
        "(got 'batchnorm')"
    ]


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "config file not found"),
        (b"name: [oops\n", "not valid YAML at line 2: expected ',' or ']', but got '<stream end>'"),
        (b"name: q\x00\n", "not valid YAML: unacceptable character #x0000"),
        (b"name: \xff\n", "cannot read config file: 'utf-8' codec can't decode byte 0xff"),
        (b"- name: q\n", "expected a mapping at the top level, got list"),
        (b"name: q\nepochs: 3\n", "epochs: unknown key; allowed keys: name, run_dir, seed, search_space"),
        (b"name: q\nsearch_space: {ffn: {choices: [moe], experts: [4], top_k: [8]}}\n",
         "search_space.ffn.top_k: 8 exceeds every expert count [4]"),
    ],
    ids=["missing", "yaml", "nul", "not-utf8", "not-mapping", "unknown-key", "top-k"],
)
def test_user_errors_in_process(tmp_path, capsys, content, expected):
    path = tmp_path / "exp.yaml"
    if content is not None:
        path.write_bytes(content)
    assert main(["space", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith(f"hwnas: error: {path}: {expected}")
    assert "Traceback" not in err


def test_help():
    proc = run_hwnas("--help")
    assert proc.returncode == 0 and proc.stderr == ""
    assert "usage: hwnas" in proc.stdout
    assert "Hardware-aware neural architecture search" in proc.stdout
    assert re.search(r"^\s+space\s+summarize the search space", proc.stdout, flags=re.M)

    proc = run_hwnas("space", "--help")
    assert proc.returncode == 0 and proc.stderr == ""
    out = " ".join(proc.stdout.split())  # argparse wraps lines to the terminal width
    assert out.startswith("usage: hwnas space [-h] [-n SAMPLES] [--seed SEED] [--set KEY=VALUE] config")
    assert "Print the search space's size, its smallest and largest arch" in out
    assert "-n SAMPLES, --samples SAMPLES number of random archs to show (default 5, at most 10000)" in out
    assert "experiment YAML" in out


def test_version_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == "hwnas 0.1.0"
    for argv, line in (([], "hwnas: error: the following arguments are required: COMMAND (see `hwnas --help`)"),
                       (["frobnicate"], "hwnas: error: argument COMMAND: invalid choice: 'frobnicate'"),
                       (["space"], "hwnas space: error: the following arguments are required: config (see `hwnas space --help`)"),
                       (["space", str(QUICKSTART), "-n", "many"], "hwnas space: error: argument -n/--samples: expected an integer")):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(line), err  # the one line, no usage block above it


def test_set_overrides_a_value_and_bad_ones_are_one_line(tmp_path):
    from hwnas.config import load_config
    from hwnas.pipeline import _hash, stage_inputs
    from tests.tiny import assert_refused, hwnas, stdlib_text, tiny_yaml

    config = tiny_yaml(tmp_path, stdlib_text(tmp_path / "text"))
    shown = hwnas("config", str(config), "--set", "train.steps=600", "--set", "search.objectives=[loss, params]")
    assert shown.returncode == 0, shown.stderr
    resolved = yaml.safe_load(shown.stdout)
    assert shown.stdout.splitlines()[:3] == [f"# resolved by hwnas from {config}", "#   --set train.steps=600",
                                             "#   --set search.objectives=[loss, params]"]
    assert resolved["train"]["steps"] == 600 and resolved["search"]["objectives"] == ["loss", "params"]
    assert resolved["predictors"]["cv_folds"] == 3 and "risk" in resolved["search"]  # every default is shown
    assert_refused(hwnas("config", str(config), "--set", "train.stepz=1"), "train.stepz", "unknown key", "steps")
    assert_refused(hwnas("train", str(config), "--set", "train.steps=many"), "train.steps", "integer")
    assert_refused(hwnas("run", str(config), "--set", "train.steps"), "--set 'train.steps'", "KEY=VALUE")
    assert_refused(hwnas("latency", str(config), "--set", "seed.x=1"), "--set seed.x", "not a section")
    assert not (tmp_path / "run").exists()  # refused before anything was written
    schema = json.loads(hwnas("config", "--schema").stdout)
    assert {"train", "latency", "predictors", "search", "export"} <= set(schema["properties"])
    assert_refused(hwnas("config", str(config), "--schema"), "--schema", "no experiment YAML")  # not silently ignored
    assert_refused(hwnas("config", "--schema", "--set", "seed=1"), "--schema", "--set")
    base, more = load_config(config), load_config(config, ["search.budget=240"])
    assert [s for s in ("train", "latency", "predictors", "search", "export")
            if _hash(stage_inputs(base, s)) != _hash(stage_inputs(more, s))] == ["search", "export"]


def test_set_values_read_as_the_file_reads_them_and_export_set_needs_its_section(tmp_path):
    from hwnas.config import export_overrides, load_config
    from tests.tiny import assert_refused, hwnas, stdlib_text, tiny_yaml

    config = tiny_yaml(tmp_path, stdlib_text(tmp_path / "text"))
    assert load_config(config, ["train.lr=1e-3"]).train.lr == 1e-3  # a float, as `lr: 1e-3` in the file
    with pytest.raises(ConfigError, match="duplicate key 'choices'"):
        load_config(config, ["search_space.n_heads={choices: [1], choices: [2]}"])
    assert export_overrides(["export.eval_tokens=4096"]).eval_tokens == 4096
    # `hwnas export RUN --set ...` without --config: only export.* keys, checked, before the run is read
    assert_refused(hwnas("export", str(tmp_path / "none"), "--set", "foo.bar=1"), "--set foo", "only export.* keys")
    assert_refused(hwnas("export", str(tmp_path / "none"), "--set", "export.eval_tokens=abc"), "eval_tokens", "integer")


def test_wandb_online_without_credentials_is_refused_before_any_work(tmp_path):
    from tests.tiny import HWNAS, assert_refused, stdlib_text, tiny_yaml

    config = tiny_yaml(tmp_path, stdlib_text(tmp_path / "text"))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")} | {
        "HOME": str(home), "NETRC": str(home / "netrc"), "WANDB_CONFIG_DIR": str(home / "wandb"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*HWNAS, "train", str(config), "--wandb", "online"], capture_output=True, text=True, env=env,
                          stdin=subprocess.DEVNULL, timeout=300)
    assert_refused(proc, "train.wandb: online", "wandb login", "offline")
    assert not (tmp_path / "run").exists()  # refused before the corpus or the first checkpoint
