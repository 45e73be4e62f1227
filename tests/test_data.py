"""`supernet.data`: building byte corpora (deterministic, split by file, atomic, reused) and reading
them back (memory-mapped splits, seeded batches, fixed validation windows, unigram entropy)."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import sysconfig
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from hwnas.core.errors import HwnasError
from hwnas.core.io import ArtifactError
from hwnas.supernet import data as D
from hwnas.supernet.data import SEPARATOR, Corpus, CorpusError, CorpusInfo, build_corpus, default_corpus_files

SMALL = 200_000  # max_bytes for stdlib builds: keeps them well under a second


def make_folder(root: Path, n: int = 40) -> dict[str, bytes]:
    """n text files (two levels deep) with unique, greppable contents; returns rel path -> bytes."""
    files = {}
    for i in range(n):
        rel = f"sub{i % 3}/doc_{i:03d}.txt" if i % 2 else f"doc_{i:03d}.txt"
        body = (f"<<file {i:03d}>> " + "lorem ipsum dolor sit amet " * (i % 7 + 1) + f"<<end {i:03d}>>\n").encode()
        files[rel] = body
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(body)
    return files


def is_val(rel: str, val_fraction: float) -> bool:
    """The documented split rule, restated: machines must agree on it."""
    return int(hashlib.sha256(rel.encode()).hexdigest()[:8], 16) % 10000 < val_fraction * 10000


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]] | None:
    """Every file under folder with its bytes and mtime (None when the folder does not exist)."""
    if not folder.exists():
        return None
    return {p.relative_to(folder).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def folder(tmp_path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "src"
    return root, make_folder(root)


@pytest.fixture
def built(folder, tmp_path) -> Corpus:
    build_corpus(str(folder[0]), tmp_path / "corpus", val_fraction=0.25)
    return Corpus.load(tmp_path / "corpus")


# ---------------------------------------------------------------- the default corpus


def test_default_corpus_files_are_the_stdlib_sources_in_order():
    root, files = default_corpus_files()
    assert root == Path(sysconfig.get_paths()["stdlib"])
    rels = [f.relative_to(root).as_posix() for f in files]
    assert rels == sorted(rels) and len(set(rels)) == len(rels)
    assert "os.py" in rels and "json/__init__.py" in rels
    assert all(r.endswith(".py") for r in rels)
    excluded = {"site-packages", "dist-packages", "__pycache__"}
    assert not any(excluded & set(r.split("/")) for r in rels)


def test_stdlib_build_is_deterministic_across_dirs_and_processes(tmp_path):
    a = build_corpus(None, tmp_path / "a", max_bytes=SMALL)
    b = build_corpus("stdlib", tmp_path / "b", max_bytes=SMALL)
    assert a == b and a.source == "stdlib" and a.train_bytes == SMALL
    assert a.val_bytes == math.ceil(SMALL * 0.05 / 0.95)
    for name in ("train.bin", "val.bin", "corpus.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    code = ("import sys; from hwnas.supernet.data import build_corpus; "
            f"i = build_corpus(None, sys.argv[1], max_bytes={SMALL}); print(i.files_sha256, i.train_sha256, i.val_sha256)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c")], capture_output=True, text=True,
                         check=True, cwd=tmp_path).stdout.split()
    assert out == [a.files_sha256, a.train_sha256, a.val_sha256]
    assert hashlib.sha256((tmp_path / "c" / "train.bin").read_bytes()).hexdigest() == a.train_sha256


def test_stdlib_hash_covers_paths_and_sizes(tmp_path):
    info = build_corpus(None, tmp_path / "a", max_bytes=SMALL)
    root, files = default_corpus_files()
    sized = [(f.relative_to(root).as_posix(), f.stat().st_size) for f in files]
    h = hashlib.sha256()
    for rel, size in sorted(s for s in sized if s[1] > 0):
        h.update(f"{rel}\t{size}\n".encode())
    assert info.files_sha256 == h.hexdigest() and info.n_files == sum(1 for s in sized if s[1] > 0)
    assert info.n_val_files >= 1 and info.n_train_files + info.n_val_files == info.n_files


# ---------------------------------------------------------------- splits


def test_folder_is_split_by_file_in_sorted_order(folder, tmp_path):
    root, files = folder
    (root / "blob.bin").write_bytes(bytes(range(256)) * 4)  # binary: skipped
    (root / ".hidden.txt").write_text("<<hidden>>")  # hidden: skipped
    (root / "sub0" / "empty.txt").write_bytes(b"")  # empty: adds nothing, not counted
    info = build_corpus(root, tmp_path / "out", val_fraction=0.25)  # a Path works as well as a str
    train, val = (tmp_path / "out" / "train.bin").read_bytes(), (tmp_path / "out" / "val.bin").read_bytes()
    rels = sorted(files)
    want_val = [r for r in rels if is_val(r, 0.25)]
    assert 0 < len(want_val) < len(rels)  # the rule itself splits this folder: no fallback involved
    assert SEPARATOR == b"\n\n"
    assert train == b"\n\n".join(files[r] for r in rels if r not in want_val)
    assert val == b"\n\n".join(files[r] for r in want_val)
    for rel, body in files.items():  # every file in exactly one split
        assert (body in train) != (body in val), rel
    assert b"<<hidden>>" not in train + val and bytes(range(256)) not in train + val
    assert (info.n_files, info.n_train_files, info.n_val_files) == (40, 40 - len(want_val), len(want_val))
    assert info.source == str(root.absolute()) and (info.train_bytes, info.val_bytes) == (len(train), len(val))


@pytest.mark.parametrize("val_fraction", [0.0001, 0.9999])
def test_two_files_always_give_one_train_and_one_val_file(tmp_path, val_fraction):
    root = tmp_path / "two"
    root.mkdir()
    (root / "a.txt").write_text("alpha " * 20)
    (root / "b.txt").write_text("beta " * 20)
    info = build_corpus(str(root), tmp_path / "out", val_fraction=val_fraction)
    assert (info.n_train_files, info.n_val_files) == (1, 1)
    train, val = (tmp_path / "out" / "train.bin").read_bytes(), (tmp_path / "out" / "val.bin").read_bytes()
    assert {train, val} == {b"alpha " * 20, b"beta " * 20}


def test_single_file_is_split_by_bytes(tmp_path):
    text = bytes(i % 26 + 97 for i in range(1000))
    (tmp_path / "one.txt").write_bytes(text)
    info = build_corpus(str(tmp_path / "one.txt"), tmp_path / "out", val_fraction=0.1)
    assert (tmp_path / "out" / "train.bin").read_bytes() == text[:900]
    assert (tmp_path / "out" / "val.bin").read_bytes() == text[900:]
    assert (info.n_files, info.train_bytes, info.val_bytes) == (1, 900, 100)


def test_max_bytes_caps_both_splits_by_prefix(folder, tmp_path):
    full = build_corpus(str(folder[0]), tmp_path / "full", val_fraction=0.25)
    capped = build_corpus(str(folder[0]), tmp_path / "capped", val_fraction=0.25, max_bytes=300)
    val_cap = math.ceil(300 * 0.25 / 0.75)
    assert full.train_bytes > 300 and full.val_bytes > val_cap
    assert (capped.train_bytes, capped.val_bytes) == (300, val_cap)
    for split, n in (("train", 300), ("val", val_cap)):
        whole = (tmp_path / "full" / f"{split}.bin").read_bytes()
        assert (tmp_path / "capped" / f"{split}.bin").read_bytes() == whole[:n]
    assert capped.files_sha256 == full.files_sha256


# ---------------------------------------------------------------- errors: clear, and nothing written


def _missing(tmp_path):
    return tmp_path / "nope" / "x.txt", "path does not exist"


def _empty_file(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    return tmp_path / "empty.txt", "file is empty"


def _empty_folder(tmp_path):
    (tmp_path / "void").mkdir()
    return tmp_path / "void", "folder holds no text files"


def _binary_file(tmp_path):
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe")
    return tmp_path / "img.png", "not a text file (binary content)"


def _binary_folder(tmp_path):
    (tmp_path / "bins" / "deep").mkdir(parents=True)
    (tmp_path / "bins" / "a.bin").write_bytes(b"\xff\xfe\xfd" * 10)  # invalid UTF-8
    (tmp_path / "bins" / "deep" / "b.txt").write_bytes(b"text\x00with a NUL")
    return tmp_path / "bins", "folder holds no text files"


@pytest.mark.parametrize("case", [_missing, _empty_file, _empty_folder, _binary_file, _binary_folder])
@pytest.mark.parametrize("out_exists", [False, True])
def test_bad_sources_fail_clearly_and_write_nothing(tmp_path, case, out_exists):
    path, problem = case(tmp_path)
    out = tmp_path / "out" / "corpus"
    if out_exists:
        out.mkdir(parents=True)
        (out / "keep.txt").write_text("mine")
    before = snapshot(tmp_path / "out")
    with pytest.raises(CorpusError) as err:
        build_corpus(str(path), out)
    assert str(err.value) == f"corpus: {path}: {problem}"
    assert isinstance(err.value, HwnasError) and isinstance(err.value, ValueError)
    assert "\n" not in str(err.value)
    assert snapshot(tmp_path / "out") == before
    assert out_exists or not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, field", [
    ({"val_fraction": 0.0}, "val_fraction"), ({"val_fraction": 1.0}, "val_fraction"),
    ({"max_bytes": 0}, "max_bytes"), ({"max_bytes": 1.5}, "max_bytes"),
])
def test_bad_parameters_fail_before_anything_is_written(folder, tmp_path, kwargs, field):
    with pytest.raises(CorpusError, match=f"^corpus: {field}: must be"):
        build_corpus(str(folder[0]), tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_a_failure_while_writing_leaves_no_trace(folder, tmp_path, monkeypatch):
    old = tmp_path / "old"
    build_corpus(str(folder[0]), old, val_fraction=0.25)
    before = snapshot(old)
    real = D._write_split
    calls = []

    def failing(tmp, pieces, cap):
        calls.append(tmp)
        if len(calls) == 2:  # train.bin is written by now
            raise OSError("disk full")
        return real(tmp, pieces, cap)

    monkeypatch.setattr(D, "_write_split", failing)
    with pytest.raises(OSError, match="disk full"):
        build_corpus(str(folder[0]), old, val_fraction=0.5)  # other parameters: a rebuild
    assert snapshot(old) == before  # neither the new train.bin nor any temp file
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        build_corpus(str(folder[0]), tmp_path / "new" / "deep" / "corpus")
    assert len(calls) == 2 and not (tmp_path / "new").exists()


# ---------------------------------------------------------------- reuse


def test_same_build_is_reused_without_rewriting(folder, tmp_path):
    out = tmp_path / "out"
    first = build_corpus(str(folder[0]), out, val_fraction=0.25)
    before = snapshot(out)
    assert build_corpus(str(folder[0]), out, val_fraction=0.25) == first
    assert snapshot(out) == before  # same bytes and same mtimes


def test_changed_source_or_parameters_rebuild(folder, tmp_path):
    root, files = folder
    out = tmp_path / "out"
    first = build_corpus(str(root), out, val_fraction=0.25)
    other = build_corpus(str(root), out, val_fraction=0.25, max_bytes=100)
    assert other.train_bytes == 100 and len((out / "train.bin").read_bytes()) == 100
    (root / "doc_000.txt").write_text("changed, and longer than before: " * 5)
    third = build_corpus(str(root), out, val_fraction=0.25)
    assert third.files_sha256 != first.files_sha256
    assert json.loads((out / "corpus.json").read_text()) == third.to_dict()


def test_broken_corpus_json_or_truncated_bin_is_rebuilt(folder, tmp_path):
    out = tmp_path / "out"
    first = build_corpus(str(folder[0]), out, val_fraction=0.25)
    (out / "corpus.json").write_text("{not json")
    assert build_corpus(str(folder[0]), out, val_fraction=0.25) == first
    (out / "val.bin").write_bytes(b"x")
    assert build_corpus(str(folder[0]), out, val_fraction=0.25) == first
    assert (out / "val.bin").stat().st_size == first.val_bytes


def test_out_dir_inside_the_source_folder_is_not_read_back(folder, tmp_path):
    root = folder[0]
    first = build_corpus(str(root), root / "corpus", val_fraction=0.25)
    before = snapshot(root / "corpus")
    assert build_corpus(str(root), root / "corpus", val_fraction=0.25) == first
    assert first.n_files == 40 and snapshot(root / "corpus") == before


def test_corpus_info_round_trips():
    info = CorpusInfo(source="stdlib", root="/r", n_files=3, files_sha256="ab", val_fraction=0.1, max_bytes=None,
                      n_train_files=2, n_val_files=1, train_bytes=10, val_bytes=2, train_entropy=1.5,
                      val_entropy=0.5, train_sha256="cd", val_sha256="ef")
    assert CorpusInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info
    d = info.to_dict()
    del d["val_bytes"]
    with pytest.raises(CorpusError, match="missing fields"):
        CorpusInfo.from_dict(d)


# ---------------------------------------------------------------- Hugging Face sources (faked: tests run offline)


def test_hf_without_datasets_fails_clearly(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` raise ImportError
    with pytest.raises(CorpusError, match=r"^corpus: hf:wikitext:test: needs the `datasets` package and network"):
        build_corpus("hf:wikitext:test", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hf_source_builds_and_is_reused_offline(tmp_path, monkeypatch):
    calls = []

    def load_dataset(name, split, streaming):
        calls.append((name, split, streaming))
        return iter([{"text": f"record {i} " * 10, "id": i} for i in range(50)])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    info = build_corpus("hf:some/data:validation", tmp_path / "out", max_bytes=2000)
    assert calls == [("some/data", "validation", True)]
    assert info.source == "hf:some/data:validation" and info.train_bytes == 2000 and info.n_val_files >= 1
    assert (tmp_path / "out" / "train.bin").read_bytes().startswith(b"record ")

    monkeypatch.setitem(sys.modules, "datasets", None)  # offline now: the built corpus is reused
    assert build_corpus("hf:some/data:validation", tmp_path / "out", max_bytes=2000) == info


# ---------------------------------------------------------------- reading


def test_load_memory_maps_both_splits_read_only(built):
    for split in ("train", "val"):
        m = built.data(split)
        assert isinstance(m, np.memmap) and m.dtype == np.uint8 and m.mode == "r"
        assert not m.flags.writeable and len(m) == built.info.n_bytes(split)
        assert m.tobytes() == (built.out_dir / f"{split}.bin").read_bytes()


@pytest.mark.parametrize("name, damage, problem", [
    ("train.bin", "truncate", "holds 10 bytes, {manifest} lists {n} (truncated or changed since `hwnas train CONFIG` wrote it); "
                              "run `hwnas train CONFIG` to write it again"),
    ("val.bin", "flip", "changed since `hwnas train CONFIG` wrote it (sha256 "),
    ("train.bin", "edit", "changed since `hwnas train CONFIG` wrote it (sha256 "),
    ("corpus.json", "edit", "changed since `hwnas train CONFIG` wrote it (sha256 "),
    ("val.bin", "delete", "missing (listed in {manifest}); run `hwnas train CONFIG` to write it again"),
    ("corpus.json", "delete", "path does not exist (build the corpus first)"),
])
def test_load_rejects_missing_damaged_or_edited_files(built, name, damage, problem):
    path = built.out_dir / name
    n = path.stat().st_size
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(data[:10])
    elif damage == "flip":
        data[n // 2] ^= 0x01
        path.write_bytes(data)
    elif damage == "edit":  # same size, other bytes: only a checksum can tell
        data[:4] = b"zzzz" if data[:4] != b"zzzz" else b"yyyy"
        path.write_bytes(data)
    else:
        path.unlink()
    with pytest.raises((CorpusError, ArtifactError)) as err:
        Corpus.load(built.out_dir)
    assert str(err.value).removeprefix("corpus: ").startswith(f"{path}: " + problem.format(n=n, manifest=built.out_dir / "manifest.json"))


def test_build_rebuilds_a_damaged_corpus(tmp_path, folder):
    info = build_corpus(str(folder[0]), tmp_path / "c", val_fraction=0.25)
    good = (tmp_path / "c" / "train.bin").read_bytes()
    (tmp_path / "c" / "train.bin").write_bytes(b"x" * len(good))  # same size: only the manifest can tell
    assert build_corpus(str(folder[0]), tmp_path / "c", val_fraction=0.25) == info
    assert (tmp_path / "c" / "train.bin").read_bytes() == good
    assert Corpus.load(tmp_path / "c").info == info


def test_batch_shapes_shift_and_offsets(built):
    x, y = built.batch("train", 8, 32, torch.Generator().manual_seed(3))
    assert x.shape == y.shape == (8, 32) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    data = torch.from_numpy(np.array(built.train, dtype=np.int64))
    starts = torch.randint(0, len(data) - 32, (8,), generator=torch.Generator().manual_seed(3))
    for row, s in enumerate(starts.tolist()):  # the windows are the ones the generator picked
        assert torch.equal(x[row], data[s : s + 32]) and torch.equal(y[row], data[s + 1 : s + 33])


def test_batch_is_deterministic_given_the_generator(built):
    a = built.batch("val", 4, 16, torch.Generator().manual_seed(7))
    b = built.batch("val", 4, 16, torch.Generator().manual_seed(7))
    c = built.batch("val", 4, 16, torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    g = torch.Generator().manual_seed(7)
    first, second = built.batch("val", 4, 16, g), built.batch("val", 4, 16, g)
    assert torch.equal(first[0], a[0]) and not torch.equal(second[0], a[0])  # the generator advances


def test_batch_rejects_bad_requests(built):
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="split must be one of"):
        built.batch("test", 2, 8, g)
    with pytest.raises(CorpusError, match=r"val\.bin: holds \d+ bytes, a window of seq_len 100000 needs 100001"):
        built.batch("val", 2, 100_000, g)


def test_val_batches_cover_fixed_non_overlapping_windows(built):
    T = 16
    runs = [list(built.val_batches(5, T)) for _ in range(2)]
    assert len(runs[0]) == len(runs[1]) > 1
    for (xa, ya), (xb, yb) in zip(*runs, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x = torch.cat([b[0] for b in runs[0]])
    y = torch.cat([b[1] for b in runs[0]])
    val = np.array(built.val, dtype=np.int64)
    n_win = (len(val) - 1) // T
    assert x.shape == (n_win, T) and all(b[0].shape[0] == 5 for b in runs[0][:-1])
    assert torch.equal(x.flatten(), torch.from_numpy(val[: n_win * T]))  # tiled in order, no overlap
    assert torch.equal(y.flatten(), torch.from_numpy(val[1 : n_win * T + 1]))


def test_val_batches_with_max_tokens_are_evenly_spaced(built):
    T = 8
    n_win = (len(built.val) - 1) // T
    starts = built.val_windows(T, max_tokens=5 * T + 3)
    assert len(starts) == 5 and n_win > 10
    assert np.all(np.diff(starts) > T - 1) and np.all(starts % T == 0)  # distinct, non-overlapping windows
    assert starts[0] == 0 and starts[-1] >= (n_win // 2) * T  # spread over the split, not a prefix
    gaps = np.diff(starts) // T
    assert gaps.max() - gaps.min() <= 1
    batches = [list(built.val_batches(2, T, max_tokens=5 * T + 3)) for _ in range(2)]
    assert [b[0].shape[0] for b in batches[0]] == [2, 2, 1]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(*batches, strict=True))
    val = torch.from_numpy(np.array(built.val, dtype=np.int64))
    x = torch.cat([b[0] for b in batches[0]])
    for row, s in enumerate(starts.tolist()):
        assert torch.equal(x[row], val[s : s + T])
    with pytest.raises(ValueError, match="max_tokens"):
        built.val_windows(T, max_tokens=T - 1)


def test_unigram_entropy_matches_a_direct_count(built):
    for split in ("train", "val"):
        counts = Counter((built.out_dir / f"{split}.bin").read_bytes())
        n = sum(counts.values())
        direct = -sum(c / n * math.log2(c / n) for c in counts.values())
        assert built.unigram_entropy(split) == pytest.approx(direct, rel=1e-12)
        assert 0 < direct < 8
    assert built.info.train_entropy != built.info.val_entropy
    assert D.unigram_entropy(np.array([5, 5, 0, 0])) == pytest.approx(1.0)
    assert D.unigram_entropy(np.zeros(256)) == 0.0
