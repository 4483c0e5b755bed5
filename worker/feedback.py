"""Reads the moderator feedback topic for a retrain run: bounded, validated, ordered.

Bounded: the end offsets are captured first, partitions are assigned (no group
membership, no rebalance) and read from the beginning up to those ends, so a run
always terminates and sees a well-defined snapshot even while moderators keep writing.
The whole topic is read every time because each retrain trains from scratch on base
data plus all feedback. The run's consumer group (`modstream-retrain` by default) only
records, once a run has finished, the offsets it covered: standard lag tooling then
shows how much feedback no model has seen yet.

Every record is validated against `schemas.feedback.ModeratorFeedback`; an invalid one
is skipped and counted by reason (the dead-letter `error_kind` names, plus
`unknown_label`), never fatal.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaConsumer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition
from pydantic import ValidationError

from model.errors import ExitCode, ModstreamError
from schemas.dead_letter import ErrorKind
from schemas.feedback import ModeratorFeedback
from worker.decode import classify

DEFAULT_FEEDBACK_GROUP = "modstream-retrain"
UNKNOWN_LABEL = "unknown_label"


class FeedbackReadError(ModstreamError):
    """The feedback topic could not be read to its captured end (broker, topic, timeout)."""

    exit_code = ExitCode.BROKER


@dataclass(frozen=True)
class FeedbackRecord:
    feedback: ModeratorFeedback
    partition: int
    offset: int


@dataclass
class FeedbackRead:
    topic: str
    records: list[FeedbackRecord]  # valid ones, oldest decision first
    consumed: int  # records read up to the captured ends
    skipped: dict[str, int]  # reason → count
    end_offsets: dict[int, int]  # partition → captured end offset
    seconds: float = 0.0
    group_id: str = DEFAULT_FEEDBACK_GROUP
    committed: bool = False
    problems: list[str] = field(default_factory=list)

    def decisions(self) -> list[tuple[str, dict[str, bool]]]:
        """`(text, labels)` pairs, oldest first: the input of `model.data.merge_feedback`."""
        return [(r.feedback.text, dict(r.feedback.labels)) for r in self.records]

    def summary(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "group_id": self.group_id,
            "consumed": self.consumed,
            "valid": len(self.records),
            "skipped": dict(sorted(self.skipped.items())),
            "end_offsets": {str(p): o for p, o in sorted(self.end_offsets.items())},
            "committed": self.committed,
            "seconds": round(self.seconds, 3),
        }


def parse_feedback(value: bytes | None, labels: Sequence[str]) -> ModeratorFeedback | str:
    """A valid feedback record, or the reason it is invalid."""
    if value is None:
        return ErrorKind.NULL_VALUE.value
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        return ErrorKind.INVALID_UTF8.value
    try:
        feedback = ModeratorFeedback.model_validate_json(text)
    except ValidationError as exc:
        kind, _message = classify(exc.errors(include_url=False))
        return kind.value
    if not feedback.text.strip():
        return ErrorKind.EMPTY_TEXT.value
    if set(feedback.labels) - set(labels):
        return UNKNOWN_LABEL
    return feedback


def order_records(records: Iterable[FeedbackRecord]) -> list[FeedbackRecord]:
    """Oldest decision first (naive timestamps read as UTC), ties by partition and offset,
    so that where two moderators disagree the later decision wins."""

    def key(record: FeedbackRecord) -> tuple[datetime, int, int]:
        decided = record.feedback.decided_at
        if decided.tzinfo is None:
            decided = decided.replace(tzinfo=UTC)
        return decided, record.partition, record.offset

    return sorted(records, key=key)


def read_feedback(
    kafka_common: Mapping[str, Any],
    topic: str,
    labels: Sequence[str],
    group_id: str = DEFAULT_FEEDBACK_GROUP,
    timeout_s: float = 120.0,
) -> FeedbackRead:
    """Reads `topic` from the beginning to the end offsets captured at the start."""
    started = time.monotonic()
    deadline = started + timeout_s
    try:
        consumer = KafkaConsumer(
            group_id=group_id,
            client_id=f"{group_id}-reader",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            bootstrap_timeout_ms=int(min(timeout_s, 30.0) * 1000),
            **kafka_common,
        )
    except KafkaError as exc:
        raise FeedbackReadError(f"no Kafka broker reachable: {exc}") from exc
    try:
        partitions = _partitions(consumer, topic, min(deadline, started + 10.0))
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        ends: dict[TopicPartition, int] = consumer.end_offsets(tps)
        consumer.seek_to_beginning(*tps)
        valid: list[FeedbackRecord] = []
        skipped: Counter[str] = Counter()
        consumed = 0
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                behind = {
                    tp.partition: ends[tp] - consumer.position(tp)
                    for tp in tps
                    if consumer.position(tp) < ends[tp]
                }
                raise FeedbackReadError(
                    f"timed out after {timeout_s:g}s reading {topic!r}; records left per "
                    f"partition: {behind}"
                )
            for tp, batch in consumer.poll(timeout_ms=500).items():
                for record in batch:
                    if record.offset >= ends[tp]:
                        continue  # written after the run started: next run's
                    consumed += 1
                    parsed = parse_feedback(record.value, labels)
                    if isinstance(parsed, str):
                        skipped[parsed] += 1
                    else:
                        valid.append(FeedbackRecord(parsed, record.partition, record.offset))
    except KafkaError as exc:
        raise FeedbackReadError(f"reading {topic!r} failed: {exc}") from exc
    finally:
        consumer.close(autocommit=False)
    return FeedbackRead(
        topic=topic,
        records=order_records(valid),
        consumed=consumed,
        skipped=dict(skipped),
        end_offsets={tp.partition: offset for tp, offset in ends.items()},
        seconds=time.monotonic() - started,
        group_id=group_id,
    )


def commit_feedback_offsets(kafka_common: Mapping[str, Any], read: FeedbackRead) -> bool:
    """Records in the run's group which feedback a finished run covered; True on success.

    Informational only (the next run reads from the beginning anyway), so a failure is
    reported, not raised.
    """
    try:
        consumer = KafkaConsumer(
            group_id=read.group_id,
            client_id=f"{read.group_id}-committer",
            enable_auto_commit=False,
            **kafka_common,
        )
    except KafkaError as exc:
        read.problems.append(f"committing feedback offsets: {exc}")
        return False
    try:
        offsets = {
            TopicPartition(read.topic, partition): OffsetAndMetadata(offset, "", -1)
            for partition, offset in read.end_offsets.items()
        }
        consumer.commit(offsets)
        read.committed = True
        return True
    except KafkaError as exc:
        read.problems.append(f"committing feedback offsets: {exc}")
        return False
    finally:
        consumer.close(autocommit=False)


def _partitions(consumer: KafkaConsumer, topic: str, deadline: float) -> set[int]:
    """The topic's partitions; metadata can lag just after creation, so retry a little."""
    while True:
        partitions: set[int] = consumer.partitions_for_topic(topic)
        if partitions:
            return partitions
        if time.monotonic() > deadline:
            raise FeedbackReadError(f"feedback topic {topic!r} does not exist")
        time.sleep(0.2)  # metadata refresh back-off, not synchronisation
