"""A checkpoint store as it sits on disk, read-only: where it is, what it holds.

Why its own module: reading a store (the worker's reload watcher peeks at versions,
the CLI tells a store from a plain directory with `store_root_for`) needs none of the
changes; `model.store.CheckpointStore` adds them (add, promote, rollback, prune) on top
of `StoreReader`.

Layout of a store root (the default one is `checkpoints/` under the repo root):

    <root>/versions/<version>/   one complete checkpoint per version, never modified
    <root>/current               symlink → versions/<version>: the serving checkpoint
    <root>/history.json          rollback stack, order of addition, recent pointer moves
    <root>/.lock                 flock'd by every change, so two operators can't interleave

Why a symlink: switching it is one rename(2) of a fresh link over the old one, which is
atomic, and `<root>/current` stays a path to a complete checkpoint for readers that know
nothing of stores (`checkpoints/current` was the plain default location before).
Readers resolve the link once (`model.paths.resolve_checkpoint_dir`) and read both
files from the version directory, which never changes, so they cannot mix versions.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.paths import META_FILE, STORE_POINTER, STORE_VERSIONS_DIR
from model.paths import peek_version as peek_version
from model.store_errors import NotAStoreError, UnknownVersionError
from model.store_files import describe, read_history

# Matched with `fullmatch`: `$` alone would let a trailing newline through.
_VERSION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True)
class VersionInfo:
    version: str
    path: Path
    created_at: str | None
    mean_validation_auc: float | None
    current: bool
    previous: bool
    problem: str | None = None
    legacy: bool = False  # a plain checkpoint directory at `current`, not yet a version
    labels: tuple[str, ...] | None = None  # None when model.json is unreadable

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": str(self.path),
            "created_at": self.created_at,
            "mean_validation_auc": self.mean_validation_auc,
            "current": self.current,
            "previous": self.previous,
            "problem": self.problem,
            "legacy": self.legacy,
            "labels": list(self.labels) if self.labels is not None else None,
        }


def store_root_for(path: str | Path) -> Path:
    """The store that a checkpoint setting designates.

    A store root is itself, and so is a directory holding a plain checkpoint directory
    at `current` (the layout of older releases, adopted on the first change); `…/current`
    (link, legacy plain directory, or not there yet) belongs to the store at its parent;
    a path that does not exist yet becomes a new store. Any other existing directory —
    a plain checkpoint directory in particular — is not a store.
    """
    path = Path(path)
    if is_store(path):
        return path
    if path.name == STORE_POINTER:
        return path.parent
    if not path.exists():
        return path
    if path.is_dir() and not any(path.iterdir()):
        return path
    if (path / META_FILE).exists():
        raise NotAStoreError(
            f"{path} is a plain checkpoint directory, not a checkpoint store (a store holds "
            f"{STORE_VERSIONS_DIR}/ and a {STORE_POINTER} link); name the store root, or "
            f"use a directory called '{STORE_POINTER}' inside it"
        )
    raise NotAStoreError(f"{path} is neither a checkpoint store nor empty")


def is_store(root: str | Path) -> bool:
    """Whether `root` is a store already: it holds `versions/`, a `current` link, or a
    legacy plain checkpoint directory at `current`."""
    root = Path(root)
    pointer = root / STORE_POINTER
    return (
        (root / STORE_VERSIONS_DIR).is_dir()
        or pointer.is_symlink()
        or (pointer / META_FILE).is_file()
    )


def peek_labels(directory: str | Path) -> tuple[str, ...] | None:
    """The `labels` of a checkpoint's model.json, or None if unreadable (as `peek_version`:
    for comparing label sets before a promotion, never for serving)."""
    try:
        meta = json.loads((Path(directory) / META_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        return None
    return tuple(labels)


class StoreReader:
    """What a store at `root` holds: versions, the current one, the rollback target,
    recent pointer moves. Reads only; takes no lock (every change is one atomic rename,
    see `model.store_files`)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- paths ---------------------------------------------------------------------

    @property
    def versions_dir(self) -> Path:
        return self.root / STORE_VERSIONS_DIR

    @property
    def pointer(self) -> Path:
        return self.root / STORE_POINTER

    def version_dir(self, version: str) -> Path:
        if not _VERSION_NAME.fullmatch(version):
            raise UnknownVersionError(f"{version!r} is not a version name")
        return self.versions_dir / version

    # -- reading -------------------------------------------------------------------

    def current_version(self) -> str | None:
        if self.pointer.is_symlink():
            return Path(os.readlink(self.pointer)).name
        if self.pointer.is_dir():  # legacy plain directory
            return peek_version(self.pointer)
        return None

    def current_dir(self) -> Path | None:
        """The serving checkpoint's directory (resolved), or None when there is none."""
        if self.pointer.is_symlink():
            resolved = Path(os.path.realpath(self.pointer))
            return resolved if resolved.is_dir() else None
        if self.pointer.is_dir():
            return self.pointer
        return None

    def previous_version(self) -> str | None:
        """The version `rollback` would return to."""
        current = self.current_version()
        for version in reversed(read_history(self.root)["stack"]):
            if version != current and self.version_dir(version).is_dir():
                return str(version)
        return None

    def versions(self) -> list[str]:
        """Versions present, oldest addition first."""
        history = read_history(self.root)
        return self._ordered(history)

    def history(self) -> list[dict[str, Any]]:
        """Recent pointer moves, oldest first."""
        return list(read_history(self.root)["events"])

    def _ordered(self, history: dict[str, Any]) -> list[str]:
        """Versions present, oldest addition first."""
        present: set[str] = set()
        if self.versions_dir.is_dir():
            present = {
                p.name
                for p in self.versions_dir.iterdir()
                if p.is_dir() and _VERSION_NAME.fullmatch(p.name)
            }
        known = [v for v in history["added"] if v in present]
        # Versions copied in by hand have no recorded addition: treat them as oldest.
        unknown = sorted(
            present - set(known), key=lambda v: ((self.versions_dir / v).stat().st_mtime_ns, v)
        )
        return unknown + known

    # Last in the class: defined earlier, `list` would shadow the builtin in annotations.
    def list(self) -> list[VersionInfo]:
        """Every version, oldest addition first, with what an operator wants to see.

        A legacy plain checkpoint directory at `current` (what older releases wrote, and
        what a fresh clone's `make demo` leaves) is listed first, as current, until the
        first change adopts it as a version.
        """
        current, previous = self.current_version(), self.previous_version()
        infos = []
        versions = self.versions()
        if not self.pointer.is_symlink() and self.pointer.is_dir() and current not in versions:
            created_at, auc, problem = describe(self.pointer)
            infos.append(
                VersionInfo(
                    version=current or "-",
                    path=self.pointer,
                    created_at=created_at,
                    mean_validation_auc=auc,
                    current=True,
                    previous=False,
                    problem=problem,
                    legacy=True,
                    labels=peek_labels(self.pointer),
                )
            )
        for version in versions:
            path = self.versions_dir / version
            created_at, auc, problem = describe(path)
            infos.append(
                VersionInfo(
                    version=version,
                    path=path,
                    created_at=created_at,
                    mean_validation_auc=auc,
                    current=version == current,
                    previous=version == previous,
                    problem=problem,
                    labels=peek_labels(path),
                )
            )
        return infos
