"""File I/O shared by every stage: atomic writes (write to a temp file beside the target, then
rename, so a crash never leaves a half-written checkpoint, table or result), an advisory lock
for files several processes update, sha256 of a file, and JSON artifacts read with one-line errors."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import HwnasError


class ArtifactError(HwnasError, ValueError):
    """An artifact of a run that is missing, unreadable, damaged or changed since it was written."""


@contextmanager
def atomic_path(path: str | Path, before_rename: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success rename it onto `path` (calling
    `before_rename(tmp)` just before), else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a writer that was killed
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 (and writers may recreate the file): usual permissions
        if before_rename is not None:
            before_rename(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path` for the block: a folder (locked itself, so no lock
    file is left in it) or a file (created if absent)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    fd = os.open(path, os.O_RDONLY) if path.is_dir() else os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_json(path: str | Path, what: str, fix: str, kind: type = dict) -> Any:
    """The JSON document at `path`, of type `kind`; `ArtifactError` naming the file, what it should
    be (`what`) and how to get it back (`fix`, e.g. "run `hwnas search CONFIG`") when it is missing,
    unreadable, not JSON or not a `kind`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no {what}; {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: cannot read the {what} ({e}); {fix}") from None
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ArtifactError(f"{path}: the {what} is not valid JSON (truncated or corrupt: {e}); {fix}") from None
    if not isinstance(doc, kind):
        raise ArtifactError(f"{path}: the {what} should be a JSON {kind.__name__}, got {type(doc).__name__}; {fix}")
    return doc


def unwritable(path: str | Path, folder: bool) -> str | None:
    """Why `path` (a folder when `folder`, else a file) cannot be written or created, or None if
    it can: it exists as the other kind, a parent is a file, or the nearest existing folder refuses
    a new file. Creates nothing (the probe file is anonymous), so it is safe before any work."""
    if not str(path).strip() or "\0" in str(path):
        return "is not a path (empty, or holds a NUL character)"
    try:
        return _unwritable(Path(path).absolute(), folder)
    except (OSError, ValueError) as e:  # a name too long, a NUL byte, a loop of links
        return f"cannot be used as a path ({getattr(e, 'strerror', None) or e})"


def _unwritable(path: Path, folder: bool) -> str | None:
    if path.exists():
        if folder != path.is_dir():
            return "exists and is not a folder" if folder else "is a folder"
        if not os.access(path, os.W_OK | (os.X_OK if folder else 0)):
            return "is not writable"
        if not folder:
            return None
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        return f"cannot write in {existing} ({e.strerror or e})"
    return None
