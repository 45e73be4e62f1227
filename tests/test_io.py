"""Atomic writes: the target is replaced whole or not at all, and temp files do not pile up."""

from __future__ import annotations

import pytest

from hwnas.core.io import atomic_path, atomic_write_text


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "table.json"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]


def test_temp_files_of_a_killed_writer_are_cleared_by_the_next_write(tmp_path):
    target = tmp_path / "table.json"
    (tmp_path / ".table.json.abc123.tmp").write_text("left by SIGKILL")
    (tmp_path / ".other.json.abc123.tmp").write_text("another file's")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.abc123.tmp", "table.json"]
