"""worker/commit.py: the exact commit request, the errors a refused commit carries, and
what `forget` leaves to flush."""

from __future__ import annotations

from typing import Any

import pytest
from kafka.errors import (
    CommitFailedError,
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    NotCoordinatorError,
    RebalanceInProgressError,
    TopicAuthorizationFailedError,
    UnknownMemberIdError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition

from worker.commit import CommitError, Committer, as_commit_request, first_offsets, next_offsets
from worker.decode import SourceRecord

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


def make(partition: int, offset: int) -> SourceRecord:
    return SourceRecord("t", partition, offset, None, None, b"x")


class Consumer:
    """commit/commit_async like kafka-python's, keeping the request as sent."""

    def __init__(self, refuse: BaseException | None = None) -> None:
        self.refuse = refuse
        self.assigned = {TP0, TP1}
        self.sync: list[dict[TopicPartition, Any]] = []
        self.asynchronous: list[tuple[dict[TopicPartition, Any], Any]] = []

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        if self.refuse is not None:
            raise self.refuse
        self.sync.append(offsets)

    def commit_async(self, offsets: dict[TopicPartition, Any], callback: Any) -> None:
        self.asynchronous.append((offsets, callback))

    def assignment(self) -> set[TopicPartition]:
        return self.assigned


def test_a_commit_request_carries_no_metadata_and_no_leader_epoch() -> None:
    """kafka-python's own form for "offset only": empty metadata, leader epoch -1
    (unknown), which every broker version accepts."""
    assert as_commit_request({TP0: 5, TP1: 0}) == {
        TP0: OffsetAndMetadata(5, "", -1),
        TP1: OffsetAndMetadata(0, "", -1),
    }
    consumer = Consumer()
    Committer(consumer).commit([make(0, 4)])  # type: ignore[arg-type]
    assert consumer.sync == [{TP0: OffsetAndMetadata(5, "", -1)}]


def test_first_and_next_offsets_per_partition_whatever_the_order() -> None:
    records = [make(1, 9), make(0, 7), make(0, 5), make(1, 8), make(0, 6)]
    assert first_offsets(records) == {TP0: 5, TP1: 8}
    assert next_offsets(records) == {TP0: 8, TP1: 10}
    assert next_offsets([make(0, 0)]) == {TP0: 1}
    assert next_offsets([]) == first_offsets([]) == {}


def test_a_refused_commit_says_what_failed_and_which_offsets() -> None:
    refusal = RuntimeError("rebalanced")
    committer = Committer(Consumer(refuse=refusal))  # type: ignore[arg-type]
    with pytest.raises(CommitError) as raised:
        committer.commit([make(0, 4), make(1, 1)])
    assert str(raised.value) == "RuntimeError: rebalanced"
    assert raised.value.offsets == {TP0: 5, TP1: 2}
    assert raised.value.__cause__ is refusal


def test_an_asynchronous_refusal_is_reported_with_its_cause_and_offsets() -> None:
    consumer = Consumer()
    heard: list[CommitError | None] = []
    committer = Committer(consumer, heard.append)  # type: ignore[arg-type]
    committer.commit_async([make(1, 3)])
    ((offsets, callback),) = consumer.asynchronous
    assert offsets == {TP1: OffsetAndMetadata(4, "", -1)}
    refusal = ValueError("generation moved")
    callback(offsets, refusal)
    (error,) = heard
    assert isinstance(error, CommitError)
    assert str(error) == "ValueError: generation moved"
    assert error.offsets == {TP1: 4} and error.__cause__ is refusal


def test_an_empty_batch_commits_nothing() -> None:
    consumer = Consumer()
    committer = Committer(consumer)  # type: ignore[arg-type]
    assert committer.commit([]) == {} and committer.commit_async([]) == {}
    assert consumer.sync == [] and consumer.asynchronous == []
    assert committer.flush() == {} and consumer.sync == []


def test_flush_commits_only_the_partitions_not_forgotten() -> None:
    consumer = Consumer()
    committer = Committer(consumer)  # type: ignore[arg-type]
    committer.commit_async([make(0, 1), make(1, 6)])
    committer.commit_async([make(0, 2)])
    committer.forget([TP1])
    assert committer.flush() == {TP0: 3}
    assert consumer.sync == [{TP0: OffsetAndMetadata(3, "", -1)}]


def test_forgetting_a_partition_with_nothing_to_flush_is_harmless() -> None:
    consumer = Consumer()
    committer = Committer(consumer)  # type: ignore[arg-type]
    committer.forget([TP0, TP1])
    committer.commit_async([make(0, 1)])
    committer.forget([TP1])
    assert committer.flush() == {TP0: 2}


@pytest.mark.parametrize(
    ("refusal", "deferred"),
    [
        (RebalanceInProgressError(), True),  # the group rebalances: passes by itself
        (NotCoordinatorError(), True),  # retriable: the coordinator moved
        (KafkaConnectionError("connection reset"), True),  # retriable
        (GroupAuthorizationFailedError("g"), True),  # an ACL an operator can grant again
        (TopicAuthorizationFailedError("t"), True),
        (CommitFailedError("the partition moved"), False),  # not ours any more
        (UnknownMemberIdError(), False),  # evicted
        # What kafka-python raises for a synchronous commit on its own I/O thread: no
        # `retriable` attribute, so never taken for one that passes.
        (RuntimeError("Cannot block on net.run() from the IO thread itself."), False),
    ],
)
def test_which_refused_commits_are_sent_again_later(refusal: BaseException, deferred: bool) -> None:
    consumer = Consumer(refuse=refusal)
    committer = Committer(consumer)  # type: ignore[arg-type]
    with pytest.raises(CommitError) as raised:
        committer.commit([make(0, 4), make(1, 1)])
    assert raised.value.deferred is deferred
    consumer.refuse = None
    resent = committer.retry_deferred()
    assert resent == ({TP0: 5, TP1: 2} if deferred else {})
    assert [offsets for offsets, _ in consumer.asynchronous] == (
        [as_commit_request({TP0: 5, TP1: 2})] if deferred else []
    )
