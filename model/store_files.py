"""The checkpoint store on disk: its lock and history file, and the durable moves.

Every change to a store (`model.store.CheckpointStore`) runs under `locked` and goes
through these steps, each crash-safe on its own: a version directory appears by one
rename of a complete, synced directory (`install`); the `current` pointer moves by one
rename of a fresh link (`switch_pointer`); `history.json` is replaced by one rename of
a synced file (`write_history`). Directories are fsynced after each rename.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model.durable import fsync_dir, write_synced
from model.paths import META_FILE, STORE_POINTER, STORE_VERSIONS_DIR
from model.store_errors import StoreError

HISTORY_FILE = "history.json"
LOCK_FILE = ".lock"
MAX_STACK = 50
MAX_EVENTS = 100


@contextlib.contextmanager
def locked(root: Path) -> Iterator[dict[str, Any]]:
    """Holds the store's lock (creating the store) and yields its history to change."""
    (root / STORE_VERSIONS_DIR).mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_FILE, "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield read_history(root)
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def read_history(root: Path) -> dict[str, Any]:
    empty: dict[str, Any] = {"format": 1, "added": [], "stack": [], "events": []}
    try:
        data = json.loads((root / HISTORY_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return empty
    except (OSError, ValueError) as exc:
        raise StoreError(f"{root / HISTORY_FILE} is unreadable: {exc}") from exc
    if not isinstance(data, dict):
        raise StoreError(f"{root / HISTORY_FILE} must hold a JSON object")
    for key, kind in (("added", str), ("stack", str), ("events", dict)):
        value = data.get(key)
        data[key] = [v for v in value if isinstance(v, kind)] if isinstance(value, list) else []
    return data


def write_history(root: Path, history: dict[str, Any]) -> None:
    history["events"] = history["events"][-MAX_EVENTS:]
    body = json.dumps(history, indent=1, sort_keys=True) + "\n"
    tmp = root / f".{HISTORY_FILE}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write_synced(tmp, body.encode("utf-8"))
        os.replace(tmp, root / HISTORY_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(root)


def record(
    history: dict[str, Any], action: str, version: str, previous: str | None, **details: Any
) -> None:
    """Appends a pointer move (or policy change) to the history's events; `details` (e.g.
    the labels a promotion added and removed) go into the event as they are."""
    history["events"].append(
        {
            "action": action,
            "version": version,
            "previous": previous,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            **details,
        }
    )


def install(source: Path, target: Path, move: bool) -> None:
    """Puts a checkpoint directory at `target`: renamed, or copied via a synced staging copy."""
    if move:
        os.rename(source, target)
    else:
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            os.chmod(staging, 0o755)
            for item in source.iterdir():
                if item.is_file():
                    shutil.copy2(item, staging / item.name)
                    with open(staging / item.name, "rb") as f:
                        os.fsync(f.fileno())
                elif item.is_dir() and not item.is_symlink():  # e.g. report/
                    shutil.copytree(item, staging / item.name, symlinks=False)
            fsync_dir(staging)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    fsync_dir(target.parent)


def switch_pointer(root: Path, version: str) -> None:
    """Write a fresh link under a temporary name, then rename it over `current`."""
    tmp = root / f".{STORE_POINTER}.tmp-{uuid.uuid4().hex[:8]}"
    os.symlink(f"{STORE_VERSIONS_DIR}/{version}", tmp)
    try:
        fsync_dir(root)
        os.replace(tmp, root / STORE_POINTER)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(root)


def verify_version(directory: Path, version: str) -> None:
    # torch: imported here, not with the module, which a worker whose model runs in its
    # scoring process reads the store's policy through (worker/scoring_process.py).
    from model.checkpoint import CheckpointCorruptError, load_checkpoint

    loaded = load_checkpoint(directory)
    if loaded.version != version:
        raise CheckpointCorruptError(
            f"{directory} holds version {loaded.version}, not {version} (renamed by hand?)"
        )


def describe(path: Path) -> tuple[str | None, float | None, str | None]:
    try:
        meta = json.loads((path / META_FILE).read_bytes())
    except (OSError, ValueError) as exc:
        return None, None, f"model.json unreadable: {exc}"
    if not isinstance(meta, dict):
        return None, None, "model.json is not an object"
    created = meta.get("created_at")
    validation = (meta.get("metrics") or {}).get("validation") or {}
    aucs = [
        float(m["roc_auc"])
        for m in validation.values()
        if isinstance(m, dict) and isinstance(m.get("roc_auc"), int | float)
    ]
    finite = [a for a in aucs if math.isfinite(a)]
    auc = sum(finite) / len(finite) if finite else None
    return (created if isinstance(created, str) else None), auc, None


def now_compact() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
