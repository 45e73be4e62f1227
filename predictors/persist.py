"""Save and load a fitted predictor without unpickling arbitrary code.

`save_predictor` writes `predictor.skops` (skops' format: a zip of JSON and numpy arrays; loading
rebuilds only the types it is told to trust) and `predictor.json` (what the predictor is, what it
was fitted on, its held-out quality, and the versions of the libraries that made it).
`load_predictor` trusts only scikit-learn, numpy, scipy and hwnas.predictors types and refuses a
file holding anything else.
"""

from __future__ import annotations

import json
import platform
import warnings
from pathlib import Path
from typing import Any

from hwnas.search_space import HwnasError
from hwnas.search_space.io import atomic_path, atomic_write_json

PREDICTOR_FILE = "predictor.skops"
MANIFEST_FILE = "predictor.json"
MANIFEST_FORMAT = 1
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "hwnas.predictors.")


class PredictorError(HwnasError, ValueError):
    """A predictor (or its inputs) that cannot be built, saved or loaded."""


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
    import zipfile

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
        raise PredictorError(f"{manifest}: no predictor manifest; run `hwnas predictors` first")
    try:
        return json.loads(manifest.read_text())
    except ValueError as e:
        raise PredictorError(f"{manifest}: unreadable manifest ({e})") from None


def load_predictor(path: str | Path):
    """A fitted predictor from `path` (the folder holding predictor.skops, or the file itself).

    The result predicts from archs or gene vectors: `predict(X)`, `predict(X, return_std=True)`."""
    sio = _skops()
    file, manifest = _paths(path)
    if not file.is_file():
        raise PredictorError(f"{file}: no saved predictor; run `hwnas predictors` first")
    try:
        types = sio.get_untrusted_types(file=file)
    except Exception as e:  # skops raises zipfile / json errors for damaged files
        raise PredictorError(f"{file}: not a readable skops file ({type(e).__name__}: {e})") from None
    refused = [t for t in types if not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise PredictorError(f"{file}: holds types outside scikit-learn/numpy/scipy/hwnas.predictors, refused: {refused}")
    if manifest.is_file():
        saved = load_manifest(file).get("versions", {})
        now = library_versions()
        for lib in ("scikit-learn", "numpy"):
            if saved.get(lib) and saved[lib] != now[lib]:
                warnings.warn(f"{file}: saved with {lib} {saved[lib]}, loading with {now[lib]}; predictions may differ",
                              stacklevel=2)
    try:
        return sio.load(file, trusted=types)
    except Exception as e:
        raise PredictorError(f"{file}: cannot load the predictor ({type(e).__name__}: {e})") from None
