"""model/evaluation.py: thresholds, per-label metrics and the examples measured on."""

from __future__ import annotations

from pathlib import Path

from model.build import retrain
from model.evaluation import evaluation_examples
from model.train import TrainConfig
from tests.unit.test_model_train import synthetic_splits


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
