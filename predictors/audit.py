"""The audit of a saved predictor: nothing in a `predictor.skops` file is imported or built unless
a fitted hwnas predictor holds it.

Before skops builds anything, `audit_schema` walks the file's `schema.json` (one node per saved
object; the node's "loader" says how skops rebuilds it) and refuses, with one line naming the type,
every node outside `ALLOWED`: an exact list of estimator, array and container types per node kind.
No kind that names or calls a function is on it (FunctionNode, MethodNode, PartialNode,
OperatorFuncNode, ConstructorFromReduceNode, DefaultDictNode, and TypeNode except for a dict's
`str` keys). After loading, `check_loaded` makes the arrays that native code indexes without bounds
checks (decision trees, gradient boosting, libsvm) agree in size, and the predictor make one finite
prediction.
"""

from __future__ import annotations

import copy
import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

from .errors import PredictorError

# Every type a fitted hwnas predictor holds (each model kind of models.py on each feature set), by
# the skops node kind that rebuilds it. tests/test_security.py fits every kind, saves it and checks
# it against this list, so a library upgrade that adds a type fails there, naming the type.
ALLOWED: dict[str, frozenset[str]] = {
    "ObjectNode": frozenset({  # estimators: made with __new__, then their saved attributes set
        "hwnas.predictors.models.AccuracyPredictor", "hwnas.predictors.models.EnsembleRegressor",
        "hwnas.predictors.features.ArchFeaturizer",
        "sklearn.pipeline.Pipeline", "sklearn.preprocessing._data.StandardScaler",
        "sklearn.compose._target.TransformedTargetRegressor",
        "sklearn.linear_model._ridge.RidgeCV",  # ridge
        "sklearn.linear_model._ridge.Ridge",  # EnsembleRegressor's default member
        "sklearn.svm._classes.SVR",  # svr
        "sklearn.ensemble._forest.RandomForestRegressor", "sklearn.ensemble._forest.ExtraTreesRegressor",  # rf, et
        "sklearn.tree._classes.DecisionTreeRegressor", "sklearn.tree._classes.ExtraTreeRegressor",
        "sklearn.ensemble._gb.GradientBoostingRegressor", "sklearn.dummy.DummyRegressor",  # gbr
        "sklearn._loss.loss.HalfSquaredError", "sklearn._loss.link.IdentityLink", "sklearn._loss.link.Interval",
        "sklearn.neural_network._multilayer_perceptron.MLPRegressor",  # mlp
        "sklearn.gaussian_process._gpr.GaussianProcessRegressor",  # gp and its kernel
        "sklearn.gaussian_process.kernels.ConstantKernel", "sklearn.gaussian_process.kernels.DotProduct",
        "sklearn.gaussian_process.kernels.RBF", "sklearn.gaussian_process.kernels.WhiteKernel",
        "sklearn.gaussian_process.kernels.Sum", "sklearn.gaussian_process.kernels.Product",
    }),
    "TreeNode": frozenset({"sklearn.tree._tree.Tree"}),
    "LossNode": frozenset({"sklearn._loss._loss.CyHalfSquaredError"}),
    "RandomStateNode": frozenset({"numpy.random.mtrand.RandomState"}),
    "NdArrayNode": frozenset({"numpy.ndarray", "numpy.float64"}),
    "DictNode": frozenset({"builtins.dict"}),
    "ListNode": frozenset({"builtins.list"}),
    "TupleNode": frozenset({"builtins.tuple"}),
    "JsonNode": frozenset({"builtins.str"}),  # any JSON value, parsed with json.loads
}
KEY_TYPES = frozenset({"builtins.str"})  # a DictNode's key types: the one place a type may be named
REFUSED_KINDS = {
    "FunctionNode": "a function", "MethodNode": "a bound method", "PartialNode": "a functools.partial",
    "OperatorFuncNode": "an operator function", "TypeNode": "a type (a callable), not an instance",
    "ConstructorFromReduceNode": "a constructor call", "DefaultDictNode": "a defaultdict (its default_factory is called)",
}




