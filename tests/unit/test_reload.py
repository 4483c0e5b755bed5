"""worker/reload.py without a broker: detection, validation, failure memory, the offer."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import pytest
import torch

from model.checkpoint import META_FILE, WEIGHTS_FILE, CheckpointCorruptError
from model.engine import Engine
from model.store import CheckpointStore
from model.threshold_overrides import ThresholdPolicyFile
from tests.helpers import make_checkpoint
from worker.engine_slot import PolicyOffer
from worker.metrics import WorkerMetrics
from worker.reload import CANARY_TEXTS, LabelConflictError, Reloader, ReloadError, validate_engine
from worker.serving import ServingModel


class Slot:
    """Stands in for the worker: serves one engine, records what it is offered."""

    def __init__(self, engine: ServingModel) -> None:
        self.engine = engine
        self.offered: list[ServingModel] = []
        self.policies: list[ThresholdPolicyFile | None] = []
        self.changed = threading.Event()

    def latest_engine(self) -> ServingModel:
        return self.offered[-1] if self.offered else self.engine

    def latest_policy(self) -> ThresholdPolicyFile | None:
        return self.policies[-1] if self.policies else None

    def offer(self, engine: ServingModel | None, policy: PolicyOffer | None = None) -> None:
        if engine is not None:
            self.offered.append(engine)
        if policy is not None:
            self.policies.append(policy.policy)
        self.changed.set()


def reloads(metrics: WorkerMetrics, result: str) -> float:
    value = metrics.registry.get_sample_value("modstream_model_reloads_total", {"result": result})
    return value or 0.0


@pytest.fixture
def store(tmp_path: Path) -> CheckpointStore:
    return CheckpointStore(tmp_path / "store", keep=10)


def add(store: CheckpointStore, tmp_path: Path, seed: int, **kwargs: object) -> str:
    source = tmp_path / f"src-{seed}"
    make_checkpoint(source, seed, **kwargs)  # type: ignore[arg-type]
    return store.add(source)


def serving(store: CheckpointStore, tmp_path: Path) -> tuple[str, Slot, WorkerMetrics, Reloader]:
    version = add(store, tmp_path, 1)
    store.promote(version)
    slot = Slot(Engine.load(store.root, device="cpu"))
    metrics = WorkerMetrics()
    reloader = Reloader(store.root, slot, metrics, interval_s=0, device="cpu")
    return version, slot, metrics, reloader


def test_a_promoted_version_is_loaded_validated_and_offered(
    store: CheckpointStore, tmp_path: Path
) -> None:
    first, slot, metrics, reloader = serving(store, tmp_path)
    assert reloader.check() == "same_version"
    assert reloader.check() == "unchanged"
    second = add(store, tmp_path, 2)
    assert reloader.check() == "unchanged", "adding is not promoting"
    store.promote(second)
    assert reloader.check() == "offered"
    assert [e.version for e in slot.offered] == [second]
    assert reloader.check() == "unchanged"
    store.rollback()
    assert reloader.check() == "offered"
    assert [e.version for e in slot.offered] == [second, first]
    assert reloads(metrics, "failed") == 0


@pytest.mark.parametrize("damage", ["truncated_weights", "bad_json", "missing_weights"])
def test_a_corrupt_version_is_counted_once_and_retried_only_after_a_change(
    store: CheckpointStore, tmp_path: Path, damage: str
) -> None:
    _, slot, metrics, reloader = serving(store, tmp_path)
    bad = add(store, tmp_path, 2)
    directory = store.versions_dir / bad
    if damage == "truncated_weights":
        data = (directory / WEIGHTS_FILE).read_bytes()
        (directory / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    elif damage == "bad_json":
        (directory / META_FILE).write_text('{"version": ')
    else:
        (directory / WEIGHTS_FILE).unlink()
    store.promote(bad, verify=False)

    assert reloader.check() == "failed"
    assert reloads(metrics, "failed") == 1
    assert reloader.failed_version is not None
    for _ in range(3):
        assert reloader.check() == "unchanged"
    assert reloads(metrics, "failed") == 1, "the same files are not retried"
    assert slot.offered == []

    good = add(store, tmp_path, 3)
    store.promote(good)
    assert reloader.check() == "offered"
    assert slot.latest_engine().version == good


@pytest.mark.parametrize(
    "labels", [("insult", "spam", "threat"), ("insult",), ("spam", "threat")]
)  # added, removed, renamed: the promotion decided, the worker follows
def test_a_current_version_with_other_labels_is_offered(
    store: CheckpointStore, tmp_path: Path, labels: tuple[str, ...]
) -> None:
    _, slot, metrics, reloader = serving(store, tmp_path)
    other = add(store, tmp_path, 2, labels=labels)
    store.promote(other, allow_label_change=True)
    assert reloader.check() == "offered"
    assert [e.labels for e in slot.offered] == [labels]
    assert reloads(metrics, "failed") == 0


def test_a_checkpoint_with_non_finite_weights_is_refused(
    store: CheckpointStore, tmp_path: Path
) -> None:
    _, slot, metrics, reloader = serving(store, tmp_path)
    with pytest.raises(CheckpointCorruptError, match="NaN or infinite"):
        add(store, tmp_path, 2, nan_weights=True)  # the store refuses to take it in
    assert reloader.check() == "same_version"
    assert slot.offered == [] and reloads(metrics, "failed") == 0


def test_validate_engine_checks_override_labels_and_canary(tmp_path: Path) -> None:
    make_checkpoint(tmp_path / "ok", 1)
    engine = Engine.load(tmp_path / "ok", device="cpu")
    strict = ThresholdPolicyFile(version="p1", thresholds={"spam": 0.9})
    validate_engine(engine, strict, {"insult": 0.8})
    with pytest.raises(LabelConflictError, match="MODSTREAM_THRESHOLDS sets thresholds for threat"):
        validate_engine(engine, None, {"threat": 0.8})
    other = ThresholdPolicyFile(version="p2", thresholds={"threat": 0.9})
    with pytest.raises(LabelConflictError, match=r"policy p2 .* sets thresholds for threat"):
        validate_engine(engine, other)
    # A model gone non-finite in memory: the canary catches it.
    with torch.no_grad():
        engine.model.head.bias.fill_(float("nan"))
    with pytest.raises(ReloadError, match="non-finite"):
        validate_engine(engine)
    assert len(CANARY_TEXTS) >= 3


def test_a_plain_directory_replaced_in_place_is_reloaded(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    make_checkpoint(plain, 1)
    slot = Slot(Engine.load(plain, device="cpu"))
    metrics = WorkerMetrics()
    reloader = Reloader(plain, slot, metrics, interval_s=0, device="cpu")
    assert reloader.check() == "same_version"
    new = make_checkpoint(plain, 2)  # atomic directory replacement
    assert reloader.check() == "offered"
    assert slot.latest_engine().version == new


def test_a_missing_directory_is_transient_and_not_counted(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    make_checkpoint(plain, 1)
    slot = Slot(Engine.load(plain, device="cpu"))
    metrics = WorkerMetrics()
    reloader = Reloader(plain, slot, metrics, interval_s=0, device="cpu")
    plain.rename(tmp_path / "aside")
    assert reloader.check() == "missing"
    assert reloads(metrics, "failed") == 0
    (tmp_path / "aside").rename(plain)
    assert reloader.check() == "same_version"


def test_request_check_wakes_the_thread(store: CheckpointStore, tmp_path: Path) -> None:
    _, slot, _, reloader = serving(store, tmp_path)
    reloader.start()
    try:
        new = add(store, tmp_path, 2)
        store.promote(new)
        reloader.request_check()  # interval 0: nothing but a request checks
        assert slot.changed.wait(60), "no reload after request_check"
        assert slot.latest_engine().version == new
    finally:
        reloader.stop()
    assert not reloader._thread.is_alive()


def test_polling_finds_a_promotion_without_being_asked(
    store: CheckpointStore, tmp_path: Path
) -> None:
    _, slot, metrics, _ = serving(store, tmp_path)
    reloader = Reloader(store.root, slot, metrics, interval_s=0.05, device="cpu")
    reloader.start()
    try:
        new = add(store, tmp_path, 2)
        store.promote(new)
        assert slot.changed.wait(60), "polling did not notice the promotion"
        assert slot.latest_engine().version == new
    finally:
        reloader.stop()


def test_a_reloaded_model_is_frozen_once_warmed_up(store: CheckpointStore, tmp_path: Path) -> None:
    """Full collections after a reload must not walk the new model's objects
    (worker/collector.py)."""
    _, slot, _, reloader = serving(store, tmp_path)
    gc.unfreeze()
    try:
        store.promote(add(store, tmp_path, 2))
        assert reloader.check() == "offered"
        assert gc.get_freeze_count() > 0
        walked = {id(o) for generation in (0, 1, 2) for o in gc.get_objects(generation=generation)}
        offered = slot.offered[-1]
        assert isinstance(offered, Engine) and id(offered._vectors) not in walked
    finally:
        gc.unfreeze()
