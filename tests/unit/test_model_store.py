"""The checkpoint store: atomic pointer, keep-K pruning, rollback history, legacy adoption."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from model.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    CheckpointCorruptError,
    load_checkpoint,
    resolve_checkpoint_dir,
)
from model.engine import Engine
from model.store import (
    CheckpointStore,
    NoPreviousVersionError,
    NotAStoreError,
    UnknownVersionError,
)
from model.store_layout import peek_version, store_root_for
from tests.helpers import make_checkpoint


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "store", keep=3)


def add(store: CheckpointStore, tmp_path: Path, seed: int) -> str:
    source = tmp_path / f"src-{seed}"
    make_checkpoint(source, seed)
    return store.add(source)


def test_add_then_promote_points_current_at_the_version(
    store: CheckpointStore, tmp_path: Path
) -> None:
    version = add(store, tmp_path, 1)
    assert store.current_version() is None and store.current_dir() is None
    assert store.versions() == [version]

    change = store.promote(version)
    assert change.changed and change.previous is None
    assert store.pointer.is_symlink()
    assert os.readlink(store.pointer) == f"versions/{version}"
    assert store.current_version() == version
    assert store.current_dir() == (store.versions_dir / version).resolve()
    # Every loader accepts the root or the pointer and lands on the version directory.
    for path in (store.root, store.pointer):
        assert resolve_checkpoint_dir(path) == (store.versions_dir / version).resolve()
        assert load_checkpoint(path).version == version
        assert Engine.load(path, device="cpu").version == version
    # No temporary names are left behind.
    assert sorted(p.name for p in store.root.iterdir() if p.name.startswith(".c")) == []


def test_promoting_the_current_version_is_a_no_op(store: CheckpointStore, tmp_path: Path) -> None:
    version = add(store, tmp_path, 1)
    store.promote(version)
    change = store.promote(version)
    assert not change.changed
    assert [e["action"] for e in store.history()] == ["promote"]


def test_unknown_or_malformed_versions_are_rejected_and_nothing_changes(
    store: CheckpointStore, tmp_path: Path
) -> None:
    version = add(store, tmp_path, 1)
    store.promote(version)
    for bad in ("deadbeef0000", "../versions", "", ".hidden", "a/b", f"{version}\n"):
        with pytest.raises(UnknownVersionError):
            store.promote(bad)
    assert store.current_version() == version
    with pytest.raises(UnknownVersionError, match="not a version name"):
        store.version_dir(f"{version}\n")  # a name pasted with its line end


def test_promote_verifies_the_checkpoint_unless_told_not_to(
    store: CheckpointStore, tmp_path: Path
) -> None:
    good = add(store, tmp_path, 1)
    bad = add(store, tmp_path, 2)
    store.promote(good)
    weights = store.versions_dir / bad / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointCorruptError):
        store.promote(bad)
    assert store.current_version() == good
    store.promote(bad, verify=False)  # the worker's own checks are the last line
    assert store.current_version() == bad


def test_rollback_walks_back_through_promotions(store: CheckpointStore, tmp_path: Path) -> None:
    a, b, c = (add(store, tmp_path, seed) for seed in (1, 2, 3))
    with pytest.raises(NoPreviousVersionError):
        store.rollback()
    store.promote(a)
    with pytest.raises(NoPreviousVersionError):
        store.rollback()
    store.promote(b)
    store.promote(c)
    assert store.previous_version() == b
    assert store.rollback().version == b
    assert store.current_version() == b
    assert store.rollback().version == a
    assert store.current_version() == a
    with pytest.raises(NoPreviousVersionError):
        store.rollback()
    assert [(e["action"], e["version"], e["previous"]) for e in store.history()] == [
        ("promote", a, None),
        ("promote", b, a),
        ("promote", c, b),
        ("rollback", b, c),
        ("rollback", a, b),
    ]
    # The history file is plain JSON an operator can read.
    assert json.loads((store.root / "history.json").read_text())["stack"] == []


def test_keep_k_prunes_oldest_but_never_current_or_previous(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "store", keep=2)
    a = add(store, tmp_path, 1)
    store.promote(a)
    b = add(store, tmp_path, 2)
    store.promote(b)  # current b, previous a
    c = add(store, tmp_path, 3)  # held candidates
    d = add(store, tmp_path, 4)
    assert store.versions() == [a, b, c, d], "2 newest + current + previous"
    change = store.promote(d)  # current d, previous b: a is neither, nor among the 2 newest
    assert change.pruned == (a,)
    assert store.versions() == [b, c, d]
    assert not (store.versions_dir / a).exists()
    e = add(store, tmp_path, 5)
    assert store.versions() == [b, d, e], "c was the oldest unprotected one"
    assert store.rollback().version == b
    # No half-deleted directories are left under any name.
    assert sorted(p.name for p in store.versions_dir.iterdir()) == sorted([b, d, e])


def test_adding_an_existing_version_is_idempotent(store: CheckpointStore, tmp_path: Path) -> None:
    source = tmp_path / "src"
    version = make_checkpoint(source, 1)
    assert store.add(source) == version
    assert store.add(source) == version
    assert store.versions() == [version]
    assert source.is_dir(), "add copies unless asked to move"


def test_add_moves_when_asked_and_rejects_broken_checkpoints(
    store: CheckpointStore, tmp_path: Path
) -> None:
    with store.incoming() as staging:
        version = make_checkpoint(staging, 5)
        assert store.add(staging, move=True) == version
        assert not staging.exists()
    assert not any((store.root / ".incoming").iterdir())
    broken = tmp_path / "broken"
    make_checkpoint(broken, 6)
    (broken / META_FILE).write_text("{not json")
    with pytest.raises(CheckpointCorruptError):
        store.add(broken)
    assert store.versions() == [version]


def test_readers_never_see_a_missing_or_mixed_checkpoint_while_promoting(
    store: CheckpointStore, tmp_path: Path
) -> None:
    versions = [add(store, tmp_path, seed) for seed in (1, 2, 3)]
    store.promote(versions[0])
    stop = threading.Event()
    seen: set[str] = set()
    errors: list[BaseException] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                seen.add(load_checkpoint(store.root).version)
            except BaseException as exc:
                errors.append(exc)
                return

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for n in range(60):
            store.promote(versions[n % 3])
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors[:1]
    assert seen <= set(versions) and seen


def test_legacy_plain_directory_at_current_is_adopted(tmp_path: Path) -> None:
    root = tmp_path / "checkpoints"
    legacy_version = make_checkpoint(root / "current", 1)
    assert store_root_for(root / "current") == root
    store = CheckpointStore(root, keep=3)
    assert store.current_version() == legacy_version
    assert store.current_dir() == root / "current"
    new = add(store, tmp_path, 2)
    store.promote(new)
    assert store.pointer.is_symlink()
    assert store.current_version() == new
    assert store.versions() == [legacy_version, new]
    assert store.rollback().version == legacy_version
    assert load_checkpoint(root / "current").version == legacy_version


def test_store_root_for_tells_stores_from_plain_directories(tmp_path: Path) -> None:
    assert store_root_for(tmp_path / "fresh") == tmp_path / "fresh"
    assert store_root_for(tmp_path / "x" / "current") == tmp_path / "x"
    plain = tmp_path / "plain"
    make_checkpoint(plain, 1)
    with pytest.raises(NotAStoreError, match="plain checkpoint directory"):
        store_root_for(plain)
    store = CheckpointStore(tmp_path / "store")
    store.promote(store.add(plain))
    assert store_root_for(store.root) == store.root
    assert store_root_for(store.pointer) == store.root


def test_plain_directories_still_load_unchanged(tmp_path: Path) -> None:
    version = make_checkpoint(tmp_path / "plain", 1)
    assert resolve_checkpoint_dir(tmp_path / "plain") == tmp_path / "plain"
    assert load_checkpoint(tmp_path / "plain").version == version
    assert peek_version(tmp_path / "plain") == version
    assert peek_version(tmp_path / "nowhere") is None


def test_list_describes_each_version(store: CheckpointStore, tmp_path: Path) -> None:
    a = add(store, tmp_path, 1)
    b = add(store, tmp_path, 2)
    store.promote(a)
    store.promote(b)
    infos = {info.version: info for info in store.list()}
    assert infos[b].current and not infos[b].previous
    assert infos[a].previous and not infos[a].current
    assert infos[a].mean_validation_auc == pytest.approx(0.8)
    assert infos[a].created_at == "2024-01-01T00:00:01+00:00"


def test_keep_must_leave_room_for_current_and_previous(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        CheckpointStore(tmp_path, keep=1)
