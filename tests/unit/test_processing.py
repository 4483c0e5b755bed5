"""worker/processing.py: one output per record whatever fails, the one-by-one fallback,
output keys, and dead letters that fit the producer however hostile the record."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog
from kafka import KafkaProducer
from kafka.record.default_records import DefaultRecordBatchBuilder

from model.engine import Engine
from model.scores import EncodedBatch, Scores
from schemas.dead_letter import decode_bytes
from tests.unit.test_model_engine import make_engine
from worker.dead_letters import MAX_EMBEDDED_BYTES
from worker.decode import Decoder, SourceRecord
from worker.metrics import WorkerMetrics
from worker.processing import BatchProcessor, PreparedBatch
from worker.sink import OutputRecord

PRODUCER_MAX_REQUEST_BYTES: int = KafkaProducer.DEFAULT_CONFIG["max_request_size"]
BROKER_MAX_MESSAGE_BYTES = 1_048_588  # Kafka's default message.max.bytes


class FailingEngine:
    """A real engine whose batched inference fails, and whose one-text inference fails
    for texts containing `poison` only (a text that breaks the model)."""

    def __init__(self, engine: Engine, poison: str) -> None:
        self._engine = engine
        self.poison = poison
        self.batch_calls = 0
        self.single_calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def score_encoded(self, batch: EncodedBatch) -> Scores:
        self.batch_calls += 1
        raise RuntimeError("CUDA error: device-side assert (one text breaks the batch)")

    def score(self, texts: list[str]) -> Scores:
        self.single_calls.extend(texts)
        if any(self.poison in text for text in texts):
            raise ValueError(f"cannot score {texts[0][:20]!r}")
        return self._engine.score(texts)


def record(offset: int, value: bytes | None, key: bytes | None = b"k") -> SourceRecord:
    return SourceRecord("requests", 3, offset, 1_700_000_000_000, key, value)


def request(message_id: str, text: str) -> bytes:
    return json.dumps({"id": message_id, "text": text}).encode()


def processor(metrics: WorkerMetrics | None = None) -> BatchProcessor:
    return BatchProcessor(Decoder(10_000), metrics or WorkerMetrics(), "results", "dead-letters")


def values(prepared: PreparedBatch) -> list[dict[str, Any]]:
    return [json.loads(output.value) for output in prepared.outputs]


def test_a_failing_batch_is_scored_one_by_one_and_only_the_bad_text_is_dead_lettered() -> None:
    engine = make_engine()
    broken = FailingEngine(engine, poison="BREAKS")
    texts = ["you idiot", "free prize call now", "this text BREAKS the model", "see you"]
    batch = [record(n, request(f"r{n}", text)) for n, text in enumerate(texts)]
    batch.insert(1, record(9, b"{not json"))
    metrics = WorkerMetrics()
    with structlog.testing.capture_logs() as logs:
        prepared = processor(metrics).process(batch, broken)  # type: ignore[arg-type]

    assert broken.batch_calls == 1
    assert broken.single_calls == texts, "after the batch failed, every text alone, in order"
    out = values(prepared)
    assert [o.get("id", o.get("error_kind")) for o in out] == [
        "r0",
        "invalid_json",
        "r1",
        "inference_error",
        "r3",
    ]
    failed = out[3]
    assert (failed["topic"], failed["partition"], failed["offset"]) == ("requests", 3, 2)
    assert "ValueError" in failed["error_message"] and "cannot score" in failed["error_message"]
    assert decode_bytes(failed["value"], failed["value_encoding"]) == batch[3].value
    # The texts that did not fail got their real scores, as if scored alone.
    for result, text in zip([out[0], out[2], out[4]], [texts[0], texts[1], texts[3]], strict=True):
        expected = engine.score([text]).probabilities[0]
        assert list(result["category_scores"].values()) == pytest.approx(expected, abs=1e-6)
    assert prepared.outcomes == {"ok": 3, "invalid": 1, "error": 1}
    assert [o.topic for o in prepared.outputs] == [
        "results",
        "dead-letters",
        "results",
        "dead-letters",
        "results",
    ]
    inference_errors = metrics.registry.get_sample_value(
        "modstream_dead_letters_total", {"reason": "inference_error"}
    )
    assert inference_errors == 1
    events = [line["event"] for line in logs]
    assert events.count("batch_inference_failed") == 1
    (failure,) = [line for line in logs if line["event"] == "inference_failed"]
    assert (failure["topic"], failure["partition"], failure["offset"]) == ("requests", 3, 2)


def test_a_batch_whose_encoding_fails_is_scored_one_by_one_too() -> None:
    class EncodingFails(FailingEngine):
        def encode_batch(self, texts: list[str]) -> EncodedBatch:
            raise RuntimeError("tokeniser broke")

    broken = EncodingFails(make_engine(), poison="never-present")
    batch = [record(n, request(f"r{n}", f"hello {n}")) for n in range(3)]
    with structlog.testing.capture_logs() as logs:
        prepared = processor().process(batch, broken)  # type: ignore[arg-type]
    assert broken.batch_calls == 0, "nothing to run the batch on"
    assert [o["id"] for o in values(prepared)] == ["r0", "r1", "r2"]
    assert prepared.outcomes == {"ok": 3, "invalid": 0, "error": 0}
    assert "batch_encoding_failed" in [line["event"] for line in logs]


def test_results_are_keyed_like_their_input_else_by_request_id() -> None:
    batch = [
        record(0, request("with-key", "hello"), key=b"input-key"),
        record(1, request("no-key", "hello")),
        record(2, b"{broken", key=None),
    ]
    batch[1] = SourceRecord("requests", 3, 1, None, None, batch[1].value)
    prepared = processor().process(batch, make_engine())
    assert [o.key for o in prepared.outputs] == [b"input-key", b"no-key", None]
    stamp = 1_700_000_000_000
    assert [o.source_timestamp_ms for o in prepared.outputs] == [stamp, None, stamp]


def test_a_batch_is_scored_and_labelled_by_the_engine_that_staged_it() -> None:
    """Invariant 4: the engine given to `stage` encodes, scores and names the results."""
    engine = make_engine(pooling="mean")
    engine.version = "staged-with"
    p = processor()
    staged = p.stage([record(0, request("a", "you idiot"))], engine)
    prepared = p.prepare(staged, p.score(staged))
    (result,) = values(prepared)
    assert result["model_version"] == "staged-with"
    expected = engine.score(["you idiot"]).probabilities[0]
    assert list(result["category_scores"].values()) == pytest.approx(expected, abs=1e-6)


def serialised_size(output: OutputRecord) -> int:
    """What the producer measures against `max_request_size` for one record."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(
        output.key, output.value, list(output.headers)
    )
    return size


