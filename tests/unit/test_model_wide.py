"""The wide path: hashed n-gram features of the whole message added to the logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.checkpoint import META_FILE, WEIGHTS_FILE, compute_version, save_checkpoint
from model.engine import Engine, encode_text
from model.network import WIDE_FIELDS, Classifier, ModelConfig
from model.tokenizer import tokenize
from model.vocab import Vocab
from model.wide import text_features, token_features, wide_batch
from tests.helpers import tiny_model

LABELS = ("insult", "spam")
TEXTS = ["", "you", "you are a m0r0n!!!", "f*ck off 1diot", "a " * 40, "<url> hi", "are you"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def build(wide_buckets: int, subword_buckets: int = 50) -> tuple[Classifier, Vocab]:
    return tiny_model(
        TEXTS, 0, subword_buckets=subword_buckets, subword_dim=4, wide_buckets=wide_buckets
    )


def test_features_are_deterministic_and_order_aware() -> None:
    a = token_features("moron", 1000, 2, 5)
    assert a == token_features("moron", 1000, 2, 5)
    assert 1 <= len(a) <= 1 + 1 + sum(len("<moron>") - n + 1 for n in range(2, 6))
    assert all(0 <= i < 1000 for i in a)
    assert token_features("moron", 0, 2, 5) == ()

    def bag(text: str) -> tuple[int, ...]:
        tokens = tokenize(text)
        own = [token_features(t, 1 << 20, 2, 5) for t in tokens]
        return text_features(tokens, own, 1 << 20, 2)

    # Same words, other order: same unigrams and character n-grams, other bigrams.
    assert bag("you are") != bag("are you")
    assert set(bag("you are")) - set(bag("are you"))
    assert bag("you are") == tuple(sorted(set(bag("you are"))))
    assert bag("") == ()


def test_wide_batch_weights_are_l2_normalised() -> None:
    ids, offsets, weights = wide_batch([(1, 2, 3, 4), (), (5,)])
    assert ids.tolist() == [1, 2, 3, 4, 5]
    assert offsets.tolist() == [0, 4, 4]
    assert weights.tolist() == pytest.approx([0.5] * 4 + [1.0])


def test_a_zero_wide_path_changes_nothing() -> None:
    """The wide table starts at zero and is created last, so a fresh wide model scores
    exactly like the same model without it."""
    plain, vocab = build(0)
    wide, _ = build(1000)
    assert wide.wide is not None and not wide.wide.weight.any()
    a = Engine.from_model(plain, vocab, LABELS, device="cpu").score(TEXTS).probabilities
    b = Engine.from_model(wide, vocab, LABELS, device="cpu").score(TEXTS).probabilities
    assert abs(a - b).max() < 1e-6


def test_wide_model_batched_equals_one_by_one() -> None:
    model, vocab = build(1000)
    assert model.wide is not None
    with torch.no_grad():
        model.wide.weight.normal_(std=1.0)
    engine = Engine.from_model(model, vocab, LABELS, device="cpu", bucket_width=2)
    batched = engine.score(TEXTS).probabilities
    assert abs(batched - engine.score_one_by_one(TEXTS)).max() < 1e-5
    # The wide path matters: word order alone changes its bigram features.
    assert encode_text(vocab, model.config, "you are", 256).wide != (
        encode_text(vocab, model.config, "are you", 256).wide
    )


def test_checkpoint_without_wide_fields_loads_as_before(tmp_path: Path) -> None:
    """A checkpoint written before the wide path existed has no wide fields in its
    config: it loads with the defaults (no wide path) and scores as it did."""
    model, vocab = build(0)
    directory = tmp_path / "old"
    save_checkpoint(
        directory,
        model,
        vocab,
        LABELS,
        thresholds={"insult": 0.5, "spam": 0.5},
        metrics={},
        data_fingerprint="abc",
        created_at="2024-01-01T00:00:00+00:00",
    )
    meta = json.loads((directory / META_FILE).read_text())
    for name in WIDE_FIELDS:
        del meta["config"][name]
    meta["version"] = compute_version((directory / WEIGHTS_FILE).read_bytes(), meta)
    (directory / META_FILE).write_text(json.dumps(meta))
    loaded = Engine.load(directory, device="cpu")
    assert loaded.model.wide is None
    expected = Engine.from_model(model, vocab, LABELS, device="cpu").score(TEXTS).probabilities
    assert abs(loaded.score(TEXTS).probabilities - expected).max() < 1e-6


def test_missing_wide_fields_take_their_defaults() -> None:
    data = ModelConfig(vocab_size=10, num_labels=2).to_dict()
    for name in WIDE_FIELDS:
        del data[name]
    assert ModelConfig.from_dict(data) == ModelConfig(vocab_size=10, num_labels=2)
    with pytest.raises(ValueError, match="wide_buckets"):
        ModelConfig(vocab_size=10, num_labels=2, wide_buckets=-1)
