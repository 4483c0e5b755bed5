"""worker/reload.py with the real EngineSlot: the store's policy file picked up like a
new version, MODSTREAM_THRESHOLDS against new models, and taxonomy changes both ways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog

from model.engine import Engine
from model.store import CheckpointStore
from model.store_policy import clear_policy, policy_path, set_policy
from tests.helpers import make_checkpoint
from worker.engine_slot import EngineSlot
from worker.health import HealthState
from worker.metrics import WorkerMetrics
from worker.reload import Reloader


class Serving:
    """A store with a current version, and a worker's slot and reloader on it."""

    def __init__(self, tmp_path: Path, overrides: dict[str, float] | None = None) -> None:
        self.tmp_path = tmp_path
        self.store = CheckpointStore(tmp_path / "store", keep=10)
        self.store.promote(self.add(1))
        self.metrics = WorkerMetrics()
        engine = Engine.load(self.store.root, device="cpu")
        self.slot = EngineSlot(engine, self.metrics, HealthState(), overrides=overrides)
        self.reloader = Reloader(
            self.store.root, self.slot, self.metrics, 0, device="cpu", overrides=overrides
        )

    def add(self, seed: int, *labels: str) -> str:
        make_checkpoint(self.tmp_path / f"src-{seed}", seed, labels or ("insult", "spam"))
        return self.store.add(self.tmp_path / f"src-{seed}")

    def set_policy(self, version: str, **thresholds: float) -> None:
        body = json.dumps({"version": version, "thresholds": thresholds}).encode()
        set_policy(self.store.root, body, "p.json")

    def count(self, name: str, result: str) -> float:
        return self.metrics.registry.get_sample_value(name, {"result": result}) or 0.0


def test_a_policy_change_is_picked_up_like_a_new_version(tmp_path: Path) -> None:
    s = Serving(tmp_path)
    assert s.reloader.check() == "same_version" and s.reloader.policy_outcome == "same_policy"
    assert s.reloader.check() == "unchanged" and s.reloader.policy_outcome == "unchanged"

    s.set_policy("strict-1", insult=0.8)
    assert s.reloader.check() == "unchanged"
    assert s.reloader.policy_outcome == "offered"
    assert s.slot.current.thresholds.policy_version == "checkpoint", "not before apply"
    serving = s.slot.apply()
    assert serving.thresholds.policy_version == "strict-1"
    assert serving.thresholds.thresholds["insult"] == 0.8
    assert s.reloader.check() == "unchanged" and s.reloader.policy_outcome == "unchanged"

    # Rewritten with the same content (a new inode): read, found equal, nothing offered.
    s.set_policy("strict-2", insult=0.8)
    s.set_policy("strict-1", insult=0.8)
    s.reloader.check()
    assert s.reloader.policy_outcome == "same_policy"

    clear_policy(s.store.root)
    s.reloader.check()
    assert s.reloader.policy_outcome == "offered"
    assert s.slot.apply().thresholds.policy_version == "checkpoint"
    assert s.count("modstream_policy_reloads_total", "ok") == 2
    assert s.count("modstream_policy_reloads_total", "failed") == 0


def test_a_broken_policy_file_keeps_the_policy_in_effect(tmp_path: Path) -> None:
    s = Serving(tmp_path)
    s.set_policy("strict-1", insult=0.8)
    s.reloader.check()
    s.slot.apply()
    policy_path(s.store.root).write_text('{"version": "x", "thresholds": {"insult": 7}}')
    with structlog.testing.capture_logs() as logs:
        s.reloader.check()
    assert s.reloader.policy_outcome == "failed"
    (failed,) = [line for line in logs if line["event"] == "policy_reload_failed"]
    assert "thresholds.insult" in failed["error"] and failed["serving_policy"] == "strict-1"
    assert s.count("modstream_policy_reloads_total", "failed") == 1
    s.reloader.check()
    assert s.reloader.policy_outcome == "unchanged", "the same file is not read again"
    assert s.count("modstream_policy_reloads_total", "failed") == 1
    assert s.slot.apply().thresholds.policy_version == "strict-1"


