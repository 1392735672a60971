"""``amm.atomic``: a file is replaced whole or not at all, with the permissions open() gives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from amm.atomic import atomic_write, atomic_write_json


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "summary.json"
    atomic_write_json(path, {"a": 1}, indent=2)
    atomic_write(path, b'{"a": 2}')
    assert path.read_text() == '{"a": 2}'
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would create it


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_text("old")

    def half(fh: object) -> None:
        fh.write(b"ne")  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_before_replace_sees_the_old_file_and_the_new_one_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_text("old")
    seen = []

    def check() -> None:
        seen.append(path.read_text())
        seen.extend(p.read_text() for p in tmp_path.glob(".last.pt.*.tmp"))

    atomic_write(path, "new", before_replace=check)
    assert seen == ["old", "new"] and path.read_text() == "new"
