"""Binary classification metrics in plain numpy (no scikit-learn at runtime).

Decision rule everywhere in modstream: a label is flagged when probability >= threshold.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their mean rank (what makes AUC tie-correct)."""
    order = np.argsort(values, kind="mergesort")
    _, inverse, counts = np.unique(values[order], return_inverse=True, return_counts=True)
    ends = np.cumsum(counts).astype(np.float64)
    mean_rank = ends - (counts - 1) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = mean_rank[inverse]
    return ranks


def roc_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney form of ROC AUC; NaN when only one class is present."""
    positive = np.asarray(targets) > 0.5
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(np.asarray(scores, dtype=np.float64))
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def precision_recall_f1(
    targets: np.ndarray, scores: np.ndarray, threshold: float
) -> tuple[float, float, float]:
    positive = np.asarray(targets) > 0.5
    predicted = np.asarray(scores) >= threshold
    tp = int((positive & predicted).sum())
    fp = int((~positive & predicted).sum())
    fn = int((positive & ~predicted).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return precision, recall, f1


def best_f1_threshold(targets: np.ndarray, scores: np.ndarray) -> float:
    """Threshold maximising F1, placed midway to the next lower score for some margin.

    Every distinct score is a candidate cut; ties in F1 go to the higher threshold
    (fewer flags). Without positives there is nothing to tune, so 0.5.
    """
    positive = np.asarray(targets) > 0.5
    n_pos = int(positive.sum())
    if n_pos == 0 or len(positive) == 0:
        return 0.5
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    ranked = scores[order]
    tp = np.cumsum(positive[order])
    fp = np.cumsum(~positive[order])
    last_of_group = np.r_[ranked[1:] != ranked[:-1], True]
    tp, fp, cuts = tp[last_of_group], fp[last_of_group], ranked[last_of_group]
    f1 = 2 * tp / (tp + fp + n_pos)
    best = int(np.argmax(f1))
    if best + 1 < len(cuts):
        return float((cuts[best] + cuts[best + 1]) / 2.0)
    return float(cuts[best])


def binary_metrics(targets: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    precision, recall, f1 = precision_recall_f1(targets, scores, threshold)
    return {
        "roc_auc": roc_auc(targets, scores),
        "f1": f1,
        "precision": precision,
        "recall": recall,
        "threshold": float(threshold),
        "examples": len(targets),
        "positives": int((np.asarray(targets) > 0.5).sum()),
    }


def precision_threshold(targets: np.ndarray, scores: np.ndarray, precision: float) -> float | None:
    """Lowest cut whose precision on these examples is at least `precision` (so the
    highest recall that keeps it), placed midway to the next lower score like
    `best_f1_threshold`; None when no cut reaches it (e.g. no positives)."""
    positive = np.asarray(targets) > 0.5
    if not positive.any():
        return None
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    ranked = scores[order]
    tp = np.cumsum(positive[order])
    fp = np.cumsum(~positive[order])
    last_of_group = np.r_[ranked[1:] != ranked[:-1], True]
    tp, fp, cuts = tp[last_of_group], fp[last_of_group], ranked[last_of_group]
    reaching = np.flatnonzero(tp / (tp + fp) >= precision)
    if len(reaching) == 0:
        return None
    best = int(reaching[-1])  # cuts descend, so the last reaching one flags the most
    if best + 1 < len(cuts):
        return float((cuts[best] + cuts[best + 1]) / 2.0)
    return float(cuts[best])


def confusion(targets: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, int]:
    positive = np.asarray(targets) > 0.5
    predicted = np.asarray(scores) >= threshold
    return {
        "tp": int((positive & predicted).sum()),
        "fp": int((~positive & predicted).sum()),
        "fn": int((positive & ~predicted).sum()),
        "tn": int((~positive & ~predicted).sum()),
    }


def average_precision(targets: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve (step-wise, as scikit-learn computes it)."""
    positive = np.asarray(targets) > 0.5
    n_pos = int(positive.sum())
    if n_pos == 0:
        return math.nan
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-scores, kind="mergesort")
    ranked = scores[order]
    tp = np.cumsum(positive[order])
    fp = np.cumsum(~positive[order])
    last_of_group = np.r_[ranked[1:] != ranked[:-1], True]
    tp, fp = tp[last_of_group], fp[last_of_group]
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def brier(targets: np.ndarray, scores: np.ndarray) -> float:
    if len(targets) == 0:
        return math.nan
    return float(np.mean((np.asarray(scores, np.float64) - (np.asarray(targets) > 0.5)) ** 2))
