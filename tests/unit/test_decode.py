"""Decoder: every kind of bad input becomes a dead letter with a stable reason."""

from __future__ import annotations

import json
import time

import pytest

from schemas import ErrorKind
from schemas.dead_letter import decode_bytes
from worker.dead_letters import MAX_EMBEDDED_BYTES
from worker.decode import (
    MAX_VALUE_BYTES,
    Decoded,
    Decoder,
    Rejected,
    SourceRecord,
)


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
        (b'{"id": "a", "text": "' + b"x" * 181 + b'"}', ErrorKind.TEXT_TOO_LONG),
        (b'{"id": "a", "text": "hi", "user": "u"}', ErrorKind.EXTRA_FIELD),
    ],
)
def test_bad_input_is_rejected_with_kind(value: bytes | None, kind: ErrorKind) -> None:
    outcome = Decoder(max_value_bytes=200).decode(record(value))
    assert isinstance(outcome, Rejected)
    letter = outcome.dead_letter
    assert letter.error_kind is kind
    assert letter.error_message
    assert (letter.topic, letter.partition, letter.offset) == ("requests", 2, 41)
    assert decode_bytes(letter.value, letter.value_encoding) == value
    assert decode_bytes(letter.key, letter.key_encoding) == b"k"


def test_valid_request_is_decoded() -> None:
    outcome = Decoder().decode(record(b'{"id": "a", "text": "hello \xc3\xa9"}'))
    assert isinstance(outcome, Decoded)
    assert outcome.request.text == "hello é"
    assert outcome.record.offset == 41


def test_message_names_every_failing_field() -> None:
    outcome = Decoder().decode(record(b'{"id": 1, "text": 2}'))
    assert isinstance(outcome, Rejected)
    assert "id:" in outcome.dead_letter.error_message
    assert "text:" in outcome.dead_letter.error_message


def test_messages_name_each_field_by_its_path_and_join_errors_with_semicolons() -> None:
    decoder = Decoder()
    outcome = decoder.decode(record(b'{"id": 1, "text": "hi", "metadata": {"a": 2}}'))
    assert isinstance(outcome, Rejected)
    assert outcome.dead_letter.error_message == (
        "id: Input should be a valid string; metadata.a: Input should be a valid string"
    )
    outcome = decoder.decode(record(b"[1]"))  # an error about the whole value
    assert isinstance(outcome, Rejected)
    assert outcome.dead_letter.error_message.startswith("value: ")


def test_a_tombstone_says_so_and_a_dead_letter_keeps_the_source_coordinates_and_time() -> None:
    outcome = Decoder().decode(record(None))
    assert isinstance(outcome, Rejected)
    letter = outcome.dead_letter
    assert letter.error_message == "record value is null (tombstone)"
    assert letter.timestamp == 1_700_000_000_000
    assert letter.dead_lettered_at.utcoffset() is not None, "an aware UTC time"
    assert letter.dead_lettered_at.utcoffset().total_seconds() == 0


def test_a_value_of_exactly_the_embedded_limit_is_kept_whole() -> None:
    value = b"x" * MAX_EMBEDDED_BYTES
    outcome = Decoder().decode(record(value, key=b"k" * MAX_EMBEDDED_BYTES))
    assert isinstance(outcome, Rejected)
    letter = outcome.dead_letter
    assert not letter.truncated
    assert decode_bytes(letter.value, letter.value_encoding) == value
    assert letter.key == "k" * MAX_EMBEDDED_BYTES


def test_an_oversized_value_that_is_not_utf8_is_cut_and_marked_truncated() -> None:
    value = b"\xff" * (MAX_EMBEDDED_BYTES + 1)
    outcome = Decoder().decode(record(value))
    assert isinstance(outcome, Rejected)
    letter = outcome.dead_letter
    assert letter.truncated and letter.value_encoding == "base64"
    assert decode_bytes(letter.value, letter.value_encoding) == value[:MAX_EMBEDDED_BYTES]


# -- records of absurd shape ---------------------------------------------------------------


def wide(fields: int, with_id: bool = True) -> bytes:
    members = ",".join(f'"f{i}":0' for i in range(fields))
    head = '"id":"a","text":"t",' if with_id else ""
    return ("{" + head + members + "}").encode()


def test_many_fields_are_rejected_from_the_shape_alone() -> None:
    # 80,000 fields: 0.87 MB, under the hard cap on a record's size (`MAX_VALUE_BYTES`).
    for value in (wide(80_000), wide(80_000, with_id=False), wide(70)):
        outcome = Decoder().decode(record(value))
        assert isinstance(outcome, Rejected)
        letter = outcome.dead_letter
        assert letter.error_kind is ErrorKind.EXTRA_FIELD
        assert (
            "fields, a request at most 4 (created_at, id, metadata, text)" in letter.error_message
        )
        assert "'f0', 'f1', 'f2', 'f3', 'f4' and" in letter.error_message


def test_too_many_metadata_entries_are_rejected_from_the_shape_alone() -> None:
    entries = ",".join(f'"k{i}":{i}' for i in range(60_000))  # all of the wrong type
    value = ('{"id":"a","text":"t","metadata":{' + entries + "}}").encode()
    outcome = Decoder().decode(record(value))
    assert isinstance(outcome, Rejected)
    assert outcome.dead_letter.error_kind is ErrorKind.INVALID_FIELD
    assert outcome.dead_letter.error_message == "metadata: has 60000 entries, at most 64"


