"""The dead-letter record: a rejected input, kept whole, with a machine-readable reason."""

from __future__ import annotations

import base64
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class ErrorKind(StrEnum):
    """Why a record could not be scored. Clients switch on these values: keep them stable."""

    NULL_VALUE = "null_value"
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    EXTRA_FIELD = "extra_field"
    WRONG_TYPE = "wrong_type"
    EMPTY_TEXT = "empty_text"
    TEXT_TOO_LONG = "text_too_long"
    INVALID_FIELD = "invalid_field"
    INFERENCE_ERROR = "inference_error"
    OUTPUT_TOO_LARGE = "output_too_large"
    """The record's result or dead letter exceeded the producer's or the output topic's
    size limit: this minimal dead letter (coordinates and reason, nothing embedded)
    stands in for it."""
    OUTPUT_REJECTED = "output_rejected"
    """The broker refused the record's output as invalid (`InvalidRecordError`, e.g. a
    compacted topic and no key): this minimal dead letter stands in for it."""


Encoding = Literal["utf-8", "base64"]


class DeadLetter(BaseModel):
    """Enough to replay or inspect the input without the source topic's retention."""

    model_config = ConfigDict(extra="forbid")

    error_kind: ErrorKind
    error_message: str
    key: str | None
    key_encoding: Encoding | None
    value: str | None
    value_encoding: Encoding | None
    topic: str
    partition: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]
    timestamp: Annotated[int | None, Field(description="Source record timestamp, epoch ms.")]
    dead_lettered_at: datetime
    truncated: Annotated[
        bool,
        Field(
            description="True when key/value hold only a prefix of the original bytes (none "
            "at all for output_too_large and output_rejected): the record was too large to "
            "embed whole in a dead letter."
        ),
    ] = False


def encode_bytes(raw: bytes | None) -> tuple[str | None, Encoding | None]:
    """Text when the bytes are UTF-8, base64 otherwise, so nothing is lost."""
    if raw is None:
        return None, None
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(raw).decode("ascii"), "base64"


def decode_bytes(text: str | None, encoding: Encoding | None) -> bytes | None:
    """Inverse of `encode_bytes`: the original bytes of a dead-lettered key or value."""
    if text is None:
        return None
    if encoding == "base64":
        return base64.b64decode(text)
    return text.encode("utf-8")
