"""Threshold policies on validation scores (model/threshold_policy.py)."""

from __future__ import annotations

import numpy as np
import pytest

from model.label_spec import ThresholdPolicy
from model.metrics import precision_recall_f1
from model.threshold_policy import (
    choose_by_policy,
    choose_threshold,
    policies_from_target_precision,
    rules_of,
    threshold_warnings,
    thresholds_of,
)


def columns(*pairs: tuple[list[float], list[float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities, targets, mask) with one column per (scores, targets) pair; a
    NaN target marks the entry unknown."""
    n = max(len(s) for s, _ in pairs)
    p = np.zeros((n, len(pairs)), np.float32)
    y = np.zeros((n, len(pairs)), np.float32)
    m = np.zeros((n, len(pairs)), np.float32)
    for j, (scores, targets) in enumerate(pairs):
        for i, (s, t) in enumerate(zip(scores, targets, strict=True)):
            p[i, j] = s
            if not np.isnan(t):
                y[i, j], m[i, j] = t, 1.0
    return p, y, m


SCORES = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]
TARGETS = [1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]


def test_target_precision_is_the_lowest_cut_reaching_it() -> None:
    y, s = np.asarray(TARGETS), np.asarray(SCORES)
    cut, rule, reached = choose_threshold(y, s, ThresholdPolicy(target_precision=0.8))
    assert (rule, reached) == ("precision>=0.8", True)
    precision, recall, _ = precision_recall_f1(y, s, cut)
    assert precision >= 0.8 and recall == 0.8  # 4 of 5 positives at or above 0.6
    lower = (0.6 + 0.5) / 2 - 0.06  # the next lower cut misses the target
    assert precision_recall_f1(y, s, lower)[0] < 0.8
    assert cut == pytest.approx((0.6 + 0.5) / 2)


def test_unreachable_precision_falls_back_to_max_f1_and_warns() -> None:
    y, s = np.asarray([0.0, 1.0, 0.0, 1.0]), np.asarray([0.9, 0.8, 0.7, 0.6])  # best 0.5
    cut, rule, reached = choose_threshold(y, s, ThresholdPolicy(target_precision=0.99))
    best, _, _ = choose_threshold(y, s, ThresholdPolicy.best_f1())
    assert (cut, rule, reached) == (best, "max_f1 (precision 0.99 unreachable)", False)
    chosen = choose_by_policy(
        *columns(([0.9, 0.8, 0.7, 0.6], [0.0, 1.0, 0.0, 1.0])),
        ("spam",),
        {"spam": ThresholdPolicy(target_precision=0.99)},
    )
    warnings = threshold_warnings(chosen)
    assert warnings[0].startswith("spam: precision 0.99 is out of reach")
    assert "too uncertain" in warnings[1]  # 2 positives: also too rare


def test_fixed_ignores_the_data_and_no_positives_gives_half() -> None:
    y, s = np.asarray([0.0, 0.0]), np.asarray([0.9, 0.1])
    assert choose_threshold(y, s, ThresholdPolicy(fixed=0.7)) == (0.7, "fixed 0.7", True)
    assert choose_threshold(y, s, ThresholdPolicy.best_f1()) == (0.5, "max_f1", True)
    empty = np.asarray([], np.float64)
    assert choose_threshold(empty, empty, ThresholdPolicy(target_precision=0.9))[1:] == (
        "max_f1 (precision 0.9 unreachable)",
        False,
    )


def test_choose_by_policy_uses_only_known_entries_per_label() -> None:
    nan = float("nan")
    probabilities, targets, mask = columns(
        (SCORES, TARGETS),
        # label b knows only the last four rows; its first six would ruin any cut
        ([0.99] * 6 + [0.9, 0.8, 0.2, 0.1], [nan] * 6 + [1.0, 1.0, 0.0, 0.0]),
    )
    chosen = choose_by_policy(
        probabilities, targets, mask, ("a", "b"), {"a": ThresholdPolicy(fixed=0.5)}
    )
    assert thresholds_of(chosen) == {"a": 0.5, "b": pytest.approx(0.5)}  # midway 0.8 / 0.2
    assert rules_of(chosen) == {"a": "fixed 0.5", "b": "max_f1"}
    assert (chosen["b"].support.known, chosen["b"].support.positives) == (4, 2)
    with pytest.raises(ValueError, match="not among"):
        choose_by_policy(probabilities, targets, mask, ("a", "b"), {"c": ThresholdPolicy.best_f1()})


def test_same_cuts_and_rules_as_evaluation_for_target_precision_flags() -> None:
    from model.evaluation import choose_thresholds, parse_target_precision

    rng = np.random.default_rng(7)
    labels = ("insult", "spam", "threat")
    targets = (rng.random((500, 3)) < 0.3).astype(np.float32)
    probabilities = np.clip(targets * 0.4 + rng.random((500, 3)) * 0.6, 0, 1).astype(np.float32)
    mask = (rng.random((500, 3)) < 0.7).astype(np.float32)
    for flag in ["", "0.9", "spam=0.98,insult=0.8", "0.999999", "threat=1"]:
        rules = parse_target_precision(flag)
        notes: dict[str, str] = {}
        expected = choose_thresholds(probabilities, targets, mask, labels, rules, notes)
        chosen = choose_by_policy(
            probabilities, targets, mask, labels, policies_from_target_precision(rules, labels)
        )
        assert thresholds_of(chosen) == expected
        assert rules_of(chosen) == notes


def test_policies_from_target_precision_star_and_per_label() -> None:
    policies = policies_from_target_precision({"*": 0.9, "spam": 0.98}, ("insult", "spam"))
    assert policies["insult"].target_precision == 0.9
    assert policies["spam"].target_precision == 0.98
    assert policies_from_target_precision({}, ("insult",)) == {}
