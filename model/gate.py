"""Promotion gate: a retrained model replaces the serving one only if it is not worse.

Both models are measured on the same validation examples, through `Engine`, by the
retrain job; the decision itself is a pure function of the two metric tables so it can
be tested and reused (e.g. by an evaluation report) without a model in sight.

Metric tables are what `model.evaluation.evaluate` returns: `{label: {"roc_auc": …, …}}`.
The score compared is the mean validation ROC AUC over the labels both models have (NaN
labels skipped). A candidate that changes the label set follows `model.label_change`:
new labels are reported, not gated; removed (or renamed) ones hold it unless an
operator allowed the change.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from model.label_change import ALLOW_FLAG, classify

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
    new_metrics: Metrics,
    current_metrics: Metrics | None,
    tolerance: float = DEFAULT_TOLERANCE,
    allow_label_change: bool = False,
) -> tuple[bool, str]:
    """(promote?, why) for a candidate against the serving model on the same data.

    - no serving model (`current_metrics` None) → promote;
    - the candidate removes (or renames) a serving label → hold, unless
      `allow_label_change`: that takes a category away from every consumer;
    - labels only the candidate has are named in the reason and left out of the
      comparison (they have nothing to be compared with);
    - no label in common (an allowed rename of them all) → promote iff the candidate's
      mean AUC is finite;
    - on the shared labels: the candidate's mean AUC is not finite → hold;
    - the serving model's is not finite → promote (nothing to compare with);
    - otherwise promote iff new >= current - tolerance.
    """
    if not math.isfinite(tolerance):
        raise ValueError(f"tolerance must be finite, got {tolerance}")
    if current_metrics is None:
        return True, f"no current model; candidate mean validation AUC {mean_auc(new_metrics):.4f}"
    change = classify(tuple(current_metrics), tuple(new_metrics))
    if change.needs_permission and not allow_label_change:
        return False, (
            f"the candidate {change.describe()} (candidate {sorted(new_metrics)}, current "
            f"{sorted(current_metrics)}): results would lose categories; retrain or promote "
            f"with {ALLOW_FLAG} if intended"
        )
    note = f"; the candidate {change.describe()}" if change.kind != "unchanged" else ""
    if change.added:
        note += f" (new labels are not gated: {', '.join(change.added)})"
    if not change.shared:
        new = mean_auc(new_metrics)
        if not math.isfinite(new):
            return False, f"no label in common, and the candidate has no finite AUC{note}"
        return True, f"no label in common to compare; candidate mean validation AUC {new:.4f}{note}"
    new = mean_auc({label: new_metrics[label] for label in change.shared})
    current = mean_auc({label: current_metrics[label] for label in change.shared})
    if not math.isfinite(new):
        return False, f"candidate has no finite validation AUC{note}"
    if not math.isfinite(current):
        return True, f"current model has no finite validation AUC; candidate {new:.4f}{note}"
    delta = new - current
    over = "" if change.kind == "unchanged" else f" over the shared labels {list(change.shared)}"
    verdict = (
        f"candidate mean validation AUC {new:.4f} vs current {current:.4f}{over} "
        f"(delta {delta:+.4f}, tolerance {tolerance:g}){note}"
    )
    return delta >= -tolerance, verdict
