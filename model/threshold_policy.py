"""A label's threshold from its policy (`model.label_spec.ThresholdPolicy`), on validation.

Per label, on the validation examples that know it (mask = 1):
- `max_f1`: the cut with the best F1 (`model.metrics.best_f1_threshold`; 0.5 when
  validation has no positive).
- `target_precision P`: the lowest cut whose validation precision is at least P, so the
  most recall that keeps it (`model.metrics.precision_threshold`). When no cut reaches
  P (too few positives, or a model that cannot separate them), the fallback is the
  max-F1 cut, flagged `reached=False`, with a warning: it keeps a usable cut rather
  than the highest score (which flags almost nothing) or 1.0 (nothing at all); the
  report and the checkpoint's `threshold_rules` then say the target was missed.
- `fixed T`: T, whatever validation says.
These are the rules and rule texts of `model.evaluation.choose_thresholds`
(`max_f1`, `precision>=0.9`, `max_f1 (precision 0.9 unreachable)`), plus `fixed 0.7`;
`policies_from_target_precision` maps `--target-precision` onto them, and a unit test
checks both give the same cuts. Each choice carries the label's validation support and
whether it is too rare to evaluate (`model.label_support`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from model.label_spec import ThresholdPolicy
from model.label_support import Support, rarity_warnings, support_from_arrays
from model.metrics import best_f1_threshold, precision_threshold


@dataclass(frozen=True)
class ChosenThreshold:
    """One label's threshold, the rule that chose it, and the data it was chosen on."""

    threshold: float
    rule: str  # as `model.evaluation.choose_thresholds` notes it, or `fixed 0.7`
    policy: ThresholdPolicy
    reached: bool  # False only where a target precision was out of reach
    support: Support  # the label on validation


def choose_threshold(
    targets: np.ndarray, scores: np.ndarray, policy: ThresholdPolicy
) -> tuple[float, str, bool]:
    """(threshold, rule, reached) for one label's known validation targets and scores."""
    if policy.fixed is not None:
        return policy.fixed, f"fixed {policy.fixed:g}", True
    goal = policy.target_precision
    if goal is not None:
        cut = precision_threshold(targets, scores, goal)
        if cut is not None:
            return cut, f"precision>={goal:g}", True
        return best_f1_threshold(targets, scores), f"max_f1 (precision {goal:g} unreachable)", False
    return best_f1_threshold(targets, scores), "max_f1", True


def choose_by_policy(
    probabilities: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    labels: Sequence[str],
    policies: Mapping[str, ThresholdPolicy],
) -> dict[str, ChosenThreshold]:
    """label → `ChosenThreshold` from `[n, labels]` validation arrays; a label without
    a policy gets `max_f1`. `ValueError` for a policy naming a label not in `labels`."""
    unknown = sorted(set(policies) - set(labels))
    if unknown:
        raise ValueError(f"threshold policies for {unknown}, which are not among {list(labels)}")
    known = mask > 0
    support = support_from_arrays(targets, mask, labels)
    chosen: dict[str, ChosenThreshold] = {}
    for j, label in enumerate(labels):
        policy = policies.get(label) or ThresholdPolicy.best_f1()
        y, p = targets[known[:, j], j], probabilities[known[:, j], j]
        threshold, rule, reached = choose_threshold(y, p, policy)
        chosen[label] = ChosenThreshold(float(threshold), rule, policy, reached, support[label])
    return chosen


def policies_from_target_precision(
    rules: Mapping[str, float], labels: Sequence[str]
) -> dict[str, ThresholdPolicy]:
    """`model.evaluation.parse_target_precision`'s result as policies: a label's own
    rule, else `*`'s, else none (max F1)."""
    policies: dict[str, ThresholdPolicy] = {}
    for label in labels:
        goal = rules.get(label, rules.get("*"))
        if goal is not None:
            policies[label] = ThresholdPolicy(target_precision=goal)
    return policies


def threshold_warnings(chosen: Mapping[str, ChosenThreshold]) -> list[str]:
    """Targets out of reach, then labels too rare on validation to trust their cut."""
    warnings = [
        f"{label}: precision {c.policy.target_precision:g} is out of reach on validation; "
        f"the max-F1 cut {c.threshold:.3f} is used"
        for label, c in chosen.items()
        if not c.reached
    ]
    return warnings + rarity_warnings(
        {label: c.support for label, c in chosen.items()}, "validation"
    )


def thresholds_of(chosen: Mapping[str, ChosenThreshold]) -> dict[str, float]:
    return {label: c.threshold for label, c in chosen.items()}


def rules_of(chosen: Mapping[str, ChosenThreshold]) -> dict[str, str]:
    """label → rule text, the checkpoint's `threshold_rules`."""
    return {label: c.rule for label, c in chosen.items()}
