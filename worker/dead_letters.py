"""The one way a dead letter is written: for a request that could not be decoded or
scored (worker/decode.py, worker/processing.py) and for an output that could not be sent
(worker/outputs.py, the minimal `output_too_large` / `output_rejected` letter).

Both used to build `DeadLetter` field by field; one factory keeps the coordinates, the
cut of the message and the embedding rules the same for every kind.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Protocol

from schemas.dead_letter import DeadLetter, ErrorKind, encode_bytes

MAX_ERROR_MESSAGE_CHARS = 1_000
# A dead letter embeds the record's key and value. A record near the broker's size limit
# would make a dead letter over the producer's (1 MiB), which could never be published:
# a poison pill. Past this many bytes key and value are cut to a prefix (`truncated`);
# JSON escaping grows bytes at most 6-fold, so the dead letter stays far below 1 MiB.
MAX_EMBEDDED_BYTES = 64 * 1024


class RecordCoordinates(Protocol):
    """Where the record a dead letter is about lies: a consumed `SourceRecord`, or the
    `Origin` an output answers."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def timestamp_ms(self) -> int | None: ...


def dead_letter(
    source: RecordCoordinates,
    kind: ErrorKind,
    message: str,
    key: bytes | None = None,
    value: bytes | None = None,
    *,
    truncated: bool = False,
) -> DeadLetter:
    """A dead letter about the record at `source`: why (`kind`, and `message` cut to
    `MAX_ERROR_MESSAGE_CHARS`), and the `key` and `value` to embed, each cut to
    `MAX_EMBEDDED_BYTES` on a character boundary. `truncated` is true when anything was
    cut, or when the caller left the record's bytes out on purpose (a minimal dead
    letter: the original stays on the source topic)."""
    raw_key, key_cut = _prefix(key, MAX_EMBEDDED_BYTES)
    raw_value, value_cut = _prefix(value, MAX_EMBEDDED_BYTES)
    key_text, key_encoding = encode_bytes(raw_key)
    value_text, value_encoding = encode_bytes(raw_value)
    return DeadLetter(
        error_kind=kind,
        error_message=message[:MAX_ERROR_MESSAGE_CHARS],
        key=key_text,
        key_encoding=key_encoding,
        value=value_text,
        value_encoding=value_encoding,
        topic=source.topic,
        partition=source.partition,
        offset=source.offset,
        timestamp=source.timestamp_ms,
        dead_lettered_at=datetime.now(UTC),
        truncated=truncated or key_cut or value_cut,
    )


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
