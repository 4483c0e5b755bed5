"""Writes that survive a crash: the bytes, and the directory entry naming them.

A rename is atomic but not durable: after a power loss the directory may still hold
the old entry unless the directory itself was fsynced, and a renamed file may be
empty unless its bytes were. Checkpoints (`model.checkpoint`) and the checkpoint
store (`model.store`) write through these two functions.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_synced(path: Path, data: bytes) -> None:
    """Writes `data` to `path` and fsyncs the file before returning."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Fsyncs a directory, so the entries created or renamed in it are on disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