def hostile_value(size: int) -> bytes:
    """Not JSON, valid UTF-8, every byte a control character: JSON escapes each one as
    `\\u00XX`, six bytes for one."""
    return bytes([1, 2, 27, 31]) * (size // 4)


def test_a_dead_letter_of_a_record_at_the_broker_limit_fits_the_producer() -> None:
    """The value alone near the broker's limit, every byte escaped 6-fold in JSON."""
    value = hostile_value(BROKER_MAX_MESSAGE_BYTES - 1024)
    key = hostile_value(1024)
    prepared = processor().process([record(0, value, key=key)], make_engine())
    (output,) = prepared.outputs
    letter = json.loads(output.value)
    assert letter["error_kind"] == "text_too_long" and letter["truncated"] is True
    assert len(decode_bytes(letter["value"], letter["value_encoding"]) or b"") <= (
        MAX_EMBEDDED_BYTES
    )
    assert output.value.count(b"\\u00") >= MAX_EMBEDDED_BYTES, "the escaping was exercised"
    assert serialised_size(output) <= PRODUCER_MAX_REQUEST_BYTES


def test_a_dead_letter_of_a_record_with_a_big_key_fits_the_producer() -> None:
    """Issue 14's record: 300 KB of control characters as the key, 700 KB of non-JSON
    as the value (together under the broker's limit): the output key is bounded."""
    key, value = hostile_value(300_000), hostile_value(700_000)
    assert len(key) + len(value) < BROKER_MAX_MESSAGE_BYTES
    prepared = processor().process([record(0, value, key=key)], make_engine())
    (output,) = prepared.outputs
    assert json.loads(output.value)["error_kind"] == "text_too_long"
    assert serialised_size(output) <= PRODUCER_MAX_REQUEST_BYTES
