"""The store's label-change rule and its policy file (model/store.py, model/store_policy.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.errors import ExitCode
from model.label_change import LabelChangeRefusedError
from model.store import CheckpointStore
from model.store_policy import (
    PolicyConflictError,
    clear_policy,
    policy_file_for,
    policy_path,
    read_policy,
    set_policy,
)
from model.threshold_overrides import PolicyFileError
from tests.helpers import make_checkpoint

THREE = ("insult", "spam", "threat")


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "store", keep=10)


def add(store: CheckpointStore, tmp_path: Path, seed: int, *labels: str) -> str:
    source = tmp_path / f"src-{seed}"
    make_checkpoint(source, seed, labels or ("insult", "spam"))
    return store.add(source)


def policy(version: str, **thresholds: float) -> bytes:
    return json.dumps({"version": version, "thresholds": thresholds}).encode()


def test_adding_labels_is_promoted_and_recorded(store: CheckpointStore, tmp_path: Path) -> None:
    first = add(store, tmp_path, 1)
    store.promote(first)
    wider = add(store, tmp_path, 2, *THREE)
    change = store.promote(wider)
    assert change.changed and change.labels_added == ("threat",) and change.labels_removed == ()
    event = store.history()[-1]
    assert (event["action"], event["labels_added"], event["labels_removed"]) == (
        "promote",
        ["threat"],
        [],
    )


@pytest.mark.parametrize("labels", [("spam",), ("harassment", "spam")])
def test_removing_or_renaming_needs_permission(
    store: CheckpointStore, tmp_path: Path, labels: tuple[str, ...]
) -> None:
    first = add(store, tmp_path, 1)
    store.promote(first)
    narrower = add(store, tmp_path, 2, *labels)
    with pytest.raises(LabelChangeRefusedError, match="removes label\\(s\\) insult") as caught:
        store.promote(narrower)
    assert caught.value.exit_code == ExitCode.USAGE
    assert store.current_version() == first and store.history()[-1]["version"] == first

    change = store.promote(narrower, allow_label_change=True)
    assert change.labels_removed == ("insult",)
    assert store.history()[-1]["labels_removed"] == ["insult"]
    # Rolling back is the way out: it removes the new labels without asking, and says so.
    back = store.rollback()
    assert back.version == first and back.labels_removed == tuple(set(labels) - {"spam"})
    assert store.history()[-1]["action"] == "rollback"


def test_set_validates_writes_atomically_and_records(
    store: CheckpointStore, tmp_path: Path
) -> None:
    store.promote(add(store, tmp_path, 1))
    assert read_policy(store.root) is None
    change = set_policy(store.root, policy("strict-1", insult=0.8), "mine.json")
    assert change.changed and (change.version, change.previous) == ("strict-1", None)
    written = read_policy(store.root)
    assert written is not None and written.thresholds == {"insult": 0.8}
    assert not [p.name for p in store.root.iterdir() if ".tmp-" in p.name]
    again = set_policy(store.root, policy("strict-1", insult=0.8), "mine.json")
    assert not again.changed, "the same policy is no change"
    set_policy(store.root, policy("strict-2", insult=0.7, spam=0.99), "mine.json")
    events = [e for e in store.history() if e["action"].startswith("policy")]
    assert [(e["version"], e["previous"]) for e in events] == [
        ("strict-1", None),
        ("strict-2", "strict-1"),
    ]
    assert events[-1]["thresholds"] == {"insult": 0.7, "spam": 0.99}

    cleared = clear_policy(store.root)
    assert cleared.changed and cleared.previous == "strict-2"
    assert not policy_path(store.root).exists() and read_policy(store.root) is None
    assert not clear_policy(store.root).changed
    assert store.history()[-1]["action"] == "policy_clear"


def test_set_refuses_bad_files_labels_the_model_lacks_and_reused_versions(
    store: CheckpointStore, tmp_path: Path
) -> None:
    store.promote(add(store, tmp_path, 1))
    with pytest.raises(PolicyFileError, match=r"mine\.json: thresholds\.insult"):
        set_policy(store.root, b'{"version": "v1", "thresholds": {"insult": 2}}', "mine.json")
    with pytest.raises(PolicyConflictError, match="sets thresholds for threat, which a model"):
        set_policy(store.root, policy("v1", threat=0.5), "mine.json")
    assert not policy_path(store.root).exists(), "nothing written"
    set_policy(store.root, policy("v1", insult=0.8), "mine.json")
    set_policy(store.root, policy("v2", insult=0.9), "mine.json")
    with pytest.raises(PolicyConflictError, match="'v1' was already used for other thresholds"):
        set_policy(store.root, policy("v1", insult=0.6), "mine.json")
    assert read_policy(store.root).version == "v2"  # type: ignore[union-attr]


def test_promote_and_rollback_refuse_a_version_the_policy_cannot_apply_to(
    store: CheckpointStore, tmp_path: Path
) -> None:
    first = add(store, tmp_path, 1)
    store.promote(first)
    wider = add(store, tmp_path, 2, *THREE)
    store.promote(wider)
    set_policy(store.root, policy("with-threat", threat=0.7), "p.json")
    with pytest.raises(PolicyConflictError, match=r"refusing to roll back to .*threat"):
        store.rollback()
    assert store.current_version() == wider
    narrower = add(store, tmp_path, 3, "insult", "spam")
    with pytest.raises(PolicyConflictError, match="refusing to promote"):
        store.promote(narrower, allow_label_change=True)
    clear_policy(store.root)
    assert store.rollback().version == first


def test_a_broken_policy_file_is_reported_and_can_be_replaced(
    store: CheckpointStore, tmp_path: Path
) -> None:
    store.promote(add(store, tmp_path, 1))
    policy_path(store.root).write_text('{"version": "x"')
    with pytest.raises(PolicyFileError, match=r"policy\.json: not JSON"):
        read_policy(store.root)
    change = set_policy(store.root, policy("fixed", spam=0.9), "p.json")
    assert change.previous == "unreadable"
    policy_path(store.root).write_text("[]")
    assert clear_policy(store.root).previous == "unreadable"


def test_the_policy_file_of_a_checkpoint_setting(store: CheckpointStore, tmp_path: Path) -> None:
    store.promote(add(store, tmp_path, 1))
    assert policy_file_for(store.root) == store.root / "policy.json"
    assert policy_file_for(store.root / "current") == store.root / "policy.json"
    plain = tmp_path / "plain"
    make_checkpoint(plain, 5)
    assert policy_file_for(plain) is None
