"""The moderation result published for every valid request."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class Timings(BaseModel):
    """Where the time went, so clients can tell queueing from inference."""

    model_config = ConfigDict(extra="forbid")

    queued_ms: Annotated[float, Field(description="Record timestamp → start of scoring its batch.")]
    inference_ms: Annotated[
        float, Field(ge=0.0, description="Tokenise + forward pass of the whole batch.")
    ]
    batch_size: Annotated[int, Field(ge=1, description="Valid requests scored together.")]


class ModerationResult(BaseModel):
    """One result per valid request; `flagged` is true when any category is."""

    model_config = ConfigDict(extra="forbid")

    id: str
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, Probability]
    model_version: str
    topic: str
    partition: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]
    timings: Timings
