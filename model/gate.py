"""Promotion gate: a retrained model replaces the serving one only if it is not worse.

Both models are measured on the same validation examples, through `Engine`, by the
retrain job; the decision itself is a pure function of the two metric tables so it can
be tested and reused (e.g. by an evaluation report) without a model in sight.

Metric tables are what `model.evaluation.evaluate` returns: `{label: {"roc_auc": …, …}}`.
The score compared is the mean validation ROC AUC over labels (NaN labels skipped).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

DEFAULT_TOLERANCE = 0.005
"""How much lower the new model's mean validation AUC may be and still be promoted."""

Metrics = Mapping[str, Mapping[str, Any]]


def mean_auc(metrics: Metrics) -> float:
    """Mean of the finite per-label ROC AUCs; NaN when there is none."""
    values = []
    for label_metrics in metrics.values():
        value = label_metrics.get("roc_auc")
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            values.append(float(value))
    return sum(values) / len(values) if values else math.nan


def should_promote(
    new_metrics: Metrics, current_metrics: Metrics | None, tolerance: float = DEFAULT_TOLERANCE
) -> tuple[bool, str]:
    """(promote?, why) for a candidate against the serving model on the same data.

    - no serving model (`current_metrics` None) → promote;
    - different label sets → hold: that changes what clients receive, an operator decides;
    - the candidate's mean AUC is not finite → hold;
    - the serving model's mean AUC is not finite → promote (nothing to compare with);
    - otherwise promote iff new >= current - tolerance.
    """
    if not math.isfinite(tolerance):
        raise ValueError(f"tolerance must be finite, got {tolerance}")
    new = mean_auc(new_metrics)
    if current_metrics is None:
        return True, f"no current model; candidate mean validation AUC {new:.4f}"
    if set(new_metrics) != set(current_metrics):
        return False, (
            f"label sets differ (candidate {sorted(new_metrics)}, current "
            f"{sorted(current_metrics)}); promote by hand if intended"
        )
    current = mean_auc(current_metrics)
    if not math.isfinite(new):
        return False, "candidate has no finite validation AUC"
    if not math.isfinite(current):
        return True, f"current model has no finite validation AUC; candidate {new:.4f}"
    delta = new - current
    verdict = (
        f"candidate mean validation AUC {new:.4f} vs current {current:.4f} "
        f"(delta {delta:+.4f}, tolerance {tolerance:g})"
    )
    if delta >= -tolerance:
        return True, verdict
    return False, verdict
