"""Save and load a fitted predictor without unpickling arbitrary code.

`save_predictor` writes `predictor.skops` (skops' format: a zip of JSON and numpy arrays; loading
rebuilds only the types it is told to trust) and `predictor.json` (what the predictor is, what it
was fitted on, its held-out quality, and the versions of the libraries that made it).
`load_predictor` reads only what a fitted hwnas predictor holds: before skops builds anything the
file's schema is audited against an exact list of types, and after loading, the arrays native code
trusts and one prediction are checked (`predictors.audit`).
"""

from __future__ import annotations

import json
import platform
import warnings
import zipfile
from pathlib import Path
from typing import Any

from hwnas.core.io import atomic_path, atomic_write_json

from .audit import ALLOWED, KEY_TYPES, audit_schema, check_loaded, one_line, read_schema
from .errors import PredictorError

PREDICTOR_FILE = "predictor.skops"
MANIFEST_FILE = "predictor.json"
MANIFEST_FORMAT = 1


def _skops():
    try:
        import skops.io as sio
    except ImportError:  # pragma: no cover - skops is a declared dependency
        raise PredictorError("saving and loading predictors needs the `skops` package: pip install skops") from None
    return sio


def library_versions() -> dict[str, str]:
    import numpy
    import scipy
    import sklearn

    import hwnas

    versions = {"python": platform.python_version(), "scikit-learn": sklearn.__version__, "numpy": numpy.__version__,
                "scipy": scipy.__version__, "hwnas": hwnas.__version__}
    try:
        import skops

        versions["skops"] = skops.__version__
    except ImportError:  # pragma: no cover
        pass
    return versions


def save_predictor(predictor: Any, out_dir: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write the fitted `predictor` and its manifest into `out_dir` (atomically); returns the
    predictor file's path."""
    sio = _skops()
    out_dir = Path(out_dir)
    path = out_dir / PREDICTOR_FILE
    with atomic_path(path) as tmp:
        sio.dump(predictor, tmp, compression=zipfile.ZIP_DEFLATED)  # the JSON schema of 400 trees compresses ~20x
    manifest = {"format": MANIFEST_FORMAT, "file": PREDICTOR_FILE, "class": f"{type(predictor).__module__}.{type(predictor).__qualname__}",
                "versions": library_versions(), **(info or {})}
    atomic_write_json(out_dir / MANIFEST_FILE, manifest)
    return path


def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_dir():
        return path / PREDICTOR_FILE, path / MANIFEST_FILE
    return path, path.with_name(MANIFEST_FILE)


def load_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest beside a saved predictor (`path`: the folder or the .skops file)."""
    _, manifest = _paths(path)
    if not manifest.is_file():
        raise PredictorError(f"{manifest}: no predictor manifest; run `hwnas predictors CONFIG` first")
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        raise PredictorError(f"{manifest}: unreadable manifest ({one_line(e)})") from None
    if not isinstance(data, dict):
        raise PredictorError(f"{manifest}: unreadable manifest (a JSON {type(data).__name__}, not an object)")
    return data


def load_predictor(path: str | Path):
    """A fitted predictor from `path` (the folder holding predictor.skops, or the file itself).

    The result predicts from archs or gene vectors: `predict(X)`, `predict(X, return_std=True)`.
    A file holding anything but the types in `audit.ALLOWED` is refused before anything in it is built."""
    sio = _skops()
    file, manifest = _paths(path)
    if not file.is_file():
        raise PredictorError(f"{file}: no saved predictor; run `hwnas predictors CONFIG` first")
    try:
        data = file.read_bytes()  # checked and loaded from the same bytes
    except OSError as e:
        raise PredictorError(f"{file}: cannot read the predictor ({one_line(e)})") from None
    trusted = audit_schema(read_schema(data, file), file)
    if manifest.is_file():
        saved = load_manifest(file).get("versions")
        now = library_versions()
        for lib in ("scikit-learn", "numpy"):
            if isinstance(saved, dict) and saved.get(lib) and saved[lib] != now[lib]:
                warnings.warn(f"{file}: saved with {lib} {saved[lib]}, loading with {now[lib]}; predictions may differ",
                              stacklevel=2)
    try:
        predictor = sio.loads(data, trusted=sorted(trusted))
    except Exception as e:
        raise PredictorError(f"{file}: cannot load the predictor ({one_line(e)})") from None
    check_loaded(predictor, file)
    return predictor


__all__ = ["ALLOWED", "KEY_TYPES", "PredictorError", "library_versions", "load_manifest", "load_predictor",
           "save_predictor"]
