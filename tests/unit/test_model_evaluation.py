"""model/evaluation.py: thresholds, per-label metrics and the examples measured on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.build import retrain
from model.data import LABELS
from model.evaluation import choose_thresholds, evaluation_examples, parse_target_precision
from model.metrics import precision_recall_f1
from model.train_config import TrainConfig
from tests.helpers import synthetic_splits


def test_choose_thresholds_with_configured_precision() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (300, 2)).astype(np.float32)
    probs = np.clip(rng.random((300, 2)) * 0.7 + 0.3 * targets, 0, 1).astype(np.float32)
    mask = np.ones_like(targets)
    notes: dict[str, str] = {}
    default = choose_thresholds(probs, targets, mask, LABELS)
    picked = choose_thresholds(
        probs, targets, mask, LABELS, parse_target_precision("spam=0.95"), notes
    )
    assert picked["insult"] == default["insult"]
    assert notes == {"insult": "max_f1", "spam": "precision>=0.95"}
    assert precision_recall_f1(targets[:, 1], probs[:, 1], picked["spam"])[0] >= 0.95
    assert picked["spam"] >= default["spam"]
    notes.clear()
    choose_thresholds(probs, targets, mask, LABELS, {"*": 1.01}, notes)
    assert all("unreachable" in rule for rule in notes.values())


def test_parse_target_precision() -> None:
    assert parse_target_precision("") == {}
    assert parse_target_precision("0.9") == {"*": 0.9}
    assert parse_target_precision("spam=0.98, insult=0.8") == {"spam": 0.98, "insult": 0.8}
    for bad in ("spam=x", "1.5", "spam=0"):
        with pytest.raises(ValueError, match="target_precision"):
            parse_target_precision(bad)
    with pytest.raises(ValueError, match="target_precision"):
        TrainConfig(target_precision="nope")


def test_evaluation_examples_are_a_seeded_subset_per_split() -> None:
    splits = synthetic_splits()
    config = TrainConfig.tiny(eval_limit=30)
    validation = evaluation_examples(config, splits, "validation")
    test = evaluation_examples(config, splits, "test")
    assert len(validation) == len(test) == 30
    assert all(ex in splits.validation for ex in validation)
    assert all(ex in splits.test for ex in test)
    assert validation == evaluation_examples(config, splits, "validation")
    other_seed = evaluation_examples(TrainConfig.tiny(eval_limit=30, seed=7), splits, "validation")
    assert other_seed != validation
    uncapped = TrainConfig.tiny(eval_limit=None)
    assert evaluation_examples(uncapped, splits, "test") == list(splits.test)


def test_the_checkpoint_is_measured_on_the_evaluation_examples(tmp_path: Path) -> None:
    splits = synthetic_splits()
    config = TrainConfig.tiny(eval_limit=40, limit=None, min_freq=1)
    report = retrain(tmp_path / "ckpt", config, splits=splits)
    for split, measured in (("validation", report.validation), ("test", report.test)):
        examples = evaluation_examples(config, splits, split)
        for j, label in enumerate(splits.labels):
            known = [ex for ex in examples if ex.mask[j] > 0]
            assert measured[label]["examples"] == len(known)
            assert measured[label]["positives"] == sum(ex.targets[j] > 0.5 for ex in known)
