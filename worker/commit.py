"""Turns a fully acknowledged batch into committed offsets.

Batches are processed one at a time and in consumption order, so once every output of a
batch is acknowledged, every record at or below the batch's highest offset per partition
has its output acknowledged too: committing that offset + 1 keeps invariant 1.

The pipelined worker commits asynchronously so that the processing thread never waits a
broker round trip per batch. That keeps invariant 1 (a commit is still only sent after
the batch's acknowledgements), and commits travel in order on one connection, so a
later one supersedes an earlier one that failed. Before partitions are handed back
(revocation, shutdown) `flush` commits the latest offsets synchronously, so the next
owner starts exactly where this worker stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaConsumer
from kafka.structs import OffsetAndMetadata, TopicPartition

from model.errors import ModstreamError
from worker.decode import SourceRecord


class CommitError(ModstreamError):
    """The group coordinator refused the commit (e.g. the partition moved to another member)."""

    def __init__(self, message: str, offsets: dict[TopicPartition, int]) -> None:
        super().__init__(message)
        self.offsets = offsets


def as_commit_request(offsets: dict[TopicPartition, int]) -> dict[TopicPartition, Any]:
    """`{partition: next offset}` in the form kafka-python's commit calls take."""
    return {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}


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
    def __init__(
        self,
        consumer: KafkaConsumer,
        on_async_result: Callable[[CommitError | None], None] | None = None,
    ) -> None:
        """`on_async_result` hears of every asynchronous commit: None when it succeeded,
        else a CommitError caused by the client's error (possibly on a Kafka client
        thread)."""
        self._consumer = consumer
        self._on_async_result = on_async_result
        self._unflushed: dict[TopicPartition, int] = {}

    def commit_async(self, records: Iterable[SourceRecord]) -> dict[TopicPartition, int]:
        """Send the commit and return at once; `flush` makes the latest ones certain."""
        offsets = next_offsets(records)
        if not offsets:
            return offsets
        self._unflushed.update(offsets)
        self._consumer.commit_async(
            as_commit_request(offsets),
            callback=lambda _sent, response: self._async_done(offsets, response),
        )
        return offsets

    def flush(self) -> dict[TopicPartition, int]:
        """Commit, synchronously, the latest offsets sent by `commit_async` since the
        last flush. Raises CommitError like `commit`."""
        offsets, self._unflushed = self._unflushed, {}
        if offsets:
            self._commit_offsets(offsets)
        return offsets

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions lost to the group: their offsets can no longer be committed here."""
        for tp in partitions:
            self._unflushed.pop(tp, None)

    def _async_done(self, offsets: dict[TopicPartition, int], response: Any) -> None:
        if self._on_async_result is None:
            return
        if not isinstance(response, BaseException):
            self._on_async_result(None)
            return
        error = CommitError(f"{type(response).__name__}: {response}", offsets)
        error.__cause__ = response
        self._on_async_result(error)

    def commit(self, records: Iterable[SourceRecord]) -> dict[TopicPartition, int]:
        offsets = next_offsets(records)
        if offsets:
            self._commit_offsets(offsets)
        return offsets

    def commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit these `{partition: next offset}` synchronously (e.g. ones refused earlier
        for want of an ACL). Raises CommitError like `commit`."""
        if offsets:
            self._commit_offsets(offsets)

    def _commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            self._consumer.commit(as_commit_request(offsets))
        except Exception as exc:  # kafka-python raises several unrelated classes here
            raise CommitError(f"{type(exc).__name__}: {exc}", offsets) from exc
