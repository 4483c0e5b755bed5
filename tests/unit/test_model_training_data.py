"""model/training_data.py: training examples, vocabulary and batches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from model.data import LABELS, SOURCE_INSULTS, SOURCE_SMS, Example
from model.glove import GloveVectors
from model.train import TrainConfig
from model.training_data import (
    build_vocab,
    length_bucketed_batches,
    spam_negative,
    training_examples,
)
from model.vocab import SPECIAL_TOKENS
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


def fake_glove(words: list[str]) -> GloveVectors:
    matrix = np.zeros((len(words), 4), dtype=np.float32)
    return GloveVectors(words=tuple(words), vectors=matrix, source="test")


def test_glove_min_freq_keeps_rare_tokens_only_when_glove_knows_them() -> None:
    token_lists = [["common"] * 3 + ["m0r0n", "zzqx", "rare"], ["common", "rare", "moron"]]
    glove = fake_glove(["moron", "rare", "unused"])
    config = TrainConfig.tiny(min_freq=2, glove_min_freq=1, glove_vocab=0, max_vocab=100)
    vocab = build_vocab(config, token_lists, glove)
    # Count order, then token: common (4), rare (2), then the GloVe-known singletons;
    # "m0r0n" is known through its de-leeted form; "zzqx" is nowhere in GloVe.
    assert vocab.tokens == (*SPECIAL_TOKENS, "common", "rare", "m0r0n", "moron")
    assert build_vocab(replace(config, glove_min_freq=0), token_lists, glove).tokens == (
        *SPECIAL_TOKENS,
        "common",
        "rare",
    )
    tight = build_vocab(replace(config, max_vocab=4), token_lists, glove)
    assert tight.tokens == (*SPECIAL_TOKENS, "common", "rare")
