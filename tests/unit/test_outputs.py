"""worker/outputs.py and step 3 of worker/processing.py: every output fits its topic.

The record of issue 14: a ≈1 MB input with a 300 KB key of \\x01 and a 700 KB value
that is not JSON. Its dead letter, keyed with the input key, was 1,086,828 bytes: over
the producer's 1 MiB `max_request_size`, so it could never be sent.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import structlog

from model.engine import Engine
from tests.unit.test_model_engine import make_engine
from worker.decode import Decoder, SourceRecord
from worker.metrics import WorkerMetrics
from worker.outputs import (
    DEFAULT_MAX_REQUEST_SIZE,
    KEY_HASHED,
    KEY_HEADER,
    MAX_OUTPUT_KEY_BYTES,
    OutputFitter,
    OutputLimits,
    bounded_key,
    serialised_size,
)
from worker.processing import BatchProcessor
from worker.sink import OutputRecord

RESULTS, LETTERS = "results", "dead-letters"


def processor(limits: OutputLimits | None = None) -> BatchProcessor:
    fitter = OutputFitter(limits or OutputLimits(), LETTERS)
    return BatchProcessor(Decoder(), WorkerMetrics(), RESULTS, LETTERS, fitter)


def record(offset: int, value: bytes | None, key: bytes | None = b"k") -> SourceRecord:
    return SourceRecord("requests", 3, offset, 1_700_000_000_000, key, value)


def request(message_id: str, text: str) -> bytes:
    return json.dumps({"id": message_id, "text": text}).encode()


def dead_letters_total(p: BatchProcessor, reason: str) -> float:
    return p.metrics.registry.get_sample_value("modstream_dead_letters_total", {"reason": reason})


def test_short_keys_stay_and_long_ones_become_their_digest_with_a_header() -> None:
    short = b"x" * MAX_OUTPUT_KEY_BYTES
    assert bounded_key(short) == (short, ())
    assert bounded_key(None) == (None, ())
    long = b"\x01" * 300_000
    key, headers = bounded_key(long)
    assert key == hashlib.sha256(long).digest()
    assert headers == ((KEY_HEADER, KEY_HASHED),)
    assert bounded_key(long + b"!")[0] != key, "different keys stay apart"


def test_the_one_megabyte_record_gets_a_dead_letter_the_producer_can_send() -> None:
    big = record(7, b"\x01" * 700_000, key=b"\x01" * 300_000)
    with structlog.testing.capture_logs():
        prepared = processor().process([big], make_engine())
    (output,) = prepared.outputs
    assert output.topic == LETTERS
    assert serialised_size(output) <= DEFAULT_MAX_REQUEST_SIZE
    assert output.key == hashlib.sha256(big.key or b"").digest()
    assert dict(output.headers) == {KEY_HEADER: KEY_HASHED}
    letter = json.loads(output.value)
    # It fits once the key is bounded: the letter itself keeps its kind and both prefixes.
    assert letter["error_kind"] == "invalid_json"
    assert letter["truncated"] is True and letter["key"] and letter["value"]


def test_a_dead_letter_over_its_topic_limit_becomes_a_minimal_one() -> None:
    p = processor(OutputLimits(topic_max={LETTERS: 100_000}))
    big = record(7, b"\x01" * 700_000, key=b"\x01" * 300_000)
    with structlog.testing.capture_logs() as logs:
        prepared = p.process([big], make_engine())
    (output,) = prepared.outputs
    assert serialised_size(output) <= 1_000
    assert output.last_resort
    letter = json.loads(output.value)
    assert letter["error_kind"] == "output_too_large"
    assert (letter["topic"], letter["partition"], letter["offset"]) == ("requests", 3, 7)
    assert letter["timestamp"] == 1_700_000_000_000
    assert letter["key"] is None and letter["value"] is None and letter["truncated"] is True
    assert "100000-byte limit" in letter["error_message"]
    assert output.key == hashlib.sha256(big.key or b"").digest(), "partitioned like the input"
    assert dead_letters_total(p, "output_too_large") == 1
    assert dead_letters_total(p, "invalid_json") == 0, "one dead letter, counted once"
    assert "output_replaced" in [line["event"] for line in logs]


def test_a_result_over_its_topic_limit_becomes_a_minimal_dead_letter() -> None:
    p = processor(OutputLimits(topic_max={RESULTS: 150}))
    with structlog.testing.capture_logs():
        prepared = p.process(
            [record(0, request("a", "hello there")), record(1, b"{bad")], make_engine()
        )
    result, bad = prepared.outputs
    assert result.topic == LETTERS
    assert json.loads(result.value)["error_kind"] == "output_too_large"
    assert json.loads(bad.value)["error_kind"] == "invalid_json"
    assert prepared.outcomes == {"ok": 0, "invalid": 1, "error": 1}


def test_small_outputs_keep_the_input_key_and_no_header() -> None:
    with structlog.testing.capture_logs():
        prepared = processor().process(
            [record(0, request("a", "hi")), record(1, request("b", "hi"), key=None)],
            make_engine(),
        )
    assert [(o.topic, o.key, o.headers) for o in prepared.outputs] == [
        (RESULTS, b"k", ()),
        (RESULTS, b"b", ()),  # no input key: the request id
    ]
    assert prepared.outcomes["ok"] == 2


class ScoresNoProbability:
    """An engine that gives one text NaN, another a score above 1."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.version, self.labels, self.thresholds = (
            engine.version,
            engine.labels,
            engine.thresholds,
        )

    def encode_batch(self, texts: list[str]) -> Any:
        return texts

    def score_encoded(self, texts: list[str]) -> Any:
        scores = self._engine.score(texts)
        for i, text in enumerate(texts):
            if "nan" in text:
                scores.probabilities[i][0] = math.nan
            if "big" in text:
                scores.probabilities[i][1] = 1.5
        return scores


def test_a_score_that_is_no_probability_dead_letters_only_its_own_text() -> None:
    engine: Any = ScoresNoProbability(make_engine())
    batch = [
        record(0, request("a", "hello")),
        record(1, request("b", "nan here")),
        record(2, request("c", "big one")),
        record(3, request("d", "see you")),
    ]
    with structlog.testing.capture_logs() as logs:
        prepared = processor().process(batch, engine)
    kinds = [json.loads(o.value).get("error_kind", "ok") for o in prepared.outputs]
    assert kinds == ["ok", "inference_error", "inference_error", "ok"]
    messages = [json.loads(o.value)["error_message"] for o in prepared.outputs[1:3]]
    assert "nan" in messages[0] and "1.5" in messages[1]
    assert prepared.outcomes == {"ok": 2, "invalid": 0, "error": 2}
    assert [line["offset"] for line in logs if line["event"] == "inference_failed"] == [1, 2]


def test_an_output_that_fits_is_passed_through_unchanged() -> None:
    fitter = OutputFitter(OutputLimits(producer_max=1_000), LETTERS)
    small = OutputRecord(RESULTS, b"k", b"v" * 100, None)
    assert fitter.fit(small) is small
