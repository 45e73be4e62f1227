"""Manifests: the size and sha256 of every artifact a stage wrote, kept beside it and checked by
whoever reads it next.

Each folder a stage writes (a run's train/, corpus/, latency/, predictors/, search/, and an export
folder) holds a `manifest.json` with the command that (re)makes its files and, per file, its size
and sha256. Writers go through `Manifest.write` (an atomic write that lists the new content) or
`Manifest.add`; readers call `Manifest.verify` first. A file missing from its manifest, or whose
bytes changed (truncated, a flipped byte, a same-size edit), is refused with one line naming the
file and what to do: run the command again, after deleting the file when the command would read
the damaged file back (a checkpoint, the evaluation records, a latency table being built).

`write` updates the manifest twice: before the rename it lists the new content and keeps the old
as `previous`, after the rename only the new. A writer killed at any point leaves a file its
manifest accepts, so a resumed stage never mistakes its own interrupted write for damage.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .io import ArtifactError, atomic_path, atomic_write_json, file_lock, read_json, sha256_file

FORMAT = "hwnas-manifest-1"
NAME = "manifest.json"
# the folders of a run directory, and the command that (re)writes each
RUN_FOLDERS = {
    "train": "hwnas train CONFIG", "corpus": "hwnas train CONFIG", "latency": "hwnas latency CONFIG",
    "predictors": "hwnas predictors CONFIG", "search": "hwnas search CONFIG",
}
EXPORT_COMMAND = "hwnas export RUN_DIR --force"


def _entry(path: Path, resume: bool) -> dict[str, Any]:
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path), "resume": resume}


class Manifest:
    """The manifest of `folder`, whose files `command` (re)writes."""

    def __init__(self, folder: str | Path, command: str):
        self.folder, self.command = Path(folder), command
        self.path = self.folder / NAME

    @classmethod
    def of(cls, run_dir: str | Path, folder: str) -> Manifest:
        """The manifest of one of a run directory's stage folders (`RUN_FOLDERS`)."""
        return cls(Path(run_dir) / folder, RUN_FOLDERS[folder])

    # --- the manifest file ------------------------------------------------------------------------
    def files(self) -> dict[str, dict[str, Any]]:
        """The listed files (name -> entry); empty when there is no manifest yet."""
        if not self.path.exists():
            return {}
        doc = read_json(self.path, "manifest", f"delete the files of {self.folder} and run `{self.command}`")
        files = doc.get("files")
        if doc.get("format") != FORMAT or not isinstance(files, dict) or not all(
                isinstance(e, dict) and isinstance(e.get("sha256"), str) and isinstance(e.get("bytes"), int) for e in files.values()):
            raise ArtifactError(f"{self.path}: not an hwnas manifest (format {doc.get('format')!r}) or its entries are "
                                f"damaged; delete the files of {self.folder} and run `{self.command}`")
        return files

    @contextmanager
    def _update(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The listed files, to change in place; written back atomically, under a lock."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with file_lock(self.folder):
            files = self.files()
            yield files
            atomic_write_json(self.path, {"format": FORMAT, "command": self.command, "files": dict(sorted(files.items()))})

    # --- writers ----------------------------------------------------------------------------------
    @contextmanager
    def write(self, name: str, resume: bool = False) -> Iterator[Path]:
        """Write `name` atomically through the yielded temp path and list its new content.
        `resume`: the writer reads the file back later (so damage there means: delete it)."""
        def listed(tmp: Path) -> None:
            with self._update() as files:
                old = files.get(name)
                files[name] = _entry(tmp, resume) | ({"previous": {k: old[k] for k in ("bytes", "sha256")}} if old else {})

        with atomic_path(self.folder / name, before_rename=listed) as tmp:
            yield tmp
        with self._update() as files:
            files[name].pop("previous", None)

    def write_text(self, name: str, text: str, resume: bool = False) -> None:
        with self.write(name, resume) as tmp:
            tmp.write_text(text)

    def write_json(self, name: str, obj: Any) -> None:
        import json

        self.write_text(name, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def add(self, *names: str) -> None:
        """List files already in place (written whole by someone else, e.g. in a temp folder)."""
        with self._update() as files:
            for name in names:
                files[name] = _entry(self.folder / name, False)

    def forget(self, *names: str) -> None:
        """Unlist files a stage is about to write again: until it lists them anew, readers refuse them."""
        if self.path.exists() and any(n in self.files() for n in names):
            with self._update() as files:
                for name in names:
                    files.pop(name, None)

    # --- readers ----------------------------------------------------------------------------------
    def verify(self, *names: str) -> dict[str, str]:
        """Check that each file is listed and unchanged; returns their sha256 by name. Raises
        `ArtifactError` naming the first file that is not, and what to do."""
        files = self.files()
        out = {}
        for name in names:
            path = self.folder / name
            entry = files.get(name)
            if entry is None:
                where = f"not listed in {self.path}" if self.path.exists() else f"no {self.path} lists it"
                if not path.exists():
                    raise ArtifactError(f"{path}: missing ({where}); run `{self.command}` to make it")
                raise ArtifactError(f"{path}: {where} (the command that writes it did not finish, or an older hwnas or "
                                    f"something else wrote it); delete it and run `{self.command}`")
            fix = f"delete it and run `{self.command}`" if entry.get("resume") else f"run `{self.command}` to write it again"
            if not path.is_file():
                raise ArtifactError(f"{path}: missing (listed in {self.path}); {fix}")
            accepted = [entry] + ([entry["previous"]] if "previous" in entry else [])
            size = path.stat().st_size
            if all(size != e["bytes"] for e in accepted):
                raise ArtifactError(f"{path}: holds {size} bytes, {self.path} lists {entry['bytes']} (truncated or "
                                    f"changed since `{self.command}` wrote it); {fix}")
            sha = sha256_file(path)
            if all(sha != e["sha256"] for e in accepted):
                raise ArtifactError(f"{path}: changed since `{self.command}` wrote it (sha256 {sha[:12]}..., {self.path} "
                                    f"lists {entry['sha256'][:12]}...); {fix}")
            out[name] = sha
        return out

    def check(self, *names: str) -> str | None:
        """`verify`, as the reason it fails (None: every file is fine)."""
        try:
            self.verify(*names)
        except ArtifactError as e:
            return str(e)
        return None


def verify_file(path: str | Path, command: str) -> str:
    """Check one file against the manifest of its folder (written by `command`); its sha256."""
    path = Path(path)
    return Manifest(path.parent, command).verify(path.name)[path.name]
