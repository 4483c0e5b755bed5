"""worker/engine_slot.py: an offered engine or policy serves only from the next `apply`
on; label changes and threshold changes are announced, counted and reach the results."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
import structlog

from model.engine import Engine
from model.threshold_overrides import (
    ThresholdPolicyFile,
    UnknownOverrideLabelError,
)
from tests.helpers import make_checkpoint
from worker.decode import Decoder, SourceRecord
from worker.engine_slot import EngineSlot, PolicyOffer, Serving
from worker.health import HealthState
from worker.metrics import WorkerMetrics
from worker.processing import BatchProcessor

TEXT = "you idiot, free prize call now"


def sample(metrics: WorkerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def reloads(metrics: WorkerMetrics) -> float:
    return sample(metrics, "modstream_model_reloads_total", result="ok") or 0.0


def model_info(metrics: WorkerMetrics, engine: Engine) -> float | None:
    labels = {"version": engine.version, "labels": ",".join(engine.labels), "device": "cpu"}
    return metrics.registry.get_sample_value("modstream_model_info", labels)


def load(tmp_path: Path, seed: int, *labels: str) -> Engine:
    make_checkpoint(tmp_path / f"m{seed}", seed, labels or ("insult", "spam"))
    return Engine.load(tmp_path / f"m{seed}", device="cpu")


def engines(tmp_path: Path) -> tuple[Engine, Engine]:
    return load(tmp_path, 1), load(tmp_path, 2)


def policy(version: str, **thresholds: float) -> ThresholdPolicyFile:
    return ThresholdPolicyFile(version=version, thresholds=thresholds)


def results(serving: Serving, metrics: WorkerMetrics, *texts: str) -> list[dict[str, Any]]:
    """The results of one batch staged with `serving`, as the worker builds them."""
    processor = BatchProcessor(Decoder(10_000), metrics, "results", "dead-letters")
    batch = [
        SourceRecord("requests", 0, n, None, None, json.dumps({"id": f"r{n}", "text": t}).encode())
        for n, t in enumerate(texts)
    ]
    prepared = processor.process(batch, serving.engine, serving.thresholds)
    return [json.loads(output.value) for output in prepared.outputs]


def test_an_offered_engine_serves_from_the_next_apply_only(tmp_path: Path) -> None:
    old, new = engines(tmp_path)
    metrics, health = WorkerMetrics(), HealthState()
    slot = EngineSlot(old, metrics, health)
    assert health.model_version == old.version and model_info(metrics, old) == 1.0

    slot.offer_engine(new)
    assert slot.serving is old, "offering must not touch the serving engine"
    assert slot.latest_engine() is new
    with structlog.testing.capture_logs() as logs:
        assert slot.apply().engine is new
    assert slot.serving is new and slot.latest_engine() is new
    assert reloads(metrics) == 1
    assert model_info(metrics, new) == 1.0
    assert health.model_version == new.version
    swapped = [line for line in logs if line["event"] == "model_swapped"]
    assert [(s["old_version"], s["new_version"]) for s in swapped] == [(old.version, new.version)]
    assert not [line for line in logs if line["event"] == "model_labels_changed"]

    assert slot.apply().engine is new  # nothing pending: no change, no count
    assert reloads(metrics) == 1


def test_a_later_offer_replaces_one_not_yet_applied(tmp_path: Path) -> None:
    old, new = engines(tmp_path)
    slot = EngineSlot(new, WorkerMetrics(), HealthState())
    offered = threading.Thread(target=slot.offer_engine, args=(old,))  # the reload thread
    offered.start()
    offered.join()
    slot.offer_engine(new)
    assert slot.apply().engine is new and slot.latest_engine() is new


def test_a_model_that_adds_a_label_gains_the_category_and_its_series(tmp_path: Path) -> None:
    old, wider = load(tmp_path, 1), load(tmp_path, 2, "insult", "spam", "threat")
    metrics = WorkerMetrics()
    slot = EngineSlot(old, metrics, HealthState())
    assert sample(metrics, "modstream_flagged_total", category="threat") is None
    before = slot.apply()
    slot.offer_engine(wider)
    with structlog.testing.capture_logs() as logs:
        after = slot.apply()
    (changed,) = [line for line in logs if line["event"] == "model_labels_changed"]
    assert (changed["added"], changed["removed"]) == (["threat"], [])
    assert (changed["old_version"], changed["new_version"]) == (old.version, wider.version)
    assert sample(metrics, "modstream_model_label_changes_total", change="added") == 1
    assert sample(metrics, "modstream_model_label_changes_total", change="removed") == 0
    assert sample(metrics, "modstream_flagged_total", category="threat") == 0
    assert sample(metrics, "modstream_category_threshold", category="threat") == 0.5

    # A batch staged before the swap is still the old model's; the next one the new's.
    (old_result,) = results(before, metrics, TEXT)
    (new_result,) = results(after, metrics, TEXT)
    assert set(old_result["category_scores"]) == {"insult", "spam"}
    assert old_result["model_version"] == old.version
    assert set(new_result["category_scores"]) == {"insult", "spam", "threat"}
    assert new_result["model_version"] == wider.version
    assert sample(metrics, "modstream_category_score_count", category="threat") == 1


def test_a_model_that_removes_a_label_drops_its_series_for_good(tmp_path: Path) -> None:
    old, narrower = load(tmp_path, 1), load(tmp_path, 2, "insult")
    metrics = WorkerMetrics()
    slot = EngineSlot(old, metrics, HealthState())
    before = slot.apply()
    results(before, metrics, TEXT)
    assert sample(metrics, "modstream_category_score_count", category="spam") == 1
    slot.offer_engine(narrower)
    with structlog.testing.capture_logs() as logs:
        after = slot.apply()
    (changed,) = [line for line in logs if line["event"] == "model_labels_changed"]
    assert (changed["added"], changed["removed"]) == ([], ["spam"])
    assert sample(metrics, "modstream_model_label_changes_total", change="removed") == 1
    for name in ("modstream_flagged_total", "modstream_category_score_count"):
        assert sample(metrics, name, category="spam") is None, name
    assert sample(metrics, "modstream_category_threshold", category="spam") is None

    # A batch the old model scored, counted after the swap (the publishing thread is
    # behind): its results keep spam, its metrics do not bring the series back.
    (late,) = results(before, metrics, TEXT)
    assert set(late["category_scores"]) == {"insult", "spam"}
    assert sample(metrics, "modstream_category_score_count", category="spam") is None
    (new_result,) = results(after, metrics, TEXT)
    assert set(new_result["category_scores"]) == {"insult"}
    assert sample(metrics, "modstream_category_score_count", category="insult") == 3


def flipping_thresholds(engine: Engine) -> tuple[float, float, float]:
    """TEXT's insult score, and a threshold under it and one over it (both in (0, 1])."""
    score = round(float(engine.score([TEXT]).probabilities[0][0]), 6)
    assert 0.0 < score < 1.0
    return score, score / 2, (score + 1.0) / 2


