"""The promotion gate: a pure decision on two metric tables."""

from __future__ import annotations

import math

import pytest

from model.gate import DEFAULT_TOLERANCE, mean_auc, should_promote


def table(**aucs: float) -> dict[str, dict[str, float]]:
    return {label: {"roc_auc": auc, "f1": 0.5} for label, auc in aucs.items()}


def test_mean_auc_skips_labels_without_a_finite_auc() -> None:
    assert mean_auc(table(insult=0.8, spam=0.9)) == pytest.approx(0.85)
    assert mean_auc(table(insult=0.8, spam=math.nan)) == pytest.approx(0.8)
    assert math.isnan(mean_auc(table(insult=math.nan)))
    assert math.isnan(mean_auc({}))


def test_without_a_current_model_the_candidate_is_promoted() -> None:
    promote, reason = should_promote(table(insult=0.6, spam=0.6), None)
    assert promote and "no current model" in reason


@pytest.mark.parametrize(
    ("new", "current", "tolerance", "expected"),
    [
        (0.90, 0.80, 0.0, True),  # better
        (0.80, 0.80, 0.0, True),  # equal is not worse
        (0.796, 0.80, 0.005, True),  # within tolerance
        (0.79, 0.80, 0.005, False),  # worse than tolerance
        (0.81, 0.80, -0.02, False),  # a negative tolerance demands an improvement
        (0.83, 0.80, -0.02, True),
    ],
)
def test_candidate_must_not_be_worse_than_tolerance(
    new: float, current: float, tolerance: float, expected: bool
) -> None:
    promote, reason = should_promote(
        table(insult=new, spam=new), table(insult=current, spam=current), tolerance
    )
    assert promote is expected
    assert f"{new:.4f}" in reason and f"{current:.4f}" in reason


def test_the_mean_over_labels_decides() -> None:
    # Insult much better, spam a little worse: the mean improved.
    assert should_promote(table(insult=0.9, spam=0.78), table(insult=0.8, spam=0.8))[0]
    # Spam collapsed: the mean dropped.
    assert not should_promote(table(insult=0.81, spam=0.5), table(insult=0.8, spam=0.8))[0]


def test_added_labels_are_reported_and_the_shared_ones_compared() -> None:
    # The new label's AUC takes no part: a poor one does not hold, a fine one does not
    # rescue a regression on the labels clients already receive.
    promote, reason = should_promote(
        table(insult=0.8, spam=0.8, threat=0.51), table(insult=0.8, spam=0.8)
    )
    assert promote and "adds threat" in reason and "not gated: threat" in reason
    assert "over the shared labels ['insult', 'spam']" in reason
    promote, reason = should_promote(
        table(insult=0.6, spam=0.6, threat=0.99), table(insult=0.8, spam=0.8)
    )
    assert not promote and "0.6000 vs current 0.8000" in reason


@pytest.mark.parametrize(
    "candidate",
    [table(insult=0.99), table(harassment=0.99, spam=0.99)],  # a removal, a rename
)
def test_a_removed_or_renamed_label_holds_unless_allowed(
    candidate: dict[str, dict[str, float]],
) -> None:
    current = table(insult=0.5, spam=0.5)
    promote, reason = should_promote(candidate, current)
    assert not promote and "removes" in reason and "--allow-label-change" in reason
    promote, reason = should_promote(candidate, current, allow_label_change=True)
    assert promote, reason
    # Allowed, the change is still gated on what the two share.
    promote, reason = should_promote(
        table(insult=0.4, harassment=0.99), current, allow_label_change=True
    )
    assert not promote and "0.4000 vs current 0.5000 over the shared labels ['insult']" in reason


def test_an_allowed_rename_of_every_label_needs_a_finite_candidate() -> None:
    current = table(insult=0.9, spam=0.9)
    promote, reason = should_promote(table(a=0.6, b=0.6), current, allow_label_change=True)
    assert promote and "no label in common" in reason
    promote, _ = should_promote(table(a=math.nan), current, allow_label_change=True)
    assert not promote


def test_non_finite_scores() -> None:
    assert not should_promote(table(insult=math.nan), table(insult=0.7))[0]
    assert should_promote(table(insult=0.7), table(insult=math.nan))[0]
    with pytest.raises(ValueError):
        should_promote(table(insult=0.7), table(insult=0.7), math.inf)


def test_the_default_tolerance_is_the_documented_half_point_of_auc() -> None:
    """README: promoted unless the mean AUC is lower by more than 0.005 (by default)."""
    current = table(insult=0.80, spam=0.80)
    assert should_promote(table(insult=0.796, spam=0.796), current)[0]
    assert not should_promote(table(insult=0.794, spam=0.794), current)[0]
    assert should_promote(table(insult=0.796, spam=0.796), current, DEFAULT_TOLERANCE)[0]
