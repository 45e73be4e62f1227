"""The experiment config: the quickstart file loads, defaults are sane, bad configs fail in one line."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from hwnas.config import ExperimentConfig, load_config, parse_config
from hwnas.core.errors import ConfigError, HwnasError
from hwnas.search_space import SearchSpace, SearchSpaceConfig
from tests.conftest import QUICKSTART, QUICKSTART_SIZE

# the top-level sections grow with the pipeline stages; the foundation's four come first
TOP_KEYS = ", ".join(ExperimentConfig.model_fields)
SPACE_KEYS = ("vocab_size, block_size, head_dim, positions, depth, embed_dim, n_heads, mlp_ratio, norm, norm_placement, "
              "attention, ffn, weight_bits, weight_sharing")


def ss(**section) -> dict:
    return {"name": "t", "search_space": section}


# (id, config data, the field the message names, the whole message)
BAD_CONFIGS = [
    ("unknown-top-level-key", {"name": "t", "epochs": 3}, "epochs",
     f"config: epochs: unknown key; allowed keys: {TOP_KEYS}"),
    ("unknown-nested-key", ss(n_heads={"choices": [2], "per_layers": True}), "search_space.n_heads.per_layers",
     "config: search_space.n_heads.per_layers: unknown key; allowed keys: choices, per_layer"),
    ("typo-key", ss(embed_dims=[64]), "search_space.embed_dims",
     f"config: search_space.embed_dims: unknown key; allowed keys: {SPACE_KEYS}"),
    ("typo-in-ffn", ss(ffn={"choices": ["moe"], "expert": [4]}), "search_space.ffn.expert",
     "config: search_space.ffn.expert: unknown key; allowed keys: choices, per_layer, experts, top_k"),
    ("string-for-list", ss(depth="2, 3"), "search_space.depth",
     "config: search_space.depth: Input should be a valid list (got '2, 3')"),
    ("string-in-int-list", ss(embed_dim=[64, "96"]), "search_space.embed_dim[1]",
     "config: search_space.embed_dim[1]: Input should be a valid integer (got '96')"),
    ("float-in-int-list", ss(depth=[2, 3.5]), "search_space.depth[1]",
     "config: search_space.depth[1]: Input should be a valid integer (got 3.5)"),
    ("list-for-section", ss(n_heads=[2, 4]), "search_space.n_heads",
     "config: search_space.n_heads: Input should be a valid dictionary or instance of PositiveIntDim (got [2, 4])"),
    ("string-seed", {"name": "t", "seed": "0"}, "seed", "config: seed: Input should be a valid integer (got '0')"),
    ("bool-per-layer", ss(norm={"choices": ["dyt"], "per_layer": "no"}), "search_space.norm.per_layer",
     "config: search_space.norm.per_layer: Input should be a valid boolean (got 'no')"),
    ("norm-batchnorm", ss(norm={"choices": ["layernorm", "batchnorm"]}), "search_space.norm.choices[1]",
     "config: search_space.norm.choices[1]: Input should be 'layernorm', 'rmsnorm', 'dyt' or 'crmsnorm' (got 'batchnorm')"),
    ("placement-middle", ss(norm_placement={"choices": ["middle"]}), "search_space.norm_placement.choices[0]",
     "config: search_space.norm_placement.choices[0]: Input should be 'pre', 'post' or 'peri' (got 'middle')"),
    ("attention-flash", ss(attention={"choices": ["softmax", "flash"]}), "search_space.attention.choices[1]",
     "config: search_space.attention.choices[1]: Input should be 'softmax', 'linear' or 'window' (got 'flash')"),
    ("ffn-relu", ss(ffn={"choices": ["relu"]}), "search_space.ffn.choices[0]",
     "config: search_space.ffn.choices[0]: Input should be 'mlp', 'swiglu' or 'moe' (got 'relu')"),
    ("bits-3", ss(weight_bits={"choices": [16, 3]}), "search_space.weight_bits.choices[1]",
     "config: search_space.weight_bits.choices[1]: Input should be 16, 8 or 4 (got 3)"),
    ("empty-heads", ss(n_heads={"choices": []}), "search_space.n_heads.choices",
     "config: search_space.n_heads.choices: needs at least one choice"),
    ("empty-norms", ss(norm={"choices": []}), "search_space.norm.choices",
     "config: search_space.norm.choices: needs at least one norm kind"),
    ("empty-depth", ss(depth=[]), "search_space.depth", "config: search_space.depth: needs at least one choice"),
    ("duplicate-depth", ss(depth=[2, 3, 2]), "search_space.depth",
     "config: search_space.depth: has duplicate choices [2, 3, 2]"),
    ("duplicate-attention", ss(attention={"choices": ["linear", "linear"]}), "search_space.attention.choices",
     "config: search_space.attention.choices: has duplicate choices ['linear', 'linear']"),
    ("zero-depth", ss(depth=[0, 2]), "search_space.depth", "config: search_space.depth: must be positive integers, got 0"),
    ("negative-heads", ss(n_heads={"choices": [2, -4]}), "search_space.n_heads.choices",
     "config: search_space.n_heads.choices: must be positive integers, got -4"),
    ("zero-ratio", ss(mlp_ratio={"choices": [0, 2]}), "search_space.mlp_ratio.choices",
     "config: search_space.mlp_ratio.choices: must be positive numbers, got 0.0"),
    ("bad-weight-sharing", ss(weight_sharing="per_layer"), "search_space.weight_sharing",
     "config: search_space.weight_sharing: Input should be 'shared' or 'per_kind' (got 'per_layer')"),
    ("zero-vocab", ss(vocab_size=0), "search_space.vocab_size",
     "config: search_space.vocab_size: Input should be greater than 0 (got 0)"),
    ("ratio-not-whole", ss(embed_dim=[64, 96], mlp_ratio={"choices": [2, 2.5, 2.01]}), "search_space.mlp_ratio.choices",
     "config: search_space.mlp_ratio.choices: 2.01 x embed_dim 64 = 128.64 is not a whole number of hidden units"),
    ("experts-not-dividing", ss(embed_dim=[64, 96], ffn={"choices": ["moe"], "experts": [4, 5]}),
     "search_space.ffn.experts",
     "config: search_space.ffn.experts: 5 does not divide the hidden size 128 (embed_dim 64 x mlp_ratio 2); "
     "use expert counts dividing every hidden size"),
    ("top-k-above-experts", ss(ffn={"choices": ["mlp", "moe"], "experts": [2, 4], "top_k": [8]}),
     "search_space.ffn.top_k", "config: search_space.ffn.top_k: 8 exceeds every expert count [2, 4]"),
    ("top-k-unusable", ss(ffn={"choices": ["moe"], "experts": [4], "top_k": [1, 2, 8]}), "search_space.ffn.top_k",
     "config: search_space.ffn.top_k: 8 exceeds every expert count [4]"),
    ("one-expert", ss(ffn={"choices": ["moe"], "experts": [1], "top_k": [1]}), "search_space.ffn.experts",
     "config: search_space.ffn.experts: must be >= 2 for moe, got 1"),
    ("window-above-block", ss(block_size=64, attention={"choices": ["window"], "windows": [32, 128]}),
     "search_space.attention.windows", "config: search_space.attention.windows: 128 exceeds block_size 64"),
    ("rope-odd-head-dim", ss(positions="rope", head_dim=7), "search_space.head_dim",
     "config: search_space.head_dim: 7 is odd; rope rotates pairs of a head's dimensions, so positions: rope needs an "
     "even head_dim"),
    ("unknown-positions", ss(positions="alibi"), "search_space.positions",
     "config: search_space.positions: Input should be 'learned', 'rope' or 'none' (got 'alibi')"),
    ("decode-context-past-learned-block", {"name": "t", "search_space": {"block_size": 128},
                                           "latency": {"decode_context": 200}}, "latency.decode_context",
     "config: latency.decode_context: 200 leaves no room for a new token in search_space.block_size 128 with learned "
     "positions (at most 127; search_space.positions: rope or none decode past it)"),
    ("bad-run-name", {"name": "my run"}, "name",
     "config: name: must be letters, digits, '.', '_' or '-' (not starting with a symbol), got 'my run'"),
    ("run-name-leading-symbol", {"name": "../x"}, "name",
     "config: name: must be letters, digits, '.', '_' or '-' (not starting with a symbol), got '../x'"),
    ("missing-name", {"seed": 1}, "name", "config: name: required field is missing"),
    ("name-not-string", {"name": 7}, "name", "config: name: Input should be a valid string (got 7)"),
    ("latency-runtime-without-table", {"name": "t", "latency": {"backends": ["torch"]}}, "search.objectives",
     "config: search.objectives: latency@cpu/onnxruntime needs latency.devices to include cpu and latency.backends to include "
     "onnxruntime (have ['cpu'] and ['torch']); or set search.latency_backend / name another runtime"),
    ("latency-unknown-runtime", {"name": "t", "search": {"constraints": ["latency@cpu/tvm <= 3ms"]}}, "search.constraints",
     "config: search.constraints: 'latency@cpu/tvm': runtime 'tvm' is not one of onnxruntime, torch"),
    ("two-errors", {"name": "t", "seed": "x", "run_dir": 3}, "run_dir",
     "config: run_dir: Input should be a valid string (got 3) (and 1 more error)"),
]


@pytest.mark.parametrize("data, field, message", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_fails_with_exact_one_line_message(data, field, message):
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    text = str(info.value)
    assert text == message
    assert text.startswith(f"config: {field}: ")
    assert "\n" not in text
    assert isinstance(info.value, HwnasError) and isinstance(info.value, ValueError)


def test_top_level_keys():
    assert TOP_KEYS.startswith("name, run_dir, seed, search_space")


@pytest.mark.parametrize(
    "data, kind", [([{"name": "t"}], "list"), ("name: t", "str"), (None, "NoneType"), (3, "int")],
)
def test_non_mapping_top_level(data, kind):
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="exp.yaml")
    assert str(info.value) == f"exp.yaml: expected a mapping at the top level, got {kind}"


# --- files ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, message",
    [
        ("name: [unclosed\n", "not valid YAML at line 2: expected ',' or ']', but got '<stream end>'"),
        ("name: t\n  seed: 1\n", "not valid YAML at line 2: mapping values are not allowed here"),
        ("name: t\n\tseed: 1\n", "not valid YAML at line 2: found character '\\t' that cannot start any token"),
        ("name: t\nseed: *s\n", "not valid YAML at line 2: found undefined alias 's'"),
        ("name: t\x00\n", 'not valid YAML: unacceptable character #x0000: special characters are not allowed '
                          'in "<unicode string>", position 7'),
        ("- name: t\n", "expected a mapping at the top level, got list"),
        ("", "expected a mapping at the top level, got NoneType"),
        ("name: t\nsearch_space:\n  norm: {choices: [batchnorm]}\n",
         "search_space.norm.choices[0]: Input should be 'layernorm', 'rmsnorm', 'dyt' or 'crmsnorm' (got 'batchnorm')"),
    ],
    ids=["unclosed-list", "bad-indent", "tab", "undefined-alias", "nul-char", "list", "empty", "bad-value"],
)
def test_bad_file_fails_with_exact_one_line_message(tmp_path, text, message):
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {message}"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: config file not found"
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path)  # a directory is not a config file


def test_non_utf8_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: cannot read config file: 'utf-8' codec can't decode byte 0xff "
                               "in position 6: invalid start byte")


# --- the quickstart config and defaults -------------------------------------------------------------------
def test_quickstart_loads():
    cfg = load_config(QUICKSTART)
    assert cfg == load_config(str(QUICKSTART))
    assert (cfg.name, cfg.seed, cfg.run_dir) == ("quickstart", 0, None)
    assert cfg.run_path == Path("runs") / "quickstart"
    c = cfg.search_space
    assert (c.vocab_size, c.block_size, c.head_dim) == (256, 128, 16)
    assert c.depth == [2, 3, 4] and c.embed_dim == [64, 96, 128]
    assert c.mlp_ratio.choices == [2.0, 3.0, 4.0] and all(type(r) is float for r in c.mlp_ratio.choices)
    assert c.norm_placement.per_layer is False and c.n_heads.per_layer is True
    assert c.attention.windows == [32] and c.ffn.experts == [4] and c.ffn.top_k == [1, 2]
    assert SearchSpace(c).size() == QUICKSTART_SIZE


def test_defaults_are_sane():
    cfg = parse_config({"name": "x"})
    assert (cfg.seed, cfg.run_dir, cfg.run_path) == (0, None, Path("runs/x"))
    c = cfg.search_space
    # the defaults are the quickstart space, and they pass the cross-field checks
    assert c == load_config(QUICKSTART).search_space == SearchSpaceConfig()
    assert SearchSpaceConfig.model_validate(c.model_dump()) == c
    assert max(c.attention.windows) <= c.block_size
    assert all((d * r) % e == 0 for d in c.embed_dim for r in c.mlp_ratio.choices for e in c.ffn.experts)
    assert min(c.ffn.top_k) <= max(c.ffn.experts)
    for section in (c.n_heads, c.mlp_ratio, c.norm, c.attention, c.ffn, c.weight_bits):
        assert section.per_layer is True
    assert c.norm_placement.per_layer is False
    assert parse_config({"name": "x", "run_dir": "/tmp/r"}).run_path == Path("/tmp/r")


def test_choices_are_normalized():
    c = parse_config(ss(depth=[4, 2], embed_dim=[128, 64], mlp_ratio={"choices": [4, 1.5]})).search_space
    assert c.depth == [2, 4] and c.embed_dim == [64, 128]
    assert c.mlp_ratio.choices == [1.5, 4.0]
    # categorical choices keep the user's order: it is the gene order
    assert parse_config(ss(norm={"choices": ["dyt", "layernorm"]})).search_space.norm.choices == ["dyt", "layernorm"]


def test_configs_are_frozen():
    cfg = load_config(QUICKSTART)
    with pytest.raises(ValidationError):
        cfg.seed = 3
    with pytest.raises(ValidationError):
        cfg.search_space.depth = [2]


def test_valid_variants_parse():
    ok = parse_config(ss(
        depth=[1], embed_dim=[48], n_heads={"choices": [3]}, mlp_ratio={"choices": [1.5]},
        attention={"choices": ["window"], "windows": [128]},  # a window equal to the block size is fine
        ffn={"choices": ["moe"], "experts": [2, 3, 4], "top_k": [1, 4]},  # 72 hidden: 2, 3, 4 divide it
    ))
    assert ok.search_space.ffn.experts == [2, 3, 4]
    # windows and experts only matter when their kind is chosen
    ok = parse_config(ss(attention={"choices": ["softmax"], "windows": [1024]}, ffn={"choices": ["mlp"], "experts": [7]}))
    assert SearchSpace(ok.search_space).choices["attention"] == ("softmax",)
    assert isinstance(ok, ExperimentConfig)


@pytest.mark.parametrize("section, field", [("train", "train.eval_tokens"), ("predictors", "predictors.eval_tokens"),
                                            ("export", "export.eval_tokens")])
def test_eval_tokens_below_one_window_are_refused_before_any_work(section, field):
    data = {"name": "t", "search_space": {"block_size": 64}, section: {"eval_tokens": 63}}
    with pytest.raises(ConfigError, match=rf"^config: {field}: 63 is less than one validation window of 64 tokens"):
        parse_config(data)
    parse_config(data | {section: {"eval_tokens": 64}})


@pytest.mark.parametrize("constraint, message", [
    ("foo <= 5", "unknown quantity 'foo'; allowed: loss, latency@"),
    ("loss <= 5ms", "unit 'ms' does not fit loss"),
    ("latency@cpu <= 5kb", "unit 'kb' does not fit latency@cpu (latency); allowed: ms, s, us or none"),
    ("latency@cpu <= 5m", "unit 'm' does not fit latency@cpu"),
    ("params <= 5ms", "unit 'ms' does not fit params (count); allowed: g, k, m or none"),
    ("latency@cpu <= -5ms", "the bound must be >= 0"),
])
def test_constraints_are_checked_when_the_config_loads(constraint, message):
    with pytest.raises(ConfigError, match=r"^config: search\.constraints: .*" + re.escape(message)):
        parse_config({"name": "t", "search": {"constraints": [constraint]}})


def test_constraints_read_their_units():
    cfg = parse_config({"name": "t", "search": {"constraints": ["latency@cpu <= 500us", "params <= 2m", "memory <= 1kib"]}})
    from hwnas.search.objectives import Constraint

    assert [Constraint.parse(c).bound for c in cfg.search.constraints] == [0.5, 2e6, 1024.0]
