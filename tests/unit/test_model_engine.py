from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from model.engine import Engine, EngineError, resolve_device
from tests.helpers import tiny_model

SENTENCE = "you are a total idiot free prize call now win cash the of and to in it is"
WORDS = tuple(SENTENCE.split())


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    texts = ["", "   ", "!!!", "zzzz-unknown-qqq"]
    for _ in range(count - len(texts)):
        n = rng.choice([1, 2, 3, 5, 8, 13, 21, 40, 90, 300])
        texts.append(" ".join(rng.choice(WORDS) for _ in range(n)))
    rng.shuffle(texts)
    return texts


def make_engine(
    pooling: str = "max",
    rnn: str = "lstm",
    bucket_width: int = 8,
    max_batch_tokens: int = 16_384,
    max_tokens: int = 256,
    subword_buckets: int = 0,
) -> Engine:
    model, vocab = tiny_model(
        WORDS,
        1,
        embed_dim=12,
        hidden_dim=10,
        num_layers=2,
        rnn=rnn,
        pooling=pooling,
        subword_buckets=subword_buckets,
        subword_dim=6,
    )
    return Engine.from_model(
        model,
        vocab,
        ("insult", "spam"),
        device="cpu",
        bucket_width=bucket_width,
        max_batch_tokens=max_batch_tokens,
        max_tokens=max_tokens,
    )


@pytest.mark.parametrize(
    ("pooling", "rnn", "subword_buckets"),
    [
        ("max", "lstm", 0),
        ("mean", "lstm", 0),
        ("last", "lstm", 0),
        ("last", "gru", 0),
        ("meanmax", "lstm", 50),
    ],
)
def test_bucketed_batch_equals_one_by_one(pooling: str, rnn: str, subword_buckets: int) -> None:
    """Also checks the cached token vectors (`model.vectors`) against the embeddings:
    one-by-one scoring computes every vector afresh."""
    engine = make_engine(
        pooling,
        rnn,
        bucket_width=4,
        max_batch_tokens=400,
        max_tokens=128,
        subword_buckets=subword_buckets,
    )
    texts = random_texts(120, seed=7)
    scores = engine.score(texts)
    reference = engine.score_one_by_one(texts)
    assert scores.probabilities.dtype == np.float32
    assert scores.probabilities.shape == (len(texts), 2)
    np.testing.assert_allclose(scores.probabilities, reference, atol=1e-5, rtol=0)
    assert scores.num_buckets > 1


def test_scores_come_back_in_input_order() -> None:
    engine = make_engine()
    texts = random_texts(60, seed=3)
    permutation = np.random.default_rng(0).permutation(len(texts))
    shuffled = engine.score([texts[i] for i in permutation]).probabilities
    np.testing.assert_allclose(shuffled, engine.score(texts).probabilities[permutation], atol=1e-6)


def test_token_accounting_and_bucket_limits() -> None:
    engine = make_engine(bucket_width=8, max_batch_tokens=256, max_tokens=100)
    texts = random_texts(80, seed=11)
    scores = engine.score(texts)
    # One row per window of at most max_tokens (100, under the model's own 128) tokens:
    # the texts reach 300.
    lengths = np.asarray([max(1, len(w.tokens)) for t in texts for w in engine.plan(t).windows])
    assert lengths.max() == 100 and scores.num_windows == len(lengths) > len(texts)
    assert scores.real_tokens == int(lengths.sum())
    assert scores.padded_tokens >= scores.real_tokens
    assert scores.tokenize_seconds >= 0 and scores.inference_seconds >= 0

    buckets = engine.buckets(lengths)
    assert sorted(np.concatenate(buckets).tolist()) == list(range(len(lengths)))
    assert len(buckets) == scores.num_buckets
    padded = 0
    for bucket in buckets:
        bucket_lengths = lengths[bucket]
        assert bucket_lengths.max() - bucket_lengths.min() < engine.bucket_width
        assert len(bucket) == 1 or len(bucket) * bucket_lengths.max() <= engine.max_batch_tokens
        padded += len(bucket) * int(bucket_lengths.max())
    assert padded == scores.padded_tokens


def test_empty_text_is_scored_as_one_unknown_token() -> None:
    engine = make_engine()
    probabilities = engine.score(["", "zzzz"]).probabilities
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-6)


def test_empty_input_gives_empty_array() -> None:
    scores = make_engine().score([])
    assert scores.probabilities.shape == (0, 2)
    assert scores.num_buckets == 0 and scores.real_tokens == 0 and scores.padded_tokens == 0
    assert make_engine().score_one_by_one([]).shape == (0, 2)


def test_engine_puts_model_in_eval_mode() -> None:
    engine = make_engine()
    assert not engine.model.training
    assert engine.thresholds == {"insult": 0.5, "spam": 0.5}
    assert engine.labels == ("insult", "spam")


def test_device_resolution() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(EngineError, match="invalid device"):
        resolve_device("potato")
    with pytest.raises(EngineError, match="unsupported"):
        resolve_device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
def test_cuda_request_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(EngineError, match="CUDA is not available"):
        resolve_device("cuda")


def test_thresholds_must_match_labels() -> None:
    engine = make_engine()
    with pytest.raises(EngineError, match="thresholds"):
        Engine.from_model(engine.model, engine.vocab, ("insult", "spam"), {"insult": 0.5})


def test_encoding_apart_from_scoring_gives_the_same_scores() -> None:
    engine = make_engine()
    texts = random_texts(40, seed=5)
    encoded = engine.encode_batch(texts)
    assert encoded.version == engine.version and len(encoded.plans) == len(texts)
    assert len(encoded.lengths) == sum(len(plan.windows) for plan in encoded.plans)
    np.testing.assert_array_equal(
        engine.score_encoded(encoded).probabilities, engine.score(texts).probabilities
    )


def test_a_batch_encoded_by_another_model_is_refused() -> None:
    engine, other = make_engine(), make_engine()
    other.version = "other-version"
    with pytest.raises(EngineError, match="other-version"):
        engine.score_encoded(other.encode_batch(["you idiot"]))


def test_the_token_cache_stays_bounded_and_clearing_it_changes_no_score(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every distinct token ever seen would otherwise stay in memory: a stream of unique
    words (ids, hashes, attacker text) must not grow it past its bound plus one batch."""
    monkeypatch.setattr("model.encoding.TOKEN_CACHE_SIZE", 50)
    engine, fresh = make_engine(subword_buckets=64), make_engine(subword_buckets=64)
    per_batch = 20

    def word(n: int) -> str:  # letters only: the tokenizer folds digits into <num>
        return "".join(chr(ord("a") + n // 26**i % 26) for i in range(4))

    for batch in range(30):
        texts = [f"{word(batch * per_batch + n)} idiot" for n in range(per_batch)]
        engine.score(texts)
        engine.score_one_by_one(texts[:2])
        assert len(engine._token_cache) <= 50 + per_batch + 1, batch
    texts = [f"{word(0)} idiot", f"{word(599)} prize", "never seen before"]
    np.testing.assert_allclose(
        engine.score(texts).probabilities, fresh.score(texts).probabilities, atol=1e-6
    )
    np.testing.assert_allclose(
        engine.score_one_by_one(texts), fresh.score_one_by_one(texts), atol=1e-6
    )
