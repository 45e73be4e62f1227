"""Byte-level corpora for supernet training: build once into raw uint8 files, then sample batches.

`build_corpus(source, out_dir)` turns a source into three files, all written atomically and listed
with their sha256 in out_dir/manifest.json (`core.manifest`):

    out_dir/train.bin    raw bytes of the train split (token = byte, vocab 256)
    out_dir/val.bin      raw bytes of the validation split
    out_dir/corpus.json  what was built from what (CorpusInfo): file-list hash, sizes, entropies

Sources: None or "stdlib" (the installed Python's standard library sources; no download), a text
file, a folder of text files, or "hf:<dataset>[:<split>]" (needs `datasets` and network).
Stdlib sources are taken byte for byte (a few test files there are deliberately not UTF-8); in a
folder, only UTF-8 text files count (no NUL byte; hidden entries and __pycache__ skipped).
Files are split into train / validation by a hash of their relative path, so the split is the
same on every machine; a single file is split by bytes instead (its last `val_fraction`).
Validation happens before anything is written: a bad source leaves `out_dir` untouched.

A corpus whose files no longer match the manifest is rebuilt by `build_corpus` (it is derived from
its source) and refused by `Corpus.load`.

`Corpus.load(out_dir)` memory-maps the two splits (never read whole into RAM); `batch` draws
random windows with a caller-owned `torch.Generator`, `val_batches` walks a fixed set of windows.
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from hwnas.core.errors import HwnasError
from hwnas.core.manifest import RUN_FOLDERS, Manifest

__all__ = [
    "CORPUS_FORMAT", "Corpus", "CorpusError", "CorpusInfo", "HF_DEFAULT_MAX_BYTES", "SEPARATOR",
    "SPLITS", "build_corpus", "default_corpus_files", "unigram_entropy",
]

SEPARATOR = b"\n\n"  # joins consecutive files of a split
SPLITS = ("train", "val")
CORPUS_FORMAT = 1  # bump when the layout or the split rule changes (old corpus.json then rebuilds)
HF_DEFAULT_MAX_BYTES = 2_000_000  # train cap for "hf:" sources when max_bytes is None: keep it small
_EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
_CHUNK = 1 << 20
FILES = ("train.bin", "val.bin", "corpus.json")


def _manifest(out_dir: Path) -> Manifest:
    return Manifest(out_dir, RUN_FOLDERS["corpus"])


class CorpusError(HwnasError, ValueError):
    """A corpus source or a built corpus is unusable; the message names the path and the problem."""

    def __init__(self, where: str | Path, problem: str):
        self.where, self.problem = str(where), problem
        super().__init__(f"corpus: {where}: {problem}")


@dataclass(frozen=True)
class CorpusInfo:
    """What corpus.json records: the source, the build parameters, and each split's size."""

    source: str  # "stdlib", an absolute path, or "hf:<dataset>[:<split>]"
    root: str  # the folder (or file) relative paths are taken from
    n_files: int  # files (records for hf) that went into the file-list hash
    files_sha256: str  # sha256 over the sorted relative paths and their sizes
    val_fraction: float
    max_bytes: int | None
    n_train_files: int  # files assigned to each split (before the max_bytes cap)
    n_val_files: int
    train_bytes: int
    val_bytes: int
    train_entropy: float  # unigram entropy of the split, bits per byte
    val_entropy: float
    train_sha256: str  # sha256 of train.bin / val.bin
    val_sha256: str
    format: int = CORPUS_FORMAT

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CorpusInfo:
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(d, dict):
            raise CorpusError("corpus.json", f"expected an object, got {type(d).__name__}")
        missing = [n for n in names if n not in d]
        if missing:
            raise CorpusError("corpus.json", f"missing fields {missing}")
        return cls(**{n: d[n] for n in names})

    def n_bytes(self, split: str) -> int:
        return self.train_bytes if _check_split(split) == "train" else self.val_bytes

    def entropy(self, split: str) -> float:
        return self.train_entropy if _check_split(split) == "train" else self.val_entropy


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return split