@pytest.mark.parametrize("with_id", [True, False])
def test_a_bad_record_costs_about_what_parsing_it_does(with_id: bool) -> None:
    """100,000 extra fields made pydantic build 100,000 errors: 0.2 s (0.45 s without
    an id), 7-15x what `json.loads` takes to read the record. Now it costs about one
    parse. Best of 3 each, alternating, as a ratio with a wide margin."""
    decoder = Decoder()
    absurd = record(wide(80_000, with_id))
    decode_times, parse_times = [], []
    for _ in range(3):
        started = time.perf_counter()
        decoder.decode(absurd)
        decode_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        json.loads(absurd.value or b"")
        parse_times.append(time.perf_counter() - started)
    assert min(decode_times) < 3 * min(parse_times)


def test_a_record_over_the_hard_cap_is_rejected_before_parsing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import worker.decode

    calls = []
    monkeypatch.setattr(worker.decode, "from_json", lambda text: calls.append(1))
    value = wide(100_000)  # 1.09 MB
    assert len(value) > MAX_VALUE_BYTES
    outcome = Decoder().decode(record(value))
    assert isinstance(outcome, Rejected) and calls == []
    assert outcome.dead_letter.error_kind is ErrorKind.TEXT_TOO_LONG
    assert f"{len(value)} bytes" in outcome.dead_letter.error_message


def test_a_record_with_few_colons_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a record that could hold too many members pays for a shape check."""
    import worker.decode

    calls = []
    real = worker.decode.from_json
    monkeypatch.setattr(worker.decode, "from_json", lambda text: calls.append(1) or real(text))
    decoder = Decoder()
    ordinary = b'{"id": "a", "text": "see http://x.y at 10:30", "metadata": {"k": "v"}}'
    assert isinstance(decoder.decode(record(ordinary)), Decoded)
    assert isinstance(decoder.decode(record(wide(3))), Rejected)
    assert calls == []
    many_colons = b'{"id": "a", "text": "' + b"::" * 100 + b'"}'
    assert isinstance(decoder.decode(record(many_colons)), Decoded)
    assert calls == [1]


def test_the_message_lists_ten_errors_then_counts() -> None:
    value = ('{"metadata":{' + ",".join(f'"k{i}":{i}' for i in range(30)) + "}}").encode()
    outcome = Decoder().decode(record(value))
    assert isinstance(outcome, Rejected)
    message = outcome.dead_letter.error_message
    assert message.count(";") == 10 and message.endswith("and 22 more errors")


def test_a_value_of_exactly_the_hard_cap_is_decoded_one_byte_more_is_not() -> None:
    value = b'{"id": "a", "text": "hello"}'
    assert isinstance(Decoder(max_value_bytes=len(value)).decode(record(value)), Decoded)
    over = Decoder(max_value_bytes=len(value) - 1).decode(record(value))
    assert isinstance(over, Rejected)
    assert over.dead_letter.error_kind is ErrorKind.TEXT_TOO_LONG


@pytest.mark.parametrize(
    ("errors", "ending"), [(10, "k9: Input should be a valid string"), (11, "and 1 more errors")]
)
def test_ten_errors_are_listed_in_full_and_only_more_are_counted(errors: int, ending: str) -> None:
    entries = ",".join(f'"k{i}":{i}' for i in range(errors))  # each of the wrong type
    value = ('{"id":"a","text":"t","metadata":{' + entries + "}}").encode()
    outcome = Decoder().decode(record(value))
    assert isinstance(outcome, Rejected)
    message = outcome.dead_letter.error_message
    assert message.count(";") == (9 if errors == 10 else 10)
    assert message.endswith(ending)


MANY_COLONS = ":" * 70  # in the text: the record is checked for its shape first


@pytest.mark.parametrize(
    ("unknown", "named"),
    [
        (7, "unknown: 'u0', 'u1', 'u2', 'u3', 'u4' and 2 more"),  # five named, two counted
        (2, "unknown: 'u0', 'u1'"),
    ],
)
def test_the_shape_check_names_the_first_unknown_fields_and_counts_the_rest(
    unknown: int, named: str
) -> None:
    extra = "".join(f',"u{i}":0' for i in range(unknown))
    value = f'{{"id":"a","text":"{MANY_COLONS}","metadata":{{}}{extra}}}'.encode()
    outcome = Decoder().decode(record(value))
    assert isinstance(outcome, Rejected)
    assert outcome.dead_letter.error_kind is ErrorKind.EXTRA_FIELD
    assert outcome.dead_letter.error_message == (
        f"the record has {3 + unknown} fields, a request at most 4 "
        f"(created_at, id, metadata, text); {named}"
    )


def test_a_request_at_every_shape_limit_is_valid_whatever_its_colons() -> None:
    """All four fields and 64 metadata entries: the most a request may have."""
    entries = ",".join(f'"k{i}":"v"' for i in range(64))
    value = (
        f'{{"id":"a","text":"{MANY_COLONS}","metadata":{{{entries}}},'
        '"created_at":"2024-01-01T00:00:00Z"}'
    ).encode()
    outcome = Decoder().decode(record(value))
    assert isinstance(outcome, Decoded)
    assert outcome.request.metadata is not None and len(outcome.request.metadata) == 64


def test_only_a_record_with_more_colons_than_a_request_can_hold_is_shape_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """4 fields and 64 metadata entries need at most 68 colons: 68 is parsed once."""
    import worker.decode

    calls = []
    real = worker.decode.from_json
    monkeypatch.setattr(worker.decode, "from_json", lambda text: calls.append(1) or real(text))
    for colons, checks in ((68 - 2, []), (68 - 2 + 1, [1])):  # id and text hold two
        value = ('{"id": "a", "text": "' + ":" * colons + '"}').encode()
        assert value.count(b":") in (68, 69)
        assert isinstance(Decoder().decode(record(value)), Decoded)
        assert calls == checks
