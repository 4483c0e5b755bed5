"""worker/scoring.py: `modstream score` writes what the worker would publish."""

from __future__ import annotations

import io
import json
from typing import Any

import structlog

from model.engine import Engine
from tests.unit.test_model_engine import make_engine
from worker.decode import Decoder, SourceRecord
from worker.metrics import WorkerMetrics
from worker.processing import BatchProcessor
from worker.scoring import score_stream

LINES = [
    '{"id": "a", "text": "you idiot"}',
    "{not json",
    "",
    '{"id": "b", "text": "free prize call now"}',
    '{"id": "c"}',
]


def without_clock(line: dict[str, Any]) -> dict[str, Any]:
    line.pop("dead_lettered_at", None)
    line.get("timings", {}).pop("inference_ms", None)
    return line


def test_one_line_per_input_line_as_the_worker_builds_it() -> None:
    engine = make_engine()
    out = io.StringIO()
    with structlog.testing.capture_logs():
        dead_lettered = score_stream(engine, io.StringIO("\n".join(LINES) + "\n"), out, "in", 2)
    written = [without_clock(json.loads(line)) for line in out.getvalue().splitlines()]
    assert dead_lettered == 2
    assert [line.get("id", line.get("error_kind")) for line in written] == [
        "a",
        "invalid_json",
        "b",
        "missing_field",
    ]
    assert [line["offset"] for line in written] == [0, 1, 3, 4], "line numbers, blanks skipped"

    processor = BatchProcessor(Decoder(10_000), WorkerMetrics(), "results", "dead-letters")
    records = [
        SourceRecord("in", 0, n, None, None, line.encode()) for n, line in enumerate(LINES) if line
    ]
    with structlog.testing.capture_logs():
        prepared = [processor.process(records[:2], engine), processor.process(records[2:], engine)]
    expected = [json.loads(o.value) for p in prepared for o in p.outputs]
    assert written == [without_clock(line) for line in expected]


class BrokenEngine:
    """An engine whose model fails on one text."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.version, self.labels, self.thresholds = (
            engine.version,
            engine.labels,
            engine.thresholds,
        )

    def encode_batch(self, texts: list[str]) -> Any:
        raise RuntimeError("tokeniser broke")

    def score(self, texts: list[str]) -> Any:
        if "prize" in texts[0]:
            raise RuntimeError("model broke")
        return self._engine.score(texts)


def test_a_text_the_model_fails_on_becomes_an_inference_error_not_a_crash() -> None:
    out = io.StringIO()
    with structlog.testing.capture_logs() as logs:
        engine: Any = BrokenEngine(make_engine())
        dead_lettered = score_stream(engine, io.StringIO("\n".join(LINES) + "\n"), out, "in", 8)
    written = [json.loads(line) for line in out.getvalue().splitlines()]
    assert dead_lettered == 3
    assert written[0]["id"] == "a"
    assert written[2]["error_kind"] == "inference_error"
    assert "model broke" in written[2]["error_message"]
    assert {"batch_encoding_failed", "inference_failed"} <= {line["event"] for line in logs}
