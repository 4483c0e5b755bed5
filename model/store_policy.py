"""The threshold policy of a checkpoint store: `<root>/policy.json`, beside `current`.

What a policy file holds and how it combines with a checkpoint's own thresholds and
`MODSTREAM_THRESHOLDS` is `model.threshold_overrides`; this module keeps the file in a
store:

1. `set_policy` validates a policy (its syntax, and its labels against the current
   version's: an override for a label the serving model lacks would be refused by every
   worker), refuses a `version` already used for other thresholds (results name the
   policy by its version, so one name must mean one set of thresholds), then, under the
   store's lock, writes it as one rename of a synced file and records the change in
   history.json.
2. `clear_policy` removes it the same way: every label back to its checkpoint's threshold.
3. `policy_conflict` says why a version cannot serve under the store's policy (a
   label the policy names and the version lacks); `CheckpointStore.promote` refuses such
   a version, so the pointer and the policy always agree unless edited by hand.

Workers read the file like a new version (worker/reload.py): a change is applied
between two batches, and each result's `policy_version` names the policy it was
flagged under.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.durable import fsync_dir, write_synced
from model.errors import ExitCode
from model.paths import STORE_POINTER
from model.store_errors import StoreError
from model.store_files import locked, record, write_history
from model.store_layout import StoreReader, is_store, peek_labels
from model.threshold_overrides import (
    CHECKPOINT_POLICY,
    MAX_POLICY_BYTES,
    POLICY_FILE_NAME,
    PolicyFileError,
    ThresholdPolicyFile,
    parse_policy_file,
)

SET_ACTION = "policy_set"
CLEAR_ACTION = "policy_clear"


class PolicyConflictError(StoreError):
    """A policy and a version disagree (a label one names and the other lacks), or a
    policy version is reused for other thresholds."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class PolicyChange:
    """What `set_policy` or `clear_policy` did."""

    action: str
    version: str  # the new policy's version, or `checkpoint` after a clear
    previous: str | None  # the replaced policy's version, None when there was none
    changed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "version": self.version,
            "previous": self.previous,
            "changed": self.changed,
        }


def policy_path(root: str | Path) -> Path:
    return Path(root) / POLICY_FILE_NAME


def policy_file_for(checkpoint_dir: str | Path) -> Path | None:
    """The policy file a worker serving `checkpoint_dir` follows: that of the store it
    names (its root, or `<root>/current`), None for a plain checkpoint directory."""
    path = Path(checkpoint_dir)
    if path.name == STORE_POINTER:
        return policy_path(path.parent)
    if is_store(path):
        return policy_path(path)
    return None


def read_policy(root: str | Path) -> ThresholdPolicyFile | None:
    """The store's policy, None when it has none; `PolicyFileError` for a bad file."""
    path = policy_path(root)
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_POLICY_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise PolicyFileError(f"{path}: cannot read the policy file: {e.strerror}") from None
    return parse_policy_file(data, str(path))


def policy_conflict(policy: ThresholdPolicyFile | None, labels: Sequence[str]) -> str | None:
    """Why a model with `labels` cannot serve under `policy`, or None when it can."""
    if policy is None:
        return None
    missing = sorted(set(policy.thresholds) - set(labels))
    if not missing:
        return None
    return (
        f"policy {policy.version} ({POLICY_FILE_NAME}) sets thresholds for "
        f"{', '.join(missing)}, which a model with labels {', '.join(labels)} lacks"
    )


def canonical_bytes(policy: ThresholdPolicyFile) -> bytes:
    """The file as the store writes it (sorted keys), whatever the input's layout."""
    return (json.dumps(policy.model_dump(), indent=1, sort_keys=True) + "\n").encode()


def digest(policy: ThresholdPolicyFile) -> str:
    """What a policy version stands for: its thresholds (not its description)."""
    thresholds = json.dumps(policy.thresholds, sort_keys=True)
    return hashlib.sha256(thresholds.encode()).hexdigest()[:16]


def set_policy(root: str | Path, data: bytes, source: str) -> PolicyChange:
    """Step 1 of the module docstring. `PolicyFileError` for a bad file (naming
    `source`), `PolicyConflictError` for labels the current version lacks or a reused
    version."""
    root = Path(root)
    policy = parse_policy_file(data, source)
    with locked(root) as history:
        current_dir = StoreReader(root).current_dir()
        labels = peek_labels(current_dir) if current_dir is not None else None
        why = policy_conflict(policy, labels) if labels is not None else None
        if why is not None:
            raise PolicyConflictError(
                f"{source}: {why} (the current version); promote a version with those "
                "labels first, or leave them out"
            )
        previous, previous_name = _policy_in_place(root)
        _check_version_reuse(policy, previous, history, source)
        if previous is not None and canonical_bytes(previous) == canonical_bytes(policy):
            return PolicyChange(SET_ACTION, policy.version, previous_name, changed=False)
        _replace(root, canonical_bytes(policy))
        record(
            history,
            SET_ACTION,
            policy.version,
            previous_name,
            thresholds=dict(policy.thresholds),
            digest=digest(policy),
        )
        write_history(root, history)
    return PolicyChange(SET_ACTION, policy.version, previous_name, changed=True)


def clear_policy(root: str | Path) -> PolicyChange:
    """Step 2 of the module docstring; a no-op when there is no policy file."""
    root = Path(root)
    with locked(root) as history:
        path = policy_path(root)
        if not path.exists():
            return PolicyChange(CLEAR_ACTION, CHECKPOINT_POLICY, None, changed=False)
        _, previous = _policy_in_place(root)
        os.unlink(path)
        fsync_dir(root)
        record(history, CLEAR_ACTION, CHECKPOINT_POLICY, previous)
        write_history(root, history)
    return PolicyChange(CLEAR_ACTION, CHECKPOINT_POLICY, previous, changed=True)


def _policy_in_place(root: Path) -> tuple[ThresholdPolicyFile | None, str | None]:
    """The policy in place and its version for the history; a file that does not parse
    is `unreadable` (set and clear are how a hand-broken file is got rid of)."""
    try:
        policy = read_policy(root)
    except PolicyFileError:
        return None, "unreadable"
    return policy, policy.version if policy is not None else None


def _check_version_reuse(
    policy: ThresholdPolicyFile,
    previous: ThresholdPolicyFile | None,
    history: dict[str, Any],
    source: str,
) -> None:
    """A policy version names one set of thresholds: against the file in place and the
    policies recorded in history.json (its last `MAX_EVENTS` changes)."""
    wanted = digest(policy)
    used = {
        event.get("digest")
        for event in history["events"]
        if event.get("action") == SET_ACTION and event.get("version") == policy.version
    }
    if previous is not None and previous.version == policy.version:
        used.add(digest(previous))
    used.discard(None)
    if used and used != {wanted}:
        raise PolicyConflictError(
            f"{source}: policy version {policy.version!r} was already used for other "
            "thresholds; results name a policy by its version, so give these a new one"
        )


def _replace(root: Path, body: bytes) -> None:
    tmp = root / f".{POLICY_FILE_NAME}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write_synced(tmp, body)
        os.replace(tmp, policy_path(root))
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(root)
