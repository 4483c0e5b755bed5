"""The worker: wires Source → Decoder → Batcher → Engine → Sink → Committer.

Processing one batch (`Worker.process_batch`):

0. Swap in a reloaded model if one is waiting (`offer_engine`, from worker/reload.py):
   here, on the processing thread, between two batches.
1. Decode every record; invalid ones become dead letters, nothing raises. Tokenise
   the valid texts with the engine captured here.
2. Score them with that same engine, so one batch is scored by exactly one model
   version (invariant 4).
3. Build one output per record, in consumption order: a Result or a DeadLetter.
4. Publish them all and wait until the broker acknowledged every one; on failure retry
   with backoff and report not-ready, never moving on (invariant 1).
5. Commit, per partition, one past the batch's highest offset.

With `delivery=exactly_once`, steps 4 and 5 are one Kafka transaction: begin, send the
outputs, add the batch's offsets with the consumer's group metadata (KIP-447 fencing),
commit. On any failure the transaction is aborted (its outputs stay invisible to
`read_committed` readers), the consumer is rewound to the batch's first offsets (which
are the last committed positions: batches run one at a time, in order) and the records
come back in a later poll; not-ready until a transaction commits again.

Shutdown (SIGTERM/SIGINT) stops polling, finishes the batch in hand through step 5,
then closes the clients and exits 0.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import structlog
from kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.coordinator.assignors.range import RangePartitionAssignor
from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from kafka.errors import (
    FencedInstanceIdError,
    KafkaError,
    ProducerFencedError,
    TransactionalIdAuthorizationFailedError,
)
from kafka.structs import TopicPartition

from model.engine import EncodedBatch, Engine
from model.errors import ExitCode, ModstreamError
from schemas.dead_letter import DeadLetter, ErrorKind
from schemas.result import Timings
from worker.batcher import Batcher
from worker.commit import (
    CommitError,
    Committer,
    as_commit_request,
    first_offsets,
    next_offsets,
)
from worker.decode import Decoded, Decoder, Rejected, SourceRecord
from worker.health import HealthState
from worker.metrics import WorkerMetrics
from worker.pipeline import Pipeline, PreparedBatch, ScoringFailedError
from worker.results import build_result
from worker.security import (
    authorization_hint,
    explain_refusal,
    input_topic_unauthorized,
    missing_right,
    recording_handshake_failures,
    refusal_settings_hint,
)
from worker.settings import WorkerSettings
from worker.sink import Delivery, OutputRecord, PublishError, Sink, describe

log = structlog.get_logger("modstream.worker")

MAX_PUBLISH_BACKOFF_S = 30.0
LAG_LOOKUP_TIMEOUT_MS = 2_000
FIRST_PUBLISH_BACKOFF_S = 0.5
POLL_ERROR_PAUSE_S = 1.0

ASSIGNORS: dict[str, tuple[type[Any], ...]] = {
    "range": (RangePartitionAssignor,),
    "roundrobin": (RoundRobinPartitionAssignor,),
    "cooperative-sticky": (CooperativeStickyAssignor,),
}
# Errors after which this process must not go on: another live worker holds the same
# transactional id or group instance id (a configuration error), or this one is a zombie.
FATAL_ERRORS: tuple[type[BaseException], ...] = (
    ProducerFencedError,
    FencedInstanceIdError,
    TransactionalIdAuthorizationFailedError,
)


ScoredBatch = tuple[list[Any], float, dict[int, str]]
"""Per decoded request its scores (None where scoring failed), the batch's inference
seconds, and per failed request (by `id`) why."""


@dataclass
class StagedBatch:
    """A closed batch decoded and tokenised on the processing thread (steps 0-1)."""

    batch: list[SourceRecord]
    items: list[Decoded | Rejected]  # one per record, in consumption order
    decoded: list[Decoded]
    encoded: EncodedBatch | None  # the decoded texts; None if encoding raised
    engine: Engine  # the model that encoded them scores them (invariant 4)
    started: float


class BrokerUnavailableError(ModstreamError):
    exit_code = ExitCode.BROKER

    """The bootstrap servers could not be reached at start."""


class WorkerStoppedError(ModstreamError):
    """Shutdown was requested while a batch's outputs were still unacknowledged."""


class FatalWorkerError(ModstreamError):
    """The worker cannot go on safely (fenced by another worker with the same identity)."""


