"""The scoring/publishing threads: order, idleness, and failures handed back."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from worker.decode import SourceRecord
from worker.pipeline import OutputsFailedError, Pipeline, ScoringFailedError
from worker.processing import PreparedBatch
from worker.sink import OutputRecord, Shipment


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
