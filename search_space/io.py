"""Atomic file writes shared by every stage: write to a temp file beside the target, then rename,
so a crash never leaves a half-written checkpoint, table or result."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path in the target's folder; on success rename it onto `path`, else delete it."""
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
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


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
