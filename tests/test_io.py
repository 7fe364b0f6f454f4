"""Atomic writes: new directories, ordinary permissions, nothing half-written on failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from virtio_balloon_proto.io import write_atomic


def test_creates_parent_directories_and_ordinary_permissions(tmp_path: Path) -> None:
    target = tmp_path / "out" / "reports" / "r.json"
    write_atomic(target, "{}\n")
    assert target.read_text() == "{}\n"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "r.bin"
    write_atomic(target, b"old")

    with pytest.raises(TypeError):
        write_atomic(target, 12345)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["r.bin"]
