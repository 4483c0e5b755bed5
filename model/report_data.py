"""The evaluation report's numbers: curves, calibration, per-label and cross-domain sections.

Why its own module: `build_report` turns scores into one plain dict, the report's single
source; `model.report_markdown` and `model.report_figures` only read that dict, and
`model.evaluation` needs these types without the rendering.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from model.metrics import average_precision, binary_metrics, brier, confusion

SPLITS = ("validation", "test")
CURVE_POINTS = 200
CALIBRATION_BINS = 10


@dataclass(frozen=True)
class Scored:
    """One model's probabilities on one split ([n, labels]; rows in split order)."""

    probabilities: np.ndarray
    thresholds: Mapping[str, float]


@dataclass(frozen=True)
class SplitData:
    targets: np.ndarray  # [n, labels]
    mask: np.ndarray  # [n, labels]
    sources: Sequence[str]  # per row (e.g. "insults", "sms_spam")


def _thin(xs: np.ndarray, ys: np.ndarray, points: int = CURVE_POINTS) -> dict[str, list[float]]:
    if len(xs) > points:
        keep = np.unique(np.linspace(0, len(xs) - 1, points).round().astype(int))
        xs, ys = xs[keep], ys[keep]
    return {"x": [round(float(v), 5) for v in xs], "y": [round(float(v), 5) for v in ys]}


def roc_curve(targets: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    """False-positive rate (x) against true-positive rate (y), one point per cut."""
    positive = np.asarray(targets) > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return {"x": [], "y": []}
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    ranked = np.asarray(scores, np.float64)[order]
    tp, fp = np.cumsum(positive[order]), np.cumsum(~positive[order])
    last = np.r_[ranked[1:] != ranked[:-1], True]
    return _thin(np.r_[0.0, fp[last] / n_neg], np.r_[0.0, tp[last] / n_pos])


def pr_curve(targets: np.ndarray, scores: np.ndarray) -> dict[str, list[float]]:
    """Recall (x) against precision (y), one point per cut."""
    positive = np.asarray(targets) > 0.5
    n_pos = int(positive.sum())
    if n_pos == 0:
        return {"x": [], "y": []}
    order = np.argsort(-np.asarray(scores, np.float64), kind="mergesort")
    ranked = np.asarray(scores, np.float64)[order]
    tp, fp = np.cumsum(positive[order]), np.cumsum(~positive[order])
    last = np.r_[ranked[1:] != ranked[:-1], True]
    return _thin(tp[last] / n_pos, tp[last] / (tp[last] + fp[last]))


def calibration(
    targets: np.ndarray, scores: np.ndarray, bins: int = CALIBRATION_BINS
) -> list[dict[str, float]]:
    """Equal-width probability bins: mean predicted probability vs observed positive
    rate (a perfectly calibrated model has them equal)."""
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(targets) > 0.5
    which = np.minimum((scores * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        if count:
            out.append(
                {
                    "low": b / bins,
                    "high": (b + 1) / bins,
                    "count": count,
                    "mean_probability": float(scores[inside].mean()),
                    "positive_rate": float(positive[inside].mean()),
                }
            )
    return out


def expected_calibration_error(bins: Sequence[Mapping[str, float]]) -> float:
    total = sum(b["count"] for b in bins)
    if not total:
        return math.nan
    return float(
        sum(b["count"] * abs(b["mean_probability"] - b["positive_rate"]) for b in bins) / total
    )


def label_section(targets: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    bins = calibration(targets, scores)
    return {
        **binary_metrics(targets, scores, threshold),
        "average_precision": average_precision(targets, scores),
        "brier": brier(targets, scores),
        "ece": expected_calibration_error(bins),
        "confusion": confusion(targets, scores, threshold),
        "roc_curve": roc_curve(targets, scores),
        "pr_curve": pr_curve(targets, scores),
        "calibration": bins,
    }


def cross_domain(data: SplitData, scored: Scored, labels: Sequence[str]) -> dict[str, Any]:
    """For each label, how often it fires on a corpus that never labelled it, at its
    threshold: `{label}_on_{source}` for every source none of whose rows here know the
    label (the bundled corpora each know one label; a user's file knows its own).

    Derived from the masks rather than a table of which corpus labels what, so a
    taxonomy of its own gets the same section without naming its sources. For spam on
    insult comments this is a false-positive rate under the assumption that no comment
    is spam; for insult on SMS it is a flag rate (a few SMS may really be insulting);
    for a user's label on the bundled corpora, how often it fires on text of another kind.
    """
    out: dict[str, Any] = {}
    sources = np.asarray(list(data.sources))
    for j, label in enumerate(labels):
        knows = data.mask[:, j] > 0
        for source in sorted(set(data.sources)):
            rows = sources == source
            if not rows.any() or knows[rows].any():
                continue
            scores = scored.probabilities[rows, j]
            out[f"{label}_on_{source}"] = {
                "examples": int(rows.sum()),
                "flag_rate": float((scores >= scored.thresholds[label]).mean()),
                "mean_score": float(scores.mean()),
                "p95_score": float(np.quantile(scores, 0.95)),
            }
    return out


def build_report(
    labels: Sequence[str],
    splits: Mapping[str, SplitData],
    models: Mapping[str, Mapping[str, Scored]],
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """`models[name][split]`: each model's scores per split. `extra` is merged in
    (version, fingerprint, history, config, timings...)."""
    body: dict[str, Any] = {"labels": list(labels), "models": {}}
    for name, per_split in models.items():
        section: dict[str, Any] = {}
        for split_name, scored in per_split.items():
            data = splits[split_name]
            known = data.mask > 0
            section[split_name] = {
                label: label_section(
                    data.targets[known[:, j], j],
                    scored.probabilities[known[:, j], j],
                    scored.thresholds[label],
                )
                for j, label in enumerate(labels)
            }
            section[split_name]["cross_domain"] = cross_domain(data, scored, labels)
        body["models"][name] = section
    return {**extra, **body}