def unigram_entropy(counts: np.ndarray) -> float:
    """Shannon entropy, in bits, of the distribution given by byte counts (0.0 for no bytes)."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log2(p)).sum())


# ---------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Piece:
    """One unit of a split: a whole file, a byte range of one, or an in-memory record (hf)."""

    rel: str  # relative POSIX path (or record id): what the split rule and the hash see
    size: int
    path: Path | None = None
    data: bytes | None = None
    start: int = 0

    def chunks(self, limit: int) -> Iterator[bytes]:
        """The piece's bytes, at most `limit` of them, in chunks."""
        want = min(self.size, limit)
        if self.data is not None:
            yield self.data[self.start : self.start + want]
            return
        assert self.path is not None
        try:
            with open(self.path, "rb") as f:
                f.seek(self.start)
                while want > 0:
                    chunk = f.read(min(want, _CHUNK))
                    if not chunk:
                        raise CorpusError(self.path, "file changed while the corpus was built (shorter)")
                    want -= len(chunk)
                    yield chunk
        except OSError as e:
            raise CorpusError(self.path, f"cannot read ({e.strerror or e})") from e


def default_corpus_files() -> tuple[Path, list[Path]]:
    """The installed Python's stdlib folder and its `.py` sources, sorted by relative POSIX path.

    Third-party packages (site-packages, dist-packages) and __pycache__ are left out.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _EXCLUDED_DIRS]  # prune: never walk site-packages
        files += [Path(folder, n) for n in names if n.endswith(".py") and os.path.isfile(os.path.join(folder, n))]
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    return root, files


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as e:
        raise CorpusError(path, f"cannot read ({e.strerror or e})") from e


def _is_text(path: Path) -> bool:
    """Valid UTF-8 with no NUL byte (read in chunks, so a big file never sits in RAM whole)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                if b"\0" in chunk:
                    return False
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    except OSError as e:
        raise CorpusError(path, f"cannot read ({e.strerror or e})") from e
    return True


def _stdlib_pieces() -> tuple[str, list[_Piece]]:
    root, files = default_corpus_files()
    pieces = [_Piece(p.relative_to(root).as_posix(), _size(p), path=p) for p in files]
    pieces = [p for p in pieces if p.size > 0]  # empty __init__.py files add nothing
    if not pieces:
        raise CorpusError(root, "folder holds no text files")
    return str(root), pieces


def _folder_pieces(root: Path, skip: Path) -> list[_Piece]:
    """Every non-empty UTF-8 text file under root (hidden entries, __pycache__ and `skip` left out)."""
    pieces = []
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if p == skip or skip in p.parents or not p.is_file():
            continue
        size = _size(p)
        if size > 0 and _is_text(p):
            pieces.append(_Piece(rel.as_posix(), size, path=p))
    if not pieces:
        raise CorpusError(root, "folder holds no text files")
    return sorted(pieces, key=lambda p: p.rel)


def _file_piece(path: Path) -> _Piece:
    size = _size(path)
    if size == 0:
        raise CorpusError(path, "file is empty")
    if not _is_text(path):
        raise CorpusError(path, "not a text file (binary content)")
    return _Piece(path.name, size, path=path)


def _parse_hf(source: str) -> tuple[str, str]:
    name, _, split = source[len("hf:") :].partition(":")
    if not name:
        raise CorpusError(source, "expected hf:<dataset>[:<split>]")
    return name, split or "train"


def _hf_pieces(source: str, budget: int) -> list[_Piece]:
    """Records of a Hugging Face dataset (streamed) until `budget` bytes: each record is a 'file'."""
    name, split = _parse_hf(source)
    need = "needs the `datasets` package and network access"
    try:
        import datasets
    except ImportError as e:
        raise CorpusError(source, f"{need} (`datasets` is not installed)") from e
    pieces: list[_Piece] = []
    total = 0
    try:
        for i, record in enumerate(datasets.load_dataset(name, split=split, streaming=True)):
            text = record.get("text")
            if not isinstance(text, str):
                text = next((v for v in record.values() if isinstance(v, str)), "")
            data = text.encode("utf-8")
            if data:
                pieces.append(_Piece(f"{split}/{i:09d}", len(data), data=data))
                total += len(data) + len(SEPARATOR)
            if total >= budget:
                break
    except Exception as e:  # network, missing dataset, bad split: all mean "cannot load it here"
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CorpusError(source, f"{need}; loading failed ({type(e).__name__}: {msg})") from e
    if not pieces:
        raise CorpusError(source, "dataset holds no text records")
    return pieces


