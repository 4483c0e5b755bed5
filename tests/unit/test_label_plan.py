"""model/label_plan.py: each label's threshold policy from the spec and --target-precision."""

from __future__ import annotations

import numpy as np
import pytest

from model.errors import ExitCode
from model.evaluation import parse_target_precision
from model.label_plan import LabelPlanError, check_policy_sources, label_details, plan_labels
from model.label_spec import ThresholdPolicy, parse_label_spec
from model.label_support import support_of
from model.threshold_policy import choose_by_policy
from tests.user_files import LABEL_SPEC

LABELS = ("insult", "spam", "harassment", "scam", "self_harm")
SPEC = parse_label_spec(LABEL_SPEC)  # harassment max_f1, scam precision 0.9, self_harm fixed


def test_the_spec_sets_its_labels_and_target_precision_the_others() -> None:
    plan = plan_labels(LABELS, SPEC, parse_target_precision("0.8"))
    assert plan.policies == {
        "insult": ThresholdPolicy(target_precision=0.8),
        "spam": ThresholdPolicy(target_precision=0.8),
        "harassment": ThresholdPolicy.best_f1(),
        "scam": ThresholdPolicy(target_precision=0.9),
        "self_harm": ThresholdPolicy(fixed=0.35),
    }
    assert [plan.source_of(label) for label in LABELS] == [
        "target_precision",
        "target_precision",
        "label_spec",
        "label_spec",
        "label_spec",
    ]
    assert plan.descriptions["scam"] == "Advance-fee, phishing and payment fraud"
    bare = plan_labels(LABELS, None, {})
    assert bare.policies == {} and bare.source_of("scam") == "default"


def test_one_label_with_two_policies_is_refused_naming_both_flags() -> None:
    with pytest.raises(LabelPlanError) as raised:
        check_policy_sources(SPEC, parse_target_precision("scam=0.8,insult=0.9"))
    assert raised.value.exit_code == ExitCode.USAGE
    message = str(raised.value)
    assert "--target-precision and --label-spec both set" in message and "scam" in message
    assert "insult" not in message
    check_policy_sources(SPEC, parse_target_precision("0.8"))  # "*": the others only
    check_policy_sources(None, parse_target_precision("scam=0.8"))


def test_target_precision_naming_a_label_not_trained_is_refused() -> None:
    with pytest.raises(LabelPlanError, match=r"--target-precision names spma, not a label"):
        plan_labels(LABELS, None, parse_target_precision("spma=0.98"))


def test_label_details_record_policy_rule_and_support() -> None:
    from model.data import Example

    rng = np.random.default_rng(3)
    targets = (rng.random((200, 2)) < 0.3).astype(np.float32)
    mask = np.ones_like(targets)
    mask[:50, 1] = 0
    scores = np.clip(targets * 0.5 + rng.random((200, 2)) * 0.5, 0, 1)
    labels = ("scam", "self_harm")
    plan = plan_labels(labels, SPEC, {})
    chosen = choose_by_policy(scores, targets, mask, labels, plan.policies)
    examples = [
        Example(str(i), tuple(map(float, t)), tuple(map(float, m)), "user")
        for i, (t, m) in enumerate(zip(targets, mask, strict=True))
    ]
    details = label_details(plan, chosen, {"validation": support_of(examples, labels)})
    assert details["self_harm"]["threshold"] == 0.35
    assert details["self_harm"]["threshold_policy"] == {"fixed": 0.35}
    assert details["self_harm"]["threshold_rule"] == "fixed 0.35"
    assert details["scam"]["threshold_policy"] == {"target_precision": 0.9}
    assert details["scam"]["threshold_policy_source"] == "label_spec"
    validation = details["self_harm"]["support"]["validation"]
    assert validation["known"] == 150 and validation["positives"] == int(targets[50:, 1].sum())
