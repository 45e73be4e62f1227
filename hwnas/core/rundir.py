"""Which experiment a run directory belongs to, so no command of another experiment writes there.

The first stage that writes into a run directory records in `<run_dir>/run.json` the experiment it
belongs to: its name, search space and seed (what every artifact of the run depends on). Every
stage calls `claim_run_dir` before it writes anything; a directory that belongs to another
experiment, or that holds files but no run.json (not an hwnas run directory), is refused with one
line saying what differs. While a stage runs it holds `stage_lock`, so a second command running
the same stage on the same run directory at the same time is refused instead of interleaving its
writes with the first's.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import HwnasError
from .io import atomic_write_json, file_lock, read_json
from .manifest import RUN_FOLDERS

RUN_FILE = "run.json"
FORMAT = "hwnas-run-1"


class RunDirError(HwnasError, ValueError):
    """A run directory that belongs to another experiment, or is not a run directory at all."""


# config fields added after run records (run.json, checkpoints, predictor manifests, the pipeline's
# stage records) existed, by dotted key, with the value that makes hwnas do what it did before the
# field existed: a record made without one is read as if it named that value, so upgrading hwnas
# neither orphans a run nor re-runs its finished stages. A new field whose default changes what a
# stage makes does not belong here (the stages that read it should run again).
FIELDS_ADDED: dict[str, Any] = {
    "search_space.positions": "learned",
    "latency.workloads": ["prefill"],
    "latency.decode_context": None,
    "latency.n_user_view": 0,
}


def recorded_config(doc: Any, under: str = "") -> Any:
    """A config as a record made by an earlier hwnas reads (`under`: the dotted key of the section
    `doc` is, "" for a whole config): each field added since (`FIELDS_ADDED`) that it lacks, where
    its section is there, filled in at the value hwnas had before the field existed."""
    prefix = f"{under}." if under else ""
    for key, value in FIELDS_ADDED.items():
        if key.startswith(prefix):
            doc = _filled(doc, key[len(prefix):].split("."), value)
    return doc


def _filled(doc: Any, path: list[str], value: Any) -> Any:
    if not isinstance(doc, dict):
        return doc
    head, *rest = path
    if not rest:
        return doc if head in doc else {**doc, head: value}
    return {**doc, head: _filled(doc[head], rest, value)} if head in doc else doc


def recorded_space(space: Any) -> Any:
    """A search-space section as recorded (JSON), read as `recorded_config` reads it, so that upgrading
    hwnas does not orphan a run."""
    return recorded_config(space, "search_space")


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """The dotted path of the first value that differs between two JSON-like values (None: equal)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b), key=str):
            found = first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else str(key))
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            found = first_difference(x, y, f"{where}[{i}]")
            if found is not None:
                return found
        return None
    return None if a == b else (where or "value")


def lookup(doc: Any, path: str) -> Any:
    """The value at a dotted path as `first_difference` names it (`a.b[2].c`), None where there is none."""
    import re

    for part in re.findall(r"[^.\[\]]+", path):
        if isinstance(doc, dict):
            doc = doc.get(part)
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return None
    return doc


def run_search_space(run_dir: str | Path) -> dict[str, Any] | None:
    """The search-space section the run directory's run.json records (None: no readable record)."""
    try:
        space = json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8")).get("search_space")
    except (OSError, ValueError, AttributeError):
        return None
    return recorded_space(space) if isinstance(space, dict) else None


def experiment_name(run_dir: str | Path) -> str:
    """The experiment a stage folder (or a run directory) belongs to: the name its run.json records,
    else the run directory's folder name."""
    run_dir = Path(run_dir)
    for folder in (run_dir, run_dir.parent):
        try:
            name = json.loads((folder / RUN_FILE).read_text(encoding="utf-8")).get("name")
        except (OSError, ValueError, AttributeError):
            continue
        return str(name) if name else folder.name
    return run_dir.parent.name if run_dir.name in (*RUN_FOLDERS, "export") else run_dir.name


