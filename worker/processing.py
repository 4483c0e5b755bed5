"""Stage → score → prepare: one batch of records to one output per record, no Kafka.

1. Stage: decode every record (invalid ones become dead letters, nothing raises) and
   tokenise the valid texts with the engine the batch was given: that engine also
   scores them, and the thresholds given with it flag them, so a batch is scored by
   exactly one model version under one policy (invariant 4).
2. Score: run the model on the whole batch; if the batch fails (encoding or inference),
   score the texts one by one so that one bad text dead-letters only itself.
3. Prepare: one output per record, in consumption order: a Result, or a DeadLetter
   (invalid input, or inference failed for that text, or its scores are no
   probabilities) (invariant 2). Each output's record key is bounded and its size
   checked against the output topic's limit (`OutputFitter`, worker/outputs.py): one
   that does not fit becomes a minimal `output_too_large` dead letter.

The worker runs the steps on up to three threads (worker/pipeline.py); `modstream score`
runs them one after the other (`process`) over JSON lines, so both write identical
records.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from model.threshold_overrides import EffectiveThresholds
from model.windows import ScoredText
from schemas.dead_letter import DeadLetter, ErrorKind
from schemas.result import ModerationResult, Timings
from worker.decode import Decoded, Decoder, Rejected, SourceRecord
from worker.metrics import WorkerMetrics
from worker.outputs import OutputFitter, bounded_key
from worker.results import InvalidScoresError, build_result
from worker.serving import ModelUnavailableError, ServingModel
from worker.sink import Origin, OutputRecord

log = structlog.get_logger("modstream.worker")


@dataclass
class StagedBatch:
    """A closed batch decoded and tokenised (step 1)."""

    batch: list[SourceRecord]
    items: list[Decoded | Rejected]  # one per record, in consumption order
    decoded: list[Decoded]
    encoded: Any  # the decoded texts as `engine` staged them; None if that raised
    engine: ServingModel  # the model that encoded them scores them (invariant 4)
    started: float
    policy: EffectiveThresholds | None = None  # flags them; None: the checkpoint's own


@dataclass
class ScoredBatch:
    """Step 2's answer for a staged batch."""

    rows: list[ScoredText | None]  # per decoded request its scores; None where it failed
    inference_s: float  # the batch's tokenise + inference seconds
    failures: dict[int, str]  # per failed request (by `id()`) why


@dataclass
class PreparedBatch:
    """A batch with one output per record, ready to publish (step 3)."""

    batch: list[SourceRecord]
    outputs: list[OutputRecord]
    outcomes: dict[str, int]
    started: float
    inference_s: float