def test_a_hand_written_policy_for_a_label_to_come_waits_for_its_model(tmp_path: Path) -> None:
    s = Serving(tmp_path)
    policy_path(s.store.root).write_text(
        json.dumps({"version": "with-threat", "thresholds": {"threat": 0.7}})
    )  # by hand: `checkpoints policy set` would refuse it against the current version
    s.reloader.check()
    assert s.reloader.policy_outcome == "failed"
    s.store.promote(s.add(2, "insult", "spam", "threat"))
    assert s.reloader.check() == "offered"
    s.slot.apply()
    s.reloader.check()  # the model changed: the refused policy is tried again
    assert s.reloader.policy_outcome == "offered"
    assert s.slot.apply().thresholds.thresholds["threat"] == 0.7


def test_a_model_and_a_policy_dropping_a_label_together_both_land(tmp_path: Path) -> None:
    s = Serving(tmp_path)
    s.set_policy("with-spam", spam=0.9)
    s.reloader.check()
    s.slot.apply()
    # Within one reload interval: the policy loses spam, then a model without spam is
    # promoted (promote checks it against the new policy).
    s.set_policy("insult-only", insult=0.7)
    narrower = s.add(2, "insult")
    s.store.promote(narrower, allow_label_change=True)
    assert s.reloader.check() == "offered" and s.reloader.policy_outcome == "offered"
    serving = s.slot.apply()
    assert serving.engine.version == narrower
    assert serving.thresholds.thresholds == {"insult": 0.7}


def test_a_model_refused_over_the_policy_is_tried_again_when_the_policy_changes(
    tmp_path: Path,
) -> None:
    s = Serving(tmp_path)
    s.set_policy("with-spam", spam=0.9)
    s.reloader.check()
    s.slot.apply()
    narrower = s.add(2, "insult")
    (s.store.root / "policy.json").rename(tmp_path / "aside.json")  # promote would refuse
    s.store.promote(narrower, allow_label_change=True)
    (tmp_path / "aside.json").rename(s.store.root / "policy.json")  # a hand-made mismatch
    assert s.reloader.check() == "failed"
    assert s.reloader.check() == "unchanged", "not retried while nothing changes"
    assert s.count("modstream_model_reloads_total", "failed") == 1
    clear_policy(s.store.root)
    assert s.reloader.check() == "offered"
    assert s.slot.apply().engine.version == narrower


def test_a_model_lacking_an_overridden_label_is_refused_and_counted(tmp_path: Path) -> None:
    s = Serving(tmp_path, overrides={"spam": 0.9})
    serving_version = s.slot.serving.version
    narrower = s.add(2, "insult")
    s.store.promote(narrower, allow_label_change=True)
    with structlog.testing.capture_logs() as logs:
        assert s.reloader.check() == "failed"
    (failed,) = [line for line in logs if line["event"] == "model_reload_failed"]
    assert "MODSTREAM_THRESHOLDS sets thresholds for spam" in failed["error"]
    assert s.count("modstream_model_reloads_total", "failed") == 1
    assert s.slot.apply().engine.version == serving_version, "the old model keeps serving"
    # One that keeps spam (and adds a label) is taken.
    wider = s.add(3, "insult", "spam", "threat")
    s.store.promote(wider)
    assert s.reloader.check() == "offered"
    serving = s.slot.apply()
    assert serving.engine.version == wider
    assert serving.thresholds.thresholds["spam"] == 0.9
    assert serving.thresholds.policy_version.startswith("env-")


@pytest.mark.parametrize(
    ("labels", "added", "removed"),
    [(("insult", "spam", "threat"), 1, 0), (("insult",), 0, 1)],
)
def test_taxonomy_changes_reach_the_slot_counted_by_direction(
    tmp_path: Path, labels: tuple[str, ...], added: int, removed: int
) -> None:
    s = Serving(tmp_path)
    version = s.add(2, *labels)
    s.store.promote(version, allow_label_change=True)
    assert s.reloader.check() == "offered"
    assert s.slot.apply().engine.labels == labels
    for change, expected in (("added", added), ("removed", removed)):
        value = s.metrics.registry.get_sample_value(
            "modstream_model_label_changes_total", {"change": change}
        )
        assert value == expected, change
