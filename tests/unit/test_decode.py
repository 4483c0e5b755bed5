"""Decoder: every kind of bad input becomes a dead letter with a stable reason."""

from __future__ import annotations

import pytest

from schemas import ErrorKind
from schemas.dead_letter import decode_bytes
from worker.decode import Decoded, Decoder, Rejected, SourceRecord


def record(value: bytes | None, key: bytes | None = b"k") -> SourceRecord:
    return SourceRecord("requests", 2, 41, 1_700_000_000_000, key, value)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, ErrorKind.NULL_VALUE),
        (b"\xff\xfe not utf8", ErrorKind.INVALID_UTF8),
        (b"{not json", ErrorKind.INVALID_JSON),
        (b"", ErrorKind.INVALID_JSON),
        (b'"a string"', ErrorKind.NOT_AN_OBJECT),
        (b"[1,2]", ErrorKind.NOT_AN_OBJECT),
        (b'{"text": "hi"}', ErrorKind.MISSING_FIELD),
        (b'{"id": 5, "text": "hi"}', ErrorKind.WRONG_TYPE),
        (b'{"id": "a", "text": null}', ErrorKind.WRONG_TYPE),
        (b'{"id": "a", "text": 3}', ErrorKind.WRONG_TYPE),
        (b'{"id": "a", "text": ""}', ErrorKind.EMPTY_TEXT),
        (b'{"id": "a", "text": " \\t "}', ErrorKind.EMPTY_TEXT),
        (b'{"id": "a", "text": "' + b"x" * 101 + b'"}', ErrorKind.TEXT_TOO_LONG),
        (b'{"id": "a", "text": "hi", "user": "u"}', ErrorKind.EXTRA_FIELD),
    ],
)
def test_bad_input_is_rejected_with_kind(value: bytes | None, kind: ErrorKind) -> None:
    outcome = Decoder(max_text_chars=100).decode(record(value))
    assert isinstance(outcome, Rejected)
    letter = outcome.dead_letter
    assert letter.error_kind is kind
    assert letter.error_message
    assert (letter.topic, letter.partition, letter.offset) == ("requests", 2, 41)
    assert decode_bytes(letter.value, letter.value_encoding) == value
    assert decode_bytes(letter.key, letter.key_encoding) == b"k"


def test_valid_request_is_decoded() -> None:
    outcome = Decoder(max_text_chars=100).decode(record(b'{"id": "a", "text": "hello \xc3\xa9"}'))
    assert isinstance(outcome, Decoded)
    assert outcome.request.text == "hello é"
    assert outcome.record.offset == 41


def test_message_names_every_failing_field() -> None:
    outcome = Decoder(max_text_chars=100).decode(record(b'{"id": 1, "text": 2}'))
    assert isinstance(outcome, Rejected)
    assert "id:" in outcome.dead_letter.error_message
    assert "text:" in outcome.dead_letter.error_message
