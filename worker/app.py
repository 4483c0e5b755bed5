"""The worker: wires Source → BatchProcessor → BatchDelivery; stop and rebalances.

Invariants (what must hold whatever the code looks like; "invariant N" anywhere in
worker/ means these):

1. Commit protocol: per partition, the committed offset is one past the highest offset
   such that every record at or below it has had its output (Result or DeadLetter)
   acknowledged by the broker; never commit past an unacknowledged record. In
   exactly-once mode, outputs and offsets go in one transaction.
2. One output per input: every consumed record yields exactly one Result or one
   DeadLetter (at-least-once may repeat after a crash; exactly-once may not).
3. No poison pill stops the worker: decoding and validation errors become DeadLetters
   with a machine-readable `error_kind`; only infrastructure failures (broker, output
   topic, checkpoint) change readiness.
4. Model swaps happen between batches: a batch is scored by one model version, and the
   Result says which.
5. Checkpoints are data, not code: `model.json` + `weights.safetensors`; never pickle.
6. The worst part decides: every valid message is scored, however long; a result says
   how much of the text was covered when a budget cut it.
7. Every cost per message is bounded (bytes out, memory kept, CPU spent); a failure that
   retrying cannot fix is never retried forever.

One batch, and where each step lives:

0. Swap in a reloaded model or threshold policy if one is waiting (`EngineSlot.apply`,
   worker/engine_slot.py).
1. Poll (`Source.poll`, worker/source.py) until the batcher closes a batch
   (worker/batcher.py).
2. Decode, tokenise, score, build one output per record (`BatchProcessor`,
   worker/processing.py).
3. Publish the outputs and commit the offsets (`BatchDelivery.deliver`,
   worker/delivery.py, numbered steps there).
4. Count it: metrics and the debug line (`BatchRunner`, worker/runner.py), the summary
   line (worker/summary.py), the lag (worker/lag.py).

`BatchRunner` takes batches through steps 0 and 2-4 in consumption order: one after the
other, or (at-least-once, `MODSTREAM_PIPELINE_DEPTH` > 0) with scoring and output
building on their own threads (worker/pipeline.py) while this thread polls the next.

Shutdown (SIGTERM/SIGINT, relayed by worker/signals.py) stops polling, finishes the
batches in hand through step 3, then closes the clients and exits 0; during start-up it
exits 0 after the step in progress.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import structlog
from kafka import KafkaConsumer, KafkaProducer

from model.errors import ExitCode, ModstreamError
from model.threshold_overrides import ThresholdPolicyFile
from worker import clients
from worker.batcher import Batcher
from worker.clients import WorkerFencedError
from worker.collector import PauseRecorder
from worker.decode import Decoder, SourceRecord
from worker.delivery import AtLeastOnceDelivery, BatchDelivery, WorkerStoppedError
from worker.engine_slot import EngineSlot
from worker.health import HealthState
from worker.lag import LagMonitor
from worker.metrics import WorkerMetrics
from worker.outputs import OutputFitter, OutputLimits
from worker.pipeline import OutputsFailedError, ScoringFailedError
from worker.processing import BatchProcessor
from worker.rebalance import GroupListener
from worker.runner import BatchRunner
from worker.serving import ModelUnavailableError, ServingModel
from worker.settings import WorkerSettings
from worker.sink import Sink
from worker.source import Source
from worker.summary import SummaryLog
from worker.transactional import TransactionalDelivery

log = structlog.get_logger("modstream.worker")

# What ends `run` early, and the event that says so; each exits with its `exit_code` (1).
STOP_EVENTS: dict[type[ModstreamError], str] = {
    ScoringFailedError: "scoring_failed",
    OutputsFailedError: "outputs_failed",
    WorkerStoppedError: "shutdown_with_unacknowledged_outputs",
    WorkerFencedError: "worker_fenced",
    ModelUnavailableError: "model_unavailable",
}


def package_version() -> str:
    try:
        return version("modstream")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Connected:
    """The parts that exist once the Kafka clients do (see each for its threads)."""

    source: Source
    delivery: BatchDelivery
    lag: LagMonitor
    runner: BatchRunner


class Worker:
    """The processing loop and its wiring.

    Threads: `run` and everything it calls on the processing thread; the rebalance
    listener (worker/rebalance.py) on kafka-python's I/O thread while `run` waits in
    poll; `request_stop` from the signals thread (worker/signals.py);
    `engines.offer_engine` from the reload thread.
    """

    def __init__(
        self,
        settings: WorkerSettings,
        engine: ServingModel,
        metrics: WorkerMetrics | None = None,
        health: HealthState | None = None,
        policy: ThresholdPolicyFile | None = None,
    ) -> None:
        """`policy`: the checkpoint store's threshold policy at start (`MODSTREAM_THRESHOLDS`
        comes with `settings`); both must name only `engine`'s labels."""
        self.settings = settings
        self.metrics = metrics if metrics is not None else WorkerMetrics()
        self.health = (
            health
            if health is not None
            else HealthState(liveness_deadline_s=settings.liveness_deadline_s)
        )
        self.batcher = Batcher(
            max_size=settings.max_batch_size,
            max_wait_s=settings.max_batch_wait_ms / 1000.0,
            max_bytes=settings.max_batch_bytes,
        )
        self.processor = BatchProcessor(
            Decoder(),
            self.metrics,
            settings.output_topic,
            settings.dead_letter_topic,
        )
        self.summary = SummaryLog(
            self.metrics, settings.input_topic, settings.log_summary_interval_s
        )
        self._stop = threading.Event()
        self._connected: Connected | None = None
        self.metrics.build_info.info({"version": package_version()})
        self.health.set(kafka_ok=False, problem="producer not connected")
        self.engines = EngineSlot(
            engine, self.metrics, self.health, policy, settings.threshold_overrides()
        )
        self.collections = PauseRecorder(self.metrics.gc_pauses)

    @property
    def engine(self) -> ServingModel:
        """The engine serving now."""
        return self.engines.serving

    @property
    def kafka(self) -> Connected:
        """The Kafka-facing parts; `connect` or `attach` first."""
        if self._connected is None:
            raise RuntimeError("the worker is not connected to Kafka yet")
        return self._connected

    # -- lifecycle -----------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def connect(self) -> None:
        """Create the Kafka clients; raises BrokerUnavailableError with the bootstrap named."""
        made = clients.connect(self.settings)
        self.attach(made.consumer, made.producer, made.limits)

    def attach(
        self,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        limits: OutputLimits | None = None,
    ) -> None:
        """Wire the worker to its clients (`connect` makes them; tests hand in stand-ins).
        `limits`: the output topics' size limits (None: the producer's default only)."""
        s = self.settings
        fitter = OutputFitter(limits or OutputLimits(), s.dead_letter_topic)
        self.processor.fitter = fitter
        source = Source(consumer, s, self.metrics, self.health, self._stop)
        delivery: BatchDelivery
        if s.delivery == "exactly_once":
            delivery = TransactionalDelivery(
                producer,
                lambda: clients.new_producer(s),
                source,
                s,
                self.metrics,
                self.health,
                self._stop,
                fitter=fitter,
            )
        else:
            sink = Sink(producer, s.publish_timeout_s, lambda: clients.new_producer(s))
            delivery = AtLeastOnceDelivery(
                sink, consumer, self.metrics, self.health, self._stop, fitter=fitter, settings=s
            )
        lag = LagMonitor(consumer, self.metrics, s.input_topic, s.lag_interval_s)
        runner = BatchRunner(self.processor, self.engines, delivery, self.metrics, self.summary)
        self._connected = Connected(source, delivery, lag, runner)
        source.subscribe(
            GroupListener(
                self.batcher,
                runner,
                source,
                delivery,
                lag,
                self.metrics,
                self.health,
                drain_s=min(s.publish_timeout_s, s.session_timeout_ms / 2000.0),
            )
        )
        self.health.set(kafka_ok=True, problem=None)

    def run(self) -> int:
        """Process until stopped; returns the process exit code."""
        if self._connected is None:
            self.connect()
        kafka = self.kafka
        log.info(
            "worker_started",
            topic=self.settings.input_topic,
            group_id=self.settings.group_id,
            model_version=self.engine.version,
            device=str(self.engine.device),
        )
        exit_code: int = ExitCode.OK
        runner = kafka.runner
        self.collections.install()
        try:
            runner.start_pipeline(self.settings.pipeline_depth)
            while not self.stopping:
                batch = self.batcher.collect(
                    kafka.source.poll,
                    lambda: self.stopping,
                    runner.scorer_idle if runner.pipelined else None,
                )
                self.health.tick()
                if batch:
                    runner.handle(batch)
                    self.health.tick()
                else:
                    self.engines.apply()  # idle: announce a new model at once
                runner.complete_acknowledged()
                kafka.lag.maybe_refresh()
                self.summary.maybe_log(kafka.lag.lag)
                self.collections.flush()
            leftover = self.batcher.take()
            if leftover:
                runner.handle(leftover)
            runner.drain()
        except ModstreamError as exc:
            event = STOP_EVENTS.get(type(exc))
            if event is None:
                raise  # not a way to stop: the caller reports it
            log.error(event, error=str(exc))
            exit_code = exc.exit_code
        finally:
            self.close()
            self.collections.uninstall()
            self.collections.flush()
        log.info("worker_stopped", exit_code=exit_code)
        return exit_code

    def close(self) -> None:
        """Stop the pipeline's threads and close the clients (the end of `run`)."""
        if self._connected is not None:
            self._connected.runner.close()
            self._connected.delivery.close()
            self._connected.source.close()

    def process_batch(self, batch: Sequence[SourceRecord]) -> None:
        """One closed batch through every step, synchronously."""
        self.kafka.runner.process(batch)
