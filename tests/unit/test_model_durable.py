"""model/durable.py: synced writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from model.durable import fsync_dir, write_synced


def test_write_synced_writes_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "file.bin"
    write_synced(path, b"\x00weights\xff")
    assert path.read_bytes() == b"\x00weights\xff"
    write_synced(path, b"short")  # replaces, never appends
    assert path.read_bytes() == b"short"


def test_fsync_dir_needs_an_existing_directory(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")