def test_a_policy_flips_flagged_between_batches_without_retraining(tmp_path: Path) -> None:
    engine = load(tmp_path, 1)
    score, under, over = flipping_thresholds(engine)
    metrics = WorkerMetrics()
    slot = EngineSlot(engine, metrics, HealthState(), policy=policy("lenient", insult=over))
    first = slot.apply()
    (result,) = results(first, metrics, TEXT)
    assert result["categories"]["insult"] is False and result["policy_version"] == "lenient"
    assert sample(metrics, "modstream_category_threshold", category="insult") == over

    slot.offer(None, PolicyOffer(policy("strict", insult=under)))
    assert slot.latest_policy() == policy("strict", insult=under)
    (still,) = results(slot.current, metrics, TEXT)
    assert still["categories"]["insult"] is False, "not before the next apply"
    with structlog.testing.capture_logs() as logs:
        second = slot.apply()
    assert second.engine is engine, "the same model, other thresholds"
    (result,) = results(second, metrics, TEXT)
    assert result["categories"]["insult"] is True and result["flagged"] is True
    assert result["policy_version"] == "strict"
    assert result["category_scores"]["insult"] == pytest.approx(score)
    assert result["evidence"]["insult"], "the evidence follows the threshold in effect"
    (shown,) = [line for line in logs if line["event"] == "thresholds_changed"]
    assert shown["policy_version"] == "strict" and shown["previous_policy_version"] == "lenient"
    assert shown["thresholds"]["insult"] == under
    assert shown["sources"] == {"insult": "policy strict", "spam": "checkpoint"}
    assert sample(metrics, "modstream_category_threshold", category="insult") == under
    assert sample(metrics, "modstream_policy_reloads_total", result="ok") == 1
    assert reloads(metrics) == 0, "a policy is no model reload"

    slot.offer(None, PolicyOffer(None))  # the policy file was cleared
    (result,) = results(slot.apply(), metrics, TEXT)
    assert result["policy_version"] == "checkpoint"
    assert result["categories"]["insult"] is (score >= 0.5)


def test_the_environment_wins_over_the_policy_and_must_fit_the_model(tmp_path: Path) -> None:
    engine = load(tmp_path, 1)
    _, under, over = flipping_thresholds(engine)
    metrics = WorkerMetrics()
    slot = EngineSlot(
        engine, metrics, HealthState(), policy("p1", insult=over), overrides={"insult": under}
    )
    (result,) = results(slot.apply(), metrics, TEXT)
    assert result["categories"]["insult"] is True
    assert result["policy_version"].startswith("p1+env-")
    assert slot.current.thresholds.sources["insult"] == "MODSTREAM_THRESHOLDS"
    with pytest.raises(UnknownOverrideLabelError, match="threat not among"):
        EngineSlot(engine, WorkerMetrics(), HealthState(), overrides={"threat": 0.5})


def test_an_engine_and_a_policy_offered_together_swap_together(tmp_path: Path) -> None:
    """A new model without spam and a policy without spam, offered at once: neither fits
    the other's predecessor (the old policy names spam), so they must land together."""
    old, narrower = load(tmp_path, 1), load(tmp_path, 2, "insult")
    metrics = WorkerMetrics()
    slot = EngineSlot(old, metrics, HealthState(), policy("with-spam", spam=0.9))
    slot.offer(narrower, PolicyOffer(policy("insult-only", insult=0.7)))
    with structlog.testing.capture_logs() as logs:
        serving = slot.apply()
    assert serving.engine is narrower and serving.thresholds.policy_version == "insult-only"
    assert serving.thresholds.thresholds == {"insult": 0.7}
    assert [line["reason"] for line in logs if line["event"] == "thresholds_changed"] == [
        "model+policy"
    ]
