"""Security: no code runs from a tampered file.

- `predictor.skops`: a node that names or calls a function (function, method, partial, operator,
  type, constructor call, defaultdict), a type off the exact list (also one that merely starts with a
  trusted prefix), a damaged zip or schema, and arrays that native code would index out of bounds
  are refused with one line naming the type and the file, before anything in the file is built;
  so is a predictor that loads but cannot make one finite prediction. `hwnas search` on a run
  holding such a file exits 2 and changes nothing.
- The exact list is what real predictors hold: every model kind is fitted, saved, checked, loaded.
- No pickle anywhere: checkpoints and exports load with safetensors (code in their metadata is
  refused), configs with a safe YAML loader, Optuna's unpickling samplers and storages are not
  used, and the source tree calls no unsafe loader.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import shutil
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
import yaml

from hwnas.core.errors import ConfigError
from hwnas.core.manifest import Manifest
from hwnas.predictors.config import MODEL_NAMES
from hwnas.predictors.features import FEATURE_GROUPS, ArchFeaturizer
from hwnas.predictors.models import AccuracyPredictor, EnsembleRegressor, make_model
from hwnas.predictors.persist import ALLOWED, KEY_TYPES, PredictorError, load_predictor, save_predictor
from hwnas.search_space import SearchSpace, SearchSpaceConfig
from tests.tiny import assert_refused, digest, hwnas

REPO = Path(__file__).resolve().parents[1]
CFG = SearchSpaceConfig(
    depth=[1, 2], embed_dim=[16, 32], head_dim=8, block_size=32,
    n_heads={"choices": [1, 2]}, mlp_ratio={"choices": [2.0, 4.0]},
    attention={"choices": ["softmax", "linear", "window"], "windows": [8]},
    ffn={"choices": ["mlp", "swiglu", "moe"], "experts": [2], "top_k": [1, 2]},
)
SPACE = SearchSpace(CFG)
ARCHS = [SPACE.sample(i) for i in range(24)]
TEST_ARCHS = [SPACE.sample(1000 + i) for i in range(6)]
CALLABLE_KINDS = {"FunctionNode", "MethodNode", "PartialNode", "OperatorFuncNode", "TypeNode", "ConstructorFromReduceNode",
                  "DefaultDictNode"}


def fit(model, features=FEATURE_GROUPS) -> AccuracyPredictor:
    y = np.array([math.log(SPACE.flops(a)) + 0.1 * a.depth for a in ARCHS])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the tiny fits
        return AccuracyPredictor(ArchFeaturizer(CFG.model_dump(mode="json"), features=features), model, cv=3).fit(ARCHS, y)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[AccuracyPredictor, Path]]:
    """Every model kind of models.py fitted for real (the ensemble with its default members, and
    EnsembleRegressor's own defaults), ridge on each single feature group, all saved."""
    root = tmp_path_factory.mktemp("predictors")
    cases = {name: (make_model(name, 0), FEATURE_GROUPS) for name in MODEL_NAMES}
    cases["ensemble-defaults"] = (EnsembleRegressor(), FEATURE_GROUPS)
    cases |= {f"ridge[{group}]": (make_model("ridge"), (group,)) for group in FEATURE_GROUPS}
    out = {}
    for name, (model, features) in cases.items():
        predictor = fit(model, features)
        out[name] = predictor, save_predictor(predictor, root / name)
    return out


# --- the skops file, read and rewritten ---------------------------------------------------------
def members_of(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def write_members(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def tamper(src: Path, dst: Path, edit: Callable[[dict, dict[str, bytes]], None]) -> Path:
    """A copy of the predictor file `src` at `dst`, its parsed schema.json (and members) passed through `edit`."""
    members = members_of(src)
    schema = json.loads(members["schema.json"])
    edit(schema, members)
    members["schema.json"] = json.dumps(schema).encode()
    return write_members(dst, members)


def nodes(state):
    """Every node of a parsed schema.json, depth first."""
    if isinstance(state, dict):
        if "__loader__" in state:
            yield state
        for value in state.values():
            yield from nodes(value)
    elif isinstance(state, list):
        for value in state:
            yield from nodes(value)


def fitted_node(schema: dict, cls: str, attr: str) -> dict:
    """The attribute states of the first `cls` object that has `attr` (a fitted one)."""
    return next(n["content"]["content"] for n in nodes(schema)
                if n["__loader__"] == "ObjectNode" and n["__class__"] == cls and attr in n["content"]["content"])


def node(loader: str, module: str, cls: str, **fields) -> dict:
    return {"__class__": cls, "__module__": module, "__loader__": loader, **fields}


def json_node(value) -> dict:
    return node("JsonNode", "builtins", "str", content=json.dumps(value), is_json=True)


def tuple_node(*items: dict) -> dict:
    return node("TupleNode", "builtins", "tuple", content=list(items))


def dict_node(key_type: str = "str", **items: dict) -> dict:
    return node("DictNode", "builtins", "dict", content=items,
                key_types=node("ListNode", "builtins", "list", content=[node("TypeNode", "builtins", key_type)] * len(items)))


# --- tampered predictors -------------------------------------------------------------------------
RUNSTRING = ("numpy.testing._private.utils", "runstring")  # runstring(code, namespace) is exec(code, namespace)


def as_cv(state: dict) -> Callable:
    """An edit: the predictor's `cv` attribute becomes `state`."""
    return lambda schema, members: schema["content"]["content"].__setitem__("cv", state)


def with_key(code: str, key_type: str) -> Callable:
    """An edit: the predictor's attribute dict gets the key `code`, of type `key_type` (called on the key)."""
    def edit(schema, members):
        attrs = schema["content"]
        attrs["content"][code] = json_node(0)
        attrs["key_types"]["content"].append(node("TypeNode", "builtins", key_type))
    return edit


def old_protocol(state: dict) -> Callable:
    def edit(schema, members):
        schema["protocol"] = 0
        as_cv(state)(schema, members)
    return edit


def aliased_id(schema, members):
    """An edit: `cv` takes the node id of the dict's key type (`str`), so skops would load it as the type."""
    str_id = schema["content"]["key_types"]["content"][0]["__id__"]
    schema["content"]["content"]["cv"] = {**json_node(3), "__id__": str_id}


def payloads(code: str) -> dict[str, tuple[Callable, str]]:
    """name -> (edit, the type the refusal names). The first three run `code` while skops loads the
    file if it trusts what `get_untrusted_types` lists (test_the_code_running_payloads_are_real)."""
    system, empty = node("FunctionNode", "os", "system"), node("ObjectNode", "sklearn.linear_model._ridge", "Ridge", content=dict_node())
    return {
        "constructor call of runstring": (as_cv(node("ConstructorFromReduceNode", *RUNSTRING, content=tuple_node(json_node(code), dict_node()))),
                                          "numpy.testing._private.utils.runstring"),
        "loss built by runstring": (as_cv(node("LossNode", *RUNSTRING, __reduce__={"args": tuple_node(json_node(code), dict_node())},
                                               content=dict_node())), "numpy.testing._private.utils.runstring"),
        "dict key of type exec": (with_key(code, "exec"), "builtins.exec"),
        "function runstring": (as_cv(node("FunctionNode", *RUNSTRING)), "numpy.testing._private.utils.runstring"),
        "function builtins.eval": (as_cv(node("FunctionNode", "builtins", "eval")), "builtins.eval"),
        "function os.system": (as_cv(system), "os.system"),
        "partial of os.system": (as_cv(node("PartialNode", "functools", "partial", content={
            "func": system, "args": tuple_node(json_node(code)), "kwds": dict_node(), "namespace": json_node(None)})), "functools.partial"),
        "bound method": (as_cv(node("MethodNode", "sklearn.linear_model._ridge", "Ridge", content={"func": "fit", "obj": empty})),
                         "sklearn.linear_model._ridge.Ridge.fit"),
        "operator attrgetter": (as_cv(node("OperatorFuncNode", "operator", "attrgetter", attrs=tuple_node(json_node("__class__")))),
                                "operator.attrgetter"),
        "type builtins.eval": (as_cv(node("TypeNode", "builtins", "eval")), "builtins.eval"),
        "type str as a value": (as_cv(node("TypeNode", "builtins", "str")), "builtins.str"),
        "defaultdict calling os.system": (as_cv(node("DefaultDictNode", "collections", "defaultdict", content={
            "main": dict_node(), "default_factory": system})), "collections.defaultdict"),
        "OrderedDict (skops trusts it)": (as_cv(node("DictNode", "collections", "OrderedDict", content={},
                                                     key_types=node("ListNode", "builtins", "list", content=[]))), "collections.OrderedDict"),
        "sklearn test class": (as_cv(node("ObjectNode", "sklearn.utils._testing", "MinimalRegressor", content=dict_node())),
                               "sklearn.utils._testing.MinimalRegressor"),
        "hwnas.predictors function as an object": (as_cv(node("ObjectNode", "hwnas.predictors.stage", "run_predictors")),
                                                   "hwnas.predictors.stage.run_predictors"),
        "name extending a listed one": (as_cv(node("ObjectNode", "sklearn.linear_model._ridge", "RidgeCVX", content=dict_node())),
                                        "sklearn.linear_model._ridge.RidgeCVX"),
        "numpy function as an array": (as_cv(node("NdArrayNode", *RUNSTRING, type="json", content=[], shape=tuple_node(json_node(0)))),
                                       "numpy.testing._private.utils.runstring"),
        "listed estimator as an array": (as_cv(node("NdArrayNode", "sklearn.linear_model._ridge", "Ridge", type="json", content=[],
                                                    shape=tuple_node(json_node(0)))), "sklearn.linear_model._ridge.Ridge"),
        "dict key of type int": (with_key("7", "int"), "builtins.int"),
        "unknown node kind": (as_cv(node("EvilNode", "builtins", "dict")), "builtins.dict"),
        "malformed node": (as_cv({"__loader__": ["ObjectNode"], "__module__": "os", "__class__": "system"}), "malformed"),
        "one id for two things": (aliased_id, "node id"),
        "old protocol with a function": (old_protocol(node("FunctionNode", *RUNSTRING)), "numpy.testing._private.utils.runstring"),
        "a line break in a name": (as_cv(node("ObjectNode", "os", "system\nhwnas: error: nothing to see")), r"os.system\n"),
    }


PAYLOADS = list(payloads(""))
RUNS_CODE = PAYLOADS[:3]


def code_writing(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('ran')"


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A small real predictor file to tamper with (EnsembleRegressor's defaults: a ridge and a tree)."""
    return save_predictor(fit(EnsembleRegressor()), tmp_path_factory.mktemp("small"))


@pytest.mark.parametrize("name", RUNS_CODE)
def test_the_code_running_payloads_are_real(small, tmp_path, name):
    """Proof that the refusals below matter: loaded by skops with everything it lists trusted, these run code."""
    marker = tmp_path / "ran"
    edit, _ = payloads(code_writing(marker))[name]
    data = tamper(small, tmp_path / "evil.skops", edit).read_bytes()
    with warnings.catch_warnings(), contextlib.suppress(Exception):  # what happens after the code ran does not matter
        warnings.simplefilter("ignore")
        sio.loads(data, trusted=sio.get_untrusted_types(data=data))
    assert marker.read_text() == "ran"


@pytest.mark.parametrize("name", PAYLOADS)
def test_tampered_predictor_is_refused_naming_the_type_and_nothing_runs(small, tmp_path, name):
    marker = tmp_path / "ran"
    edit, needle = payloads(code_writing(marker))[name]
    evil = tamper(small, tmp_path / "predictor.skops", edit)
    with pytest.raises(PredictorError) as err:
        load_predictor(evil)
    message = str(err.value)
    assert str(evil) in message and needle in message and "refused" in message and "\n" not in message, message
    assert not marker.exists()


class _Exec:
    """Pickles as a call of exec(code): what a pickle-based loader would run."""

    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return exec, (self.code,)


def pickled_code(marker: Path) -> bytes:
    import pickle

    return pickle.dumps(_Exec(code_writing(marker)))


def pickled_array(marker: Path) -> bytes:
    """An .npy file of an object array: unpickling it would run code."""
    buf = io.BytesIO()
    np.save(buf, np.array([_Exec(code_writing(marker))], dtype=object), allow_pickle=True)
    return buf.getvalue()


def test_the_pickle_payloads_are_real(tmp_path):
    """Proof for the pickle cases here and below: unpickled, they run code."""
    import pickle

    pickle.loads(pickled_code(tmp_path / "a"))
    np.load(io.BytesIO(pickled_array(tmp_path / "b")), allow_pickle=True)
    assert (tmp_path / "a").read_text() == (tmp_path / "b").read_text() == "ran"


# name -> the damaged file from (the file's bytes, its members, a marker path): bytes, or members to zip
DAMAGED: dict[str, Callable[[bytes, dict[str, bytes], Path], bytes | dict[str, bytes]]] = {
    "a pickle": lambda data, m, marker: pickled_code(marker),
    "not a zip": lambda data, m, marker: b"PK\x03\x04 not a zip at all",
    "truncated zip": lambda data, m, marker: data[: len(data) // 2],
    "no schema.json": lambda data, m, marker: {k: v for k, v in m.items() if k != "schema.json"},
    "schema not JSON": lambda data, m, marker: m | {"schema.json": b'{"__loader__": "ObjectNode", '},
    "schema not UTF-8": lambda data, m, marker: m | {"schema.json": b"\xff\xfe\x00{}"},
    "schema a list": lambda data, m, marker: m | {"schema.json": b"[1, 2, 3]"},
    "schema nested too deep": lambda data, m, marker: m | {"schema.json": b"[" * 200_000 + b"]" * 200_000},
    "an array file missing": lambda data, m, marker: {k: v for k, v in m.items() if not k.endswith(".npy")},
    "an array file not an array": lambda data, m, marker: {k: (b"\x93NUMPY junk" if k.endswith(".npy") else v) for k, v in m.items()},
    "an array file holding a pickle": lambda data, m, marker: {k: (pickled_array(marker) if k.endswith(".npy") else v) for k, v in m.items()},
    "a list, not a predictor": lambda data, m, marker: m | {"schema.json": json.dumps(
        {**node("ListNode", "builtins", "list", content=[json_node(1)]), "protocol": 2}).encode()},
    "a Ridge, not a predictor": lambda data, m, marker: m | {"schema.json": json.dumps(
        {**node("ObjectNode", "sklearn.linear_model._ridge", "Ridge", content=dict_node()), "protocol": 2}).encode()},
    "an unfitted predictor": lambda data, m, marker: m | {"schema.json": json.dumps(
        {**node("ObjectNode", "hwnas.predictors.models", "AccuracyPredictor", content=dict_node()), "protocol": 2}).encode()},
}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.InconsistentVersionWarning")  # the hand-made Ridge has no version
@pytest.mark.parametrize("name", list(DAMAGED))
def test_damaged_predictor_file_is_one_line(small, tmp_path, name):
    path, marker = tmp_path / "predictor.skops", tmp_path / "ran"
    damaged = DAMAGED[name](small.read_bytes(), members_of(small), marker)
    path.write_bytes(damaged) if isinstance(damaged, bytes) else write_members(path, damaged)
    with pytest.raises(PredictorError) as err:
        load_predictor(path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and len(message) < 600, message
    assert re.search(r"not a readable skops file|cannot load the predictor|not a skops object file|not a fitted AccuracyPredictor",
                     message), message
    assert not marker.exists()


@pytest.mark.parametrize("manifest", [b"{not json", b"[1, 2]", b"\xff\xfe{}", b'{"versions": [1]}'])
def test_damaged_manifest_is_one_line(small, tmp_path, manifest):
    shutil.copytree(small.parent, tmp_path / "p")
    (tmp_path / "p" / "predictor.json").write_bytes(manifest)
    if manifest == b'{"versions": [1]}':  # only the version check reads it: skipped
        assert load_predictor(tmp_path / "p").predict(TEST_ARCHS).shape == (len(TEST_ARCHS),)
        return
    with pytest.raises(PredictorError, match=rf"^{re.escape(str(tmp_path / 'p' / 'predictor.json'))}: unreadable manifest \([^\n]*\)$"):
        load_predictor(tmp_path / "p")


# --- arrays that native code indexes without bounds checks ---------------------------------------
def edit_array(members: dict[str, bytes], state: dict, change: Callable[[np.ndarray], np.ndarray]) -> None:
    array = np.load(io.BytesIO(members[state["file"]]), allow_pickle=False)
    buf = io.BytesIO()
    np.save(buf, change(array), allow_pickle=False)
    members[state["file"]] = buf.getvalue()


def tree_edit(field: str, value: Callable[[np.ndarray], int]) -> Callable:
    """An edit: node 0 of the first tree gets `field` = value(nodes)."""
    def edit(schema, members):
        tree = next(n for n in nodes(schema) if n["__loader__"] == "TreeNode")

        def change(a):
            a[field][0] = value(a)
            return a
        edit_array(members, tree["content"]["content"]["nodes"], change)
    return edit


def two_trees_per_stage(schema, members):
    """Gradient boosting with two trees per stage: the second would be added into a column that does not exist."""
    for stage in fitted_node(schema, "GradientBoostingRegressor", "estimators_")["estimators_"]["content"]:
        stage["content"] = stage["content"] * 2


def more_support_than_vectors(schema, members):
    edit_array(members, fitted_node(schema, "SVR", "support_")["support_"], lambda a: np.arange(len(a) + 50, dtype=a.dtype))


NATIVE = {
    "tree child past the end": ("ensemble-defaults", tree_edit("left_child", lambda a: 10**6), "DecisionTreeRegressor"),
    "tree child pointing back (a loop)": ("ensemble-defaults", tree_edit("right_child", lambda a: 0), "DecisionTreeRegressor"),
    "tree feature past the end": ("rf", tree_edit("feature", lambda a: 10**6), "DecisionTreeRegressor"),
    "tree leaf with one child": ("et", tree_edit("right_child", lambda a: -1), "ExtraTreeRegressor"),
    "boosting stage of two trees": ("gbr", two_trees_per_stage, "GradientBoostingRegressor"),
    "svr support longer than its vectors": ("svr", more_support_than_vectors, "SVR"),
}


@pytest.mark.parametrize("name", list(NATIVE))
def test_arrays_native_code_would_overrun_are_refused(saved, tmp_path, name):
    kind, edit, needle = NATIVE[name]
    evil = tamper(saved[kind][1], tmp_path / "predictor.skops", edit)
    with pytest.raises(PredictorError, match=rf"^{re.escape(str(evil))}: refused: its {needle} .*tampered") as err:
        load_predictor(evil)
    assert "\n" not in str(err.value)


def set_attr(name: str, state: Callable[[dict], dict]) -> Callable:
    """An edit: the predictor's attribute `name` becomes state(its attribute states)."""
    return lambda schema, members: schema["content"]["content"].__setitem__(name, state(schema["content"]["content"]))


def nan_coefficients(schema, members):
    edit_array(members, fitted_node(schema, "Ridge", "coef_")["coef_"], lambda a: a * np.nan)


def bad_space(schema, members):
    schema["content"]["content"]["featurizer_"]["content"]["content"]["space_config"] = json_node({"depth": [-1]})


UNUSABLE = {
    "featurizer_ is an estimator": (set_attr("featurizer_", lambda attrs: attrs["model_"]), "not a fitted AccuracyPredictor"),
    "no model_": (lambda schema, members: schema["content"]["content"].__setitem__("model_", json_node(None)), "cannot predict"),
    "std_scale_ is text": (set_attr("std_scale_", lambda attrs: json_node("abc")), "cannot predict"),
    "featurizer space invalid": (bad_space, "cannot predict"),
    "coefficients NaN": (nan_coefficients, "not one finite value"),
}


@pytest.mark.parametrize("name", list(UNUSABLE))
def test_predictor_that_loads_but_cannot_predict_is_one_line(small, tmp_path, name):
    edit, needle = UNUSABLE[name]
    evil = tamper(small, tmp_path / "predictor.skops", edit)
    with pytest.raises(PredictorError, match=rf"^{re.escape(str(evil))}: [^\n]*{needle}[^\n]*hwnas predictors CONFIG`$"):
        load_predictor(evil)


# --- the exact list is what real predictors hold -------------------------------------------------
def test_no_node_kind_on_the_list_names_or_calls_a_function():
    assert not CALLABLE_KINDS & set(ALLOWED)
    assert KEY_TYPES == {"builtins.str"}


def test_the_exact_list_is_what_real_predictors_hold(saved):
    """Every model kind and feature set, saved: what they hold is on the list, and everything on
    the list is held by one of them (an upgrade that adds or renames a type fails here, by name)."""
    held = {(n["__loader__"], f"{n['__module__']}.{n['__class__']}") for _, path in saved.values()
            for n in nodes(json.loads(members_of(path)["schema.json"]))}
    listed = {(kind, name) for kind, names in ALLOWED.items() for name in names} | {("TypeNode", t) for t in KEY_TYPES}
    assert not held - listed, f"real predictors hold types off the list: {sorted(held - listed)}"
    assert not listed - held, f"listed, but no real predictor holds them: {sorted(listed - held)}"


@pytest.mark.parametrize("name", [*MODEL_NAMES, "ensemble-defaults", *(f"ridge[{g}]" for g in FEATURE_GROUPS)])
def test_every_model_kind_loads_and_predicts_as_saved(saved, name):
    predictor, path = saved[name]
    loaded = load_predictor(path)
    assert type(loaded.model_) is type(predictor.model_) and loaded.featurizer_.features == predictor.featurizer_.features
    m1, s1 = predictor.predict(TEST_ARCHS, return_std=True)
    m2, s2 = loaded.predict(TEST_ARCHS, return_std=True)
    np.testing.assert_allclose(m2, m1, rtol=1e-12)
    np.testing.assert_allclose(s2, s1, rtol=1e-12)


# --- the CLI: `hwnas search` on a run holding a tampered predictor -------------------------------
CLI_CASES = ["constructor call of runstring", "truncated zip",  # (the other two: `make test-all`)
             pytest.param("dict key of type exec", marks=pytest.mark.slow),
             pytest.param("OrderedDict (skops trusts it)", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", CLI_CASES)
def test_search_refuses_a_tampered_predictor_and_changes_nothing(tiny_run, tmp_path, name):
    config, run = tiny_run
    path = run / "predictors" / "predictor.skops"
    marker = tmp_path / "ran"
    if name == "truncated zip":
        path.write_bytes(path.read_bytes()[:1000])
        needle = "not a readable skops file"
    else:
        edit, needle = payloads(code_writing(marker))[name]
        tamper(path, tmp_path / "evil.skops", edit).replace(path)
    before = digest(run)
    assert_refused(hwnas("search", str(config), "--no-progress"), str(path), "changed since `hwnas predictors CONFIG` wrote it")
    Manifest.of(run, "predictors").add(path.name)  # an attacker who also lists the file: the audit is what is left
    before = digest(run)
    proc = hwnas("search", str(config), "--no-progress")
    assert_refused(proc, str(path), needle)
    assert not marker.exists()
    assert digest(run) == before


# --- no pickle, no unsafe YAML, no code from metadata --------------------------------------------
def test_checkpoint_and_export_load_no_pickle_and_no_code_from_metadata(tiny_run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from hwnas.export import load
    from hwnas.export.deploy import ExportError
    from hwnas.supernet.checkpoint import CheckpointError
    from hwnas.supernet.train import load_supernet

    _, run = tiny_run
    marker = tmp_path / "ran"
    weights = run / "export" / "model.safetensors"
    tensors = load_file(str(weights))
    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata()
    assert load(weights).arch.key()  # the real file loads
    code = code_writing(marker)
    bad_meta = {
        "arch as a YAML python tag": {"arch": f"!!python/object/apply:builtins.exec [{code!r}]"},
        "arch as a pickle": {"arch": pickled_code(marker).decode("latin-1")},
        "arch as a python expression": {"arch": f"__import__('builtins').exec({code!r})"},
        "dims naming a class": {"dims": json.dumps({"__class__": "os.system", "args": [code]})},
        "dims with code": {"dims": code},
    }
    for name, change in bad_meta.items():
        evil = tmp_path / name / "model.safetensors"
        evil.parent.mkdir()
        save_file(tensors, str(evil), metadata=meta | change)
        with pytest.raises(ExportError, match="cannot load the exported model"):
            load(evil)
    pickle_file = tmp_path / "pickle" / "model.safetensors"
    pickle_file.parent.mkdir()
    pickle_file.write_bytes(pickled_code(marker))
    with pytest.raises(ExportError, match="cannot load the exported model"):
        load(pickle_file)
    (run / "train" / "checkpoint.safetensors").write_bytes(pickled_code(marker))
    Manifest.of(run, "train").add("checkpoint.safetensors")  # listed, so the file itself is what is tested
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_supernet(run, CFG)
    assert not marker.exists()


@pytest.mark.parametrize("tag", ["!!python/object/apply:builtins.exec [{code!r}]", "!!python/name:os.system",
                                 "!!python/object/new:builtins.exec [{code!r}]", "!!python/module:os"])
def test_config_yaml_builds_no_python_objects(tmp_path, tag):
    from hwnas.config import load_config

    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: tiny\nseed: {tag.format(code=code_writing(marker))}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: not valid YAML"):
        load_config(path)
    assert not marker.exists()


def test_config_yaml_with_a_python_tag_is_one_line_from_the_cli(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:builtins.exec [{code_writing(marker)!r}]\n")
    assert_refused(hwnas("space", str(path)), str(path), "not valid YAML")
    assert not marker.exists()


# every call in the source tree that could unpickle or evaluate, and why each one that remains is safe
UNSAFE = re.compile(r"\bpickle\.loads?\(|\btorch\.load\((?![^)]*weights_only=True)|\byaml\.(?:load|load_all|full_load|unsafe_load)\("
                    r"|\b(?:np|numpy)\.load\((?![^)]*allow_pickle=False)|(?<![\w.])(?:eval|exec)\(|\b(?:joblib|dill|cloudpickle|shelve|marshal)\."
                    r"|\bfrom (?:pickle|torch|yaml|numpy|joblib|dill|marshal) import (?:.*\b(?:loads?|unsafe_load|full_load)\b)")
KNOWN_SAFE = {  # (hwnas/config.py builds its documents with _Loader, a SafeLoader: asserted below)
    ("hwnas/core/isolate.py", "pickle.loads(pickle.dumps(exc))"),  # an exception made in this process, never a file
}


def test_the_source_tree_calls_no_unsafe_loader():
    from hwnas.config import _Loader

    assert issubclass(_Loader, yaml.SafeLoader)
    offenders = []
    # every package folder of the repository (not the tests, not a venv), and the scripts
    folders = sorted({p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests"} | {"experiments"})
    assert {"search_space", "predictors", "search", "export", "hwnas"} <= set(folders), folders
    for path in sorted(p for folder in folders for p in (REPO / folder).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if "/." in f"/{rel}":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if UNSAFE.search(line) and not any(rel == f and snippet in line for f, snippet in KNOWN_SAFE):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "unsafe loaders:\n" + "\n".join(offenders)
    for f, snippet in KNOWN_SAFE:  # the exceptions are still there (else drop them)
        assert snippet in (REPO / f).read_text(), (f, snippet)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_the_study_storage_and_samplers_have_no_pickle_path(tmp_path):
    """Optuna unpickles in two places: CMA-ES sampler state kept in the study, and journal snapshots
    (Redis). A tampered study database must reach neither: hwnas uses neither."""
    from optuna.samplers import CmaEsSampler
    from optuna.storages.journal._base import BaseJournalSnapshot

    from hwnas.search.engines import OPTUNA_ALGORITHMS
    from hwnas.search.optuna_engine import make_sampler, open_storage

    for algorithm in OPTUNA_ALGORITHMS:
        assert not isinstance(make_sampler(algorithm, 0, 20), CmaEsSampler), algorithm
    journal = open_storage(f"journal:{tmp_path / 'study.log'}")
    assert not isinstance(journal._backend, BaseJournalSnapshot)
