"""The input message: what producers put on the requests topic.

The maximum text length is an operator setting, not a schema constant, so it is
passed through pydantic's validation context (`{"max_text_chars": N}`); the
exported JSON Schema shows the default.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

DEFAULT_MAX_TEXT_CHARS = 10_000
MAX_ID_CHARS = 256
MAX_METADATA_ENTRIES = 64


class ModerationRequest(BaseModel):
    """One piece of user content to moderate."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
    text: Annotated[
        str,
        Field(
            description="Content to score; whitespace-only text is rejected.",
            json_schema_extra={"maxLength": DEFAULT_MAX_TEXT_CHARS},
        ),
    ]
    metadata: Annotated[dict[str, str] | None, Field(max_length=MAX_METADATA_ENTRIES)] = None
    created_at: Annotated[datetime | None, Field(strict=False)] = None

    @field_validator("text")
    @classmethod
    def _text_within_limits(cls, text: str, info: ValidationInfo) -> str:
        if not text.strip():
            raise PydanticCustomError("empty_text", "text is empty or whitespace only")
        limit = _max_text_chars(info.context)
        if len(text) > limit:
            raise PydanticCustomError(
                "text_too_long",
                "text has {length} characters, the limit is {limit}",
                {"length": len(text), "limit": limit},
            )
        return text


def _max_text_chars(context: Any) -> int:
    if isinstance(context, dict):
        value = context.get("max_text_chars")
        if isinstance(value, int) and value > 0:
            return value
    return DEFAULT_MAX_TEXT_CHARS
