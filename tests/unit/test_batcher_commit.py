"""Batch closing rules and the offsets a batch commits."""

from __future__ import annotations

import time
from typing import Any

import pytest
from kafka.errors import CommitFailedError, RebalanceInProgressError
from kafka.structs import OffsetAndMetadata, TopicPartition

from worker.batcher import Batcher
from worker.commit import CommitError, Committer, next_offsets
from worker.decode import SourceRecord


def make(partition: int, offset: int, size: int = 10) -> SourceRecord:
    return SourceRecord("t", partition, offset, None, None, b"x" * size)


class ScriptedPoll:
    """Returns the scripted record lists in turn, then nothing; records what was asked."""

    def __init__(self, script: list[list[SourceRecord]]) -> None:
        self.script = list(script)
        self.calls: list[tuple[float, int]] = []

    def __call__(self, timeout_s: float, max_records: int) -> list[SourceRecord]:
        self.calls.append((timeout_s, max_records))
        return self.script.pop(0)[:max_records] if self.script else []


def test_batch_closes_at_max_size_and_asks_only_for_the_remainder() -> None:
    poll = ScriptedPoll([[make(0, i) for i in range(3)], [make(0, i) for i in range(3, 6)]])
    batch = Batcher(max_size=5, max_wait_s=60, max_bytes=10**9).collect(poll, lambda: False)
    assert [r.offset for r in batch] == [0, 1, 2, 3, 4]
    assert poll.calls[1][1] == 2


def test_batch_closes_at_byte_budget() -> None:
    poll = ScriptedPoll([[make(0, 0, 600)], [make(0, 1, 600)], [make(0, 2, 600)]])
    batch = Batcher(max_size=100, max_wait_s=60, max_bytes=1000).collect(poll, lambda: False)
    assert [r.offset for r in batch] == [0, 1]


def test_batch_closes_after_max_wait_since_first_record() -> None:
    poll = ScriptedPoll([[make(0, 0)]])
    batcher = Batcher(max_size=100, max_wait_s=0.05, max_bytes=10**9)
    start = time.monotonic()
    batch = batcher.collect(poll, lambda: False)
    assert [r.offset for r in batch] == [0]
    assert time.monotonic() - start >= 0.05
    # Every poll after the first record was bounded by the remaining wait.
    assert all(timeout <= 0.05 for timeout, _ in poll.calls[1:])


def test_batch_closes_early_when_the_scorer_is_idle() -> None:
    poll = ScriptedPoll([[make(0, 0), make(0, 1)], [make(0, 2)]])
    batcher = Batcher(max_size=100, max_wait_s=60, max_bytes=10**9)
    batch = batcher.collect(poll, lambda: False, close_early=lambda: True)
    assert [r.offset for r in batch] == [0, 1]
    assert len(poll.calls) == 1


def test_batch_grows_while_the_scorer_is_busy_and_closes_once_it_is_free() -> None:
    poll = ScriptedPoll([[make(0, 0)], [make(0, 1)], [make(0, 2)]])
    scorer_idle = iter([False, False, True])
    batcher = Batcher(max_size=100, max_wait_s=60, max_bytes=10**9)
    batch = batcher.collect(poll, lambda: False, close_early=lambda: next(scorer_idle))
    assert [r.offset for r in batch] == [0, 1, 2]
    # While waiting for the scorer, polls are short so a free scorer is noticed soon.
    assert all(timeout <= 0.002 for timeout, _ in poll.calls[1:])


def test_a_stop_is_seen_within_an_idle_poll_while_a_batch_waits_to_close() -> None:
    """A long max wait must not hold a shutdown: every poll is bounded by the idle poll."""
    poll = ScriptedPoll([[make(0, 3)]])
    stop_after = iter([False, False, False, True])
    batcher = Batcher(max_size=10, max_wait_s=600, max_bytes=10**9, idle_poll_s=0.01)
    batch = batcher.collect(poll, lambda: next(stop_after))
    assert [r.offset for r in batch] == [3], "the open batch is handed back at the stop"
    assert len(poll.calls) == 3
    assert all(timeout <= 0.01 for timeout, _ in poll.calls)


def test_idle_poll_returns_empty_and_keeps_nothing() -> None:
    batcher = Batcher(max_size=10, max_wait_s=1, max_bytes=10**9, idle_poll_s=0.01)
    assert batcher.collect(ScriptedPoll([]), lambda: False) == []
    assert batcher.take() == []


def test_stop_hands_back_the_partial_batch() -> None:
    poll = ScriptedPoll([[make(0, 7)]])
    polls_before_stop = iter([False, True])
    batch = Batcher(max_size=10, max_wait_s=60, max_bytes=10**9).collect(
        poll, lambda: next(polls_before_stop, True)
    )
    assert [r.offset for r in batch] == [7]


def test_next_offsets_are_one_past_the_highest_per_partition() -> None:
    records = [make(0, 5), make(1, 9), make(0, 7), make(0, 6), make(1, 8)]
    assert next_offsets(records) == {TopicPartition("t", 0): 8, TopicPartition("t", 1): 10}


class RecordingConsumer:
    """commit/commit_async like kafka-python's KafkaConsumer, recording what was sent."""

    def __init__(self, fail_sync: bool = False) -> None:
        self.sync: list[dict[TopicPartition, int]] = []
        self.asynchronous: list[dict[TopicPartition, int]] = []
        self.callbacks: list[Any] = []
        self.fail_sync = fail_sync
        self.assigned = {TP0, TP1}

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> None:
        if self.fail_sync:
            raise RuntimeError("CommitFailedError: rebalanced")
        self.sync.append({tp: m.offset for tp, m in offsets.items()})

    def commit_async(self, offsets: dict[TopicPartition, OffsetAndMetadata], callback: Any) -> None:
        self.asynchronous.append({tp: m.offset for tp, m in offsets.items()})
        self.callbacks.append(callback)


