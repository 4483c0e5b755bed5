"""Groups consumed records into batches for one scoring pass.

A batch closes at `max_size` records, at `max_bytes` of values, or `max_wait_s` after
its first record arrived, whichever comes first: large batches under load, bounded
latency when traffic is light.

A pipelined worker also passes `close_early`, true while the scoring thread has nothing
to do: waiting for more records then only adds latency, so the batch closes with what
it has. Under load the scorer is busy, records pile up meanwhile and batches grow on
their own (adaptive batching).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

from kafka.structs import TopicPartition

from worker.decode import SourceRecord

EARLY_CLOSE_CHECK_S = 0.002
"""How often a pending batch re-checks `close_early` while the scorer is busy."""

PollFn = Callable[[float, int], list[SourceRecord]]
"""poll(timeout_s, max_records) → records; may run rebalance callbacks."""


class Batcher:
    """The batch being collected. Processing thread only (the rebalance callbacks that
    `take` from it run inside poll, on the same thread)."""

    def __init__(self, max_size: int, max_wait_s: float, max_bytes: int, idle_poll_s: float = 0.5):
        self.max_size = max_size
        self.max_wait_s = max_wait_s
        self.max_bytes = max_bytes
        self.idle_poll_s = idle_poll_s
        self._pending: list[SourceRecord] = []
        self._pending_bytes = 0
        self._first_at: float | None = None

    def take(self) -> list[SourceRecord]:
        """Hand over whatever is pending (a closed batch, or a partial one on revocation)."""
        batch, self._pending = self._pending, []
        self._pending_bytes = 0
        self._first_at = None
        return batch

    def release(self, partitions: Collection[TopicPartition]) -> list[SourceRecord]:
        """Take out the pending records of `partitions` (revoked or lost): they were
        never answered, so whoever owns the partitions next reads them again."""
        kept = [r for r in self._pending if TopicPartition(r.topic, r.partition) not in partitions]
        if len(kept) == len(self._pending):
            return []
        released = [r for r in self._pending if TopicPartition(r.topic, r.partition) in partitions]
        self._pending = kept
        self._pending_bytes = sum(len(r.value or b"") for r in kept)
        if not kept:
            self._first_at = None
        return released

    def _full(self) -> bool:
        return len(self._pending) >= self.max_size or self._pending_bytes >= self.max_bytes

    def collect(
        self,
        poll: PollFn,
        should_stop: Callable[[], bool],
        close_early: Callable[[], bool] | None = None,
    ) -> list[SourceRecord]:
        """Poll until a batch closes; returns [] after an idle poll so the caller can tick."""
        while not should_stop():
            if self._first_at is None:
                timeout = self.idle_poll_s
            else:
                if close_early is not None and close_early():
                    return self.take()
                timeout = self._first_at + self.max_wait_s - time.monotonic()
                if timeout <= 0:
                    return self.take()
                # A poll blocks for its whole timeout when no record comes: never longer
                # than an idle poll, so a stop is seen as soon as while idle.
                timeout = min(timeout, self.idle_poll_s)
                if close_early is not None:  # look again soon: the scorer may free up
                    timeout = min(timeout, EARLY_CLOSE_CHECK_S)
            records = poll(max(timeout, 0.0), self.max_size - len(self._pending))
            if records:
                if self._first_at is None:
                    self._first_at = time.monotonic()
                self._pending.extend(records)
                self._pending_bytes += sum(len(r.value or b"") for r in records)
            if self._full():
                return self.take()
            if self._first_at is None:
                return []
        return self.take()
