"""Schema behaviour and the checked-in JSON Schema files."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from schemas import (
    DEFAULT_MAX_TEXT_CHARS,
    MAX_TEXT_CHARS,
    DeadLetter,
    ErrorKind,
    ModerationRequest,
    ModerationResult,
    Span,
    decode_bytes,
    encode_bytes,
)
from schemas.export import MODELS, SCHEMA_DIR, render


@pytest.mark.parametrize("name", sorted(MODELS))
def test_checked_in_json_schema_matches_model(name: str) -> None:
    path = SCHEMA_DIR / f"{name}.schema.json"
    assert path.read_text(encoding="utf-8") == render(MODELS[name]), (
        f"{path} is stale: run `python -m schemas.export`"
    )


def test_request_accepts_minimal_and_full_messages() -> None:
    minimal = ModerationRequest.model_validate_json('{"id": "m1", "text": "hello"}')
    assert (minimal.id, minimal.text, minimal.metadata) == ("m1", "hello", None)
    full = ModerationRequest.model_validate_json(
        '{"id": "m2", "text": "hi", "metadata": {"lang": "en"},'
        ' "created_at": "2026-01-02T03:04:05Z"}'
    )
    assert full.metadata == {"lang": "en"}
    assert full.created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("payload", "error_type"),
    [
        ('{"text": "x"}', "missing"),
        ('{"id": "", "text": "x"}', "string_too_short"),
        ('{"id": "' + "i" * 257 + '", "text": "x"}', "string_too_long"),
        ('{"id": 7, "text": "x"}', "string_type"),
        ('{"id": "a", "text": null}', "string_type"),
        ('{"id": "a", "text": ["x"]}', "string_type"),
        ('{"id": "a", "text": "  \\n "}', "empty_text"),
        ('{"id": "a", "text": "x", "extra": 1}', "extra_forbidden"),
        ('{"id": "a", "text": "x", "metadata": {"k": 1}}', "string_type"),
        ("[1, 2]", "model_type"),
    ],
)
def test_request_rejects(payload: str, error_type: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ModerationRequest.model_validate_json(payload)
    assert caught.value.errors()[0]["type"] == error_type


def test_only_the_hard_cap_limits_a_texts_length() -> None:
    long = "x" * (DEFAULT_MAX_TEXT_CHARS * 10)  # ten times the scoring budget: valid
    assert ModerationRequest.model_validate({"id": "a", "text": long}).text == long
    at_cap = "y" * MAX_TEXT_CHARS
    assert ModerationRequest.model_validate({"id": "a", "text": at_cap})
    with pytest.raises(ValidationError) as caught:
        ModerationRequest.model_validate({"id": "a", "text": at_cap + "y"})
    error = caught.value.errors()[0]
    assert error["type"] == "text_too_long"
    assert f"{MAX_TEXT_CHARS + 1} characters" in error["msg"]


def test_results_carry_optional_coverage_and_evidence() -> None:
    base = {
        "id": "a",
        "flagged": True,
        "categories": {"insult": True},
        "category_scores": {"insult": 0.9},
        "model_version": "v",
        "topic": "t",
        "partition": 0,
        "offset": 0,
        "timings": {"queued_ms": 0.0, "inference_ms": 1.0, "batch_size": 1},
    }
    old = ModerationResult.model_validate(base)  # what older producers wrote
    assert old.coverage is None and old.evidence is None
    new = ModerationResult.model_validate(
        {
            **base,
            "coverage": {
                "chars_scored": 5000,
                "chars_total": 20000,
                "windows": 40,
                "strategy": "head+tail+sampled",
            },
            "evidence": {"insult": [{"start": 3, "end": 40, "score": 0.93}]},
        }
    )
    assert new.coverage is not None and new.coverage.windows == 40
    assert new.evidence == {"insult": [Span(start=3, end=40, score=0.93)]}
    for bad in (
        {"evidence": {"insult": [{"start": 0, "end": 4, "score": 1.2}]}},
        {"coverage": {"chars_scored": 1, "chars_total": 1, "windows": 1, "strategy": "x"}},
    ):
        with pytest.raises(ValidationError):
            ModerationResult.model_validate({**base, **bad})
    # Consumers that read only the old fields see the same JSON keys as before.
    assert set(json.loads(old.model_dump_json(exclude_none=True))) == set(base)


def test_result_scores_must_be_probabilities() -> None:
    base = {
        "id": "a",
        "flagged": True,
        "categories": {"insult": True},
        "model_version": "v",
        "topic": "t",
        "partition": 0,
        "offset": 0,
        "timings": {"queued_ms": 1.0, "inference_ms": 2.0, "batch_size": 1},
    }
    assert ModerationResult.model_validate({**base, "category_scores": {"insult": 0.9}})
    with pytest.raises(ValidationError):
        ModerationResult.model_validate({**base, "category_scores": {"insult": 1.5}})


@pytest.mark.parametrize("raw", [None, b"plain text", "ünï €".encode(), b"\xff\xfe\x00bin"])
def test_dead_letter_keeps_original_bytes(raw: bytes | None) -> None:
    text, encoding = encode_bytes(raw)
    letter = DeadLetter(
        error_kind=ErrorKind.INVALID_JSON,
        error_message="m",
        key=None,
        key_encoding=None,
        value=text,
        value_encoding=encoding,
        topic="t",
        partition=0,
        offset=3,
        timestamp=None,
        dead_lettered_at=datetime.now(UTC),
    )
    restored = DeadLetter.model_validate_json(letter.model_dump_json())
    assert decode_bytes(restored.value, restored.value_encoding) == raw
    if raw == b"\xff\xfe\x00bin":
        assert restored.value_encoding == "base64"
    assert json.loads(letter.model_dump_json())["error_kind"] == "invalid_json"