# --- the schema walk: nothing is imported or built until every node is on the list -----------------
def one_line(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def read_schema(data: bytes, file: Path) -> Any:
    """The parsed schema.json of a skops file's bytes."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return json.loads(z.read("schema.json"))
    except Exception as e:  # a damaged zip, no schema.json, not JSON, nested too deep, ...
        raise PredictorError(f"{file}: not a readable skops file ({one_line(e)})") from None


def _refused(file: Path, name: str, why: str) -> PredictorError:
    shown = name if len(name) <= 200 else name[:200] + "..."
    return PredictorError(f"{file}: refused: [{shown!r}] ({why}); an hwnas predictor holds only the types in "
                          "hwnas.predictors.audit.ALLOWED; rebuild it with `hwnas predictors CONFIG`")


def _check_node(state: dict[str, Any], kinds: dict[str, frozenset[str]], ids: dict[int, tuple[str, str]], file: Path) -> str:
    """The type `state` (one node of schema.json) names, if its kind and type are in `kinds`."""
    kind, module, cls, node_id = (state.get(k) for k in ("__loader__", "__module__", "__class__", "__id__"))
    if not all(isinstance(s, str) for s in (kind, module, cls)) or not isinstance(node_id, int | None):
        raise _refused(file, repr({k: state.get(k) for k in ("__loader__", "__module__", "__class__", "__id__")}), "a malformed node")
    name, content = f"{module}.{cls}", state.get("content")
    if kind == "MethodNode" and isinstance(content, dict):
        name += f".{content.get('func')}"
    if kind not in kinds:
        raise _refused(file, name, REFUSED_KINDS.get(kind) or f"node kind {kind!r}, which an hwnas predictor has nowhere here")
    if name not in kinds[kind]:
        raise _refused(file, name, f"{kind}: not a type an hwnas predictor holds")
    # skops reuses the node first built for an id: one id must not stand for two different things
    if node_id is not None and ids.setdefault(node_id, (kind, name)) != (kind, name):
        raise _refused(file, name, f"node id {node_id} is also a {ids[node_id][0]} of {ids[node_id][1]}")
    return name


def audit_schema(schema: Any, file: Path) -> set[str]:
    """Check every node of a parsed schema.json against `ALLOWED` (raises `PredictorError` naming the
    first one that is not there); returns the types named. A DictNode's `key_types` (a list of the
    key's types, called on each key) may only name `KEY_TYPES`."""
    if not isinstance(schema, dict) or "__loader__" not in schema:
        raise PredictorError(f"{file}: not a skops object file (schema.json holds no object)")
    key_list, key_type = {"ListNode": ALLOWED["ListNode"]}, {"TypeNode": KEY_TYPES}
    names: set[str] = set()
    ids: dict[int, tuple[str, str]] = {}
    stack: list[tuple[Any, dict[str, frozenset[str]]]] = [(schema, ALLOWED)]
    while stack:  # depth first, in file order; every dict is looked at, wherever it sits
        item, kinds = stack.pop()
        if isinstance(item, list):
            stack.extend((x, kinds) for x in reversed(item))
        elif isinstance(item, dict):
            loader = None
            if "__loader__" in item:
                names.add(_check_node(item, kinds, ids, file))
                loader = item["__loader__"]
            for key, value in reversed(item.items()):
                inner = (key_list if loader == "DictNode" and key == "key_types" else
                         key_type if kinds is key_list and key == "content" else ALLOWED)
                stack.append((value, inner))
    return names


# --- after loading: the sizes native code trusts ---------------------------------------------------
def _estimators(root: Any):
    """Every scikit-learn estimator reachable from `root` (through attributes of any object, lists,
    dicts, object arrays)."""
    import numpy as np
    from sklearn.base import BaseEstimator

    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, BaseEstimator):
            yield obj
        if hasattr(obj, "__dict__") and not isinstance(obj, type):
            stack.extend(vars(obj).values())
        elif isinstance(obj, list | tuple):
            stack.extend(obj)
        elif isinstance(obj, dict):
            stack.extend(obj.values())
        elif isinstance(obj, np.ndarray) and obj.dtype == object:
            stack.extend(obj.flat)


def _tree_problem(est: Any) -> str | None:
    """Trees are walked by child index and read X by feature index, unchecked: both must be in range."""
    import numpy as np
    from sklearn.tree._tree import Tree

    tree, n_features = vars(est).get("tree_"), vars(est).get("n_features_in_")
    if tree is not None:
        if not isinstance(tree, Tree):
            return f"tree_ is a {type(tree).__name__}, not a Tree"
        n, node = tree.node_count, np.arange(tree.node_count)
        left, right, feature = tree.children_left, tree.children_right, tree.feature
        inner = (left > node) & (left < n) & (right > node) & (right < n) & (feature >= 0) & (feature < tree.n_features)
        if n < 1 or tree.n_features != n_features or not np.all(((left == -1) & (right == -1)) | inner):
            return "tree_ has a child or feature index out of range"
    members = vars(est).get("estimators_")
    members = members.flat if isinstance(members, np.ndarray) else members if isinstance(members, list) else []
    if any("tree_" in vars(m) and vars(m).get("n_features_in_") != n_features for m in members if hasattr(m, "__dict__")):
        return "has a tree fitted on another number of features"
    return None


