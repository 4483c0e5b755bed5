"""Label support and label sets (model/label_support.py, model/label_union.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from model.data import DataSplits, Example
from model.label_support import (
    MIN_EVAL_NEGATIVES,
    MIN_EVAL_POSITIVES,
    Support,
    check_trainable,
    rarity_warnings,
    support_from_arrays,
    support_of,
)
from model.label_union import combine_splits, union_labels, widen
from model.user_data import load_user_data
from model.user_data_errors import LabelSupportError


def example(targets: Sequence[float], mask: Sequence[float], text: str = "t") -> Example:
    return Example(text=text, targets=tuple(targets), mask=tuple(mask), source="user")


def balanced(n_pos: int, n_neg: int, labels: int = 1) -> list[Example]:
    """Examples where every label has `n_pos` positives and `n_neg` negatives."""
    return [example([1.0] * labels, [1.0] * labels) for _ in range(n_pos)] + [
        example([0.0] * labels, [1.0] * labels) for _ in range(n_neg)
    ]


def test_support_counts_only_known_entries() -> None:
    examples = [
        example([1.0, 0.0], [1.0, 0.0]),  # knows a (positive), not b
        example([0.0, 1.0], [1.0, 1.0]),
        example([0.0, 0.0], [0.0, 1.0]),
    ]
    counted = support_of(examples, ("a", "b"))
    assert counted == {"a": Support(2, 1), "b": Support(2, 1)}
    assert counted["a"].negatives == 1
    targets = np.asarray([ex.targets for ex in examples], np.float32)
    mask = np.asarray([ex.mask for ex in examples], np.float32)
    assert support_from_arrays(targets, mask, ("a", "b")) == counted


def test_too_rare_boundary() -> None:
    assert not Support(MIN_EVAL_POSITIVES + MIN_EVAL_NEGATIVES, MIN_EVAL_POSITIVES).too_rare
    assert Support(MIN_EVAL_POSITIVES - 1 + MIN_EVAL_NEGATIVES, MIN_EVAL_POSITIVES - 1).too_rare
    assert Support(MIN_EVAL_POSITIVES + MIN_EVAL_NEGATIVES - 1, MIN_EVAL_POSITIVES).too_rare
    warnings = rarity_warnings({"a": Support(40, 29), "b": Support(100, 50)}, "validation")
    assert len(warnings) == 1 and warnings[0].startswith("a: only 29 positive(s)")
    assert Support(3, 1).as_dict() == {"known": 3, "positives": 1, "negatives": 2, "too_rare": True}


def splits_with(train: list[Example], validation: list[Example], test: list[Example]) -> DataSplits:
    return DataSplits(train, validation, test, fingerprint="f", labels=("threat",))


def test_check_trainable_needs_both_classes_in_train_and_validation() -> None:
    good = balanced(40, 40)
    assert check_trainable(splits_with(good, good, good), "d.jsonl") == ()
    cases = [
        (splits_with(balanced(0, 5), good, good), "no positive example in train"),
        (splits_with(balanced(5, 0), good, good), "no negative example in train"),
        (splits_with(good, balanced(0, 40), good), "no positive example in validation"),
        (splits_with(good, balanced(40, 0), good), "no negative example in validation"),
    ]
    for data, message in cases:
        with pytest.raises(LabelSupportError, match=message) as caught:
            check_trainable(data, "d.jsonl")
        assert caught.value.field == "threat" and "d.jsonl" in str(caught.value)


def test_check_trainable_warns_on_rare_labels_and_an_empty_test() -> None:
    warnings = check_trainable(splits_with(balanced(5, 5), balanced(3, 50), []), "d.jsonl")
    assert [w.split(";")[0] for w in warnings] == [
        "threat: only 3 positive(s) and 50 negative(s) known in validation",
        "threat: only 0 positive(s) and 0 negative(s) known in test",
    ]


def test_combine_widens_masks_and_keeps_known_labels() -> None:
    bundled = DataSplits(
        [example([1.0, 0.0], [1.0, 0.0], "idiot")],
        [example([0.0, 1.0], [0.0, 1.0], "win cash")],
        [],
        fingerprint="bundled",
        labels=("insult", "spam"),
    )
    user = DataSplits(
        [example([1.0, 0.0], [1.0, 1.0], "i will hurt you")],
        [],
        [example([0.0, 1.0], [0.0, 1.0], "moron")],
        fingerprint="user",
        labels=("threat", "insult"),
    )
    combined = combine_splits([bundled, user])
    assert combined.labels == ("insult", "spam", "threat")
    assert [(ex.text, ex.targets, ex.mask) for ex in combined.train] == [
        ("idiot", (1.0, 0.0, 0.0), (1.0, 0.0, 0.0)),
        ("i will hurt you", (0.0, 0.0, 1.0), (1.0, 0.0, 1.0)),
    ]
    assert combined.test[0].mask == (1.0, 0.0, 0.0)  # knows insult only; spam, threat unknown
    assert combined.test[0].targets == (1.0, 0.0, 0.0)
    assert combined.validation[0].targets == (0.0, 1.0, 0.0)
    assert combine_splits([user, bundled]).labels == ("threat", "insult", "spam")
    assert combine_splits([user, bundled]).fingerprint != combined.fingerprint
    assert combine_splits([bundled]).train == bundled.train
    assert union_labels([bundled, user]) == combined.labels
    assert widen(user.train[0], user.labels, ("spam", "threat")).mask == (0.0, 1.0)


def test_combine_refuses_nothing_and_too_many_labels() -> None:
    with pytest.raises(ValueError, match="nothing"):
        combine_splits([])
    parts = [
        DataSplits([], [], [], fingerprint=str(i), labels=tuple(f"l{i}_{j}" for j in range(33)))
        for i in range(2)
    ]
    with pytest.raises(ValueError, match="66 labels"):
        combine_splits(parts)


def test_a_file_whose_label_has_no_validation_positive_is_refused(tmp_path: Path) -> None:
    rows = [{"text": f"train {i}", "split": "train", "hate": i % 2 == 0} for i in range(10)]
    rows += [{"text": f"val {i}", "split": "validation", "hate": False} for i in range(10)]
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    data = load_user_data(path)
    with pytest.raises(LabelSupportError) as caught:
        check_trainable(data.splits, path)
    assert str(caught.value).startswith(f"{path}: field 'hate': no positive example in validation")