def _files_sha256(pieces: list[_Piece]) -> str:
    h = hashlib.sha256()
    for p in sorted(pieces, key=lambda p: p.rel):
        h.update(f"{p.rel}\t{p.size}\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------- the split


def _score(rel: str) -> int:
    return int(hashlib.sha256(rel.encode("utf-8")).hexdigest()[:8], 16) % 10000


def _split_by_file(pieces: list[_Piece], val_fraction: float) -> tuple[list[_Piece], list[_Piece]]:
    """A file goes to val when the hash of its relative path falls under val_fraction; each split
    gets at least one file (the lowest-scoring file to val, the highest to train)."""
    threshold = val_fraction * 10000
    scores = {p.rel: _score(p.rel) for p in pieces}
    in_val = {p.rel for p in pieces if scores[p.rel] < threshold}
    by_score = sorted(pieces, key=lambda p: (scores[p.rel], p.rel))
    if not in_val:
        in_val.add(by_score[0].rel)
    if len(in_val) == len(pieces):
        in_val.discard(by_score[-1].rel)
    return [p for p in pieces if p.rel not in in_val], [p for p in pieces if p.rel in in_val]


def _split_by_bytes(piece: _Piece, val_fraction: float) -> tuple[list[_Piece], list[_Piece]]:
    n_val = max(1, int(piece.size * val_fraction))
    n_train = piece.size - n_val
    if n_train < 1:
        raise CorpusError(piece.path or piece.rel, f"file too small to split ({piece.size} bytes)")
    train = dataclasses.replace(piece, size=n_train)
    val = dataclasses.replace(piece, size=n_val, start=piece.start + n_train)
    return [train], [val]


def _val_cap(max_bytes: int, val_fraction: float) -> int:
    """The val cap that goes with train cap max_bytes: val:train stays val_fraction:(1 - val_fraction)."""
    return max(1, math.ceil(max_bytes * val_fraction / (1 - val_fraction)))


def _stream(pieces: list[_Piece], cap: int | None) -> Iterator[bytes]:
    """The pieces joined by SEPARATOR, cut after `cap` bytes."""
    left = sum(p.size for p in pieces) + len(SEPARATOR) * len(pieces) if cap is None else cap
    for i, piece in enumerate(pieces):
        if i and left > 0:
            sep = SEPARATOR[:left]
            left -= len(sep)
            yield sep
        if left <= 0:
            return
        for data in piece.chunks(min(left, piece.size)):
            left -= len(data)
            yield data


def _write_split(tmp: Path, pieces: list[_Piece], cap: int | None) -> tuple[int, float, str]:
    """Write a split to `tmp`; return its size, unigram entropy and sha256."""
    counts = np.zeros(256, dtype=np.int64)
    sha, n = hashlib.sha256(), 0
    with open(tmp, "wb") as f:
        for chunk in _stream(pieces, cap):
            f.write(chunk)
            sha.update(chunk)
            counts += np.bincount(np.frombuffer(chunk, dtype=np.uint8), minlength=256)
            n += len(chunk)
    return n, unigram_entropy(counts), sha.hexdigest()


# ---------------------------------------------------------------- build


def _read_info(out_dir: Path) -> CorpusInfo | None:
    """The corpus already in out_dir, if it is complete and intact (its manifest verifies)."""
    try:
        _manifest(out_dir).verify(*FILES)
        info = CorpusInfo.from_dict(json.loads((out_dir / "corpus.json").read_text()))
        for split in SPLITS:
            if (out_dir / f"{split}.bin").stat().st_size != info.n_bytes(split):
                return None
    except (OSError, ValueError, TypeError):  # ArtifactError and CorpusError are ValueErrors
        return None
    return info


def _reuse(old: CorpusInfo | None, source: str, val_fraction: float, max_bytes: int | None,
           files_sha256: str | None) -> CorpusInfo | None:
    """`old` when it was built from the same source, parameters and file list (None: not checked)."""
    same = (
        old is not None
        and old.format == CORPUS_FORMAT
        and old.source == source
        and old.val_fraction == val_fraction
        and old.max_bytes == max_bytes
        and (files_sha256 is None or old.files_sha256 == files_sha256)
    )
    return old if same else None


def build_corpus(source: str | os.PathLike[str] | None, out_dir: str | Path, val_fraction: float = 0.05,
                 max_bytes: int | None = None) -> CorpusInfo:
    """Build train.bin / val.bin / corpus.json in out_dir from `source` (see the module docstring).

    An out_dir already holding a corpus built from the same source, parameters and file list is
    reused as is. On any error a CorpusError is raised and nothing is written.
    """
    out_dir = Path(out_dir).absolute()
    source = None if source is None else os.fspath(source)
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise CorpusError("val_fraction", f"must be a number in (0, 1), got {val_fraction!r}")
    val_fraction = float(val_fraction)
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1):
        raise CorpusError("max_bytes", f"must be a positive integer or None, got {max_bytes!r}")
    if out_dir.exists() and not out_dir.is_dir():
        raise CorpusError(out_dir, "output path exists and is not a folder")

    # 1. the source, as pieces (every file checked here, before anything is written)
    old = _read_info(out_dir)
    cap = max_bytes
    if source is None or source == "stdlib":
        key = "stdlib"
        root, pieces = _stdlib_pieces()
    elif source.startswith("hf:"):
        key, root = source, source
        _parse_hf(source)
        if reused := _reuse(old, key, val_fraction, max_bytes, None):  # offline re-runs reuse the build
            return reused
        cap = max_bytes or HF_DEFAULT_MAX_BYTES
        pieces = _hf_pieces(source, cap + _val_cap(cap, val_fraction))
    else:
        path = Path(source).expanduser().absolute()
        key, root = str(path), str(path)
        if not path.exists():
            raise CorpusError(path, "path does not exist")
        pieces = _folder_pieces(path, out_dir) if path.is_dir() else [_file_piece(path)]
    files_sha256 = _files_sha256(pieces)
    if reused := _reuse(old, key, val_fraction, max_bytes, files_sha256):
        return reused

    # 2. the split and the caps
    train, val = _split_by_file(pieces, val_fraction) if len(pieces) > 1 else _split_by_bytes(pieces[0], val_fraction)
    train_cap, val_cap = (cap, _val_cap(cap, val_fraction)) if cap is not None else (None, None)

    # 3. write: all three files go to temp files and are renamed only when every one is complete
    created = [d for d in (out_dir, *out_dir.parents) if not d.exists()]  # innermost first
    try:
        with contextlib.ExitStack() as stack:
            manifest = _manifest(out_dir)
            json_tmp = stack.enter_context(manifest.write("corpus.json"))  # renamed last
            stats = {}
            for split, split_pieces, split_cap in (("train", train, train_cap), ("val", val, val_cap)):
                tmp = stack.enter_context(manifest.write(f"{split}.bin"))
                stats[split] = _write_split(tmp, split_pieces, split_cap)
            info = CorpusInfo(
                source=key, root=root, n_files=len(pieces), files_sha256=files_sha256,
                val_fraction=val_fraction, max_bytes=max_bytes,
                n_train_files=len(train), n_val_files=len(val),
                train_bytes=stats["train"][0], val_bytes=stats["val"][0],
                train_entropy=stats["train"][1], val_entropy=stats["val"][1],
                train_sha256=stats["train"][2], val_sha256=stats["val"][2],
            )
            json_tmp.write_text(json.dumps(info.to_dict(), indent=2, sort_keys=True) + "\n")
    except BaseException:
        for d in created:  # leave no folder behind (the temp files are already gone)
            with contextlib.suppress(OSError):
                d.rmdir()
        raise
    return info