def test_async_commits_report_their_outcome_and_flush_commits_the_latest_sync() -> None:
    consumer = RecordingConsumer()
    outcomes: list[BaseException | None] = []
    committer = Committer(consumer, outcomes.append)  # type: ignore[arg-type]
    committer.commit_async([make(0, 4), make(1, 2)])
    committer.commit_async([make(0, 9)])
    assert consumer.asynchronous == [{TP0: 5, TP1: 3}, {TP0: 10}]
    consumer.callbacks[0](None, object())
    consumer.callbacks[1](None, RuntimeError("coordinator moved"))
    assert outcomes[0] is None and isinstance(outcomes[1], CommitError)
    assert isinstance(outcomes[1].__cause__, RuntimeError)
    assert outcomes[1].offsets == {TP0: 10}

    assert committer.flush() == {TP0: 10, TP1: 3}
    assert consumer.sync == [{TP0: 10, TP1: 3}]
    assert committer.flush() == {}  # nothing new since
    assert len(consumer.sync) == 1


def test_flush_skips_lost_partitions_and_raises_commit_error() -> None:
    consumer = RecordingConsumer(fail_sync=True)
    committer = Committer(consumer)  # type: ignore[arg-type]
    committer.commit_async([make(0, 1), make(1, 1)])
    committer.forget([TP1])
    with pytest.raises(CommitError, match="rebalanced"):
        committer.flush()
    consumer.fail_sync = False
    committer.commit_async([make(0, 2)])
    assert committer.flush() == {TP0: 3}


TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


def test_the_byte_budget_closes_a_batch_exactly_at_max_bytes_every_time() -> None:
    batcher = Batcher(max_size=100, max_wait_s=60, max_bytes=1000, idle_poll_s=0.01)
    for first in (0, 10):  # the budget starts afresh with each batch
        poll = ScriptedPoll(
            [[make(0, first, 999)], [make(0, first + 1, 1)], [make(0, first + 2, 5)]]
        )
        batch = batcher.collect(poll, lambda: False)
        assert [r.offset for r in batch] == [first, first + 1], "999 bytes keep it open"


def test_an_idle_worker_polls_half_a_second_at_a_time_by_default() -> None:
    """/livez and the stop rely on the loop turning at least this often while idle."""
    poll = ScriptedPoll([])
    assert Batcher(max_size=10, max_wait_s=1, max_bytes=10**9).collect(poll, lambda: False) == []
    assert poll.calls == [(0.5, 10)]


def test_a_commit_refused_during_a_rebalance_is_sent_again_with_the_latest_offsets() -> None:
    """The cooperative protocol keeps members consuming while the group rebalances, and
    the broker refuses their commits meanwhile: those are deferred, not failed."""
    consumer = RecordingConsumer()
    outcomes: list[CommitError | None] = []
    committer = Committer(consumer, outcomes.append)  # type: ignore[arg-type]
    committer.commit_async([make(0, 4), make(1, 2)])
    consumer.callbacks[0](None, RebalanceInProgressError())
    committer.commit_async([make(0, 9)])
    consumer.callbacks[1](None, CommitFailedError())  # the partition moved: not retried
    deferred, failed = outcomes
    assert deferred is not None and deferred.deferred
    assert failed is not None and not failed.deferred

    assert committer.retry_deferred() == {TP0: 10, TP1: 3}  # the latest, not the refused
    assert consumer.asynchronous[-1] == {TP0: 10, TP1: 3}
    assert committer.retry_deferred() == {}  # nothing deferred any more
    committer.commit_async([make(1, 5)])
    consumer.callbacks[-1](None, RebalanceInProgressError())
    consumer.assigned = {TP0}  # partition 1 moved meanwhile
    assert committer.retry_deferred() == {}, "only partitions still owned"


def revoking_during_poll(
    batcher: Batcher, partitions: set[TopicPartition], script: list[list[SourceRecord]]
) -> Any:
    """A poll that answers `script`; its second call runs a revocation of `partitions`
    (kafka-python runs the rebalance listener inside poll)."""
    scripted = ScriptedPoll(script)

    def poll(timeout_s: float, max_records: int) -> list[SourceRecord]:
        if len(scripted.calls) == 1:
            batcher.release(partitions)
        return scripted(timeout_s, max_records)

    return poll


def within(seconds: float) -> Any:
    """should_stop for `collect`: true once `seconds` passed (a guard, never reached)."""
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() > deadline


def test_records_left_after_a_revocation_still_close_their_batch_on_time() -> None:
    """The records of the partitions kept are handed over when the batch's wait ends,
    even if no record arrives after the revocation."""
    batcher = Batcher(max_size=100, max_wait_s=0.05, max_bytes=10**9, idle_poll_s=0.01)
    poll = revoking_during_poll(batcher, {TP1}, [[make(0, 0), make(1, 0)]])
    assert [(r.partition, r.offset) for r in batcher.collect(poll, within(10))] == [(0, 0)]


def test_a_batch_emptied_by_a_revocation_leaves_the_batcher_idle() -> None:
    batcher = Batcher(max_size=100, max_wait_s=0.05, max_bytes=10**9, idle_poll_s=0.01)
    poll = revoking_during_poll(batcher, {TP1}, [[make(1, 0)]])
    assert batcher.collect(poll, within(10)) == [], "an idle turn: nothing to hand over"
    # The next record starts a batch of its own, with a full wait.
    poll = ScriptedPoll([[make(0, 5)]])
    started = time.monotonic()
    assert [r.offset for r in batcher.collect(poll, within(10))] == [5]
    assert time.monotonic() - started >= 0.05
