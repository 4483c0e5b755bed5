"""Checkpoint store: versioned checkpoints plus an atomically switched `current` pointer.

Where a store is and how it is laid out (versions, the `current` link, history.json,
the lock) is `model.store_layout`, whose `StoreReader` reads one; `CheckpointStore`
here makes the changes.

Rollback is a stack: promoting pushes the version it replaces, rollback pops it.
Pruning keeps the `keep` most recently added versions, plus the current version and
the one a rollback would return to, whatever their age.

A plain checkpoint directory left at `<root>/current` by an older release is adopted on
the first change: copied in as a version, then replaced by the pointer.

Promoting follows `model.label_change`: a version that removes (or renames) a label
of the current one is refused unless `allow_label_change`, and one the store's policy
file (`model.store_policy`) cannot apply to is refused outright. Rollback needs no
permission to remove labels (it returns to what served before, the way out of a bad
promotion) but is refused under a policy it cannot apply to, like promote; both
record the labels a move added and removed in history.json.

This module decides what changes (versions, pointer, rollback stack, pruning); how
each change reaches the disk safely is `model.store_files`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.checkpoint import STORE_POINTER, CheckpointError, load_checkpoint
from model.durable import fsync_dir
from model.label_change import LabelChange, check_label_change, classify
from model.store_errors import NoPreviousVersionError as NoPreviousVersionError
from model.store_errors import NotAStoreError as NotAStoreError
from model.store_errors import StoreError as StoreError
from model.store_errors import UnknownVersionError as UnknownVersionError
from model.store_files import (
    MAX_STACK,
    install,
    locked,
    now_compact,
    record,
    switch_pointer,
    verify_version,
    write_history,
)
from model.store_layout import StoreReader, peek_labels
from model.store_policy import PolicyConflictError, policy_conflict, read_policy

DEFAULT_KEEP = 5
INCOMING_DIR = ".incoming"


@dataclass(frozen=True)
class PointerChange:
    """What a promote or rollback did; `changed` is False when it was already current."""

    action: str
    version: str
    previous: str | None
    changed: bool
    pruned: tuple[str, ...] = ()
    labels_added: tuple[str, ...] = ()
    labels_removed: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "version": self.version,
            "previous": self.previous,
            "changed": self.changed,
            "pruned": list(self.pruned),
            "labels_added": list(self.labels_added),
            "labels_removed": list(self.labels_removed),
        }


class CheckpointStore(StoreReader):
    """A store that changes: every change runs under the store's lock, as the numbered
    durable steps of `model.store_files`."""

    def __init__(self, root: str | Path, keep: int = DEFAULT_KEEP) -> None:
        if keep < 2:
            raise ValueError(f"keep must be at least 2 (current and previous), got {keep}")
        super().__init__(root)
        self.keep = keep

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

    def promote(
        self, version: str, verify: bool = True, allow_label_change: bool = False
    ) -> PointerChange:
        """Make `version` current. With `verify`, it must load cleanly first.

        `LabelChangeRefusedError` when it removes (or renames) a label of the current
        version and `allow_label_change` is False; `PolicyConflictError` when the
        store's policy file sets a threshold for a label it lacks."""
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
            change = self._label_change(target)
            if change is not None:
                what = f"version {version} (against the current {current})"
                check_label_change(change.old, change.new, allow_label_change, what)
            self._check_policy(target, version, "promote")
            if current is not None:
                history["stack"] = [v for v in history["stack"] if v != current][-MAX_STACK + 1 :]
                history["stack"].append(current)
            record(history, "promote", version, current, **_label_details(change))
            # History first: a crash before the switch leaves a stack entry equal to the
            # current version, which rollback skips.
            write_history(self.root, history)
            switch_pointer(self.root, version)
            pruned = self._prune(history)
            write_history(self.root, history)
            return PointerChange("promote", version, current, True, pruned, *_label_lists(change))

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
            change = self._label_change(self.version_dir(target))
            self._check_policy(self.version_dir(target), target, "roll back to")
            record(history, "rollback", target, current, **_label_details(change))
            write_history(self.root, history)
            switch_pointer(self.root, target)
            write_history(self.root, history)
            return PointerChange("rollback", target, current, True, (), *_label_lists(change))

    def prune(self) -> list[str]:
        with locked(self.root) as history:
            pruned = self._prune(history)
            write_history(self.root, history)
            return list(pruned)

    # -- internals -----------------------------------------------------------------

    def _label_change(self, target: Path) -> LabelChange | None:
        """How `target` changes the current version's labels; None when either is
        unreadable (no current version, or a damaged one being replaced)."""
        current_dir = self.current_dir()
        old = peek_labels(current_dir) if current_dir is not None else None
        new = peek_labels(target)
        return classify(old, new) if old is not None and new is not None else None

    def _check_policy(self, target: Path, version: str, action: str) -> None:
        """Workers would refuse a version the store's policy cannot apply to: so does
        the store, before the pointer moves."""
        labels = peek_labels(target)
        why = policy_conflict(read_policy(self.root), labels) if labels is not None else None
        if why is not None:
            raise PolicyConflictError(
                f"refusing to {action} {version}: {why}; change the policy first "
                "(`modstream checkpoints policy set FILE` or `policy clear`)"
            )

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


def _label_details(change: LabelChange | None) -> dict[str, list[str]]:
    """What history.json records of a move that changed the labels (nothing otherwise)."""
    if change is None or change.kind == "unchanged":
        return {}
    return {"labels_added": list(change.added), "labels_removed": list(change.removed)}


def _label_lists(change: LabelChange | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return ((), ()) if change is None else (change.added, change.removed)