def claim_run_dir(run_dir: str | Path, search_space: dict[str, Any], seed: int | None = None, name: str | None = None,
                  write: bool = True) -> None:
    """Refuse `run_dir` if it belongs to another experiment (another name, search space or seed)
    or is not a run directory; else record this experiment as its owner (when not yet recorded;
    `write=False`: only check, as a command does before the stage that writes). `search_space`:
    the search-space section as JSON (`model_dump(mode="json")`). `seed`, `name`: None when the
    caller does not know them (a library call): they are not compared then, and recorded by the
    first call that knows them."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: run_dir exists and is not a folder; set run_dir to a folder")
    path = run_dir / RUN_FILE
    ours = {"name": name, "search_space": search_space, "seed": seed}
    if path.exists():
        _check_owner(path, ours, write)
        return
    _refuse_foreign(run_dir)  # before anything is made: nothing is written into a foreign folder
    if not write:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(run_dir):
        if path.exists():  # another process claimed it meanwhile
            _check_owner(path, ours, write)
            return
        _refuse_foreign(run_dir)
        import hwnas

        atomic_write_json(path, {"format": FORMAT, **ours, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                 "hwnas": hwnas.__version__})


def _refuse_foreign(run_dir: Path) -> None:
    """A folder holding files but no run.json (the temp file of a claim aside) is not ours."""
    if run_dir.exists() and any(not p.name.startswith(".run") for p in run_dir.iterdir()):
        raise RunDirError(f"{run_dir}: holds files but no {RUN_FILE}, so it is not an hwnas run directory (or an older "
                          "hwnas made it); set run_dir (or name) to a new folder")


def _check_owner(path: Path, ours: dict[str, Any], write: bool) -> None:
    theirs = read_json(path, "run record", "it records which experiment the run directory belongs to; restore it, or "
                                           "set run_dir to a new folder")
    if theirs.get("format") != FORMAT:
        raise RunDirError(f"{path}: not an hwnas run record (format {theirs.get('format')!r}); set run_dir to a new folder")
    owner = f"experiment {theirs.get('name')!r}" if theirs.get("name") else "another experiment"
    advice = "set run_dir (or name) to a new folder for this one"
    if ours["name"] is not None and theirs.get("name") is not None and ours["name"] != theirs["name"]:
        raise RunDirError(f"{path.parent}: belongs to {owner}, not to this config's experiment {ours['name']!r}; {advice}")
    if ours["seed"] is not None and theirs.get("seed") is not None and ours["seed"] != theirs["seed"]:
        raise RunDirError(f"{path.parent}: belongs to {owner} with seed {theirs.get('seed')!r}; this config has seed "
                          f"{ours['seed']!r} (a new seed is a new run); {advice}")
    recorded = recorded_space(theirs.get("search_space"))
    where = first_difference(recorded, ours["search_space"])
    if where is not None:
        there, here = lookup(recorded, where), lookup(ours["search_space"], where)
        raise RunDirError(f"{path.parent}: belongs to {owner} with another search space (search_space.{where}: "
                          f"{there!r} there, {here!r} in this config); {advice}")
    learnt = {k: ours[k] for k in ("name", "seed") if ours[k] is not None and theirs.get(k) is None}
    if learnt and write:  # a library call claimed it first: record what this caller knows
        atomic_write_json(path, theirs | learnt)


_held: dict[Path, int] = {}  # the stage locks this process holds, and how many times over


@contextmanager
def stage_lock(run_dir: str | Path, stage: str) -> Iterator[None]:
    """Hold `<run_dir>/.<stage>.lock` for the block (an flock, which the kernel drops if the process
    dies; the file is removed on the way out). Another process holding it is refused at once,
    naming its pid; this process may take it again inside the block (a stage calling its parts)."""
    import fcntl

    path = (Path(run_dir) / f".{stage}.lock").absolute()
    if path in _held:
        _held[path] += 1
        try:
            yield
        finally:
            _held[path] -= 1
        return
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirError(f"{run_dir}: another `hwnas {stage}` ({holder}) is writing this run directory now; wait for it "
                              "to finish") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # the holder before us removed it as we opened it
            same = False
        if same:
            break
        os.close(fd)  # locked a file that is no longer the lock: take the new one
    _held[path] = 1
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield
    finally:
        del _held[path]
        path.unlink(missing_ok=True)  # before the unlock: whoever opens it next makes a new one
        os.close(fd)
