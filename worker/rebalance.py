"""Rebalances: partitions handed back cleanly, from inside kafka-python's listener.

kafka-python 3 runs the rebalance listener on its I/O thread (`kafka-io-*`), inside
`poll()`, while the processing thread waits in that poll. There a synchronous
`commit()` raises "Cannot block on net.run() from the IO thread itself", and the failure
is sticky: every later poll runs the revocation again and fails again. `commit_async`,
`seek` and `assignment` are safe there, and an `AsyncConsumerRebalanceListener` may
await a commit's future while the loop goes on. Once the listener returns, commits of
the revoked partitions are refused (RebalanceInProgressError). Hence:

Revocation (`on_partitions_revoked`):

1. Release the batcher's records of the revoked partitions. They were never answered,
   so nothing is lost or repeated: the next owner reads them. Each revoked partition
   that is still assigned (the eager protocol revokes everything, then may hand a
   partition straight back with its position kept) is sought back to its first
   released record, so no later commit can pass records that got no output.
2. Complete, oldest first, the pipelined batches whose outputs the broker acknowledged,
   waiting for acknowledgements at most `drain_s`, and stop at the first batch with a
   failed send: retrying with backoff is not for the I/O thread. Their commits are sent
   without blocking.
3. Commit the latest offsets of every completed batch and await the broker's answer:
   the revoked partitions are still ours until the listener returns.
4. Forget the revoked partitions: a batch still in flight for one of them is answered
   later, and its offsets are left to the new owner (a duplicate, never a loss).

Any error but the worker's own stop errors is logged (`revocation_failed`), counted and
swallowed: kafka-python would report it as a failed poll and run the revocation again
on every later poll.

Loss (`on_partitions_lost`, evicted from the group): the records in hand are released
and nothing is committed; the new owners re-read from the last commit.

Assignment (`on_partitions_assigned`): metrics, readiness, lag series.

Facts above were read in kafka-python 3.0.12's source (`coordinator/consumer.py`,
`net/selector.py`); the Java client and Quix Streams commit synchronously at revocation
(their listener runs on the polling thread), and Faust bounds its drain at 0.95 x the
session timeout.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext

import structlog
from kafka import AsyncConsumerRebalanceListener
from kafka.structs import TopicPartition

from model.errors import ModstreamError
from worker.batcher import Batcher
from worker.commit import CommitError, Committer
from worker.decode import SourceRecord
from worker.delivery import BatchDelivery
from worker.health import HealthState
from worker.lag import LagMonitor
from worker.metrics import WorkerMetrics
from worker.runner import BatchRunner
from worker.source import Source

log = structlog.get_logger("modstream.worker")


class GroupListener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """The worker's rebalance listener.

    Threads: kafka-python's I/O thread, inside `poll()`, while the processing thread
    waits in that poll; so the batcher, the runner and the committer are never touched
    by two threads at once.
    """

    def __init__(
        self,
        batcher: Batcher,
        runner: BatchRunner,
        source: Source,
        delivery: BatchDelivery,
        lag: LagMonitor,
        metrics: WorkerMetrics,
        health: HealthState,
        drain_s: float,
    ) -> None:
        self._batcher = batcher
        self._runner = runner
        self._source = source
        self._delivery = delivery
        self._lag = lag
        self._metrics = metrics
        self._health = health
        self._drain_s = drain_s

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        started = time.monotonic()
        released: list[SourceRecord] = []
        committed: dict[TopicPartition, int] = {}
        in_flight = -1
        committer = self._delivery.committer
        try:
            released = self._release(revoked, rewind=True)  # step 1
            with committer.revoking(revoked) if committer is not None else nullcontext():
                in_flight = self._runner.complete_settled(started + self._drain_s)  # step 2
                if committer is not None:
                    committed = await self._commit(committer)  # step 3
        except CommitError as exc:
            self._delivery.commit_done(exc)  # counted and logged as `commit_failed`
        except ModstreamError:
            raise  # the worker must stop (e.g. scoring failed): `run` reports it
        except Exception as exc:  # never raised into kafka-python: see the docstring
            self._metrics.kafka_errors.labels(kind=type(exc).__name__).inc()
            log.error("revocation_failed", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._delivery.forget(revoked)  # step 4
            self._lag.forget(revoked)
            # Cooperative: only `revoked` goes, and no assignment follows.
            self._metrics.assigned_partitions.set(len(self._source.assignment() - revoked))
        log.info(
            "partitions_revoked",
            partitions=_names(revoked),
            released_records=len(released),
            committed={f"{tp.topic}-{tp.partition}": o for tp, o in committed.items()},
            batches_left_in_flight=in_flight,
            seconds=round(time.monotonic() - started, 3),
        )

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        released = self._release(lost, rewind=False)
        self._delivery.forget(lost)
        self._lag.forget(lost)
        log.warning("partitions_lost", partitions=_names(lost), dropped_records=len(released))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._metrics.rebalances.inc()
        # With the cooperative assignor `assigned` holds only the partitions added.
        current = self._source.assignment()
        self._metrics.assigned_partitions.set(len(current))
        # A member with no partitions (more workers than partitions) is ready too: it
        # takes over as soon as a rebalance hands it some.
        self._health.set(group_joined=True, assigned_partitions=len(current))
        self._lag.keep_only(current)
        self._lag.refresh_soon()  # measure the new assignment on the next turn
        log.info("partitions_assigned", partitions=_names(assigned))

    def _release(self, partitions: set[TopicPartition], rewind: bool) -> list[SourceRecord]:
        released = self._batcher.release(partitions)
        if released:
            self._metrics.in_flight.dec(len(released))
            if rewind:
                self._source.rewind(released)
        return released

    async def _commit(self, committer: Committer) -> dict[TopicPartition, int]:
        offsets, answer = committer.commit_unflushed()
        if answer is None:
            return {}
        try:
            await answer
        except Exception as exc:
            raise CommitError(f"{type(exc).__name__}: {exc}", offsets) from exc
        self._delivery.commit_done(None)
        return offsets


def _names(partitions: Sequence[TopicPartition] | set[TopicPartition]) -> list[str]:
    return sorted(f"{tp.topic}-{tp.partition}" for tp in partitions)