def package_version() -> str:
    try:
        return version("modstream")
    except PackageNotFoundError:
        return "unknown"


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        engine: Engine,
        metrics: WorkerMetrics | None = None,
        health: HealthState | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = metrics if metrics is not None else WorkerMetrics()
        self.health = (
            health
            if health is not None
            else HealthState(liveness_deadline_s=settings.liveness_deadline_s)
        )
        self.decoder = Decoder(settings.max_text_chars)
        self.batcher = Batcher(
            max_size=settings.max_batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000.0,
            max_bytes=settings.max_batch_bytes,
        )
        self._stop = threading.Event()
        self._engine_lock = threading.Lock()
        self._pending_engine: Engine | None = None
        self._consumer: KafkaConsumer | None = None
        self._sink: Sink | None = None
        self._committer: Committer | None = None
        self._summary = _SummaryWindow()
        self._transactional = settings.delivery == "exactly_once"
        self._pipeline: Pipeline | None = None
        self._txn_backoff = FIRST_PUBLISH_BACKOFF_S
        self._poll_failing = False
        self._last_summary = time.monotonic()
        self._lag: dict[TopicPartition, int] = {}
        self._next_lag_refresh = 0.0
        # Offsets the group coordinator refused for want of an ACL: committed again once
        # it is granted (nothing else would while the worker idles). Written by the Kafka
        # client's callback thread too.
        self._refused_offsets: dict[TopicPartition, int] = {}
        self._refused_lock = threading.Lock()
        self._next_commit_retry = 0.0
        self.metrics.build_info.info({"version": package_version()})
        self.health.set(producer_ok=False, problem="producer not connected")
        self._announce_model(engine)

    # -- lifecycle -----------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def connect(self) -> None:
        """Create the Kafka clients; raises BrokerUnavailableError with the bootstrap named."""
        s = self.settings
        timeout_ms = int(s.startup_timeout_s * 1000)
        common = s.kafka_common()
        consumer: KafkaConsumer | None = None
        # kafka-python only logs why a handshake failed: record it to say so.
        with recording_handshake_failures() as handshake:
            try:
                consumer = KafkaConsumer(
                    group_id=s.group_id,
                    group_instance_id=s.group_instance_id,
                    client_id=f"{s.client_id}-consumer",
                    enable_auto_commit=False,
                    auto_offset_reset="earliest",
                    max_poll_records=s.max_batch_size,
                    session_timeout_ms=s.session_timeout_ms,
                    max_poll_interval_ms=s.max_poll_interval_ms,
                    partition_assignment_strategy=ASSIGNORS[s.assignment_strategy],
                    isolation_level=(
                        "read_committed" if self._transactional else "read_uncommitted"
                    ),
                    bootstrap_timeout_ms=timeout_ms,
                    **common,
                )
                producer = self._new_producer()
            except KafkaError as exc:
                if consumer is not None:
                    consumer.close(autocommit=False)
                raise BrokerUnavailableError(
                    f"no usable Kafka broker at {s.kafka_bootstrap!r} within "
                    f"{s.startup_timeout_s:g}s (MODSTREAM_KAFKA_BOOTSTRAP, security protocol "
                    f"{s.security_protocol}): {describe(exc)}"
                    f"{authorization_hint(exc, s) or self._refusal_hint(handshake.failures)}"
                ) from exc
        consumer.subscribe(topics=[s.input_topic], listener=_Rebalance(self))
        self._consumer = consumer
        self._sink = Sink(producer, s.publish_timeout_s)
        self._committer = Committer(consumer, self._async_commit_done)
        self.health.set(producer_ok=True, problem=None)

    def _refusal_hint(self, failures: Sequence[BaseException] = ()) -> str:
        """When the servers accept TCP but the Kafka handshake never completes, say why:
        from the failures the client reported (worker/security.py), else from the
        settings."""
        s = self.settings
        reachable = [server for server in s.bootstrap_servers() if _tcp_reachable(server)]
        if not reachable:
            return "; nothing accepts TCP connections there"
        explained = explain_refusal(s, list(failures))
        return f"; {explained or refusal_settings_hint(s, reachable[0])}"

    def _new_producer(self) -> KafkaProducer:
        """An idempotent producer; in exactly-once mode a transactional one, initialised.

        `init_transactions` with this worker's stable transactional id fences any earlier
        producer with the same id (e.g. the process before a kill -9) and aborts the
        transaction it left open, so none of its outputs ever become visible.
        """
        s = self.settings
        options: dict[str, Any] = {
            "client_id": f"{s.client_id}-producer",
            "acks": "all",
            "linger_ms": 5,
            "max_block_ms": int(s.publish_timeout_s * 1000),
            "bootstrap_timeout_ms": int(s.startup_timeout_s * 1000),
            **s.kafka_common(),
        }
        if self._transactional:
            options["transactional_id"] = s.resolved_transactional_id()
        producer = KafkaProducer(**options)
        if self._transactional:
            try:
                producer.init_transactions()
            except BaseException:
                producer.close(timeout=1.0)
                raise
            log.info("transactions_initialised", transactional_id=options["transactional_id"])
        return producer

    def run(self) -> int:
        """Process until stopped; returns the process exit code."""
        if self._consumer is None:
            self.connect()
        log.info(
            "worker_started",
            topic=self.settings.input_topic,
            group_id=self.settings.group_id,
            model_version=self.engine.version,
            device=str(self.engine.device),
        )
        exit_code = 0
        try:
            if not self._transactional and self.settings.pipeline_depth > 0:
                # Transactions stay synchronous: one open transaction at a time.
                self._pipeline = Pipeline(
                    self._score_staged, self._prepare, self._send, self.settings.pipeline_depth
                )
            while not self.stopping:
                batch = self.batcher.collect(
                    self._poll,
                    lambda: self.stopping,
                    self._scorer_idle if self._pipeline is not None else None,
                )
                self.health.tick()
                if batch:
                    self._handle(batch)
                    self.health.tick()
                else:
                    self._apply_pending_engine()  # idle: announce a new model at once
                self._complete_acknowledged()
                self._retry_refused_commit()
                self._maybe_refresh_lag()
                self._maybe_log_summary()
            leftover = self.batcher.take()
            if leftover:
                self._handle(leftover)
            self._drain()
        except ScoringFailedError as exc:
            log.error("scoring_failed", error=str(exc))
            exit_code = 1
        except WorkerStoppedError as exc:
            log.error("shutdown_with_unacknowledged_outputs", error=str(exc))
            exit_code = 1
        except FatalWorkerError as exc:
            log.error("worker_fenced", error=str(exc))
            exit_code = 1
        finally:
            self._close()
        log.info("worker_stopped", exit_code=exit_code)
        return exit_code

    def _close(self) -> None:
        if self._pipeline is not None:
            self._pipeline.close()
        if self._sink is not None:
            try:
                self._sink.close()
            except KafkaError as exc:
                log.warning("producer_close_failed", error=str(exc))
        if self._consumer is not None:
            self._consumer.close(autocommit=False)

    # -- stages --------------------------------------------------------------------

    def _poll(self, timeout_s: float, max_records: int) -> list[SourceRecord]:
        assert self._consumer is not None
        try:
            polled = self._consumer.poll(
                timeout_ms=int(timeout_s * 1000), max_records=max(max_records, 1)
            )
        except KafkaError as exc:
            # A rebalance callback's own stop signal comes back wrapped: let it through.
            if isinstance(exc.__cause__, FatalWorkerError | WorkerStoppedError):
                raise exc.__cause__ from None
            if isinstance(exc, FATAL_ERRORS):  # e.g. another live member with our instance id
                raise FatalWorkerError(self._fenced_message(exc)) from exc
            self.metrics.kafka_errors.labels(kind=type(exc).__name__).inc()
            self._polling_failed(
                f"polling Kafka failed: {describe(exc)}{authorization_hint(exc, self.settings)}"
            )
            self._stop.wait(POLL_ERROR_PAUSE_S)
            return []
        if not polled and self._coordinator_lost():
            # An idle worker's polls do not fail when the broker goes: this does.
            self._polling_failed("the group coordinator is unreachable (broker down?)")
            return []
        if not polled and (denied := input_topic_unauthorized(self._consumer, self.settings)):
            self._polling_failed(denied)  # else it would look idle and ready
            return []
        if self._poll_failing:
            self._poll_failing = False
            self.health.set(producer_ok=True, problem=None)
            log.info("poll_recovered")
        polled_at = time.time()
        records = [
            SourceRecord(r.topic, r.partition, r.offset, r.timestamp, r.key, r.value, polled_at)
            for partition_records in polled.values()
            for r in partition_records
        ]
        if records:
            self.metrics.in_flight.inc(len(records))
        return records

    def _polling_failed(self, problem: str) -> None:
        """Not ready until a poll works again; kafka-python reconnects by itself."""
        self.health.set(producer_ok=False, problem=problem)
        if not self._poll_failing:
            log.error("poll_failed", error=problem, retry_in_s=POLL_ERROR_PAUSE_S)
        self._poll_failing = True
        self.health.tick()

    def _coordinator_lost(self) -> bool:
        """True when a worker that had joined its group no longer reaches the coordinator.

        kafka-python has no public call for this; its coordinator's `coordinator_unknown`
        (no I/O) is looked up defensively so a client upgrade degrades to "not checked".
        """
        if not self.health.group_joined:
            return False
        coordinator = getattr(self._consumer, "_coordinator", None)
        unknown = getattr(coordinator, "coordinator_unknown", None)
        return bool(callable(unknown) and unknown())

    def process_batch(self, batch: Sequence[SourceRecord]) -> None:
        """Steps 0-5 of the module docstring for one closed batch, synchronously."""
        staged = self._stage(batch)
        prepared = self._prepare(staged, self._score_staged(staged))
        publish_start = time.perf_counter()
        if self._transactional:
            acked_at = self._publish_in_transaction(prepared.outputs, batch)
        else:
            acked_at = self._publish_until_acknowledged(Delivery(prepared.outputs), batch)
        self.metrics.stage_seconds.labels(stage="publish").observe(
            time.perf_counter() - publish_start
        )
        if acked_at is None:
            # Aborted and rewound: these records come back in a later poll.
            self.metrics.in_flight.dec(len(batch))
            return
        self._finish(prepared, acked_at)

    # -- pipelined path (at-least-once) ------------------------------------------------

    def _handle(self, batch: Sequence[SourceRecord]) -> None:
        """Score and publish a closed batch: pipelined when enabled, else right here."""
        if self._pipeline is None:
            self.process_batch(batch)
            return
        while self._pipeline.full:
            self._complete_oldest(block=True)
        self._pipeline.submit(batch, self._stage(batch))

    def _scorer_idle(self) -> bool:
        return self._pipeline is not None and self._pipeline.scorer_idle

    def _send(self, delivery: Delivery) -> None:
        assert self._sink is not None
        self._sink.send(delivery)

    def _complete_oldest(self, block: bool) -> bool:
        """Wait for (or, not blocking, check) the oldest batch's acks; then commit it."""
        assert self._pipeline is not None
        item = self._pipeline.oldest(None if block else 0)
        if item is None or (not block and not item.settled()):
            return False
        assert item.prepared is not None and item.delivery is not None
        publish_start = time.perf_counter()
        acked_at = self._publish_until_acknowledged(item.delivery, item.batch)
        self.metrics.stage_seconds.labels(stage="publish").observe(
            time.perf_counter() - publish_start
        )
        self._pipeline.pop_oldest()
        self._finish(item.prepared, acked_at)
        return True

    def _complete_acknowledged(self) -> None:
        if self._pipeline is not None:
            while self._complete_oldest(block=False):
                pass

    def _drain(self) -> None:
        """Every batch handed over is acknowledged and committed, the last commits
        synchronously (shutdown, revocation)."""
        while self._pipeline is not None and len(self._pipeline):
            self._complete_oldest(block=True)
        if self._pipeline is not None and self._committer is not None:
            try:
                self._committer.flush()
            except CommitError as exc:
                self._commit_failed(exc)

    def _stage(self, batch: Sequence[SourceRecord]) -> StagedBatch:
        """Steps 0-1 and tokenisation, on the processing thread: swap in a waiting model,
        decode, encode the valid texts with the model that will score them."""
        self._apply_pending_engine()
        engine = self.engine
        started = time.time()
        queue_seconds = self.metrics.stage_seconds.labels(stage="queue")
        for record in batch:
            queue_seconds.observe(max(started - _arrival(record, started), 0.0))
        decode_start = time.perf_counter()
        items = [self.decoder.decode(record) for record in batch]
        self.metrics.stage_seconds.labels(stage="decode").observe(
            time.perf_counter() - decode_start
        )
        self.metrics.batch_size.observe(len(batch))
        decoded = [item for item in items if isinstance(item, Decoded)]
        encoded: EncodedBatch | None = None
        if decoded:
            try:
                encoded = engine.encode_batch([d.request.text for d in decoded])
            except Exception as exc:  # scored one by one in _score, never lost
                log.error("batch_encoding_failed", error=str(exc), batch_size=len(decoded))
        return StagedBatch(list(batch), items, decoded, encoded, engine, started)

    def _score_staged(self, staged: StagedBatch) -> ScoredBatch:
        """Step 2: score with the batch's engine (the scoring thread when pipelined)."""
        # Log context is per thread: these threads' lines name the model too.
        structlog.contextvars.bind_contextvars(model_version=staged.engine.version)
        return self._score(staged.engine, staged.decoded, staged.encoded)

    def _prepare(self, staged: StagedBatch, scores: ScoredBatch) -> PreparedBatch:
        """Step 3: one output per record, in consumption order."""
        engine, started, batch = staged.engine, staged.started, staged.batch
        structlog.contextvars.bind_contextvars(model_version=engine.version)
        decoded_or_rejected, decoded = staged.items, staged.decoded
        probabilities, inference_s, failed = scores

        outputs: list[OutputRecord] = []
        scored = iter(zip(decoded, probabilities, strict=True))
        outcomes: dict[str, int] = {"ok": 0, "invalid": 0, "error": 0}
        for item in decoded_or_rejected:
            if isinstance(item, Rejected):
                outputs.append(self._dead_letter_output(item.dead_letter, item.record))
                outcomes["invalid"] += 1
                self.metrics.dead_letters.labels(reason=item.dead_letter.error_kind).inc()
                log.warning(
                    "dead_lettered",
                    topic=item.record.topic,
                    partition=item.record.partition,
                    offset=item.record.offset,
                    error_kind=item.dead_letter.error_kind.value,
                    error_message=item.dead_letter.error_message[:200],
                )
                continue
            request_item, row = next(scored)
            if row is None:
                rejected = self.decoder.reject(
                    item.record, ErrorKind.INFERENCE_ERROR, failed.get(id(request_item), "")
                )
                outputs.append(self._dead_letter_output(rejected.dead_letter, item.record))
                outcomes["error"] += 1
                self.metrics.dead_letters.labels(reason=ErrorKind.INFERENCE_ERROR).inc()
                continue
            outputs.append(
                self._result_output(engine, request_item, row, started, inference_s, len(decoded))
            )
            outcomes["ok"] += 1
        return PreparedBatch(list(batch), outputs, outcomes, started, inference_s)

    def _finish(self, prepared: PreparedBatch, acked_at: float) -> None:
        """Step 5 and the books: every output of the batch is acknowledged."""
        batch = prepared.batch
        for record in batch:
            if record.timestamp_ms is not None and record.timestamp_ms > 0:
                self.metrics.end_to_end_seconds.observe(
                    max(acked_at - record.timestamp_ms / 1000.0, 0.0)
                )
        for outcome, count in prepared.outcomes.items():
            if count:
                self.metrics.messages.labels(outcome=outcome).inc(count)

        if not self._transactional:  # a transaction committed the offsets with the outputs
            commit_start = time.perf_counter()
            self._commit(batch, wait=self._pipeline is None)
            self.metrics.stage_seconds.labels(stage="commit").observe(
                time.perf_counter() - commit_start
            )
        self.metrics.in_flight.dec(len(batch))
        self._summary.add(prepared.outcomes)
        log.debug(
            "batch_processed",
            batch_size=len(batch),
            outcomes=prepared.outcomes,
            partitions=_offset_ranges(batch),
            inference_ms=round(prepared.inference_s * 1000.0, 3),
            seconds=round(time.time() - prepared.started, 4),
        )

    def _score(
        self, engine: Engine, decoded: Sequence[Decoded], encoded: EncodedBatch | None
    ) -> ScoredBatch:
        """Scores per decoded request (None where scoring failed), the batch's time, errors."""
        if not decoded:
            return [], 0.0, {}
        if encoded is None:  # encoding the batch failed: find the text that fails
            return self._score_individually(engine, decoded)
        try:
            scores = engine.score_encoded(encoded)
        except Exception as exc:
            # One bad text must not dead-letter its whole batch: retry one by one.
            log.error("batch_inference_failed", error=str(exc), batch_size=len(decoded))
            return self._score_individually(engine, decoded)
        m = self.metrics
        m.inference_seconds.observe(scores.tokenize_seconds + scores.inference_seconds)
        m.stage_seconds.labels(stage="tokenize").observe(scores.tokenize_seconds)
        m.stage_seconds.labels(stage="inference").observe(scores.inference_seconds)
        m.batch_tokens.observe(scores.real_tokens)
        if scores.padded_tokens:
            m.padding_efficiency.observe(scores.real_tokens / scores.padded_tokens)
        return (
            list(scores.probabilities),
            scores.tokenize_seconds + scores.inference_seconds,
            {},
        )

    def _score_individually(self, engine: Engine, decoded: Sequence[Decoded]) -> ScoredBatch:
        rows: list[Any] = []
        failed: dict[int, str] = {}
        start = time.perf_counter()
        for item in decoded:
            try:
                rows.append(engine.score([item.request.text]).probabilities[0])
            except Exception as exc:
                rows.append(None)
                failed[id(item)] = f"{type(exc).__name__}: {exc}"
                log.error(
                    "inference_failed",
                    topic=item.record.topic,
                    partition=item.record.partition,
                    offset=item.record.offset,
                    error=str(exc),
                )
        return rows, time.perf_counter() - start, failed

    def _result_output(
        self,
        engine: Engine,
        item: Decoded,
        row: Any,
        started: float,
        inference_s: float,
        batch_size: int,
    ) -> OutputRecord:
        record = item.record
        queued_ms = (
            (started - record.timestamp_ms / 1000.0) * 1000.0 if record.timestamp_ms else 0.0
        )
        timings = Timings(
            queued_ms=round(queued_ms, 3),
            inference_ms=round(inference_s * 1000.0, 3),
            batch_size=batch_size,
        )
        result = build_result(engine, item, row, timings)
        for label, score in result.category_scores.items():
            self.metrics.scores.labels(category=label).observe(score)
            if result.categories[label]:
                self.metrics.flagged.labels(category=label).inc()
        key = record.key if record.key is not None else item.request.id.encode("utf-8")
        return OutputRecord(
            self.settings.output_topic,
            key,
            result.model_dump_json().encode("utf-8"),
            record.timestamp_ms,
        )

    def _dead_letter_output(self, dead_letter: DeadLetter, record: SourceRecord) -> OutputRecord:
        return OutputRecord(
            self.settings.dead_letter_topic,
            record.key,
            dead_letter.model_dump_json().encode("utf-8"),
            record.timestamp_ms,
        )

    def _publish_until_acknowledged(
        self, delivery: Delivery, batch: Sequence[SourceRecord]
    ) -> float:
        assert self._sink is not None
        backoff = FIRST_PUBLISH_BACKOFF_S
        # One delivery across tries: acknowledged outputs are not sent again, pending
        # ones are waited for, failed ones are re-sent.
        outputs = delivery.outputs
        last_try = False
        while True:
            try:
                acked_at = self._sink.complete(delivery)
            except PublishError as exc:
                kind = type(exc.cause).__name__ if exc.cause else "PublishError"
                self.metrics.kafka_errors.labels(kind=kind).inc()
                self.metrics.publish_retries.inc()
                problem = f"{exc}{authorization_hint(exc.cause, self.settings)}"
                self.health.set(producer_ok=False, problem=f"publishing failed: {problem}")
                first = batch[0]
                log.error(
                    "publish_failed",
                    error=problem,
                    topic=first.topic,
                    partition=first.partition,
                    offset=first.offset,
                    batch_size=len(batch),
                    acknowledged=delivery.acknowledged(),
                    retry_in_s=backoff,
                    committed=False,
                )
                if last_try:
                    raise WorkerStoppedError(
                        f"stopped with {len(outputs) - delivery.acknowledged()} outputs "
                        f"unacknowledged: {exc}"
                    ) from exc
                if self._sink.failed:  # it would fail every later send too
                    log.warning("producer_failed_replacing_it", error=problem)
                    self._replace_producer()
                if self._stop.wait(backoff):
                    # Asked to stop: one more try (the broker may just be back), then give up.
                    last_try = True
                    continue
                backoff = min(backoff * 2, MAX_PUBLISH_BACKOFF_S)
                self.health.tick()
                continue
            self.health.set(producer_ok=True, problem=None)
            return acked_at

    def _publish_in_transaction(
        self, outputs: Sequence[OutputRecord], batch: Sequence[SourceRecord]
    ) -> float | None:
        """Outputs and offsets in one transaction; None when it was aborted and rewound."""
        assert self._sink is not None and self._consumer is not None
        producer = self._sink.producer
        offsets = as_commit_request(next_offsets(batch))
        try:
            producer.begin_transaction()
            acked_at = self._sink.publish(outputs)
            producer.send_offsets_to_transaction(offsets, self._consumer.group_metadata())
            producer.commit_transaction()
        except FATAL_ERRORS as exc:
            raise FatalWorkerError(self._fenced_message(exc)) from exc
        except (PublishError, KafkaError) as exc:
            self._abort_and_rewind(batch, exc)
            return None
        self._txn_backoff = FIRST_PUBLISH_BACKOFF_S
        self.metrics.commits.labels(result="ok").inc()
        self.health.set(producer_ok=True, problem=None)
        return acked_at

    def _abort_and_rewind(self, batch: Sequence[SourceRecord], exc: Exception) -> None:
        assert self._sink is not None
        cause = exc.cause if isinstance(exc, PublishError) else exc
        self.metrics.kafka_errors.labels(kind=type(cause or exc).__name__).inc()
        self.metrics.publish_retries.inc()
        self.metrics.commits.labels(result="aborted").inc()
        hint = authorization_hint(cause or exc, self.settings)
        self.health.set(producer_ok=False, problem=f"transaction aborted: {exc}{hint}")
        first = batch[0]
        log.error(
            "transaction_aborted",
            error=(str(exc) if isinstance(exc, PublishError) else describe(exc)) + hint,
            topic=first.topic,
            partition=first.partition,
            offset=first.offset,
            batch_size=len(batch),
            retry_in_s=self._txn_backoff,
            committed=False,
        )
        try:
            self._sink.producer.abort_transaction()
        except FATAL_ERRORS as abort_exc:
            raise FatalWorkerError(self._fenced_message(abort_exc)) from abort_exc
        except KafkaError as abort_exc:
            # The producer is in a state it cannot abort from: replace it. Initialising
            # the new one with the same transactional id aborts what the old one left.
            log.warning("abort_failed_replacing_producer", error=str(abort_exc))
            self._replace_producer()
        self._rewind(batch)
        self.health.tick()
        self._stop.wait(self._txn_backoff)
        self._txn_backoff = min(self._txn_backoff * 2, MAX_PUBLISH_BACKOFF_S)

    def _replace_producer(self) -> None:
        assert self._sink is not None
        try:
            self._sink.close(timeout_s=1.0)
        except KafkaError as exc:
            log.warning("producer_close_failed", error=str(exc))
        while True:
            try:
                self._sink = Sink(self._new_producer(), self.settings.publish_timeout_s)
                return
            except FATAL_ERRORS as exc:
                raise FatalWorkerError(self._fenced_message(exc)) from exc
            except KafkaError as exc:
                log.error("producer_init_failed", error=str(exc), retry_in_s=self._txn_backoff)
                if self._stop.wait(self._txn_backoff):
                    raise WorkerStoppedError("stopped while re-creating the producer") from exc
                self._txn_backoff = min(self._txn_backoff * 2, MAX_PUBLISH_BACKOFF_S)

    def _rewind(self, batch: Sequence[SourceRecord]) -> None:
        """Seek back to the batch's first offsets: the last committed positions."""
        assert self._consumer is not None
        assigned = self._consumer.assignment()
        for tp, offset in first_offsets(batch).items():
            if tp in assigned:  # a revoked partition resumes at its commit elsewhere
                self._consumer.seek(tp, offset)

    def _fenced_message(self, exc: BaseException) -> str:
        s = self.settings
        right = missing_right(exc, s)
        if right is not None:  # TransactionalIdAuthorizationFailedError: an ACL, not a twin
            return (
                f"{describe(exc)}: the broker's ACLs deny this worker {right}; "
                "stopping without committing"
            )
        return (
            f"{type(exc).__name__}: {exc}: another live worker uses transactional id "
            f"{s.resolved_transactional_id()!r} or group instance id {s.group_instance_id!r}"
            " (MODSTREAM_TRANSACTIONAL_ID / MODSTREAM_GROUP_INSTANCE_ID must be unique per "
            "worker); stopping without committing"
        )

    def _commit(self, batch: Sequence[SourceRecord], wait: bool = True) -> None:
        """Commit the batch's offsets; `wait=False` sends the commit and moves on (its
        outcome reaches `_async_commit_done`)."""
        assert self._committer is not None
        if not wait:
            self._committer.commit_async(batch)
            return
        try:
            self._committer.commit(batch)
            self._commit_succeeded()
        except CommitError as exc:
            self._commit_failed(exc)

    def _async_commit_done(self, error: CommitError | None) -> None:
        if error is None:
            self._commit_succeeded()
        else:
            self._commit_failed(error)

    def _commit_succeeded(self) -> None:
        self.metrics.commits.labels(result="ok").inc()
        if self.health.commit_problem is not None:
            with self._refused_lock:
                self._refused_offsets.clear()  # the group's ACL is back: all superseded
            self.health.set(commit_problem=None)

    def _retry_refused_commit(self) -> None:
        """Once a second while commits are refused by the ACLs, commit the latest refused
        offsets of the partitions still assigned; success makes the worker ready again."""
        if self.health.commit_problem is None or self._committer is None:
            return
        now = time.monotonic()
        if now < self._next_commit_retry:
            return
        self._next_commit_retry = now + POLL_ERROR_PAUSE_S
        assigned = self._consumer.assignment() if self._consumer is not None else set()
        with self._refused_lock:
            offsets = {tp: o for tp, o in self._refused_offsets.items() if tp in assigned}
        try:
            self._committer.commit_offsets(offsets)
        except CommitError as exc:
            self._commit_failed(exc)
            return
        if offsets:
            self._commit_succeeded()

    def _commit_failed(self, exc: CommitError) -> None:
        # The partition moved on; its new owner re-reads from the last commit
        # (at-least-once: a duplicate, never a loss).
        self.metrics.commits.labels(result="failed").inc()
        kind = type(exc.__cause__).__name__ if exc.__cause__ else "CommitError"
        self.metrics.kafka_errors.labels(kind=kind).inc()
        hint = authorization_hint(exc.__cause__, self.settings)
        if hint:  # not a moved partition: no commit will work until the ACL is granted
            with self._refused_lock:
                for tp, offset in exc.offsets.items():
                    self._refused_offsets[tp] = max(offset, self._refused_offsets.get(tp, 0))
            self.health.set(commit_problem=f"committing offsets failed: {exc}{hint}")
        log.warning(
            "commit_failed",
            error=f"{exc}{hint}",
            offsets={f"{tp.topic}-{tp.partition}": offset for tp, offset in exc.offsets.items()},
        )

    # -- model reload --------------------------------------------------------------

    def latest_engine(self) -> Engine:
        """The engine the next batch will use: a pending one, else the serving one."""
        with self._engine_lock:
            return self._pending_engine if self._pending_engine is not None else self.engine

    def offer_engine(self, engine: Engine) -> None:
        """Any thread: queue a validated engine; replaces one offered but not yet swapped."""
        with self._engine_lock:
            self._pending_engine = engine

    def _apply_pending_engine(self) -> None:
        """Between batches, on the processing thread before it decodes the next one: the
        one place `self.engine` changes. Batches already handed to the scoring thread
        keep the engine that encoded them."""
        with self._engine_lock:
            engine, self._pending_engine = self._pending_engine, None
        if engine is None:
            return
        old, self.engine = self.engine, engine
        self.metrics.model_reloads.labels(result="ok").inc()
        self._announce_model(engine)
        log.info("model_swapped", old_version=old.version, new_version=engine.version)

    # -- group membership ----------------------------------------------------------

    def on_revoked(self, revoked: set[TopicPartition]) -> None:
        pending = self.batcher.take()
        if pending:
            log.info("finishing_batch_before_revocation", records=len(pending))
            self._handle(pending)
        self._drain()  # commit everything in flight while the partitions are still ours
        if self._consumer is not None:  # cooperative: only `revoked` goes, no assign follows
            self.metrics.assigned_partitions.set(len(self._consumer.assignment() - revoked))
        self._forget_lag(revoked)

    def on_lost(self, lost: set[TopicPartition]) -> None:
        """Evicted from the group: the partitions' new owners re-read from the last
        commit, so the records in hand are dropped rather than answered twice."""
        if self._committer is not None:
            self._committer.forget(lost)
        pending = self.batcher.take()
        if pending:
            self.metrics.in_flight.dec(len(pending))
        self._forget_lag(lost)
        log.warning(
            "partitions_lost",
            partitions=sorted(f"{tp.topic}-{tp.partition}" for tp in lost),
            dropped_records=len(pending),
        )

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        self.metrics.rebalances.inc()
        # With the cooperative assignor `assigned` holds only the partitions added.
        current = set(self._consumer.assignment()) if self._consumer is not None else assigned
        self.metrics.assigned_partitions.set(len(current))
        # A member with no partitions (more workers than partitions) is ready too: it
        # takes over as soon as a rebalance hands it some.
        self.health.set(group_joined=True, assigned_partitions=len(current))
        self._forget_lag(set(self._lag) - current)
        self._next_lag_refresh = 0.0  # measure the new assignment on the next turn
        log.info(
            "partitions_assigned",
            partitions=sorted(f"{tp.topic}-{tp.partition}" for tp in assigned),
        )

    # -- reporting -----------------------------------------------------------------

    def _announce_model(self, engine: Engine) -> None:
        self.metrics.model_info.info(
            {
                "version": engine.version,
                "labels": ",".join(engine.labels),
                "device": str(engine.device),
            }
        )
        self.metrics.init_categories(engine.labels)
        self.health.set(model_version=engine.version)
        # Every later log line of this thread names the model serving.
        structlog.contextvars.bind_contextvars(model_version=engine.version)

    def _maybe_refresh_lag(self) -> None:
        now = time.monotonic()
        if now < self._next_lag_refresh or self._consumer is None:
            return
        self._next_lag_refresh = now + self.settings.lag_interval_s
        self.refresh_lag()

    def refresh_lag(self) -> dict[TopicPartition, int]:
        """Per assigned partition: end offset - position, into `modstream_consumer_lag_records`.

        The end offset is the high watermark the consumer's own fetch responses carry, so
        this costs no request; only partitions not fetched yet need one ListOffsets call.
        """
        consumer = self._consumer
        assert consumer is not None
        assigned = set(consumer.assignment())
        self._forget_lag(set(self._lag) - assigned)
        ends: dict[TopicPartition, int] = {}
        unknown: list[TopicPartition] = []
        for tp in assigned:
            highwater = consumer.highwater(tp)
            if highwater is None:
                unknown.append(tp)
            else:
                ends[tp] = highwater
        try:
            if unknown:
                ends.update(consumer.end_offsets(unknown, timeout_ms=LAG_LOOKUP_TIMEOUT_MS))
            positions = {tp: consumer.position(tp, timeout_ms=LAG_LOOKUP_TIMEOUT_MS) for tp in ends}
        except KafkaError as exc:
            self.metrics.kafka_errors.labels(kind=type(exc).__name__).inc()
            log.warning("lag_refresh_failed", error=str(exc), topic=self.settings.input_topic)
            return dict(self._lag)
        for tp, end in ends.items():
            position = positions.get(tp)
            if position is None:
                continue
            lag = max(end - position, 0)
            self._lag[tp] = lag
            self.metrics.consumer_lag.labels(topic=tp.topic, partition=str(tp.partition)).set(lag)
        return dict(self._lag)

    def _forget_lag(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            if self._lag.pop(tp, None) is not None:
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    def _maybe_log_summary(self) -> None:
        now = time.monotonic()
        elapsed = now - self._last_summary
        if elapsed < self.settings.log_summary_interval_s:
            return
        window, m = self._summary, self.metrics
        log.info(
            "summary",
            topic=self.settings.input_topic,
            seconds=round(elapsed, 1),
            messages=window.messages,
            messages_per_s=round(window.messages / elapsed, 2),
            batches=window.batches,
            ok=window.outcomes["ok"],
            invalid=window.outcomes["invalid"],
            error=window.outcomes["error"],
            lag=sum(self._lag.values()),
            lag_by_partition={f"{tp.topic}-{tp.partition}": n for tp, n in self._lag.items()},
            in_flight=int(m.registry.get_sample_value("modstream_in_flight_messages") or 0),
        )
        self._summary = _SummaryWindow()
        self._last_summary = now


class _SummaryWindow:
    """What the worker did since the last summary log line."""

    def __init__(self) -> None:
        self.batches = 0
        self.messages = 0
        self.outcomes: dict[str, int] = {"ok": 0, "invalid": 0, "error": 0}

    def add(self, outcomes: dict[str, int]) -> None:
        self.batches += 1
        for outcome, count in outcomes.items():
            self.outcomes[outcome] = self.outcomes.get(outcome, 0) + count
            self.messages += count


def _arrival(record: SourceRecord, default: float) -> float:
    """When a record entered the system: its Kafka timestamp, else when it was polled."""
    if record.timestamp_ms is not None and record.timestamp_ms > 0:
        return record.timestamp_ms / 1000.0
    return record.polled_at if record.polled_at is not None else default


def _offset_ranges(batch: Sequence[SourceRecord]) -> dict[str, list[int]]:
    """`{"topic-partition": [first offset, last offset]}` of a batch, for debug logs."""
    ranges: dict[str, list[int]] = {}
    for record in batch:
        key = f"{record.topic}-{record.partition}"
        span = ranges.setdefault(key, [record.offset, record.offset])
        span[0] = min(span[0], record.offset)
        span[1] = max(span[1], record.offset)
    return ranges


def _tcp_reachable(server: str, timeout_s: float = 2.0) -> bool:
    host, _, port = server.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._worker.on_revoked(revoked)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._worker.on_assigned(assigned)

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self._worker.on_lost(lost)
