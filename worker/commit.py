"""Turns a fully acknowledged batch into committed offsets.

Batches are processed one at a time and in consumption order, so once every output of a
batch is acknowledged, every record at or below the batch's highest offset per partition
has its output acknowledged too: committing that offset + 1 keeps invariant 1.
"""

from __future__ import annotations

from collections.abc import Iterable

from kafka import KafkaConsumer
from kafka.structs import OffsetAndMetadata, TopicPartition

from worker.decode import SourceRecord


class CommitError(Exception):
    """The group coordinator refused the commit (e.g. the partition moved to another member)."""


def next_offsets(records: Iterable[SourceRecord]) -> dict[TopicPartition, int]:
    """Per partition, one past the highest offset seen."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = max(offsets.get(tp, 0), record.offset + 1)
    return offsets


def first_offsets(records: Iterable[SourceRecord]) -> dict[TopicPartition, int]:
    """Per partition, the lowest offset seen (where to rewind to after an abort)."""
    offsets: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        offsets[tp] = min(offsets.get(tp, record.offset), record.offset)
    return offsets


class Committer:
    def __init__(self, consumer: KafkaConsumer) -> None:
        self._consumer = consumer

    def commit(self, records: Iterable[SourceRecord]) -> dict[TopicPartition, int]:
        offsets = next_offsets(records)
        if not offsets:
            return offsets
        try:
            self._consumer.commit(
                {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}
            )
        except Exception as exc:  # kafka-python raises several unrelated classes here
            raise CommitError(f"{type(exc).__name__}: {exc}") from exc
        return offsets
