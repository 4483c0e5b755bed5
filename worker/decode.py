"""Kafka record → `ModerationRequest` or `DeadLetter`.

Nothing a producer sends may raise out of here: every failure becomes a dead letter
with a stable `error_kind`, so one poison message never stops the partition.

Cost: parsing and validating are linear in the record's bytes, but pydantic builds one
error per offending object member, and turning 100,000 of them into dicts and a
message took 0.2-0.45 s for one 1.3 MB record. A request has at most
`MAX_REQUEST_FIELDS` (4) top-level fields and `MAX_METADATA_ENTRIES` (64) metadata
entries, so a record with more is rejected from its shape alone (`extra_field`,
`invalid_field`: the kinds pydantic gives when those are its only faults) before
pydantic validates it. Every member needs a `:`, so only a record with more colons
than the two limits together (in strings too: an upper bound, counted at memchr speed)
is parsed for its shape first (`pydantic_core.from_json`, the parser validation uses);
any other record is validated as it comes and holds too few members for many errors.
The message names at most `MAX_LISTED_ERRORS` of them.

Length: every valid text is scored, however long (the engine reads at most the
operator's budget of it and says how much, `model.windows`). Only a record value over
`MAX_VALUE_BYTES` (1 MiB, Kafka's default `message.max.bytes`: a broker reconfigured
for larger records is the only way to get one) is a `text_too_long` dead letter,
checked before any parsing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails, from_json

from schemas.dead_letter import DeadLetter, ErrorKind
from schemas.request import MAX_METADATA_ENTRIES, MAX_TEXT_CHARS, ModerationRequest
from worker.dead_letters import dead_letter

REQUEST_FIELDS = tuple(sorted(ModerationRequest.model_fields))
MAX_REQUEST_FIELDS = len(REQUEST_FIELDS)
# More colons than this, and a record may have more members than a request allows.
STRUCTURE_CHECK_COLONS = MAX_REQUEST_FIELDS + MAX_METADATA_ENTRIES
MAX_LISTED_ERRORS = 10
# The hard cap on a request record's value: no real message reaches it (see above).
MAX_VALUE_BYTES = MAX_TEXT_CHARS


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
    """Validates records against the request schema, after the hard cap on their size."""

    def __init__(self, max_value_bytes: int = MAX_VALUE_BYTES) -> None:
        self.max_value_bytes = max_value_bytes

    def decode(self, record: SourceRecord) -> Decoded | Rejected:
        if record.value is None:
            return self.reject(record, ErrorKind.NULL_VALUE, "record value is null (tombstone)")
        if len(record.value) > self.max_value_bytes:
            return self.reject(
                record,
                ErrorKind.TEXT_TOO_LONG,
                f"record value has {len(record.value)} bytes, over the hard cap of "
                f"{self.max_value_bytes}",
            )
        try:
            text = record.value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return self.reject(record, ErrorKind.INVALID_UTF8, f"value is not UTF-8: {exc}")
        if record.value.count(b":") > STRUCTURE_CHECK_COLONS:
            fault = structure_fault(text)
            if fault is not None:
                return self.reject(record, *fault)
        try:
            request = ModerationRequest.model_validate_json(text)
        except ValidationError as exc:
            kind, message = classify(exc.errors(include_url=False))
            return self.reject(record, kind, message)
        return Decoded(record, request)

    @staticmethod
    def reject(record: SourceRecord, kind: ErrorKind, message: str) -> Rejected:
        """`record` as a dead letter of `kind`, its key and value embedded."""
        return Rejected(record, dead_letter(record, kind, message, record.key, record.value))


def structure_fault(text: str) -> tuple[ErrorKind, str] | None:
    """Why the JSON in `text` cannot be a request from its shape alone: more top-level
    fields than a request has, or more metadata entries than it allows. None when
    neither holds, or when `text` is not JSON (validation then says why)."""
    try:
        document: Any = from_json(text)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    if len(document) > MAX_REQUEST_FIELDS:
        unknown = [key for key, _ in zip(_unknown_fields(document), range(5), strict=False)]
        known = sum(1 for field in REQUEST_FIELDS if field in document)
        more = len(document) - known - len(unknown)
        return ErrorKind.EXTRA_FIELD, (
            f"the record has {len(document)} fields, a request at most "
            f"{MAX_REQUEST_FIELDS} ({', '.join(REQUEST_FIELDS)}); unknown: "
            + ", ".join(repr(key) for key in unknown)
            + (f" and {more} more" if more else "")
        )
    metadata = document.get("metadata")
    if isinstance(metadata, dict) and len(metadata) > MAX_METADATA_ENTRIES:
        return ErrorKind.INVALID_FIELD, (
            f"metadata: has {len(metadata)} entries, at most {MAX_METADATA_ENTRIES}"
        )
    return None


def _unknown_fields(document: dict[str, Any]) -> Any:
    return (key for key in document if key not in REQUEST_FIELDS)


def classify(errors: list[ErrorDetails]) -> tuple[ErrorKind, str]:
    """The first error decides the kind; the message lists them field by field (the
    first `MAX_LISTED_ERRORS`, then how many more)."""
    first = errors[0]
    kind = _KIND_BY_PYDANTIC_TYPE.get(first["type"])
    if kind is None:
        kind = ErrorKind.WRONG_TYPE if first["type"].endswith("_type") else ErrorKind.INVALID_FIELD
    parts = []
    for error in errors[:MAX_LISTED_ERRORS]:
        where = ".".join(str(part) for part in error["loc"]) or "value"
        parts.append(f"{where}: {error['msg']}")
    if len(errors) > MAX_LISTED_ERRORS:
        parts.append(f"and {len(errors) - MAX_LISTED_ERRORS} more errors")
    return kind, "; ".join(parts)
