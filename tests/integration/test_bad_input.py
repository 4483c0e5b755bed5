"""The bad-input catalogue end to end: valid records scored, every bad one dead-lettered
with a machine-readable reason, and the worker never stops."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from tests.helpers import TopicReader, WorkerProcess, committed_offsets, wait_for, worker_env

pytestmark = pytest.mark.integration

MAX_TEXT = 25_000


def req(message_id: str, text: Any, **extra: Any) -> bytes:
    return json.dumps({"id": message_id, "text": text, **extra}).encode()


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


# (key, value, headers, expected): expected is an error_kind, or "ok:<id>" for a result.
CASES: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]], str]] = [
    (b"b-json", b'{"id": "x", "text": ', [], "invalid_json"),
    (b"b-utf8", b'{"id": "x", "text": "\xc3\x28"}', [], "invalid_utf8"),
    (b"b-array", b'[{"id": "x", "text": "hi"}]', [], "not_an_object"),
    (b"b-scalar", b"17", [], "not_an_object"),
    (b"b-noid", b'{"text": "hello"}', [], "missing_field"),
    (b"b-idtype", b'{"id": 5, "text": "hello"}', [], "wrong_type"),
    (b"b-textnull", req("x", None), [], "wrong_type"),
    (b"b-textnum", req("x", 12), [], "wrong_type"),
    (b"b-textlist", req("x", ["a"]), [], "wrong_type"),
    (b"b-empty", req("x", ""), [], "empty_text"),
    (b"b-blank", req("x", " \n\t "), [], "empty_text"),
    (b"b-extra", req("x", "hi", user="u1"), [], "extra_field"),
    (b"b-nested", req("x", "hi", metadata=nested(40)), [], "wrong_type"),
    (b"b-deep", b'{"id": "x", "text": "t", "metadata": ' + b"[" * 3000, [], "invalid_json"),
    (b"b-nul", b'{"id": "x", "text": "a\x00b"}', [], "invalid_json"),
    (b"b-surrogate", b'{"id": "x", "text": "bad \\ud800 half"}', [], "invalid_json"),
    (b"b-tombstone", None, [], "null_value"),
    (None, b"not json, no key", [], "invalid_json"),
    (b"b-date", req("x", "hi", created_at="soon"), [], "invalid_field"),
    # Absurd shapes, rejected from the structure (pydantic built an error per member).
    (b"b-fields", req("x", "hi", **{f"f{i}": 0 for i in range(60_000)}), [], "extra_field"),
    (
        b"b-metadata",
        req("x", "hi", metadata={f"k{i}": i for i in range(60_000)}),
        [],
        "invalid_field",
    ),
    # Valid, however odd.
    (b"g-plain", req("g-plain", "see you at lunch"), [], "ok:g-plain"),
    (b"g-nul", req("g-nul", "a\u0000b escaped NUL"), [], "ok:g-nul"),
    (b"g-intl", req("g-intl", "مرحبا שלום \u200f\u200b\u2066x\u2069 😀👍🏽"), [], "ok:g-intl"),
    (b"g-tok10k", req("g-tok10k", "w " * 10_000), [], "ok:g-tok10k"),  # 10k tokens
    # Past the scoring budget (MAX_TEXT): scored all the same, coverage says how much.
    (b"g-long", req("g-long", "y " * MAX_TEXT), [], "ok:g-long"),
    (b"g-huge", req("g-huge", "z" * 1_000_000), [], "ok:g-huge"),  # near Kafka's 1 MiB
    # Hostile text: scored at a bounded cost (README, Cost bounds per message).
    (b"g-marks", req("g-marks", "a" + "\u0301\u0316" * 12_000), [], "ok:g-marks"),
    (b"g-expand", req("g-expand", "\u3316" * 20_000), [], "ok:g-expand"),
    (b"g-email", req("g-email", "a." * 12_000 + "@"), [], "ok:g-email"),
    (b"g-digits", req("g-digits", "a" + "1" * 20_000), [], "ok:g-digits"),
    (b"g-dup", req("same-id", "first of two"), [], "ok:same-id"),
    (b"g-dup", req("same-id", "second of two"), [], "ok:same-id"),
    (
        b"g-headers",
        req("g-headers", "hello"),
        [("\x00bin", b"\xff\xfe"), ("", b"")],
        "ok:g-headers",
    ),
    (None, req("g-nokey", "no key at all"), [], "ok:g-nokey"),
    (b"g-meta", req("g-meta", "hi", metadata={"src": "web"}), [], "ok:g-meta"),
]


def test_bad_input_catalogue_end_to_end(
    kafka_bootstrap: str,
    make_topics: Callable[..., dict[str, str]],
    tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    topics = make_topics(partitions=1)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for key, value, headers, _ in CASES:
            producer.send(topics["input"], key=key, value=value, headers=headers)
        producer.flush(timeout=60)
    finally:
        producer.close()
    group = f"g-bad-{uuid.uuid4().hex[:8]}"
    env = worker_env(kafka_bootstrap, topics, tiny_checkpoint, group, max_text_chars=str(MAX_TEXT))
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        worker.wait_ready(90)
        wait_for(
            lambda: committed_offsets(kafka_bootstrap, group).get(0) == len(CASES),
            120,
            "every record committed",
            step_s=0.3,
        )
        assert worker.proc.poll() is None, "a poison message stopped the worker"
        assert worker.get("/readyz")[0] == 200
    finally:
        code = worker.stop()
    assert code == 0, worker.logs()

    results = TopicReader(kafka_bootstrap, topics["output"]).read_to_end()
    letters = TopicReader(kafka_bootstrap, topics["dead_letter"]).read_to_end()
    assert len(results) + len(letters) == len(CASES), "one output per input"
    by_offset: dict[int, tuple[str, Any]] = {}
    for r in results:
        by_offset[r.value["offset"]] = (f"ok:{r.value['id']}", r)
    for d in letters:
        by_offset[d.value["offset"]] = (d.value["error_kind"], d)
    for offset, (key, _, _, expected) in enumerate(CASES):
        got, output = by_offset[offset]
        assert got == expected, (offset, key, output.value)
        if expected.startswith("ok:"):
            assert output.key == (key if key is not None else expected[3:].encode())
            assert 0.0 <= output.value["category_scores"]["insult"] <= 1.0
        else:
            assert output.value["error_message"], output.value
            assert output.key == key
    for key, total in ((b"g-long", 2 * MAX_TEXT), (b"g-huge", 1_000_000)):
        scored = by_offset[CASES.index(next(c for c in CASES if c[0] == key))][1]
        coverage = scored.value["coverage"]
        assert coverage["chars_total"] == total
        assert coverage["strategy"] == "head+tail+sampled"
        assert 0 < coverage["chars_scored"] < total
