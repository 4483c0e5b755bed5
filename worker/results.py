"""Scores → `ModerationResult`: the one place thresholds turn into flags.

Shared by the worker and `modstream score` so both publish identical records.
"""

from __future__ import annotations

from collections.abc import Sequence

from model.engine import Engine
from schemas.result import ModerationResult, Timings
from worker.decode import Decoded


def build_result(
    engine: Engine, item: Decoded, row: Sequence[float], timings: Timings
) -> ModerationResult:
    scores = {label: round(float(p), 6) for label, p in zip(engine.labels, row, strict=True)}
    categories = {label: scores[label] >= engine.thresholds[label] for label in engine.labels}
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
    )