def _boosting_problem(est: Any) -> str | None:
    """Gradient boosting adds tree k of each stage into column k of the init predictions, unchecked."""
    import numpy as np

    stages, init = vars(est).get("estimators_"), vars(est).get("init_")
    if stages is None:  # not fitted
        return None
    if not (isinstance(stages, np.ndarray) and stages.dtype == object and stages.ndim == 2 and stages.shape[1] == 1):
        return "estimators_ is not one tree per stage"
    if vars(est).get("n_trees_per_iteration_") != 1 or not (
            (isinstance(init, str) and init == "zero") or (hasattr(init, "__dict__") and vars(init).get("n_outputs_") == 1)):
        return "does not predict one value per sample"
    return None


def _svr_problem(est: Any) -> str | None:
    """libsvm reads as many support vectors and coefficients as `support_` has entries, unchecked."""
    import numpy as np

    d = vars(est)
    if "support_" not in d:  # not fitted
        return None
    try:
        n = np.shape(d.get("support_"))
        ok = (est._impl == "epsilon_svr" and d.get("kernel") in ("linear", "poly", "rbf", "sigmoid") and not d.get("_sparse")
              and len(n) == 1 and np.shape(d.get("support_vectors_")) == (*n, d.get("n_features_in_"))
              and np.shape(d.get("_dual_coef_")) == (1, *n) and np.shape(d.get("_intercept_")) == (1,)
              and np.shape(d.get("_n_support")) == (2,) and np.size(d.get("_probA")) == np.size(d.get("_probB")) == 0)
    except (TypeError, ValueError):  # ragged or odd values
        ok = False
    return None if ok else "support vectors, coefficients and intercept do not agree in size"


def check_loaded(predictor: Any, file: Path) -> None:
    """Refuse a loaded predictor that is not a fitted `AccuracyPredictor`; whose trees, boosting
    stages or support vectors disagree in size (native code, the tree walkers and libsvm, indexes
    them without bounds checks, so a tampered array could make it read or write out of bounds); or
    that cannot make one finite prediction on an arch of its own space (so it fails here, in one
    line, not in the middle of a search)."""
    import numpy as np
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.svm import SVR

    from .features import ArchFeaturizer, space_of
    from .models import AccuracyPredictor

    attrs = vars(predictor) if isinstance(predictor, AccuracyPredictor) else {}
    featurizer = attrs.get("featurizer_")
    if "model_" not in attrs or not isinstance(featurizer, ArchFeaturizer):
        what = (f"a {type(predictor).__name__}" if not isinstance(predictor, AccuracyPredictor) else
                "an AccuracyPredictor never fitted" if "model_" not in attrs else
                f"an AccuracyPredictor whose featurizer_ is a {type(featurizer).__name__}")
        raise PredictorError(f"{file}: holds {what}, not a fitted AccuracyPredictor; rebuild it with `hwnas predictors CONFIG`")
    for est in _estimators(predictor):
        problem = (_tree_problem(est) or (isinstance(est, GradientBoostingRegressor) and _boosting_problem(est))
                   or (isinstance(est, SVR) and _svr_problem(est)))
        if problem:
            raise PredictorError(f"{file}: refused: its {type(est).__name__} {problem} (a damaged or tampered file); "
                                 "rebuild it with `hwnas predictors CONFIG`")
    probe = copy.copy(predictor)  # the featurizer caches its space: predict on copies, leave the loaded one as it was
    probe.featurizer_ = copy.copy(featurizer)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mean, std = probe.predict([space_of(featurizer.space_config).sample(0)], return_std=True)
        finite = np.shape(mean) == np.shape(std) == (1,) and np.isfinite(mean).all() and np.isfinite(std).all()
    except Exception as e:
        raise PredictorError(f"{file}: the loaded predictor cannot predict ({one_line(e)}); rebuild it with "
                             "`hwnas predictors CONFIG`") from None
    if not finite:
        raise PredictorError(f"{file}: the loaded predictor predicts {np.ravel(mean)[:3]} +- {np.ravel(std)[:3]} for one arch, "
                             "not one finite value each; rebuild it with `hwnas predictors CONFIG`")
