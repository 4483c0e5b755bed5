"""The scoring/publishing threads: order, idleness, and failures handed back."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import structlog

from worker.decode import SourceRecord
from worker.pipeline import (
    InFlight,
    OutputsFailedError,
    Pipeline,
    PipelineError,
    ScoringFailedError,
)
from worker.processing import PreparedBatch
from worker.sink import OutputRecord, PublishError, Shipment


def record(offset: int) -> SourceRecord:
    return SourceRecord("t", 0, offset, None, None, b"x")


class Stages:
    """score/prepare/send stand-ins; `release` holds the scorer until the test says."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.sent: list[list[bytes]] = []
        self.fail_score_on: int | None = None
        self.fail_prepare_on: int | None = None

    def score(self, work: Any) -> Any:
        self.release.wait(10)
        if work == self.fail_score_on:
            raise RuntimeError(f"model broke on {work}")
        return work * 10

    def prepare(self, work: Any, scores: Any) -> PreparedBatch:
        if work == self.fail_prepare_on:
            raise ValueError(f"cannot build outputs of {work}")
        outputs = [OutputRecord("out", None, str(scores).encode(), None)]
        return PreparedBatch([record(work)], outputs, {"ok": 1}, 0.0, 0.0)

    def send(self, shipment: Shipment) -> None:
        self.sent.append([out.value for out in shipment.outputs])


def test_batches_are_scored_published_and_completed_in_order() -> None:
    stages = Stages()
    pipeline = Pipeline(stages.score, stages.prepare, stages.send, depth=3)
    try:
        assert pipeline.scorer_idle  # nothing handed over yet
        for n in (1, 2, 3):
            pipeline.submit([record(n)], n)
        assert pipeline.full and not pipeline.scorer_idle
        stages.release.set()
        completed = []
        while len(pipeline):
            head = pipeline.oldest(10)
            assert head is not None and head.prepared is not None
            completed.append(head.prepared.outputs[0].value)
            pipeline.pop_oldest()
        assert completed == [b"10", b"20", b"30"]
        assert stages.sent == [[b"10"], [b"20"], [b"30"]]
        assert pipeline.scorer_idle
    finally:
        pipeline.close()


@pytest.mark.parametrize("stage", ["score", "prepare"])
def test_a_failing_stage_reaches_the_processing_thread(stage: str) -> None:
    stages = Stages()
    stages.release.set()
    if stage == "score":
        stages.fail_score_on = 2
    else:
        stages.fail_prepare_on = 2
    pipeline = Pipeline(stages.score, stages.prepare, stages.send, depth=2)
    try:
        pipeline.submit([record(1)], 1)
        pipeline.submit([record(2)], 2)
        assert pipeline.oldest(10) is not None
        pipeline.pop_oldest()
        expected = ScoringFailedError if stage == "score" else OutputsFailedError
        with pytest.raises(expected, match=r"broke on 2|outputs of 2"):
            pipeline.oldest(10)
        assert stages.sent == [[b"10"]]  # the failed batch sent nothing
    finally:
        pipeline.close()


class Done:
    def __init__(self, is_done: bool) -> None:
        self.is_done = is_done


def test_a_batch_is_settled_once_nothing_of_it_is_on_its_way() -> None:
    item = InFlight([record(0)], work=0)
    assert not item.settled(), "not sent yet"
    item.ready.set()
    assert item.settled(), "a failed stage: nothing on its way, completing raises"
    item.shipment = Shipment([OutputRecord("out", None, b"v", None)] * 3)
    item.shipment.futures = [Done(True), None, Done(True)]
    assert item.settled(), "acknowledged or failed, and one never sent"
    item.shipment.futures[1] = Done(False)
    assert not item.settled(), "one still with the producer"


def test_the_threads_are_named_for_profiles_and_never_hold_the_process_open() -> None:
    stages = Stages()
    before = set(threading.enumerate())
    pipeline = Pipeline(stages.score, stages.prepare, stages.send, depth=1)
    try:
        started = {t.name: t.daemon for t in set(threading.enumerate()) - before}
        assert started == {"scoring": True, "publishing": True}
    finally:
        stages.release.set()
        pipeline.close()


def test_looking_at_the_oldest_batch_without_waiting_returns_at_once() -> None:
    stages = Stages()  # the scorer is held
    pipeline = Pipeline(stages.score, stages.prepare, stages.send, depth=1)
    try:
        pipeline.submit([record(1)], 1)
        looked = threading.Event()
        looker = threading.Thread(target=lambda: (pipeline.oldest(0), looked.set()))
        looker.start()
        assert looked.wait(5), "oldest(0) waited for the held scorer"
        looker.join(5)
        assert pipeline.oldest(0) is None
    finally:
        stages.release.set()
        pipeline.close()


def test_a_send_the_client_refuses_is_logged_and_left_for_completion_to_retry() -> None:
    stages = Stages()
    stages.release.set()

    def refuse(shipment: Shipment) -> None:
        raise PublishError("cannot send to topic 'out': KafkaTimeoutError: no metadata")

    pipeline = Pipeline(stages.score, stages.prepare, refuse, depth=1)
    try:
        with structlog.testing.capture_logs() as logs:
            pipeline.submit([record(1), record(2)], 1)
            head = pipeline.oldest(10)
        assert head is not None and head.error is None
        assert head.shipment is not None and head.shipment.unsent() == [0]
        assert logs == [
            {
                "event": "send_failed",
                "log_level": "warning",
                "error": "cannot send to topic 'out': KafkaTimeoutError: no metadata",
                "batch_size": 2,
            }
        ]
    finally:
        pipeline.close()


@pytest.mark.parametrize("stage", ["score", "prepare"])
def test_after_a_failed_batch_the_threads_keep_serving_the_next(stage: str) -> None:
    stages = Stages()
    stages.release.set()
    setattr(stages, f"fail_{stage}_on", 1)
    pipeline = Pipeline(stages.score, stages.prepare, stages.send, depth=2)
    try:
        pipeline.submit([record(1)], 1)
        pipeline.submit([record(2)], 2)
        with pytest.raises(PipelineError) as raised:
            pipeline.oldest(10)
        assert isinstance(raised.value.__cause__, RuntimeError | ValueError), "the cause kept"
        assert str(raised.value.__cause__) in {"model broke on 1", "cannot build outputs of 1"}
        pipeline.pop_oldest()
        head = pipeline.oldest(10)
        assert head is not None and head.prepared is not None
        assert head.prepared.outputs[0].value == b"20"
    finally:
        pipeline.close()
