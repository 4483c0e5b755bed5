"""The moderation result published for every valid request.

`coverage`, `evidence` and `policy_version` came later: all are optional, so a consumer
that ignores unknown fields, or validates with an older copy of this schema that allows
them, is unaffected. The worker and `modstream score` always fill them.

`categories` and `category_scores` are keyed by the serving model's labels, and the
schema leaves their keys open: a model promoted with other labels changes the keys from
one offset on in each partition, together with `model_version` (README, "Refreshing
the model").
"""

from __future__ import annotations

from typing import Annotated, Literal

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


class Coverage(BaseModel):
    """How much of the text was read. A text longer than the scoring budget
    (`MODSTREAM_MAX_TEXT_CHARS`) is read in parts: its head, its tail and slices of the
    middle placed by a seeded draw (`strategy` "head+tail+sampled"); otherwise whole."""

    model_config = ConfigDict(extra="forbid")

    chars_scored: Annotated[
        int, Field(ge=0, description="Characters of the text the model read (see README).")
    ]
    chars_total: Annotated[int, Field(ge=0, description="Characters in the text.")]
    windows: Annotated[int, Field(ge=1, description="Windows the model scored.")]
    strategy: Annotated[
        Literal["whole", "head+tail+sampled"],
        Field(description="How the scored parts were chosen."),
    ]


class Span(BaseModel):
    """A part of the text that drove a category's score: characters [start, end) of the
    request's `text` (Python string indices, i.e. code points), and that part's score."""

    model_config = ConfigDict(extra="forbid")

    start: Annotated[int, Field(ge=0)]
    end: Annotated[int, Field(ge=0)]
    score: Probability


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
    coverage: Annotated[Coverage | None, Field(description="How much of the text was read.")] = None
    evidence: Annotated[
        dict[str, list[Span]] | None,
        Field(
            description="For each flagged category, the spans (at most 3, best first "
            "among those that do not overlap, listed in text order) whose score reached "
            "the category's threshold."
        ),
    ] = None
    policy_version: Annotated[
        str | None,
        Field(
            max_length=77,  # a policy version (64) + "+env-" + 8 hex digits
            description="Which thresholds turned the scores into flags: `checkpoint` (the "
            "model's own), the version of the checkpoint store's policy file, "
            "`env-<8 hex>` (MODSTREAM_THRESHOLDS, by a digest of its value) or "
            "`<policy version>+env-<8 hex>` (both).",
        ),
    ] = None
