"""Checkpoint store: versioned checkpoints plus an atomically switched `current` pointer.

Layout of a store root (the default one is `checkpoints/` under the repo root):

    <root>/versions/<version>/   one complete checkpoint per version, never modified
    <root>/current               symlink → versions/<version>: the serving checkpoint
    <root>/history.json          rollback stack, order of addition, recent pointer moves
    <root>/.lock                 flock'd by every change, so two operators can't interleave

Why a symlink: switching it is one rename(2) of a fresh link over the old one, which is
atomic, and `<root>/current` stays a path to a complete checkpoint for readers that know
nothing of stores (`checkpoints/current` was the plain default location before).
Readers resolve the link once (`model.checkpoint.resolve_checkpoint_dir`) and read both
files from the version directory, which never changes, so they cannot mix versions.

Rollback is a stack: promoting pushes the version it replaces, rollback pops it.
Pruning keeps the `keep` most recently added versions, plus the current version and
the one a rollback would return to, whatever their age.

A plain checkpoint directory left at `<root>/current` by an older release is adopted on
the first change: copied in as a version, then replaced by the pointer.

This module decides what changes (versions, pointer, rollback stack, pruning); how
each change reaches the disk safely is `model.store_files`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.checkpoint import (
    META_FILE,
    STORE_POINTER,
    STORE_VERSIONS_DIR,
    CheckpointError,
    load_checkpoint,
)
from model.durable import fsync_dir
from model.paths import peek_version as peek_version
from model.store_errors import NoPreviousVersionError as NoPreviousVersionError
from model.store_errors import NotAStoreError as NotAStoreError
from model.store_errors import StoreError as StoreError
from model.store_errors import UnknownVersionError as UnknownVersionError
from model.store_files import (
    MAX_STACK,
    describe,
    install,
    locked,
    now_compact,
    read_history,
    record,
    switch_pointer,
    verify_version,
    write_history,
)

DEFAULT_KEEP = 5
INCOMING_DIR = ".incoming"
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
        }


@dataclass(frozen=True)
class PointerChange:
    """What a promote or rollback did; `changed` is False when it was already current."""

    action: str
    version: str
    previous: str | None
    changed: bool
    pruned: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "version": self.version,
            "previous": self.previous,
            "changed": self.changed,
            "pruned": list(self.pruned),
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


class CheckpointStore:
    def __init__(self, root: str | Path, keep: int = DEFAULT_KEEP) -> None:
        if keep < 2:
            raise ValueError(f"keep must be at least 2 (current and previous), got {keep}")
        self.root = Path(root)
        self.keep = keep

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

    # -- changing ------------------------------------------------------------------

    @contextlib.contextmanager
    def incoming(self) -> Iterator[Path]:
        """A not-yet-existing path inside the store to write a new checkpoint to (same
        file system, so `add(..., move=True)` is a rename); cleaned up afterwards."""
        parent = self.root / INCOMING_DIR
        parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix="retrain-", dir=parent))
        try:
            yield scratch / "checkpoint"
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def add(self, checkpoint_dir: str | Path, move: bool = False) -> str:
        """Validate a checkpoint and add it as a version (not current); returns the version.

        Adding a version that is already there is a no-op. Raises `CheckpointError` for
        a checkpoint that does not load.
        """
        source = Path(checkpoint_dir)
        version = load_checkpoint(source).version
        with locked(self.root) as history:
            target = self.version_dir(version)
            if not target.is_dir():
                install(source, target, move)
            if version in history["added"]:
                history["added"].remove(version)
            history["added"].append(version)
            self._prune(history)
            write_history(self.root, history)
        return version

    def promote(self, version: str, verify: bool = True) -> PointerChange:
        """Make `version` current. With `verify`, it must load cleanly first."""
        with locked(self.root) as history:
            target = self.version_dir(version)
            if not target.is_dir():
                known = ", ".join(self._ordered(history)) or "none"
                raise UnknownVersionError(
                    f"no version {version!r} in the store at {self.root} (known: {known})"
                )
            if verify:
                verify_version(target, version)
            self._adopt_legacy(history)
            current = self.current_version()
            if current == version:
                return PointerChange("promote", version, current, changed=False)
            if current is not None:
                history["stack"] = [v for v in history["stack"] if v != current][-MAX_STACK + 1 :]
                history["stack"].append(current)
            record(history, "promote", version, current)
            # History first: a crash before the switch leaves a stack entry equal to the
            # current version, which rollback skips.
            write_history(self.root, history)
            switch_pointer(self.root, version)
            pruned = self._prune(history)
            write_history(self.root, history)
            return PointerChange("promote", version, current, changed=True, pruned=pruned)

    def rollback(self, verify: bool = True) -> PointerChange:
        """Make the previously current version current again (pops the stack)."""
        with locked(self.root) as history:
            self._adopt_legacy(history)
            current = self.current_version()
            stack: list[str] = history["stack"]
            target: str | None = None
            while stack:
                candidate = stack.pop()
                if candidate != current and self.version_dir(candidate).is_dir():
                    target = candidate
                    break
            if target is None:
                raise NoPreviousVersionError(
                    f"nothing to roll back to in the store at {self.root} "
                    f"(current: {current or 'none'})"
                )
            if verify:
                verify_version(self.version_dir(target), target)
            record(history, "rollback", target, current)
            write_history(self.root, history)
            switch_pointer(self.root, target)
            write_history(self.root, history)
            return PointerChange("rollback", target, current, changed=True)

    def prune(self) -> list[str]:
        with locked(self.root) as history:
            pruned = self._prune(history)
            write_history(self.root, history)
            return list(pruned)

    # -- internals -----------------------------------------------------------------

    def _ordered(self, history: dict[str, Any]) -> list[str]:
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

    def _adopt_legacy(self, history: dict[str, Any]) -> None:
        """Turn a plain checkpoint directory at `current` into a version + pointer."""
        if self.pointer.is_symlink() or not self.pointer.is_dir():
            return
        aside = self.root / f".{STORE_POINTER}.legacy-{uuid.uuid4().hex[:8]}"
        try:
            version: str | None = load_checkpoint(self.pointer).version
        except CheckpointError:
            version = None
        if version is not None:
            target = self.version_dir(version)
            if not target.is_dir():
                install(self.pointer, target, move=False)
            if version not in history["added"]:
                history["added"].insert(0, version)  # it predates anything added since
            write_history(self.root, history)
        os.rename(self.pointer, aside)
        if version is not None:
            switch_pointer(self.root, version)
            shutil.rmtree(aside, ignore_errors=True)
        else:  # unusable: keep it for inspection, out of the way
            os.rename(aside, self.root / f"{STORE_POINTER}.invalid-{now_compact()}")
        fsync_dir(self.root)

    def _prune(self, history: dict[str, Any]) -> tuple[str, ...]:
        ordered = self._ordered(history)
        current = self.current_version()
        previous = next(
            (v for v in reversed(history["stack"]) if v != current and v in ordered), None
        )
        kept = set(ordered[-self.keep :]) | {v for v in (current, previous) if v is not None}
        pruned: list[str] = []
        for version in ordered:
            if version in kept:
                continue
            # Rename first, so a half-deleted directory never sits under a version name.
            doomed = self.versions_dir / f".{version}.deleting-{uuid.uuid4().hex[:8]}"
            os.rename(self.versions_dir / version, doomed)
            shutil.rmtree(doomed, ignore_errors=True)
            pruned.append(version)
        if pruned:
            fsync_dir(self.versions_dir)
            history["added"] = [v for v in history["added"] if v not in pruned]
            history["stack"] = [v for v in history["stack"] if v not in pruned]
        return tuple(pruned)

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
                )
            )
        return infos
