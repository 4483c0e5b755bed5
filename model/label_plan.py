"""A run's plan for each label beyond its data: what it means and how its threshold is chosen.

Two sources say how a label's threshold is chosen:
1. the label spec (`--label-spec`, `model.label_spec`): a policy per label it names,
   `max_f1`, `target_precision P` or `fixed T`, and a description;
2. `--target-precision` (`TrainConfig.target_precision`): `0.9` for every label the
   spec does not name, `spam=0.98` for one label.
A label named by both is refused (exit 2): two rules for one cut would leave the
reader of a checkpoint guessing which one won. A label `--target-precision` names
that the run does not train is refused too: a typo (`spma=0.98`) used to be ignored
silently. A label neither names gets `max_f1`.

`label_details` is what `model.json` (`metrics.label_details`) and the report record
per label: description, policy (in the spec's own form, with where it came from), the
rule that chose the threshold and the threshold, and the label's support per split.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from model.errors import ExitCode, ModstreamError
from model.label_spec import LabelSpec, ThresholdPolicy
from model.label_support import Support
from model.threshold_policy import ChosenThreshold

PolicySource = Literal["label_spec", "target_precision", "default"]
TARGET_PRECISION_FLAG = "--target-precision"
LABEL_SPEC_FLAG = "--label-spec"


class LabelPlanError(ModstreamError):
    """The label spec and `--target-precision` disagree, or name a label not trained."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class LabelPlan:
    """Per label: its description and threshold policy, and where the policy came from."""

    descriptions: Mapping[str, str] = field(default_factory=dict)
    policies: Mapping[str, ThresholdPolicy] = field(default_factory=dict)
    sources: Mapping[str, PolicySource] = field(default_factory=dict)

    def source_of(self, label: str) -> PolicySource:
        return self.sources.get(label, "default")


def check_policy_sources(spec: LabelSpec | None, rules: Mapping[str, float]) -> None:
    """`LabelPlanError` when `--target-precision` names a label the spec also sets
    (module docstring); `rules` is `model.evaluation.parse_target_precision`'s result."""
    if spec is None:
        return
    both = [label for label in rules if label != "*" and label in spec.labels]
    if both:
        raise LabelPlanError(
            f"{TARGET_PRECISION_FLAG} and {LABEL_SPEC_FLAG} both set the threshold policy of "
            f"{', '.join(both)}: keep one (the spec's `threshold = {{ target_precision = P }}` "
            f"says the same per label)"
        )


def plan_labels(
    labels: Sequence[str], spec: LabelSpec | None, rules: Mapping[str, float]
) -> LabelPlan:
    """The plan for `labels` (the run's label set) from the spec and the
    `--target-precision` rules; `LabelPlanError` as the module docstring says."""
    check_policy_sources(spec, rules)
    unknown = [label for label in rules if label != "*" and label not in labels]
    if unknown:
        raise LabelPlanError(
            f"{TARGET_PRECISION_FLAG} names {', '.join(unknown)}, not a label of this run "
            f"({', '.join(labels)})"
        )
    descriptions: dict[str, str] = {}
    policies: dict[str, ThresholdPolicy] = {}
    sources: dict[str, PolicySource] = {}
    for label in labels:
        entry = spec.labels.get(label) if spec is not None else None
        if entry is not None:
            descriptions[label] = entry.description
            policies[label] = entry.threshold
            sources[label] = "label_spec"
            continue
        goal = rules.get(label, rules.get("*"))
        if goal is not None:
            policies[label] = ThresholdPolicy(target_precision=goal)
            sources[label] = "target_precision"
    return LabelPlan(descriptions, policies, sources)


def policy_form(policy: ThresholdPolicy) -> str | dict[str, float]:
    """The policy as the label spec writes it: `"max_f1"`, `{"target_precision": P}`
    or `{"fixed": T}`."""
    if policy.target_precision is not None:
        return {"target_precision": policy.target_precision}
    if policy.fixed is not None:
        return {"fixed": policy.fixed}
    return "max_f1"


def label_details(
    plan: LabelPlan,
    chosen: Mapping[str, ChosenThreshold],
    support: Mapping[str, Mapping[str, Support]],
) -> dict[str, dict[str, Any]]:
    """label → description, policy, rule, threshold and support per split (`support`:
    split → label → `Support`), in `chosen`'s (the model's) label order."""
    return {
        label: {
            "description": plan.descriptions.get(label, ""),
            "threshold": c.threshold,
            "threshold_policy": policy_form(c.policy),
            "threshold_policy_source": plan.source_of(label),
            "threshold_rule": c.rule,
            "threshold_reached": c.reached,
            "support": {split: counts[label].as_dict() for split, counts in support.items()},
        }
        for label, c in chosen.items()
    }
