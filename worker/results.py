"""Scores → `ModerationResult`: the one place thresholds turn into flags.

Shared by the worker and `modstream score` so both publish identical records. Each
result says how much of the text was read (`coverage`), for each flagged category
which parts of it drove the score (`evidence`, `model.windows.evidence`), and which
thresholds flagged it (`policy_version`): the checkpoint's own unless the worker
applies a policy file or `MODSTREAM_THRESHOLDS` (`model.threshold_overrides`).
"""

from __future__ import annotations

import math

from model.errors import ModstreamError
from model.threshold_overrides import CHECKPOINT_POLICY, EffectiveThresholds
from model.windows import ScoredText
from schemas.result import Coverage, ModerationResult, Span, Timings
from worker.decode import Decoded
from worker.serving import ServingModel


class InvalidScoresError(ModstreamError):
    """The model gave a text a score that is no probability (NaN, infinite, outside
    [0, 1]): that text gets an `inference_error` dead letter, the rest of its batch its
    results."""


def build_result(
    engine: ServingModel,
    item: Decoded,
    scored: ScoredText,
    timings: Timings,
    policy: EffectiveThresholds | None = None,
) -> ModerationResult:
    """The result for one scored request, flagged by `policy`'s thresholds (None: the
    checkpoint's); InvalidScoresError when a score is no probability (checked here, so
    a bad row never fails the batch's validation)."""
    thresholds = policy.thresholds if policy is not None else engine.thresholds
    row = scored.probabilities
    bad = {
        label: float(p)
        for label, p in zip(engine.labels, row, strict=True)
        if not (math.isfinite(float(p)) and 0.0 <= float(p) <= 1.0)
    }
    if bad:
        raise InvalidScoresError(f"scores that are no probability: {bad}")
    scores = {label: round(float(p), 6) for label, p in zip(engine.labels, row, strict=True)}
    categories = {label: scores[label] >= thresholds[label] for label in engine.labels}
    evidence: dict[str, list[Span]] = {}
    for j, label in enumerate(engine.labels):
        if categories[label]:
            # The flag compares the rounded score: never ask more of the best window.
            threshold = min(thresholds[label], float(row[j]))
            evidence[label] = [
                Span(start=span.start, end=span.end, score=round(span.score, 6))
                for span in scored.evidence(j, threshold)
            ]
    plan = scored.plan
    record = item.record
    return ModerationResult(
        id=item.request.id,
        flagged=any(categories.values()),
        categories=categories,
        category_scores=scores,
        model_version=engine.version,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        timings=timings,
        coverage=Coverage(
            chars_scored=plan.chars_scored,
            chars_total=plan.chars_total,
            windows=len(plan.windows),
            strategy=plan.strategy,
        ),
        evidence=evidence,
        policy_version=policy.policy_version if policy is not None else CHECKPOINT_POLICY,
    )
