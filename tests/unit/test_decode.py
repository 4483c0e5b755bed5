"""Decoder: every kind of bad input becomes a dead letter with a stable reason."""

from __future__ import annotations

import pytest

from schemas import ErrorKind
from schemas.dead_letter import decode_bytes
from worker.decode import MAX_EMBEDDED_BYTES, Decoded, Decoder, Rejected, SourceRecord


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


def test_messages_name_each_field_by_its_path_and_join_errors_with_semicolons() -> None:
    decoder = Decoder(max_text_chars=100)
    outcome = decoder.decode(record(b'{"id": 1, "text": "hi", "metadata": {"a": 2}}'))
    assert isinstance(outcome, Rejected)
    assert outcome.dead_letter.error_message == (
        "id: Input should be a valid string; metadata.a: Input should be a valid string"
    )
    outcome = decoder.decode(record(b"[1]"))  # an error about the whole value
    assert isinstance(outcome, Rejected)
    assert outcome.dead_letter.error_message.startswith("value: ")


def test_a_tombstone_says_so_and_a_dead_letter_keeps_the_source_coordinates_and_time() -> None:
    outcome = Decoder(max_text_chars=100).decode(record(None))
    assert isinstance(outcome, Rejected)
    letter = outcome.dead_letter
    assert letter.error_message == "record value is null (tombstone)"
    assert letter.timestamp == 1_700_000_000_000
    assert letter.dead_lettered_at.utcoffset() is not None, "an aware UTC time"
    assert letter.dead_lettered_at.utcoffset().total_seconds() == 0


def test_a_value_of_exactly_the_embedded_limit_is_kept_whole() -> None:
    value = b"x" * MAX_EMBEDDED_BYTES
    outcome = Decoder(max_text_chars=100).decode(record(value, key=b"k" * MAX_EMBEDDED_BYTES))
    assert isinstance(outcome, Rejected)
    letter = outcome.dead_letter
    assert not letter.truncated
    assert decode_bytes(letter.value, letter.value_encoding) == value
    assert letter.key == "k" * MAX_EMBEDDED_BYTES


def test_an_oversized_value_that_is_not_utf8_is_cut_and_marked_truncated() -> None:
    value = b"\xff" * (MAX_EMBEDDED_BYTES + 1)
    outcome = Decoder(max_text_chars=100).decode(record(value))
    assert isinstance(outcome, Rejected)
    letter = outcome.dead_letter
    assert letter.truncated and letter.value_encoding == "base64"
    assert decode_bytes(letter.value, letter.value_encoding) == value[:MAX_EMBEDDED_BYTES]
