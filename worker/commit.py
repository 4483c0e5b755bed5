"""Turns a fully acknowledged batch into committed offsets.

Batches are processed one at a time and in consumption order, so once every output of a
batch is acknowledged, every record at or below the batch's highest offset per partition
has its output acknowledged too: committing that offset + 1 keeps invariant 1.

The pipelined worker commits asynchronously so that the processing thread never waits a
broker round trip per batch. That keeps invariant 1 (a commit is still only sent after
the batch's acknowledgements), and commits travel in order on one connection, so a
later one supersedes an earlier one that failed. At shutdown `flush` commits the
latest offsets synchronously, so the next owner starts exactly where this worker
stopped; at revocation, inside kafka-python's rebalance listener where a synchronous
commit cannot run, `commit_unflushed` sends them and the listener awaits the answer
(worker/rebalance.py).

Only partitions this consumer owns are committed: those in its assignment, plus the
ones being revoked while the listener hands them back (`revoking`). A batch still in
flight when its partition moved to another member is answered, but its offsets are
left to the new owner: committing them would be refused anyway (and logged as a
failure), and the new owner's own commits are the ones that count.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from kafka import KafkaConsumer
from kafka.errors import (
    GroupAuthorizationFailedError,
    RebalanceInProgressError,
    TopicAuthorizationFailedError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition

from model.errors import ModstreamError
from worker.decode import SourceRecord


class CommitError(ModstreamError):
    """The group coordinator refused the commit (e.g. the partition moved to another member)."""

    def __init__(
        self, message: str, offsets: dict[TopicPartition, int], deferred: bool = False
    ) -> None:
        super().__init__(message)
        self.offsets = offsets
        self.deferred = deferred
        """True when the offsets are committed again later (`Committer.retry_deferred`)."""


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
    """Commits the offsets of acknowledged batches with the worker's consumer.

    Processing thread (the consumer is not thread-safe); `on_async_result` may be called
    on a kafka-python thread.
    """

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
        self._revoking: frozenset[TopicPartition] = frozenset()
        self._deferred: set[TopicPartition] = set()  # written on a client thread
        self._deferred_lock = threading.Lock()

    @contextmanager
    def revoking(self, partitions: Collection[TopicPartition]) -> Iterator[None]:
        """While a rebalance listener hands `partitions` back they may still be
        committed, even though the consumer's assignment may no longer list them
        (the cooperative protocol removes them before it calls the listener)."""
        self._revoking = frozenset(partitions)
        try:
            yield
        finally:
            self._revoking = frozenset()

    def _owned(self, offsets: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
        if not offsets:
            return offsets
        owned = set(self._consumer.assignment()) | self._revoking
        return {tp: offset for tp, offset in offsets.items() if tp in owned}

    def commit_async(self, records: Iterable[SourceRecord]) -> dict[TopicPartition, int]:
        """Send the commit and return at once; `flush` makes the latest ones certain."""
        offsets = self._owned(next_offsets(records))
        if not offsets:
            return offsets
        self._unflushed.update(offsets)
        self._send_async(offsets)
        return offsets

    def commit_unflushed(self) -> tuple[dict[TopicPartition, int], Any]:
        """Send, without blocking, the latest offsets sent by `commit_async` since the
        last flush; returns them and kafka-python's future of the answer (None when
        there is nothing to commit). Safe on kafka-python's I/O thread, where a
        rebalance listener runs: the listener awaits the future."""
        offsets, self._unflushed = self._owned(self._unflushed), {}
        if not offsets:
            return offsets, None
        return offsets, self._consumer.commit_async(as_commit_request(offsets))

    def flush(self) -> dict[TopicPartition, int]:
        """Commit, synchronously, the latest offsets sent by `commit_async` since the
        last flush. Raises CommitError like `commit`."""
        offsets, self._unflushed = self._owned(self._unflushed), {}
        if offsets:
            self._commit_offsets(offsets)
        return offsets

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """Partitions lost to the group: their offsets can no longer be committed here."""
        for tp in partitions:
            self._unflushed.pop(tp, None)

    def retry_deferred(self) -> dict[TopicPartition, int]:
        """Processing thread: send again, without waiting, the latest offsets of the
        partitions whose last asynchronous commit was refused for a passing reason."""
        with self._deferred_lock:
            partitions, self._deferred = self._deferred, set()
        latest = {tp: self._unflushed[tp] for tp in partitions if tp in self._unflushed}
        offsets = self._owned(latest)
        if offsets:
            self._send_async(offsets)
        return offsets

    def _send_async(self, offsets: dict[TopicPartition, int]) -> None:
        self._consumer.commit_async(
            as_commit_request(offsets),
            callback=lambda _sent, response: self._async_done(offsets, response),
        )

    def _async_done(self, offsets: dict[TopicPartition, int], response: Any) -> None:
        """On a Kafka client thread: the broker's answer to an asynchronous commit.

        A commit refused for a reason that passes (see `deferrable`) is deferred:
        `retry_deferred` sends the latest offsets again.
        """
        error: CommitError | None = None
        if isinstance(response, BaseException):
            deferred = deferrable(response)
            if deferred:
                with self._deferred_lock:
                    self._deferred.update(offsets)
            error = CommitError(f"{type(response).__name__}: {response}", offsets, deferred)
            error.__cause__ = response
        if self._on_async_result is not None:
            self._on_async_result(error)

    def commit(self, records: Iterable[SourceRecord]) -> dict[TopicPartition, int]:
        offsets = self._owned(next_offsets(records))
        if offsets:
            self._commit_offsets(offsets)
        return offsets

    def _commit_offsets(self, offsets: dict[TopicPartition, int]) -> None:
        try:
            self._consumer.commit(as_commit_request(offsets))
        except Exception as exc:  # kafka-python raises several unrelated classes here
            deferred = deferrable(exc)
            if deferred:  # kept, and sent again by `retry_deferred`
                self._unflushed.update(offsets)
                with self._deferred_lock:
                    self._deferred.update(offsets)
            raise CommitError(f"{type(exc).__name__}: {exc}", offsets, deferred) from exc


def deferrable(exc: BaseException) -> bool:
    """A commit refusal that passes: the group is rebalancing (the cooperative protocol
    keeps members consuming meanwhile), a retriable client error, or an ACL that an
    operator can grant again (the group's or the topic's)."""
    return isinstance(
        exc,
        RebalanceInProgressError | GroupAuthorizationFailedError | TopicAuthorizationFailedError,
    ) or bool(getattr(exc, "retriable", False))
