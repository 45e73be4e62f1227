"""The package map holds: each package imports only packages below it, and no module reaches into
another module's private names (what is shared is public). ARCHITECTURE.md draws the same map."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# lowest first; a package may import itself and anything listed before it
LAYERS = ["core", "search_space", "kernels", "supernet", "latency", "predictors", "search", "export", "hwnas"]
FOLDERS = {"core": REPO / "hwnas" / "core", "hwnas": REPO / "hwnas"}


def package_files(package: str) -> list[Path]:
    folder = FOLDERS.get(package, REPO / package)
    files = sorted(folder.glob("*.py"))
    return files


def package_of(module: str) -> str | None:
    """The layer a dotted `hwnas...` module belongs to (None: not hwnas)."""
    parts = module.split(".")
    if parts[0] != "hwnas" or module == "hwnas":  # the root package holds only __version__
        return None
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "hwnas"


def resolve(node: ast.ImportFrom, package: str) -> str:
    """The absolute module an import names (relative imports resolved inside `package`)."""
    if not node.level:
        return node.module or ""
    base = "hwnas" if package == "hwnas" else f"hwnas.{package}"
    return base + (f".{node.module}" if node.module else "")


def imports(path: Path, package: str):
    """(line, absolute module, imported names) for every import in `path`, function-local ones included."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and resolve(node, package) == "hwnas":  # from hwnas import kernels
            for a in node.names:
                yield node.lineno, f"hwnas.{a.name}", []
        elif isinstance(node, ast.ImportFrom):
            yield node.lineno, resolve(node, package), [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for a in node.names:
                yield node.lineno, a.name, []


def private_uses(path: Path, package: str):
    """(line, what) for each private name of another module this file imports or reads."""
    tree = ast.parse(path.read_text())
    modules = {}  # local name -> module, for `import x.y as z` and `from pkg import module`
    for lineno, module, names in imports(path, package):
        for name in names:
            if name.startswith("_") and not name.startswith("__"):
                yield lineno, f"{module}.{name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                modules[a.asname or a.name.split(".")[0]] = a.name
        elif isinstance(node, ast.ImportFrom):
            for a in node.names:
                modules[a.asname or a.name] = f"{resolve(node, package)}.{a.name}"
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")
                and modules[node.value.id].startswith("hwnas")):
            yield node.lineno, f"{modules[node.value.id]}.{node.attr}"


def test_every_package_is_on_the_map():
    folders = {p.name for p in REPO.iterdir() if (p / "__init__.py").exists()} - {"tests", "experiments"}
    assert folders | {"core"} == set(LAYERS)


@pytest.mark.parametrize("package", LAYERS)
def test_imports_point_down(package):
    allowed = set(LAYERS[: LAYERS.index(package) + 1])
    wrong = []
    for path in package_files(package):
        for lineno, module, _ in imports(path, package):
            target = package_of(module)
            if target is not None and target not in allowed:
                wrong.append(f"{path.relative_to(REPO)}:{lineno} imports {module} ({target} is above {package})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("package", LAYERS)
def test_no_private_names_of_other_modules(package):
    wrong = [f"{path.relative_to(REPO)}:{lineno} uses {what}"
             for path in package_files(package) for lineno, what in private_uses(path, package)]
    assert not wrong, "\n".join(wrong)


def test_the_checks_catch_what_they_forbid(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from hwnas import search\nfrom .train import _param_groups\nimport hwnas.search.linas as L\nL._pick_spread\n")
    assert [package_of(m) for _, m, _ in imports(bad, "supernet")] == ["search", "supernet", "search"]
    assert [w for _, w in private_uses(bad, "supernet")] == ["hwnas.supernet.train._param_groups", "hwnas.search.linas._pick_spread"]


def test_no_source_function_is_over_80_lines():
    long = [f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for package in LAYERS for path in package_files(package)
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 80]
    assert not long, "\n".join(long)
