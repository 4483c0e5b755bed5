"""model/training_data.py: training examples, vocabulary and batches."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np

from model.data import LABELS, SOURCE_INSULTS, SOURCE_SMS, Example
from model.glove import GloveVectors
from model.long_messages import SEPARATOR
from model.short_chat import SOURCE_SHORT_CHAT
from model.train_config import TrainConfig
from model.training_data import (
    build_vocab,
    context_examples,
    encode_examples,
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


def test_comments_in_context_keep_their_labels_among_clean_fillers() -> None:
    examples = training_examples(TrainConfig.tiny(), synthetic_splits())
    insult = LABELS.index("insult")
    comments = [ex for ex in examples if ex.source == SOURCE_INSULTS and ex.mask[insult] > 0]
    clean = {ex.text for ex in comments if ex.targets[insult] == 0.0}
    placed = context_examples(examples, LABELS, random.Random(1), 1.0, 3)
    assert len(placed) == len(comments)
    for comment, long in zip(comments, placed, strict=True):
        assert (long.targets, long.mask, long.source) == (
            comment.targets,
            comment.mask,
            comment.source,
        )
        parts = long.text.split(SEPARATOR)
        assert 2 <= len(parts) <= 4 and comment.text in parts
        others = list(parts)
        others.remove(comment.text)
        assert all(part in clean for part in others)
    assert context_examples(examples, LABELS, random.Random(1), 1.0, 3) == placed
    assert 0 < len(context_examples(examples, LABELS, random.Random(1), 0.3, 3)) < len(placed)
    assert context_examples(examples, LABELS, random.Random(1), 0.0, 3) == []


def test_short_benign_chat_joins_training_as_a_negative_for_every_label() -> None:
    splits = synthetic_splits()
    short = Example("see you at 6", (0.0, 0.0), (0.0, 1.0), SOURCE_SMS)
    splits = replace(splits, train=[*splits.train, short])
    with_chat = training_examples(TrainConfig.tiny(short_benign=True), splits)
    without = training_examples(TrainConfig.tiny(short_benign=False), splits)
    chat = [ex for ex in with_chat if ex.source == SOURCE_SHORT_CHAT]
    assert len(with_chat) == len(without) + len(chat) and len(chat) > 200
    assert all(ex.targets == (0.0, 0.0) and ex.mask == (1.0, 1.0) for ex in chat)
    assert Example("see you at 6", (0.0, 0.0), (1.0, 1.0), SOURCE_SMS) in with_chat
    assert short in without


def test_every_example_is_encoded_as_its_windows() -> None:
    long_text = " ".join(["word"] * 300)
    examples = [Example("you idiot", (1.0, 0.0), (1.0, 0.0), SOURCE_INSULTS)]
    examples.append(Example(long_text, (0.0, 0.0), (1.0, 0.0), SOURCE_INSULTS))
    vocab = build_vocab(TrainConfig.tiny(min_freq=1), [["you", "idiot", "word"]], None)
    config = TrainConfig.tiny().model_config(len(vocab), 2)
    rows, lengths = encode_examples(vocab, config, examples)
    assert [len(r) for r in rows] == [1, 4]  # 300 tokens: windows at 0, 64, 128 and 172
    assert lengths.tolist() == [2, 4 * 128]
