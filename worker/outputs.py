"""Every output fits: bounded record keys, sizes checked against the limits that apply.

An output that could never be sent would be retried forever and hold back every record
behind it (a ≈1 MB record with a 300 KB key made a 1,086,828-byte dead letter, over the
producer's 1 MiB `max_request_size`: the partition stopped). So:

1. Keys: an output record is keyed like its input record (clients rely on it), unless
   the key is longer than `MAX_OUTPUT_KEY_BYTES`: then the key is its SHA-256 digest
   (32 bytes; the same input key always gives the same output key and partition) and
   the record carries the header `modstream-key: sha256`.
2. Sizes: before an output is sent, its serialised size (kafka-python's upper bound for a
   one-record batch) is checked against `OutputLimits.limit(topic)`, the smaller of the
   producer's `max_request_size` and the topic's `max.message.bytes` as read from the
   broker at start (worker/clients.py).
3. An output over its limit is replaced by a minimal dead letter (coordinates and the
   reason, `output_too_large`, nothing embedded, a few hundred bytes).
4. An output the broker refuses anyway (a limit lowered since start, `InvalidRecordError`)
   is replaced the same way when it is sent (worker/delivery.py); if even the minimal
   dead letter is refused, the record is given up: an `output_abandoned` error line and
   `modstream_outputs_abandoned_total`, and the partition moves on (invariant 7).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import structlog
from kafka.errors import InvalidRecordError
from kafka.record.default_records import DefaultRecordBatchBuilder

from schemas.dead_letter import ErrorKind
from worker.dead_letters import dead_letter
from worker.sink import OutputRecord, classify

log = structlog.get_logger("modstream.worker")

# Longer keys are replaced by their digest. 1 KiB keeps every request id (at most 256
# characters, 4 UTF-8 bytes each) and any sensible key as it is.
MAX_OUTPUT_KEY_BYTES = 1024
KEY_HEADER = "modstream-key"
KEY_HASHED = b"sha256"
# kafka-python's default `max_request_size`, and the broker's default
# `message.max.bytes` is a little larger (1,048,588).
DEFAULT_MAX_REQUEST_SIZE = 1_048_576


def bounded_key(key: bytes | None) -> tuple[bytes | None, tuple[tuple[str, bytes], ...]]:
    """The output record key for an input key, and the headers that say how it was made."""
    if key is None or len(key) <= MAX_OUTPUT_KEY_BYTES:
        return key, ()
    return hashlib.sha256(key).digest(), ((KEY_HEADER, KEY_HASHED),)


def serialised_size(output: OutputRecord) -> int:
    """An upper bound of the output's size on the wire, as a batch of its own: what the
    producer compares with `max_request_size` and the broker with `max.message.bytes`."""
    size: int = DefaultRecordBatchBuilder.estimate_size_in_bytes(
        output.key, output.value, list(output.headers)
    )
    return size


@dataclass(frozen=True)
class OutputLimits:
    """Bytes one output record may take, per topic. Read at start, then immutable."""

    producer_max: int = DEFAULT_MAX_REQUEST_SIZE
    topic_max: dict[str, int] = field(default_factory=dict)

    def limit(self, topic: str) -> int:
        return min(self.producer_max, self.topic_max.get(topic, self.producer_max))


def refusal_kind(cause: BaseException) -> ErrorKind:
    """The dead letter's kind for a refused output: its content, or else its size."""
    if isinstance(cause, InvalidRecordError):
        return ErrorKind.OUTPUT_REJECTED
    return ErrorKind.OUTPUT_TOO_LARGE


class OutputFitter:
    """Makes outputs fit (steps 2-3) and stands in for refused ones (step 4).

    Thread-safe (no state but its limits): `fit` runs on the publishing thread when the
    worker is pipelined, `refused` on the processing thread.
    """

    def __init__(self, limits: OutputLimits, dead_letter_topic: str) -> None:
        self.limits = limits
        self.dead_letter_topic = dead_letter_topic

    def fit(self, output: OutputRecord) -> OutputRecord:
        """`output` itself, or the minimal dead letter standing in for it when it is
        larger than its topic's limit."""
        size = serialised_size(output)
        limit = self.limits.limit(output.topic)
        if size <= limit:
            return output
        why = f"its output of {size} bytes exceeds the {limit}-byte limit of topic {output.topic!r}"
        return self.minimal_dead_letter(output, ErrorKind.OUTPUT_TOO_LARGE, why)

    def refused(
        self, output: OutputRecord, cause: BaseException
    ) -> tuple[OutputRecord, ErrorKind] | None:
        """What to send instead of an output the broker refused: the minimal dead
        letter and its kind, or None when the refused output already was one (give the
        record up)."""
        if output.last_resort or output.origin is None:
            return None
        kind = refusal_kind(cause)
        why = (
            f"its output of {serialised_size(output)} bytes to topic {output.topic!r} was "
            f"refused ({classify(cause).value}): {type(cause).__name__}: {cause}"
        )
        return self.minimal_dead_letter(output, kind, why), kind

    def minimal_dead_letter(self, output: OutputRecord, kind: ErrorKind, why: str) -> OutputRecord:
        """Coordinates and reason only: the original stays on the source topic."""
        origin = output.origin
        assert origin is not None, "outputs built by the worker know their input record"
        letter = dead_letter(origin, kind, why, truncated=True)
        log.warning(
            "output_replaced",
            topic=origin.topic,
            partition=origin.partition,
            offset=origin.offset,
            output_topic=output.topic,
            error_kind=kind.value,
            error_message=why[:200],
        )
        return OutputRecord(
            self.dead_letter_topic,
            output.key,
            letter.model_dump_json().encode("utf-8"),
            output.source_timestamp_ms,
            output.headers,
            origin,
            last_resort=True,
        )
