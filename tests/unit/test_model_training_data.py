"""model/training_data.py: training examples and their batches."""

from __future__ import annotations

import numpy as np

from model.data import LABELS, SOURCE_INSULTS, SOURCE_SMS, Example
from model.train import TrainConfig
from model.training_data import length_bucketed_batches, spam_negative, training_examples
from tests.helpers import synthetic_splits


def test_batches_cover_every_example_once_and_are_seeded() -> None:
    lengths = np.random.default_rng(0).integers(1, 200, 1000)
    batches = length_bucketed_batches(lengths, 32, np.random.default_rng(3))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(1 <= len(b) <= 32 for b in batches)
    again = length_bucketed_batches(lengths, 32, np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))
    # Bucketing keeps padding small compared with random batches.
    padded = sum(len(b) * lengths[b].max() for b in batches)
    assert padded < 1.2 * lengths.sum()


def test_comments_become_spam_negatives_in_training_only() -> None:
    comment = Example("you idiot", (1.0, 0.0), (1.0, 0.0), SOURCE_INSULTS)
    sms = Example("win a prize", (0.0, 1.0), (0.0, 1.0), SOURCE_SMS)
    assert spam_negative(comment, LABELS) == Example(
        "you idiot", (1.0, 0.0), (1.0, 1.0), SOURCE_INSULTS
    )
    assert spam_negative(sms, LABELS) == sms
    splits = synthetic_splits()
    with_rule = training_examples(TrainConfig.tiny(comments_spam_negative=True), splits)
    without = training_examples(TrainConfig.tiny(comments_spam_negative=False), splits)
    assert len(with_rule) == len(without)
    assert sum(ex.mask[1] for ex in with_rule) > sum(ex.mask[1] for ex in without)
