"""Closed batches through processing and delivery, strictly in consumption order.

Synchronous (exactly-once, or `MODSTREAM_PIPELINE_DEPTH=0`): each batch is staged,
scored, prepared and delivered before the next poll. Pipelined (at-least-once): the
processing thread stages a batch and hands it to the scoring and publishing threads
(worker/pipeline.py), then completes batches oldest first, each once its outputs are
sent: `deliver` waits for their acknowledgements and commits, so a batch commits only
after every earlier one has (invariant 1, worker/app.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog

from worker.decode import SourceRecord
from worker.delivery import AtLeastOnceDelivery, BatchDelivery
from worker.engine_slot import EngineSlot
from worker.metrics import WorkerMetrics
from worker.pipeline import InFlight, Pipeline
from worker.processing import BatchProcessor, PreparedBatch
from worker.sink import Shipment
from worker.summary import SummaryLog

log = structlog.get_logger("modstream.worker")


class BatchRunner:
    """Runs closed batches and keeps the books of the delivered ones.

    Processing thread only (the pipeline's own threads run `BatchProcessor.score` and
    `prepare` and the delivery's `send`).
    """

    def __init__(
        self,
        processor: BatchProcessor,
        engines: EngineSlot,
        delivery: BatchDelivery,
        metrics: WorkerMetrics,
        summary: SummaryLog,
    ) -> None:
        self._processor = processor
        self._engines = engines
        self._delivery = delivery
        self._metrics = metrics
        self._summary = summary
        self._pipeline: Pipeline | None = None

    def start_pipeline(self, depth: int) -> None:
        """Overlap scoring and publishing with polling, `depth` batches in flight. Only
        at-least-once: transactions stay synchronous, one open at a time."""
        if depth > 0 and isinstance(self._delivery, AtLeastOnceDelivery):
            self._delivery.commit_async = True  # `drain` makes the latest commits certain
            p = self._processor
            self._pipeline = Pipeline(p.score, p.prepare, self._delivery.send, depth)

    @property
    def pipelined(self) -> bool:
        return self._pipeline is not None

    def scorer_idle(self) -> bool:
        """Nothing waits to be scored: a batch closed now would be scored at once."""
        return self._pipeline is not None and self._pipeline.scorer_idle

    def handle(self, batch: Sequence[SourceRecord]) -> None:
        """Score and publish a closed batch: pipelined when started, else right here."""
        if self._pipeline is None:
            self.process(batch)
            return
        while self._pipeline.full:
            self._complete_oldest(block=True)
        serving = self._engines.apply()
        self._pipeline.submit(
            batch, self._processor.stage(batch, serving.engine, serving.thresholds)
        )

    def process(self, batch: Sequence[SourceRecord]) -> None:
        """One batch through every step, synchronously."""
        serving = self._engines.apply()
        prepared = self._processor.process(batch, serving.engine, serving.thresholds)
        acked_at = self._delivery.deliver(batch, Shipment(prepared.outputs))
        if acked_at is None:
            # Aborted and rewound: these records come back in a later poll.
            self._metrics.in_flight.dec(len(batch))
            return
        self._account(prepared, acked_at)

    def complete_acknowledged(self) -> None:
        """Complete, without waiting, the oldest batches whose sends all settled."""
        if self._pipeline is not None:
            while self._complete_oldest(block=False):
                pass
            self._delivery.retry_deferred_commits()

    def drain(self) -> None:
        """Every batch handed over is acknowledged and committed, the last commits
        synchronously (shutdown, revocation)."""
        while self._pipeline is not None and len(self._pipeline):
            self._complete_oldest(block=True)
        self._delivery.flush()

    def complete_settled(self, deadline: float) -> int:
        """Complete, oldest first, the batches whose outputs the broker acknowledged,
        waiting for acknowledgements until `deadline` (`time.monotonic()`); stop at the
        first batch with a failed send or still unanswered then. Never re-sends: the
        rebalance listener calls it on kafka-python's I/O thread, while the processing
        thread waits in poll. Returns how many batches stay in flight."""
        pipeline = self._pipeline
        if pipeline is None:
            return 0
        while len(pipeline):
            item = pipeline.oldest(max(deadline - time.monotonic(), 0.0))
            if item is None or not item.wait_settled(deadline) or item.has_failed_sends():
                break
            self._complete(item)
        return len(pipeline)

    def close(self) -> None:
        """Stop the pipeline's threads."""
        if self._pipeline is not None:
            self._pipeline.close()

    def _complete_oldest(self, block: bool) -> bool:
        """Wait for (or, not blocking, check) the oldest batch's acks; then commit it."""
        assert self._pipeline is not None
        item = self._pipeline.oldest(None if block else 0)
        if item is None or (not block and not item.settled()):
            return False
        self._complete(item)
        return True

    def _complete(self, item: InFlight) -> None:
        """Deliver the oldest batch (its acknowledgements, then its commit) and pop it."""
        assert self._pipeline is not None
        assert item.prepared is not None and item.shipment is not None
        acked_at = self._delivery.deliver(item.batch, item.shipment)
        assert acked_at is not None  # at-least-once retries until acknowledged
        self._pipeline.pop_oldest()
        self._account(item.prepared, acked_at)

    def _account(self, prepared: PreparedBatch, acked_at: float) -> None:
        """The books of a delivered batch: latency, outcomes, summary, debug line."""
        batch = prepared.batch
        for record in batch:
            if record.timestamp_ms is not None and record.timestamp_ms > 0:
                self._metrics.end_to_end_seconds.observe(
                    max(acked_at - record.timestamp_ms / 1000.0, 0.0)
                )
        for outcome, count in prepared.outcomes.items():
            if count:
                self._metrics.messages.labels(outcome=outcome).inc(count)
        self._metrics.in_flight.dec(len(batch))
        self._summary.add(prepared.outcomes)
        log.debug(
            "batch_processed",
            batch_size=len(batch),
            outcomes=prepared.outcomes,
            partitions=_offset_ranges(batch),
            inference_ms=round(prepared.inference_s * 1000.0, 3),
            seconds=round(time.time() - prepared.started, 4),
        )


def _offset_ranges(batch: Sequence[SourceRecord]) -> dict[str, list[int]]:
    """`{"topic-partition": [first offset, last offset]}` of a batch, for debug logs."""
    ranges: dict[str, list[int]] = {}
    for record in batch:
        key = f"{record.topic}-{record.partition}"
        span = ranges.setdefault(key, [record.offset, record.offset])
        span[0] = min(span[0], record.offset)
        span[1] = max(span[1], record.offset)
    return ranges