class BatchProcessor:
    """Stages, scores and prepares batches; reports each step to the worker's metrics.

    Threads: `stage` on the processing thread; `score` on the scoring thread and
    `prepare` on the publishing thread when the worker is pipelined, else both on the
    processing thread. It keeps no state between calls (the decoder, the fitter and the
    metrics are thread-safe), so the three may run on different batches at once.
    """

    def __init__(
        self,
        decoder: Decoder,
        metrics: WorkerMetrics,
        result_topic: str,
        dead_letter_topic: str,
        fitter: OutputFitter | None = None,
    ) -> None:
        """`fitter`: the output topics' size limits (set once they were read from the
        broker, before the first batch); None checks no size (`modstream score`)."""
        self.decoder = decoder
        self.metrics = metrics
        self.result_topic = result_topic
        self.dead_letter_topic = dead_letter_topic
        self.fitter = fitter

    def process(
        self,
        batch: Sequence[SourceRecord],
        engine: ServingModel,
        policy: EffectiveThresholds | None = None,
    ) -> PreparedBatch:
        """Steps 1-3 one after the other, on the calling thread."""
        staged = self.stage(batch, engine, policy)
        return self.prepare(staged, self.score(staged))

    def stage(
        self,
        batch: Sequence[SourceRecord],
        engine: ServingModel,
        policy: EffectiveThresholds | None = None,
    ) -> StagedBatch:
        """Step 1: decode, then encode the valid texts with the model that will score
        them; `policy`: the thresholds that will flag them (None: the checkpoint's)."""
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
        encoded: Any = None
        if decoded:
            try:
                encoded = engine.encode_batch([d.request.text for d in decoded])
            except Exception as exc:  # scored one by one in `score`, never lost
                log.error("batch_encoding_failed", error=str(exc), batch_size=len(decoded))
        return StagedBatch(list(batch), items, decoded, encoded, engine, started, policy)

    def score(self, staged: StagedBatch) -> ScoredBatch:
        """Step 2: score with the batch's engine; one by one when the batch fails."""
        engine, decoded, encoded = staged.engine, staged.decoded, staged.encoded
        # Log context is per thread: the scoring thread's lines name the model too.
        structlog.contextvars.bind_contextvars(model_version=engine.version)
        if not decoded:
            return ScoredBatch([], 0.0, {})
        if encoded is None:  # encoding the batch failed: find the text that fails
            return self._score_individually(engine, decoded)
        try:
            scores = engine.score_encoded(encoded)
        except ModelUnavailableError:
            raise  # infrastructure: the batch stays unanswered (worker/serving.py)
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
        rows: list[ScoredText | None] = list(scores.texts())
        return ScoredBatch(rows, scores.tokenize_seconds + scores.inference_seconds, {})

    def _score_individually(self, engine: ServingModel, decoded: Sequence[Decoded]) -> ScoredBatch:
        rows: list[ScoredText | None] = []
        failed: dict[int, str] = {}
        start = time.perf_counter()
        for item in decoded:
            try:
                rows.append(engine.score([item.request.text]).text(0))
            except ModelUnavailableError:
                raise
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
        return ScoredBatch(rows, time.perf_counter() - start, failed)

    def prepare(self, staged: StagedBatch, scores: ScoredBatch) -> PreparedBatch:
        """Step 3: one output per record, in consumption order."""
        engine, started, batch = staged.engine, staged.started, staged.batch
        structlog.contextvars.bind_contextvars(model_version=engine.version)
        decoded = staged.decoded
        outputs: list[OutputRecord] = []
        scored = iter(zip(decoded, scores.rows, strict=True))
        outcomes: dict[str, int] = {"ok": 0, "invalid": 0, "error": 0}
        for item in staged.items:
            if isinstance(item, Rejected):
                log.warning(
                    "dead_lettered",
                    topic=item.record.topic,
                    partition=item.record.partition,
                    offset=item.record.offset,
                    error_kind=item.dead_letter.error_kind.value,
                    error_message=item.dead_letter.error_message[:200],
                )
                outputs.append(self._dead_letter_output(item.dead_letter, item.record))
                outcomes["invalid"] += 1
                continue
            request_item, row = next(scored)
            why = scores.failures.get(id(request_item), "") if row is None else ""
            if row is not None:
                try:
                    result = self._result(staged, request_item, row, scores.inference_s)
                except InvalidScoresError as exc:
                    why = str(exc)
                    log.error(
                        "inference_failed",
                        topic=item.record.topic,
                        partition=item.record.partition,
                        offset=item.record.offset,
                        error=why,
                    )
                else:
                    record = item.record
                    key = record.key if record.key is not None else result.id.encode("utf-8")
                    output = self._output(self.result_topic, key, result.model_dump_json(), record)
                    fitted = self._fit(output)
                    outputs.append(fitted)
                    if fitted is output:
                        self._count_scores(result)
                        outcomes["ok"] += 1
                    else:
                        outcomes["error"] += 1
                    continue
            rejected = self.decoder.reject(item.record, ErrorKind.INFERENCE_ERROR, why)
            outputs.append(self._dead_letter_output(rejected.dead_letter, item.record))
            outcomes["error"] += 1
        return PreparedBatch(list(batch), outputs, outcomes, started, scores.inference_s)

    def _result(
        self, staged: StagedBatch, item: Decoded, row: ScoredText, inference_s: float
    ) -> ModerationResult:
        record = item.record
        queued_ms = (
            (staged.started - record.timestamp_ms / 1000.0) * 1000.0 if record.timestamp_ms else 0.0
        )
        timings = Timings(
            queued_ms=round(queued_ms, 3),
            inference_ms=round(inference_s * 1000.0, 3),
            batch_size=len(staged.decoded),
        )
        return build_result(staged.engine, item, row, timings, staged.policy)

    def _count_scores(self, result: ModerationResult) -> None:
        self.metrics.count_result(result.category_scores, result.categories)

    def _dead_letter_output(self, dead_letter: DeadLetter, record: SourceRecord) -> OutputRecord:
        """The dead letter's output (or the minimal one standing in), counted by reason."""
        output = self._fit(
            self._output(self.dead_letter_topic, record.key, dead_letter.model_dump_json(), record)
        )
        if not output.last_resort:
            self.metrics.dead_letters.labels(reason=dead_letter.error_kind).inc()
        return output

    @staticmethod
    def _output(topic: str, key: bytes | None, value: str, record: SourceRecord) -> OutputRecord:
        output_key, headers = bounded_key(key)
        origin = Origin(record.topic, record.partition, record.offset, record.timestamp_ms)
        return OutputRecord(
            topic, output_key, value.encode("utf-8"), record.timestamp_ms, headers, origin
        )

    def _fit(self, output: OutputRecord) -> OutputRecord:
        """The output, or the minimal dead letter standing in when it is too large."""
        if self.fitter is None:
            return output
        fitted = self.fitter.fit(output)
        if fitted is not output:
            self.metrics.dead_letters.labels(reason=ErrorKind.OUTPUT_TOO_LARGE).inc()
        return fitted


def _arrival(record: SourceRecord, default: float) -> float:
    """When a record entered the system: its Kafka timestamp, else when it was polled."""
    if record.timestamp_ms is not None and record.timestamp_ms > 0:
        return record.timestamp_ms / 1000.0
    return record.polled_at if record.polled_at is not None else default
