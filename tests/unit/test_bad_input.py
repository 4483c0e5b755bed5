"""The bad-input catalogue and a property-based fuzz of the decoder.

Whatever a producer sends, the decoder returns exactly one `Decoded` or `Rejected`, never
raises, and what the worker would publish for it serialises to valid UTF-8 JSON small
enough for the producer (a dead letter the broker refuses would block its partition).
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import ErrorKind
from schemas.dead_letter import decode_bytes
from schemas.result import ModerationResult, Timings
from worker.dead_letters import MAX_EMBEDDED_BYTES
from worker.decode import (
    MAX_VALUE_BYTES,
    Decoded,
    Decoder,
    Rejected,
    SourceRecord,
)

PRODUCER_MAX_REQUEST_BYTES = 1_048_576


def record(value: bytes | None, key: bytes | None = b"k") -> SourceRecord:
    return SourceRecord("requests", 0, 7, 1_700_000_000_000, key, value)


def request(**fields: Any) -> bytes:
    return json.dumps({"id": "r1", "text": "hello", **fields}).encode()


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


CATALOGUE: list[tuple[str, bytes | None, ErrorKind | None]] = [
    ("invalid json", b'{"id": "a", "text": ', ErrorKind.INVALID_JSON),
    ("empty value", b"", ErrorKind.INVALID_JSON),
    ("invalid utf-8", b'{"id": "a", "text": "\xff\xfe"}', ErrorKind.INVALID_UTF8),
    ("utf-8 encoded surrogate", b'{"id": "a", "text": "\xed\xa0\x80"}', ErrorKind.INVALID_UTF8),
    ("utf-8 byte order mark", b'\xef\xbb\xbf{"id": "a", "text": "hi"}', ErrorKind.INVALID_JSON),
    ("json array", b'[{"id": "a", "text": "hi"}]', ErrorKind.NOT_AN_OBJECT),
    ("json string", b'"hello"', ErrorKind.NOT_AN_OBJECT),
    ("json null", b"null", ErrorKind.NOT_AN_OBJECT),
    ("json number", b"42", ErrorKind.NOT_AN_OBJECT),
    ("missing id", b'{"text": "hi"}', ErrorKind.MISSING_FIELD),
    ("missing text", b'{"id": "a"}', ErrorKind.MISSING_FIELD),
    ("id is a number", b'{"id": 12, "text": "hi"}', ErrorKind.WRONG_TYPE),
    ("id is null", b'{"id": null, "text": "hi"}', ErrorKind.WRONG_TYPE),
    ("id is empty", b'{"id": "", "text": "hi"}', ErrorKind.INVALID_FIELD),
    ("id too long", request(id="i" * 257), ErrorKind.INVALID_FIELD),
    ("text null", request(text=None), ErrorKind.WRONG_TYPE),
    ("text number", request(text=3.5), ErrorKind.WRONG_TYPE),
    ("text list", request(text=["a", "b"]), ErrorKind.WRONG_TYPE),
    ("text object", request(text={"a": "b"}), ErrorKind.WRONG_TYPE),
    ("empty text", request(text=""), ErrorKind.EMPTY_TEXT),
    ("whitespace text", request(text=" \t\n\u3000 "), ErrorKind.EMPTY_TEXT),
    ("value over the hard cap", request(text="x" * MAX_VALUE_BYTES), ErrorKind.TEXT_TOO_LONG),
    ("extra field", request(lang="en"), ErrorKind.EXTRA_FIELD),
    ("metadata not strings", request(metadata={"a": 1}), ErrorKind.WRONG_TYPE),
    ("deeply nested metadata", request(metadata=nested(50)), ErrorKind.WRONG_TYPE),
    (
        "nesting past the parser's limit",
        b'{"id": "a", "text": "t", "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        ErrorKind.INVALID_JSON,
    ),
    (
        "too many metadata entries",
        request(metadata={str(i): "v" for i in range(65)}),
        ErrorKind.INVALID_FIELD,
    ),
    ("created_at garbage", request(created_at="yesterday"), ErrorKind.INVALID_FIELD),
    ("raw NUL byte in a string", b'{"id": "a", "text": "a\x00b"}', ErrorKind.INVALID_JSON),
    ("lone high surrogate escape", b'{"id": "a", "text": "x\\ud800"}', ErrorKind.INVALID_JSON),
    ("lone low surrogate escape", b'{"id": "a\\udc00", "text": "x"}', ErrorKind.INVALID_JSON),
    ("NaN literal", b'{"id": "a", "text": NaN}', ErrorKind.WRONG_TYPE),
    # Absurd shapes: rejected from the structure, before pydantic builds an error apiece.
    (
        "60,000 extra fields",
        request(**{f"f{i}": 0 for i in range(60_000)}),
        ErrorKind.EXTRA_FIELD,
    ),
    (
        "extra fields and no id",
        json.dumps({f"f{i}": [1] for i in range(1000)}).encode(),
        ErrorKind.EXTRA_FIELD,
    ),
    (
        "60,000 metadata entries of the wrong type",
        request(metadata={f"k{i}": i for i in range(60_000)}),
        ErrorKind.INVALID_FIELD,
    ),
    ("tombstone", None, ErrorKind.NULL_VALUE),
    # Valid, however odd: these must be scored.
    ("escaped NUL in text", request(text="a\u0000b"), None),
    ("RTL, zero-width and emoji", request(text="שלום \u200f\u200b\u2066x\u2069 😀👍🏽"), None),
    ("surrogate pair escape", b'{"id": "a", "text": "smile \\ud83d\\ude00"}', None),
    ("text past the scoring budget", request(text="y" * 50_000), None),
    ("text just under the hard cap", request(text="y" * (MAX_VALUE_BYTES - 100)), None),
    ("duplicate JSON key", b'{"id": "a", "text": "one", "text": "two"}', None),
    ("metadata and created_at", request(metadata={"u": "1"}, created_at="2024-01-01T00:00Z"), None),
]


@pytest.mark.parametrize(
    ("value", "kind"), [(v, k) for _, v, k in CATALOGUE], ids=[name for name, _, _ in CATALOGUE]
)
def test_catalogue(value: bytes | None, kind: ErrorKind | None) -> None:
    outcome = Decoder().decode(record(value))
    if kind is None:
        assert isinstance(outcome, Decoded), outcome
    else:
        assert isinstance(outcome, Rejected), outcome
        assert outcome.dead_letter.error_kind is kind, outcome.dead_letter.error_message
        assert outcome.dead_letter.error_message
    assert_publishable(outcome)


def test_the_decoder_gives_every_input_error_kind_somewhere_in_the_catalogue() -> None:
    """What the decoder answers, not what the catalogue declares: every kind a client
    can receive for bad input (all but the ones scoring and publishing give) comes out
    of decoding the catalogue."""
    decoder = Decoder()
    seen = set()
    for _, value, _ in CATALOGUE:
        outcome = decoder.decode(record(value))
        if isinstance(outcome, Rejected):
            seen.add(outcome.dead_letter.error_kind)
    not_from_decoding = {
        ErrorKind.INFERENCE_ERROR,
        ErrorKind.OUTPUT_TOO_LARGE,
        ErrorKind.OUTPUT_REJECTED,
    }
    assert seen == set(ErrorKind) - not_from_decoding


def test_record_over_the_hard_cap_gives_a_publishable_dead_letter() -> None:
    value = request(text="z" * MAX_VALUE_BYTES)
    outcome = Decoder().decode(record(value, key=b"q" * 200_000))
    assert isinstance(outcome, Rejected)
    letter = outcome.dead_letter
    assert letter.error_kind is ErrorKind.TEXT_TOO_LONG
    assert letter.truncated
    assert letter.value is not None and len(letter.value) == MAX_EMBEDDED_BYTES
    assert value.decode().startswith(letter.value)
    assert letter.key == "q" * MAX_EMBEDDED_BYTES
    assert str(MAX_VALUE_BYTES) in letter.error_message
    assert_publishable(outcome)
    # A million characters, within the cap, are no dead letter: they are scored.
    assert isinstance(Decoder().decode(record(request(text="z" * 1_000_000))), Decoded)


def test_truncation_keeps_whole_characters() -> None:
    value = ("é" * MAX_EMBEDDED_BYTES).encode()  # two bytes each: the cut falls mid-way
    outcome = Decoder().decode(record(value[1:] + value))  # invalid UTF-8 start
    assert isinstance(outcome, Rejected) and outcome.dead_letter.value_encoding == "base64"
    outcome = Decoder().decode(record(b"\x00" + value))
    assert isinstance(outcome, Rejected)
    letter = outcome.dead_letter
    assert letter.truncated and letter.value_encoding == "utf-8"
    assert letter.value is not None and letter.value.endswith("é")


def test_small_dead_letters_keep_the_original_bytes() -> None:
    outcome = Decoder().decode(record(b"\xff" * 100, key=b"\xfe\x00"))
    assert isinstance(outcome, Rejected)
    letter = outcome.dead_letter
    assert not letter.truncated
    assert decode_bytes(letter.value, letter.value_encoding) == b"\xff" * 100
    assert decode_bytes(letter.key, letter.key_encoding) == b"\xfe\x00"


def assert_publishable(outcome: Decoded | Rejected) -> None:
    """What the worker would publish serialises to valid UTF-8 JSON of a sendable size."""
    if isinstance(outcome, Decoded):
        result = ModerationResult(
            id=outcome.request.id,
            flagged=False,
            categories={"insult": False},
            category_scores={"insult": 0.1},
            model_version="v",
            topic=outcome.record.topic,
            partition=outcome.record.partition,
            offset=outcome.record.offset,
            timings=Timings(queued_ms=0.0, inference_ms=0.0, batch_size=1),
        )
        payload = result.model_dump_json().encode("utf-8")
        outcome.request.id.encode("utf-8")  # the output key falls back to the id
        outcome.request.text.encode("utf-8")  # the tokenizer sees well-formed text
    else:
        payload = outcome.dead_letter.model_dump_json().encode("utf-8")
        assert outcome.dead_letter.error_message.encode("utf-8")
    assert json.loads(payload.decode("utf-8"))
    assert len(payload) < PRODUCER_MAX_REQUEST_BYTES // 2


# -- property-based fuzzing ------------------------------------------------------------

FUZZ = settings(
    max_examples=300,
    deadline=None,  # a shared, loaded CI machine: judge behaviour, not speed
    suppress_health_check=[HealthCheck.too_slow],
)
# Every code point, lone surrogates included (json.dumps writes them as \ud800 escapes).
any_text = st.text(st.characters(codec=None, categories=None), max_size=60)
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | any_text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4),
    max_leaves=12,
)
near_requests = st.fixed_dictionaries(
    {"id": any_text | json_values, "text": any_text | json_values},
    optional={"metadata": json_values, "created_at": any_text, "extra": json_values},
)


def check(value: bytes | None, key: bytes | None) -> None:
    outcome = Decoder().decode(SourceRecord("t", 3, 99, -1, key, value))
    assert isinstance(outcome, Decoded | Rejected)
    assert_publishable(outcome)
    if isinstance(outcome, Rejected):
        letter = outcome.dead_letter
        assert letter.error_kind in set(ErrorKind)
        if not letter.truncated:
            assert decode_bytes(letter.value, letter.value_encoding) == value
            assert decode_bytes(letter.key, letter.key_encoding) == key


@FUZZ
@given(value=st.none() | st.binary(max_size=300), key=st.none() | st.binary(max_size=20))
def test_fuzz_arbitrary_bytes(value: bytes | None, key: bytes | None) -> None:
    check(value, key)


@FUZZ
@given(document=json_values, ascii_only=st.booleans())
def test_fuzz_arbitrary_json(document: Any, ascii_only: bool) -> None:
    text = json.dumps(document, ensure_ascii=ascii_only)
    check(text.encode("utf-8", errors="surrogatepass"), b"k")


@FUZZ
@given(document=near_requests, ascii_only=st.booleans(), cut=st.integers(0, 400))
def test_fuzz_near_valid_requests(document: dict[str, Any], ascii_only: bool, cut: int) -> None:
    raw = json.dumps(document, ensure_ascii=ascii_only).encode("utf-8", errors="surrogatepass")
    check(raw, None)
    check(raw[:cut], None)  # truncated mid-document or mid-character
