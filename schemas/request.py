"""The input message: what producers put on the requests topic.

Every valid text is scored, however long: the operator's `MODSTREAM_MAX_TEXT_CHARS`
(default `DEFAULT_MAX_TEXT_CHARS`) only bounds how much of it the model reads (the
result's `coverage` says how much). The one length limit here is a hard cap,
`MAX_TEXT_CHARS`, as many characters as the worker's hard cap on a record's bytes
(`worker.decode.MAX_VALUE_BYTES`, 1 MiB): no chat message or comment comes near it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

DEFAULT_MAX_TEXT_CHARS = 10_000  # the default scoring budget (characters read per text)
MAX_TEXT_CHARS = 1 << 20  # the hard cap: longer texts are rejected
MAX_ID_CHARS = 256
MAX_METADATA_ENTRIES = 64


class ModerationRequest(BaseModel):
    """One piece of user content to moderate."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
    text: Annotated[
        str,
        Field(
            description="Content to score; whitespace-only text is rejected. Any length up "
            "to the hard cap is scored; past the operator's budget the result's coverage "
            "says how much was read.",
            json_schema_extra={"maxLength": MAX_TEXT_CHARS},
        ),
    ]
    metadata: Annotated[dict[str, str] | None, Field(max_length=MAX_METADATA_ENTRIES)] = None
    created_at: Annotated[datetime | None, Field(strict=False)] = None

    @field_validator("text")
    @classmethod
    def _text_within_limits(cls, text: str) -> str:
        if not text.strip():
            raise PydanticCustomError("empty_text", "text is empty or whitespace only")
        if len(text) > MAX_TEXT_CHARS:
            raise PydanticCustomError(
                "text_too_long",
                "text has {length} characters, over the hard cap of {limit}",
                {"length": len(text), "limit": MAX_TEXT_CHARS},
            )
        return text
