"""The worker process against the real broker: outputs, dead letters, commits, drain."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers import (
    TopicReader,
    committed_offsets,
    end_offsets,
    ids_of,
    produce,
    request_bytes,
    start_worker,
    wait_committed,
    wait_for,
)

pytestmark = pytest.mark.integration

TEXTS = [
    "you are a complete idiot",
    "Free entry! Text WIN to 87121 to claim your prize now",
    "see you at lunch tomorrow",
    "what a pathetic loser",
    "Thanks, that was really helpful.",
]


def valid_messages(prefix: str, count: int) -> list[tuple[bytes, bytes]]:
    return [
        (
            f"key-{prefix}-{n}".encode(),
            request_bytes(f"{prefix}-{n}", TEXTS[n % len(TEXTS)] + f" #{n}"),
        )
        for n in range(count)
    ]


def test_every_message_gets_one_result_keyed_like_its_input(
    kafka_bootstrap: str,
    make_topics: Callable[..., dict[str, str]],
    tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    topics = make_topics(partitions=3)
    messages = valid_messages("m", 300)
    produce(kafka_bootstrap, topics["input"], messages)
    worker = start_worker(
        kafka_bootstrap,
        topics,
        tiny_checkpoint,
        tmp_path,
        group=f"g-results-{uuid.uuid4().hex[:8]}",
    )
    try:
        results = TopicReader(kafka_bootstrap, topics["output"]).read_until(len(messages))
    finally:
        assert worker.stop() == 0, worker.logs()
    assert sorted(ids_of(results)) == sorted(f"m-{n}" for n in range(300))
    manifest = json.loads((tiny_checkpoint / "model.json").read_text())
    for record in results:
        assert record.key == f"key-{record.value['id']}".encode()
        assert record.value["model_version"] == manifest["version"]
        assert set(record.value["category_scores"]) == {"insult", "spam"}
        assert all(0.0 <= s <= 1.0 for s in record.value["category_scores"].values())
        assert record.value["flagged"] == any(record.value["categories"].values())
        assert record.value["topic"] == topics["input"]


def test_malformed_messages_go_to_the_dead_letter_topic_with_a_reason(
    kafka_bootstrap: str,
    make_topics: Callable[..., dict[str, str]],
    tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    topics = make_topics(partitions=1)
    bad: list[tuple[bytes | None, bytes | None, str]] = [
        (b"k1", b"{not json", "invalid_json"),
        (b"k2", b"\xff\xfe\xfd", "invalid_utf8"),
        (b"k3", b"[1, 2, 3]", "not_an_object"),
        (b"k4", b'{"text": "no id"}', "missing_field"),
        (b"k5", b'{"id": "x5", "text": "hi", "lang": "en"}', "extra_field"),
        (b"k6", b'{"id": 6, "text": "wrong id type"}', "wrong_type"),
        (b"k7", b'{"id": "x7", "text": ""}', "empty_text"),
        (b"k8", b'{"id": "x8", "text": "hi", "metadata": {"k": 1}}', "wrong_type"),
        (b"k9", None, "null_value"),
    ]
    good = [(b"ok-a", request_bytes("ok-a", "hello there")), (b"ok-b", request_bytes("ok-b", "hi"))]
    interleaved = [
        good[0],
        *[(k, v) for k, v, _ in bad[:5]],
        good[1],
        *[(k, v) for k, v, _ in bad[5:]],
    ]
    produce(kafka_bootstrap, topics["input"], interleaved)
    group = f"g-dlq-{uuid.uuid4().hex[:8]}"
    worker = start_worker(kafka_bootstrap, topics, tiny_checkpoint, tmp_path, group=group)
    try:
        letters = TopicReader(kafka_bootstrap, topics["dead_letter"]).read_until(len(bad))
        results = TopicReader(kafka_bootstrap, topics["output"]).read_until(len(good))
        wait_for(
            lambda: committed_offsets(kafka_bootstrap, group).get(0) == len(interleaved),
            30,
            "all offsets committed",
        )
        assert worker.proc.poll() is None, "a poison message must not stop the worker"
    finally:
        assert worker.stop() == 0, worker.logs()
    assert sorted(ids_of(results)) == ["ok-a", "ok-b"]
    by_key = {letter.key: letter.value for letter in letters}
    for key, _, kind in bad:
        assert by_key[key]["error_kind"] == kind, by_key[key]
        assert by_key[key]["error_message"]
    offsets = sorted(letter.value["offset"] for letter in letters)
    assert offsets == [1, 2, 3, 4, 5, 7, 8, 9, 10]


def test_restarted_worker_never_re_emits_committed_offsets(
    kafka_bootstrap: str,
    make_topics: Callable[..., dict[str, str]],
    tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    topics = make_topics(partitions=2)
    group = f"g-restart-{uuid.uuid4().hex[:8]}"
    first = valid_messages("first", 120)
    produce(kafka_bootstrap, topics["input"], first)
    worker = start_worker(kafka_bootstrap, topics, tiny_checkpoint, tmp_path, group=group)
    reader = TopicReader(kafka_bootstrap, topics["output"])
    try:
        reader.read_until(len(first))
        wait_committed(kafka_bootstrap, group, topics["input"], 30, "first round committed")
    finally:
        assert worker.stop() == 0, worker.logs()

    second = valid_messages("second", 80)
    produce(kafka_bootstrap, topics["input"], second)
    worker = start_worker(kafka_bootstrap, topics, tiny_checkpoint, tmp_path, group=group)
    try:
        reader.read_until(len(first) + len(second))
        wait_committed(kafka_bootstrap, group, topics["input"], 30, "second round committed")
    finally:
        assert worker.stop() == 0, worker.logs()
    reader.read_to_end()
    counts = Counter(ids_of(reader.records))
    assert set(counts) == {f"first-{n}" for n in range(120)} | {f"second-{n}" for n in range(80)}
    assert max(counts.values()) == 1, [i for i, c in counts.items() if c > 1]


def test_sigterm_answers_and_commits_the_batch_in_hand_before_exiting(
    kafka_bootstrap: str,
    make_topics: Callable[..., dict[str, str]],
    tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    """A batch the worker holds (polled, not answered: it waits for more records) is
    answered and committed between SIGTERM and exit 0, with no restart to re-read it."""
    topics = make_topics(partitions=1)
    group = f"g-hand-{uuid.uuid4().hex[:8]}"
    messages = valid_messages("h", 40)
    worker = start_worker(
        kafka_bootstrap,
        topics,
        tiny_checkpoint,
        tmp_path,
        group=group,
        pipeline_depth="0",
        max_batch_size="1000",
        max_batch_wait_ms="60000",  # the most allowed: the batch stays open until the stop
    )
    produce(kafka_bootstrap, topics["input"], messages)
    try:
        wait_for(
            lambda: worker.metric("modstream_in_flight_messages") == len(messages),
            60,
            "every record polled into the open batch",
            step_s=0.1,
        )
        assert committed_offsets(kafka_bootstrap, group) == {}, "nothing answered yet"
        stopped_at = time.monotonic()
    finally:
        code = worker.stop(timeout_s=60)
    assert code == 0, worker.logs()
    assert time.monotonic() - stopped_at < 20, "a stop must not wait for the batch to close"
    assert committed_offsets(kafka_bootstrap, group) == {0: len(messages)}
    reader = TopicReader(kafka_bootstrap, topics["output"])
    results = reader.read_to_end()
    reader.close()
    assert sorted(ids_of(results)) == sorted(f"h-{n}" for n in range(len(messages)))


def test_sigterm_mid_stream_commits_every_answered_batch_and_a_restart_repeats_none(
    kafka_bootstrap: str,
    make_topics: Callable[..., dict[str, str]],
    tiny_checkpoint: Path,
    tmp_path: Path,
) -> None:
    """Stopped mid-stream on the default pipelined path: exactly the answered records are
    committed at exit (none without its output, no output left uncommitted), so the next
    run starts where this one stopped and repeats none. (That the batches in flight are
    answered, not dropped, is tests/unit/test_worker_loop.py's drain test: here a
    dropped batch would only be answered later, by the restart.)"""
    topics = make_topics(partitions=3)
    group = f"g-drain-{uuid.uuid4().hex[:8]}"
    count = 4000
    messages = valid_messages("d", count)
    produce(kafka_bootstrap, topics["input"], messages)
    worker = start_worker(
        kafka_bootstrap, topics, tiny_checkpoint, tmp_path, group=group, max_batch_size="16"
    )
    reader = TopicReader(kafka_bootstrap, topics["output"])
    reader.read_until(1)
    assert worker.stop() == 0, worker.logs()
    assert "worker_stopped" in worker.logs()

    committed = committed_offsets(kafka_bootstrap, group)
    ends = end_offsets(kafka_bootstrap, topics["input"])
    assert sum(committed.values()) < sum(ends.values()), "stopped before the end: test is moot"
    reader.read_to_end()
    emitted = Counter((r.value["partition"], r.value["offset"]) for r in reader.records)
    assert max(emitted.values()) == 1
    # Answered exactly up to the commit: nothing committed without its output, and no
    # output of a batch left uncommitted (it would be answered again after a restart).
    for partition in ends:
        answered = sorted(o for p, o in emitted if p == partition)
        assert answered == list(range(committed.get(partition, 0))), f"partition {partition}"

    worker = start_worker(kafka_bootstrap, topics, tiny_checkpoint, tmp_path, group=group)
    try:
        wait_for(
            lambda: committed_offsets(kafka_bootstrap, group) == ends, 120, "the rest committed"
        )
    finally:
        assert worker.stop() == 0, worker.logs()
    reader.read_to_end()
    ids = Counter(ids_of(reader.records))
    assert set(ids) == {f"d-{n}" for n in range(count)}
    assert max(ids.values()) == 1, [i for i, c in ids.items() if c > 1][:5]
