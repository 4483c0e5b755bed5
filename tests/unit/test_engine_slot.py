"""worker/engine_slot.py: an offered engine serves only from the next `apply` on."""

from __future__ import annotations

import threading
from pathlib import Path

import structlog

from model.engine import Engine
from tests.helpers import make_checkpoint
from worker.engine_slot import EngineSlot
from worker.health import HealthState
from worker.metrics import WorkerMetrics


def reloads(metrics: WorkerMetrics) -> float:
    value = metrics.registry.get_sample_value("modstream_model_reloads_total", {"result": "ok"})
    return value or 0.0


def model_info(metrics: WorkerMetrics, engine: Engine) -> float | None:
    labels = {"version": engine.version, "labels": "insult,spam", "device": "cpu"}
    return metrics.registry.get_sample_value("modstream_model_info", labels)


def engines(tmp_path: Path) -> tuple[Engine, Engine]:
    make_checkpoint(tmp_path / "a", 1)
    make_checkpoint(tmp_path / "b", 2)
    return Engine.load(tmp_path / "a", device="cpu"), Engine.load(tmp_path / "b", device="cpu")


def test_an_offered_engine_serves_from_the_next_apply_only(tmp_path: Path) -> None:
    old, new = engines(tmp_path)
    metrics, health = WorkerMetrics(), HealthState()
    slot = EngineSlot(old, metrics, health)
    assert health.model_version == old.version and model_info(metrics, old) == 1.0

    slot.offer_engine(new)
    assert slot.serving is old, "offering must not touch the serving engine"
    assert slot.latest_engine() is new
    with structlog.testing.capture_logs() as logs:
        assert slot.apply() is new
    assert slot.serving is new and slot.latest_engine() is new
    assert reloads(metrics) == 1
    assert model_info(metrics, new) == 1.0
    assert health.model_version == new.version
    (swapped,) = logs
    assert swapped["event"] == "model_swapped"
    assert (swapped["old_version"], swapped["new_version"]) == (old.version, new.version)

    assert slot.apply() is new  # nothing pending: no change, no count
    assert reloads(metrics) == 1


def test_a_later_offer_replaces_one_not_yet_applied(tmp_path: Path) -> None:
    old, new = engines(tmp_path)
    slot = EngineSlot(new, WorkerMetrics(), HealthState())
    offered = threading.Thread(target=slot.offer_engine, args=(old,))  # the reload thread
    offered.start()
    offered.join()
    slot.offer_engine(new)
    assert slot.apply() is new and slot.latest_engine() is new
