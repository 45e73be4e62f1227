"""Bad values, as classes: every integer field follows one rule and has bounds, every float is
finite, seeds are bounded, duplicate YAML keys and unusable storage URLs are refused when the config
loads, a supernet that cannot fit is refused before it is allocated, and the command line checks
its numbers and the folders it will write before any work.

Every case asserts exit status 2 (or the `ConfigError` in process), one line naming the field, flag
or file, and, for a command on a run directory, that no file of the run changed.
"""

from __future__ import annotations

import io
import math
import subprocess
import types
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Annotated, Literal, Union, get_args, get_origin

import pytest
import yaml
from pydantic import BaseModel

from hwnas.cli import main
from hwnas.config import ExperimentConfig, load_config, parse_config
from hwnas.core.config import MAX_SEED
from hwnas.core.errors import ConfigError
from hwnas.search_space import SearchSpaceConfig
from tests.tiny import assert_refused, digest, hwnas, tiny_config, write_config

REPO = Path(__file__).resolve().parents[1]
HUGE = 10**16  # beyond every bound of a size or count (the largest: max_corpus_bytes, 2**50)
DIGITS_5000 = "9" * 5000  # more digits than Python's int() converts


def cli(*args: str) -> subprocess.CompletedProcess:
    """`hwnas ARGS...` in this process, as `hwnas()` runs it in a subprocess but without a second
    start of Python and torch: for the many cases refused before any work (each test also runs
    some through the real subprocess)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse
            code = e.code
    return subprocess.CompletedProcess(["hwnas", *args], code, out.getvalue(), err.getvalue())


# --- every field of the config, by kind ---------------------------------------------------------------
def _kind(annotation) -> str:
    if get_origin(annotation) is Annotated:
        return _kind(get_args(annotation)[0])
    if get_origin(annotation) is list:
        return f"list[{_kind(get_args(annotation)[0])}]"
    if get_origin(annotation) is Literal:
        return "literal"
    return getattr(annotation, "__name__", str(annotation))


def leaf_fields(model: type[BaseModel] = ExperimentConfig, prefix: str = ""):
    """(dotted path, kind, optional) of every leaf field of the config, nested sections walked."""
    for name, info in model.model_fields.items():
        annotation, optional = info.annotation, False
        if get_origin(annotation) in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            optional = len(args) < len(get_args(annotation))
            annotation = args[0] if len(args) == 1 else annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from leaf_fields(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", _kind(annotation), optional


FIELDS = list(leaf_fields())
INT_FIELDS = [(p, o) for p, k, o in FIELDS if k == "int"]
INT_LIST_FIELDS = [p for p, k, _ in FIELDS if k == "list[int]"]
FLOAT_FIELDS = [(p, o) for p, k, o in FIELDS if k == "float"]
FLOAT_LIST_FIELDS = [p for p, k, _ in FIELDS if k == "list[float]"]
SEED_FIELDS = [p for p, _, _ in FIELDS if p.rsplit(".", 1)[-1] == "seed"]


def test_the_walk_finds_every_kind():
    # a guard: the parametrized cases below really cover many fields of each kind
    assert len(INT_FIELDS) >= 50 and len(INT_LIST_FIELDS) >= 7 and len(FLOAT_FIELDS) >= 15
    assert {"search_space.weight_bits.choices", "search_space.depth", "search_space.ffn.top_k"} <= set(INT_LIST_FIELDS)
    assert {"seed", "latency.seed", "predictors.seed", "export.seed"} <= set(SEED_FIELDS)
    assert {"search_space.mlp_ratio.choices", "search.ref_point"} <= set(FLOAT_LIST_FIELDS)


def with_value(path: str, value, base: dict | None = None) -> dict:
    """The tiny config with the field at dotted `path` set to `value`."""
    data = base or tiny_config(Path("/tmp/hwnas-never-written"), Path("/tmp/hwnas-no-corpus"))
    node = data
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return data


def refused_in_process(data: dict, field: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    text = str(info.value)
    assert "\n" not in text and len(text) < 700, text
    assert text.startswith(f"config: {field}"), text
    return text


def _id(value) -> str:
    """A test id for a bad value (repr() refuses an int of 5000 digits)."""
    if isinstance(value, int) and abs(value).bit_length() > 100:
        return "huge-int"
    if isinstance(value, list) and value and isinstance(value[0], int) and abs(value[0]).bit_length() > 100:
        return "[huge-int]"
    return repr(value)[:20]


INT_BAD = [2.0, 12.0, True, False, "2", [], {}, -1, HUGE, 2**64, 10**5000]


@pytest.mark.parametrize("value", INT_BAD, ids=_id)
@pytest.mark.parametrize("path, optional", INT_FIELDS, ids=[p for p, _ in INT_FIELDS])
def test_every_integer_field_takes_integers_within_bounds(path, optional, value):
    """One rule for integers: no float (even 12.0), no bool, no string; and every integer field
    has a lower and an upper bound (a negative or a 10**16 is refused, naming the field; a seed
    may be as large as 2**63-1, its own test checks it)."""
    if value is HUGE and path in SEED_FIELDS:
        value = 2**63
    text = refused_in_process(with_value(path, value), path)
    if value is HUGE or value == 2**64:
        assert "less than or equal to" in text or "exceeds" in text, text


@pytest.mark.parametrize("path", [p for p, o in INT_FIELDS if not o])
def test_required_integers_refuse_null(path):
    refused_in_process(with_value(path, None), path)


def _valid_element(path: str) -> int:
    value = SearchSpaceConfig().model_dump()
    for key in path.removeprefix("search_space.").split("."):
        value = value[key]
    return value[0]


@pytest.mark.parametrize("value", [[2.0], [8.0], [True], ["8"], [None], [-1], [0], [HUGE], [10**5000], [], "8", 8, None],
                         ids=_id)
@pytest.mark.parametrize("path", INT_LIST_FIELDS)
def test_every_integer_list_follows_the_same_rule(path, value):
    """`weight_bits: {choices: [8.0]}` is refused like `steps: 12.0`, and so is every list of integers."""
    refused_in_process(with_value(path, value), path)


@pytest.mark.parametrize("path", INT_LIST_FIELDS)
def test_duplicate_choices_are_refused(path):
    v = _valid_element(path)
    assert "duplicate" in refused_in_process(with_value(path, [v, v]), path)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, "1.0", True, [], None], ids=repr)
@pytest.mark.parametrize("path, optional", FLOAT_FIELDS, ids=[p for p, _ in FLOAT_FIELDS])
def test_every_float_field_is_finite(path, optional, value):
    if value is None and optional:
        return
    refused_in_process(with_value(path, value), path)


@pytest.mark.parametrize("value", [[math.inf], [math.nan], ["2"], [True], [1e300]], ids=repr)
@pytest.mark.parametrize("path", FLOAT_LIST_FIELDS)
def test_float_lists_are_finite(path, value):
    if path == "search.ref_point" and value == [1e300]:
        value = [1e300, math.inf]
    refused_in_process(with_value(path, value), path)


@pytest.mark.parametrize("value", [-1, -(2**63), MAX_SEED + 1, 2**64, 10**30, 1.0, True, "0"],
                         ids=_id)
@pytest.mark.parametrize("path", SEED_FIELDS)
def test_every_seed_is_bounded(path, value):
    refused_in_process(with_value(path, value), path)


@pytest.mark.parametrize("path", SEED_FIELDS)
def test_seeds_at_the_bounds_load(path):
    assert MAX_SEED == 2**63 - 1
    for value in (0, 2**32, MAX_SEED):
        assert parse_config(with_value(path, value)) is not None


@pytest.mark.slow
def test_the_largest_seeds_run_every_stage(tmp_path):
    """Seeds up to 2**63-1 are valid: every stage runs with them (the 32-bit libraries, pymoo,
    Optuna's samplers and scikit-learn, get seeds derived from them)."""
    from tests.tiny import stdlib_text

    cfg = tiny_config(tmp_path / "run", stdlib_text(tmp_path / "text"))
    cfg["seed"] = MAX_SEED
    for section in ("latency", "predictors", "export"):
        cfg[section]["seed"] = MAX_SEED - 1
    config = write_config(tmp_path / "big.yaml", cfg)
    proc = hwnas("run", str(config), "--no-progress")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    cfg["search"] |= {"engine": "optuna", "budget": 60, "population": 10, "validate_top": 0}
    proc = hwnas("search", str(write_config(config, cfg)), "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_the_bound_of_a_size_is_stated():
    text = refused_in_process(with_value("search_space.block_size", 10**9), "search_space.block_size")
    assert "less than or equal to 1048576 (got 1000000000)" in text
    text = refused_in_process(with_value("search_space.embed_dim", [16, 10**9]), "search_space.embed_dim")
    assert "at most 1048576, got 1000000000" in text
    assert "1..100000000" in ExperimentConfig.model_fields["train"].annotation.model_fields["steps"].description


def test_a_huge_value_is_shown_short():
    text = refused_in_process(with_value("seed", 10**5000), "seed")
    assert "an integer of about 5001 digits" in text
    text = refused_in_process(with_value("name", "x" * 10**5), "name")
    assert "at most 100 characters" in text and "(100002 characters)" in text


@pytest.mark.parametrize("value", ["", "   ", "x" * 1001, 3, None, ["min loss"]], ids=_id)
def test_export_pick_is_a_short_text(value):
    refused_in_process(with_value("export.pick", value), "export.pick")


@pytest.mark.parametrize("bound", ["1e999", "-1e999", "inf", "nan"])
def test_constraint_bounds_are_finite(bound):
    text = refused_in_process(with_value("search.constraints", [f"params <= {bound}"]), "search.constraints")
    assert "finite" in text or "expected" in text, text


@pytest.mark.parametrize("section", ["train", "latency", "predictors"])
def test_seq_len_beyond_the_block_size_is_refused(section):
    text = refused_in_process(with_value(f"{section}.seq_len", 64), f"{section}.seq_len")
    assert text.endswith("64 exceeds search_space.block_size 32")


# --- storage URLs -------------------------------------------------------------------------------------
def _storage_cases(tmp_path: Path) -> list[tuple[str, str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    return [
        ("notadb://x", "no SQLAlchemy dialect or driver 'notadb'"),
        ("postgresql+nodriver://u@localhost/db", "no SQLAlchemy dialect or driver 'postgresql+nodriver'"),
        ("sqlite+nodriver:///x.db", "no SQLAlchemy dialect or driver 'sqlite+nodriver'"),
        ("://x", "not a storage URL"),
        ("x", "not a storage URL"),
        ("", "not a storage URL"),
        ("postgresql://u@localhost:notaport/db", "not a storage URL"),
        ("journal:", "needs a file path"),
        ("journal:   ", "needs a file path"),
        (f"journal:{tmp_path}", "is a folder"),
        (f"journal:{a_file}/study.log", "is a file, not a folder"),
        (f"journal:{a_file}/deeper/study.log", "is a file, not a folder"),
        ("journal:/proc/no-such/study.log", "cannot write in /proc"),
        (f"sqlite:///{a_file}/study.db", "is a file, not a folder"),
        (f"sqlite:///{tmp_path}", "is a folder"),
        ("sqlite:////proc/study.db", "cannot write in /proc"),
        (f"journal:{tmp_path}/{'x' * 300}/s.log", "cannot be used as a path"),
    ]


def test_storage_urls_that_cannot_work_are_refused_at_load(tmp_path):
    for url, needle in _storage_cases(tmp_path):
        text = refused_in_process(with_value("search.storage", url), "search.storage")
        assert needle in text, (url, text)
    assert not (tmp_path / "a-file").is_dir() and sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_storage_urls_that_work_load(tmp_path):
    for url in (f"sqlite:///{tmp_path}/new/study.db", f"journal:{tmp_path}/new/study.log", "sqlite://"):
        assert parse_config(with_value("search.storage", url)).search.storage == url
    assert list(tmp_path.iterdir()) == []  # checking created nothing


def test_workers_need_a_shared_study():
    refused_in_process(with_value("search.workers", 2), "search.workers")  # the tiny engine is pymoo
    data = with_value("search.engine", "optuna")
    data["search"]["algorithm"] = "nsga2"
    data["search"]["storage"] = "sqlite://"
    assert "in-memory" in refused_in_process(with_value("search.workers", 2, data), "search.workers")


# --- YAML: duplicate keys, values Python cannot hold --------------------------------------------------
DUPLICATES = [
    ("name: t\nseed: 1\nseed: 2\n", "seed", 3, 2),
    ("name: t\ntrain:\n  steps: 3\n  lr: 0.1\n  steps: 4\n", "steps", 5, 3),
    ("name: t\nsearch_space:\n  ffn:\n    choices: [mlp]\n    experts: [2]\n    choices: [moe]\n", "choices", 6, 4),
    ("name: t\nsearch_space:\n  ffn: {choices: [mlp], choices: [moe]}\n", "choices", 3, 3),
    ("name: t\nsearch: {linas: {initial: 3, initial: 4}}\n", "initial", 2, 2),
    ("name: t\nname: u\n", "name", 2, 1),
    ("name: t\nx: [{a: 1, a: 2}]\n", "a", 2, 2),
    ("name: t\n1: a\n1: b\n", 1, 3, 2),
]


@pytest.mark.parametrize("text, key, line, first", DUPLICATES, ids=[f"{d[1]}-{d[2]}" for d in DUPLICATES])
def test_duplicate_keys_are_refused_at_every_level(tmp_path, text, key, line, first):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: not valid YAML at line {line}: duplicate key {key!r} (first given at line {first})"


def test_a_merge_key_may_still_be_overridden(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: t\ntrain: {<<: {steps: 30, warmup_steps: 2}, steps: 50}\n")
    assert load_config(path).train.steps == 50


def _alias_bomb(levels: int, width: int = 10) -> str:
    """Each level a list of `width` aliases of the one below: width**levels values once expanded."""
    lines = ['a0: &a0 "x"']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return "\n".join(lines) + f"\nname: t\nseed: *a{levels}\n"


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(9))  # a billion values: validating them would never end
    with pytest.raises(ConfigError, match=r"not valid YAML at line 1: it expands to [\d,]{13} values through its aliases "
                                          r"\(at most 100,000\)"):
        load_config(path)
    path.write_text(_alias_bomb(2) + "train: &t {steps: 30, warmup_steps: 2}\n")  # a few aliases are fine
    with pytest.raises(ConfigError, match="a0: unknown key"):  # past the alias check, to the fields
        load_config(path)
    path.write_text("name: t\nx: &a [1, *a]\n")
    with pytest.raises(ConfigError, match="an alias that contains itself"):
        load_config(path)


@pytest.mark.parametrize("text, message", [
    (f"name: t\nseed: {DIGITS_5000}\n", "not valid YAML at line 2: an integer of 5000 characters is too long"),
    ("name: t\nx: " + "[" * 5000 + "]" * 5000 + "\n", "not valid YAML: nested too deeply"),
])
def test_yaml_values_python_cannot_hold(tmp_path, text, message):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {message}"


# --- the supernet must fit in memory --------------------------------------------------------------------
def test_supernet_params_match_the_module():
    import torch

    from hwnas.supernet.memory import supernet_params
    from hwnas.supernet.model import Supernet

    for cfg in (SearchSpaceConfig(), SearchSpaceConfig(weight_sharing="shared"),
                SearchSpaceConfig(depth=[1, 5], embed_dim=[8, 24], n_heads={"choices": [3]}, mlp_ratio={"choices": [1.5, 3.0]},
                                  attention={"choices": ["linear"]}, ffn={"choices": ["moe", "mlp"], "experts": [2, 4], "top_k": [1]})):
        with torch.device("meta"):
            real = sum(p.numel() for p in Supernet(cfg).parameters())
        assert supernet_params(cfg) == real


@pytest.mark.parametrize("job", ["train", "evaluate", "latency"])
def test_a_supernet_beyond_memory_is_refused_in_one_line(job):
    from hwnas.supernet.memory import TooLargeError, check_fits

    big = SearchSpaceConfig(depth=[1024], embed_dim=[2**17])
    with pytest.raises(TooLargeError) as info:
        check_fits(big, job, 1, 8, "x.batch_size")
    text = str(info.value)
    assert text.startswith("search_space: the supernet has ") and "embed_dim up to 131072, depth up to 1024" in text
    assert "but this machine has" in text and "\n" not in text
    check_fits(SearchSpaceConfig(), job, 16, 128, "x.batch_size")  # the quickstart space fits anywhere
    with pytest.raises(TooLargeError, match=r"^x\.batch_size: .* a batch of 65536 sequences of 1048576 tokens"):
        check_fits(SearchSpaceConfig(block_size=2**20), job, 2**16, 2**20, "x.batch_size")


BIG_SPACE = {"embed_dim": [2**17], "depth": [1024], "head_dim": 8}


@pytest.mark.parametrize("command, section, changes", [
    ("train", "search_space", BIG_SPACE),
    ("latency", "search_space", BIG_SPACE),
    ("predictors", "search_space", BIG_SPACE),
    ("run", "search_space", BIG_SPACE),
    ("train", "train.batch_size", {"block_size": 2**20, "vocab_size": 2**20}),
])
def test_stages_refuse_a_supernet_that_cannot_fit(tmp_path, command, section, changes):
    cfg = tiny_config(tmp_path / "run", tmp_path / "no-corpus")
    cfg["search_space"].update(changes)
    if section == "train.batch_size":
        cfg["train"]["batch_size"] = 2**16
        for name in ("train", "predictors", "export"):  # at least one validation window of the block
            cfg[name]["eval_tokens"] = 2**20
    config = write_config(tmp_path / "big.yaml", cfg)
    assert_refused(hwnas(command, str(config), "--no-progress"), f"{section}: ", "but this machine has")
    assert not (tmp_path / "run").exists() or digest(tmp_path / "run") == {}


# --- bad values on a finished run: refused at load, nothing changes --------------------------------------
def _edited(config: Path, path: str, value) -> Path:
    data = yaml.safe_load(config.read_text())
    return write_config(config.with_name(f"bad-{path}.yaml"), with_value(path, value, data))


RUN_CASES = [
    ("seed", -1), ("seed", 2**63), ("latency.seed", -5), ("predictors.seed", 2**64), ("export.seed", 10**30),
    ("train.steps", 10**9), ("train.steps", 12.0), ("train.batch_size", 10**9), ("search.budget", 10**9),
    ("search_space.block_size", 10**9), ("search_space.vocab_size", 10**9), ("search_space.embed_dim", [10**9]),
    ("search_space.weight_bits", {"choices": [8.0]}), ("search_space.ffn", {"choices": ["moe"], "experts": [True]}),
    ("search.storage", "notadb://x"), ("search.storage", "postgresql+nodriver://u@localhost/db"),
    ("train.lr", math.inf), ("predictors.n_fit", 10**9), ("latency.max_repeats", 10**9),
]


@pytest.mark.parametrize("command", ["train", "latency", "predictors", "search", "run"])
def test_a_finished_run_is_untouched_by_a_bad_value(tiny_run, command):
    config, run = tiny_run
    before = digest(run)
    cases = RUN_CASES[["train", "latency", "predictors", "search", "run"].index(command) % 3::3]
    for i, (path, value) in enumerate(RUN_CASES if command == "search" else cases):
        field = path if path != "search_space.weight_bits" else "search_space.weight_bits.choices"
        field = field if path != "search_space.ffn" else "search_space.ffn.experts"
        run_cli = hwnas if i == 0 else cli
        assert_refused(run_cli(command, str(_edited(config, path, value)), "--no-progress"), f": {field}")
    text = config.read_text().replace("seed: 0", "seed: 0\nseed: 1", 1)
    duplicate = config.with_name("duplicate.yaml")
    duplicate.write_text(text)
    assert_refused(hwnas(command, str(duplicate), "--no-progress"), "duplicate key 'seed'")
    assert digest(run) == before


def test_an_unwritable_run_dir_is_refused_before_any_work(tmp_path):
    a_file = tmp_path / "a-file"
    a_file.write_text("keep\n")
    for run_dir, needle in ((a_file, "exists and is not a folder"), (a_file / "run", "is a file, not a folder"),
                            (Path("/proc/no-such/run"), "cannot write in /proc")):
        cfg = tiny_config(run_dir, tmp_path / "no-corpus")
        config = write_config(tmp_path / "c.yaml", cfg)
        for command in ("train", "latency", "predictors", "search", "run"):
            assert_refused(cli(command, str(config), "--no-progress"), "run_dir", needle)
    assert_refused(hwnas("train", str(config)), "run_dir", "cannot write in /proc")
    assert a_file.read_text() == "keep\n" and sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "c.yaml"]


# --- the command line ---------------------------------------------------------------------------------
def assert_usage_error(proc, *needles: str) -> str:
    """argparse's refusal: exit 2, and stderr the one `error: argument ...` line holding every needle and
    pointing at `--help` (no usage block)."""
    assert proc.returncode == 2, proc.stderr[-2000:]
    (line,) = proc.stderr.splitlines()
    assert ": error: argument" in line and "--help`)" in line, line
    for needle in needles:
        assert needle in line, (needle, line)
    assert len(line) < 300
    return line


@pytest.mark.parametrize("args, flag", [
    (["-n", "-1"], "-n/--samples"), (["-n", "100001"], "-n/--samples"), (["-n", "1.5"], "-n/--samples"),
    (["-n", "x"], "-n/--samples"), (["-n", DIGITS_5000], "-n/--samples"), (["--samples", "true"], "-n/--samples"),
    (["--seed", "-1"], "--seed"), (["--seed", str(2**63)], "--seed"), (["--seed", str(MAX_SEED + 1)], "--seed"),
    (["--seed", "1e3"], "--seed"), (["--seed", DIGITS_5000], "--seed"),
])
def test_space_arguments_are_bounded(args, flag):
    line = assert_usage_error(cli("space", str(REPO / "experiments" / "quickstart.yaml"), *args), flag)
    assert "5000 characters" in line or DIGITS_5000 not in line


@pytest.mark.parametrize("workers", ["0", "-1", "-100", "1025", "1.0", "two", "", DIGITS_5000])
def test_bad_worker_counts_are_usage_errors(tmp_path, workers):
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run", tmp_path / "text"))
    assert_usage_error(cli("search", str(config), "--workers", workers), "--workers", "1..1024")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("steps", ["-1", str(10**8 + 1), "1e3", "x", DIGITS_5000])
def test_bad_finetune_steps_are_usage_errors(tmp_path, steps):
    assert_usage_error(cli("export", str(tmp_path), "--finetune-steps", steps), "--finetune-steps", "0..100000000")


@pytest.mark.parametrize("pick", ["", "   ", "x" * 1001, DIGITS_5000])
def test_bad_picks_are_usage_errors(tmp_path, pick):
    assert_usage_error(cli("export", str(tmp_path), "--pick", pick), "--pick", "1..1000 characters")


def test_usage_errors_in_a_real_shell(tmp_path):
    config = write_config(tmp_path / "c.yaml", tiny_config(tmp_path / "run", tmp_path / "text"))
    assert_usage_error(hwnas("space", str(config), "-n", "-1"), "-n/--samples", "0..10000")
    assert_usage_error(hwnas("search", str(config), "--workers", "0"), "--workers", "1..1024")
    assert_usage_error(hwnas("export", str(tmp_path), "--pick", DIGITS_5000), "--pick", "(5000 characters)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_cli_values_found_after_parsing_are_one_line(tiny_run, tmp_path):
    config, run = tiny_run
    before = digest(run)
    # --workers with an engine that cannot share a study (the tiny config searches with pymoo)
    assert_refused(hwnas("search", str(config), "--workers", "2"), "--workers: 2 workers need engine 'optuna'")
    # picks: an index of hundreds of digits, negative or past the front, a rule with a huge or odd bound
    for pick, needle in (("9" * 900, "with an index of 900 digits"), ("-" + "9" * 900, "index of 900 digits"),
                         ("-1", "no front member #-1"), ("100000", "no front member #100000"),
                         ("min loss where loss <= -1e999", "loss <= -1e999': the bound must be a finite number"),
                         ("max " + "y" * 900, "unknown objective"), ("q" * 999, "expected a front index")):
        run_cli = hwnas if pick == "-1" else cli
        line = assert_refused(run_cli("export", str(run), "--pick", pick, "--out", str(tmp_path / "out")), "pick ", needle)
        assert len(line) < 400
    # an --out that cannot be written: found before any work
    a_file = tmp_path / "a-file"
    a_file.write_text("keep\n")
    for out, needle in ((a_file, "exists and is not a folder"), (a_file / "x", "is a file, not a folder"),
                        (a_file / "x" / "y", "is a file, not a folder"), (Path("/proc/no-such"), "cannot write in /proc"),
                        (Path(f"{tmp_path}/{'x' * 300}"), "cannot be used as a path")):
        run_cli = hwnas if out == a_file else cli
        assert_refused(run_cli("export", str(run), "--out", str(out)), f"--out {out}", needle)
    assert a_file.read_text() == "keep\n" and not (tmp_path / "out").exists()
    # export.out_dir in the config passed to --config, and to `hwnas run`
    bad = _edited(config, "export.out_dir", str(a_file / "x"))
    assert_refused(cli("export", str(run), "--config", str(bad)), "export folder", "is a file, not a folder")
    assert_refused(cli("run", str(bad)), "export.out_dir", "is a file, not a folder")
    # a run directory that is not one
    for not_a_run in (tmp_path / "no-such", a_file):
        assert_refused(cli("export", str(not_a_run)), f"{not_a_run}: not a run directory")
    assert digest(run) == before
