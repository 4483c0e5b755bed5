"""model/metrics.py: ROC AUC, F1 and precision thresholds."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from model.metrics import best_f1_threshold, precision_recall_f1, precision_threshold, roc_auc


def brute_force_auc(targets: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[targets == 1], scores[targets == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_pairwise_definition_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, 60)
    scores = np.round(rng.random(60) + 0.3 * targets, 1)  # rounding creates ties
    assert roc_auc(targets, scores) == pytest.approx(brute_force_auc(targets, scores))


def test_roc_auc_edge_cases() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5
    assert math.isnan(roc_auc(np.array([1, 1]), np.array([0.1, 0.2])))


@pytest.mark.parametrize("seed", range(5))
def test_best_f1_threshold_is_optimal(seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, 80)
    scores = np.round(rng.random(80) * 0.7 + 0.3 * targets, 2)
    threshold = best_f1_threshold(targets, scores)
    best_possible = max(precision_recall_f1(targets, scores, t)[2] for t in np.unique(scores))
    assert precision_recall_f1(targets, scores, threshold)[2] == pytest.approx(best_possible)


def test_best_f1_threshold_separable_and_degenerate() -> None:
    threshold = best_f1_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.3, 0.7, 0.9]))
    assert 0.3 < threshold <= 0.7  # midway between the classes
    assert best_f1_threshold(np.array([0, 0]), np.array([0.1, 0.2])) == 0.5


@pytest.mark.parametrize("seed", range(4))
def test_precision_threshold_is_the_lowest_cut_reaching_the_precision(seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, 200)
    scores = np.round(rng.random(200) * 0.6 + 0.4 * targets, 2)
    cut = precision_threshold(targets, scores, 0.9)
    assert cut is not None
    precision, recall, _ = precision_recall_f1(targets, scores, cut)
    assert precision >= 0.9
    # No lower distinct score keeps the precision with more recall.
    for lower in np.unique(scores[scores < cut]):
        p, r, _ = precision_recall_f1(targets, scores, lower)
        assert p < 0.9 or r <= recall


def test_precision_threshold_unreachable_and_degenerate() -> None:
    targets, scores = np.array([0, 1, 0, 1]), np.array([0.9, 0.8, 0.7, 0.1])
    assert precision_threshold(targets, scores, 1.0) is None
    assert precision_threshold(np.zeros(3), np.array([0.1, 0.2, 0.3]), 0.5) is None
