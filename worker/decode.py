"""Kafka record → `ModerationRequest` or `DeadLetter`.

Nothing a producer sends may raise out of here: every failure becomes a dead letter
with a stable `error_kind`, so one poison message never stops the partition.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from schemas.dead_letter import DeadLetter, ErrorKind, encode_bytes
from schemas.request import ModerationRequest

MAX_ERROR_MESSAGE_CHARS = 1_000
# A dead letter embeds the record's key and value. A record near the broker's size limit
# would make a dead letter over the producer's (1 MiB), which could never be published:
# a poison pill. Past this many bytes key and value are cut to a prefix (`truncated`);
# JSON escaping grows bytes at most 6-fold, so the dead letter stays far below 1 MiB.
MAX_EMBEDDED_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """The parts of a consumed Kafka record the pipeline needs, client-library free."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    polled_at: float | None = None
    """Wall-clock time (epoch seconds) the worker polled the record, if known."""


@dataclass(frozen=True, slots=True)
class Decoded:
    record: SourceRecord
    request: ModerationRequest


@dataclass(frozen=True, slots=True)
class Rejected:
    record: SourceRecord
    dead_letter: DeadLetter


_KIND_BY_PYDANTIC_TYPE: dict[str, ErrorKind] = {
    "json_invalid": ErrorKind.INVALID_JSON,
    "json_type": ErrorKind.INVALID_JSON,
    "model_type": ErrorKind.NOT_AN_OBJECT,
    "model_attributes_type": ErrorKind.NOT_AN_OBJECT,
    "missing": ErrorKind.MISSING_FIELD,
    "extra_forbidden": ErrorKind.EXTRA_FIELD,
    "empty_text": ErrorKind.EMPTY_TEXT,
    "text_too_long": ErrorKind.TEXT_TOO_LONG,
}


class Decoder:
    """Validates records against the request schema with the operator's text limit."""

    def __init__(self, max_text_chars: int) -> None:
        self._context = {"max_text_chars": max_text_chars}

    def decode(self, record: SourceRecord) -> Decoded | Rejected:
        if record.value is None:
            return self.reject(record, ErrorKind.NULL_VALUE, "record value is null (tombstone)")
        try:
            text = record.value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return self.reject(record, ErrorKind.INVALID_UTF8, f"value is not UTF-8: {exc}")
        try:
            request = ModerationRequest.model_validate_json(text, context=self._context)
        except ValidationError as exc:
            kind, message = classify(exc.errors(include_url=False))
            return self.reject(record, kind, message)
        return Decoded(record, request)

    @staticmethod
    def reject(record: SourceRecord, kind: ErrorKind, message: str) -> Rejected:
        raw_key, key_cut = _prefix(record.key, MAX_EMBEDDED_BYTES)
        raw_value, value_cut = _prefix(record.value, MAX_EMBEDDED_BYTES)
        key, key_encoding = encode_bytes(raw_key)
        value, value_encoding = encode_bytes(raw_value)
        dead_letter = DeadLetter(
            error_kind=kind,
            error_message=message[:MAX_ERROR_MESSAGE_CHARS],
            key=key,
            key_encoding=key_encoding,
            value=value,
            value_encoding=value_encoding,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            timestamp=record.timestamp_ms,
            dead_lettered_at=datetime.now(UTC),
            truncated=key_cut or value_cut,
        )
        return Rejected(record, dead_letter)


def _prefix(raw: bytes | None, limit: int) -> tuple[bytes | None, bool]:
    """At most `limit` bytes of `raw`, cut on a character boundary when it is UTF-8."""
    if raw is None or len(raw) <= limit:
        return raw, False
    cut = raw[:limit]
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return cut, True
    for back in range(4):  # a UTF-8 character is at most 4 bytes
        try:
            (cut[: len(cut) - back]).decode("utf-8")
        except UnicodeDecodeError:
            continue
        return cut[: len(cut) - back], True
    return cut, True


def classify(errors: list[ErrorDetails]) -> tuple[ErrorKind, str]:
    """The first error decides the kind; the message lists them all, field by field."""
    first = errors[0]
    kind = _KIND_BY_PYDANTIC_TYPE.get(first["type"])
    if kind is None:
        kind = ErrorKind.WRONG_TYPE if first["type"].endswith("_type") else ErrorKind.INVALID_FIELD
    parts = []
    for error in errors:
        where = ".".join(str(part) for part in error["loc"]) or "value"
        parts.append(f"{where}: {error['msg']}")
    return kind, "; ".join(parts)
