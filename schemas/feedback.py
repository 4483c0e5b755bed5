"""A moderator's decision, fed back to retraining through the feedback topic."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from schemas.request import DEFAULT_MAX_TEXT_CHARS, MAX_ID_CHARS


class ModeratorFeedback(BaseModel):
    """Corrected labels for one message; labels not named are unknown, not false."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]
    text: Annotated[str, Field(min_length=1, max_length=DEFAULT_MAX_TEXT_CHARS)]
    labels: Annotated[dict[str, bool], Field(min_length=1)]
    reviewer: Annotated[str, Field(min_length=1, max_length=256)]
    decided_at: Annotated[datetime, Field(strict=False)]