# ---------------------------------------------------------------- reading


class Corpus:
    """A built corpus: the two splits memory-mapped read-only, and their CorpusInfo."""

    def __init__(self, out_dir: Path, info: CorpusInfo, train: np.memmap, val: np.memmap):
        self.out_dir, self.info = out_dir, info
        self.train, self.val = train, val

    @classmethod
    def load(cls, out_dir: str | Path) -> Corpus:
        out_dir = Path(out_dir)
        meta = out_dir / "corpus.json"
        if not meta.is_file():
            raise CorpusError(meta, "path does not exist (build the corpus first)")
        _manifest(out_dir).verify(*FILES)  # ArtifactError naming the file; `hwnas train` rebuilds it
        try:
            info = CorpusInfo.from_dict(json.loads(meta.read_text()))
        except CorpusError as e:
            raise CorpusError(meta, e.problem) from e
        except (ValueError, TypeError) as e:
            raise CorpusError(meta, f"unreadable ({e})") from e
        maps = {}
        for split in SPLITS:
            path = out_dir / f"{split}.bin"
            if not path.is_file():
                raise CorpusError(path, "path does not exist")
            size, want = path.stat().st_size, info.n_bytes(split)
            if size != want:
                raise CorpusError(path, f"holds {size} bytes, corpus.json says {want} (truncated or changed)")
            if size == 0:
                raise CorpusError(path, "file is empty")
            maps[split] = np.memmap(path, dtype=np.uint8, mode="r")
        return cls(out_dir, info, maps["train"], maps["val"])

    def data(self, split: str) -> np.memmap:
        return self.train if _check_split(split) == "train" else self.val

    def unigram_entropy(self, split: str) -> float:
        """Bits per byte of the split's unigram distribution: the loss of a model knowing no context."""
        return self.info.entropy(split)

    def _need(self, split: str, seq_len: int) -> np.memmap:
        data = self.data(split)
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if len(data) < seq_len + 1:
            raise CorpusError(self.out_dir / f"{split}.bin",
                              f"holds {len(data)} bytes, a window of seq_len {seq_len} needs {seq_len + 1}")
        return data

    def batch(self, split: str, batch_size: int, seq_len: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """B random windows of the split: x (B, T) int64 and y = x shifted left by one."""
        data = self._need(split, seq_len)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=generator,
                               device=generator.device).cpu().numpy()
        return self._windows(data, starts, seq_len)

    @staticmethod
    def _windows(data: np.memmap, starts: np.ndarray, seq_len: int) -> tuple[Tensor, Tensor]:
        idx = starts[:, None] + np.arange(seq_len + 1)  # (B, T+1)
        w = torch.from_numpy(data[idx].astype(np.int64))  # reads only these bytes
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()  # (B, T), (B, T)

    def val_windows(self, seq_len: int, max_tokens: int | None = None) -> np.ndarray:
        """Start offsets of the fixed validation windows: non-overlapping, in order; evenly spaced
        over the whole split when max_tokens allows fewer than all of them."""
        data = self._need("val", seq_len)
        n_win = (len(data) - 1) // seq_len
        n_use = n_win
        if max_tokens is not None:
            if max_tokens < seq_len:
                raise ValueError(f"max_tokens ({max_tokens}) must be >= seq_len ({seq_len})")
            n_use = min(n_win, max_tokens // seq_len)
        picks = (np.arange(n_use, dtype=np.int64) * n_win) // n_use  # distinct since n_use <= n_win
        return picks * seq_len

    def val_batches(self, batch_size: int, seq_len: int, max_tokens: int | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """The same (x, y) batches on every call (the last may be smaller): see `val_windows`."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        starts = self.val_windows(seq_len, max_tokens)  # checked now, not at the first next()
        data = self.val
        return (self._windows(data, starts[i : i + batch_size], seq_len) for i in range(0, len(starts), batch_size))
