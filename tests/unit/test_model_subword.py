from __future__ import annotations

import torch

from model.encoding import encode_tokens
from model.engine import Engine
from model.network import Classifier, ModelConfig
from model.subword import (
    canonical,
    deleet,
    lookup_forms,
    ngram_ids,
    subword_batch,
    token_id,
)
from model.tokenizer import tokenize
from model.vocab import UNK_ID, Vocab

BUCKETS = 5000


def test_deleet_only_touches_tokens_mixing_letters_and_digits() -> None:
    assert deleet("m0r0n") == "moron"
    assert deleet("1diot") == "idiot"
    assert deleet("moron") == "moron"
    assert deleet("2024") == "2024"
    assert canonical("stuupid") == "stupid"
    assert canonical("m00r0n") == "moron"
    assert lookup_forms("stuupid") == ("stuupid", "stupid")
    assert lookup_forms("moron") == ("moron",)


def test_obfuscated_spellings_fall_back_to_the_known_word() -> None:
    vocab = Vocab.build([["moron", "idiot", "stupid", "you"]], min_freq=1)
    for spelling, word in [("m0r0n", "moron"), ("1diot", "idiot"), ("stuuupid", "stupid")]:
        (token,) = tokenize(spelling)
        assert token_id(vocab, token) == vocab.id_of(word) != UNK_ID
    assert token_id(vocab, "zebra") == UNK_ID


def test_obfuscated_and_plain_spellings_share_subwords() -> None:
    assert ngram_ids("m0r0n", BUCKETS, 3, 5) == ngram_ids("moron", BUCKETS, 3, 5)
    assert ngram_ids("stuupid", BUCKETS, 3, 5) == ngram_ids("stupid", BUCKETS, 3, 5)
    starred, plain = set(ngram_ids("f*ck", BUCKETS, 3, 5)), set(ngram_ids("fuck", BUCKETS, 3, 5))
    assert starred & plain  # "ck>" at least
    assert not set(ngram_ids("moron", BUCKETS, 3, 5)) & set(ngram_ids("prize", BUCKETS, 3, 5))
    assert ngram_ids("<url>", BUCKETS, 3, 5) == ()
    assert ngram_ids("!", BUCKETS, 3, 5) == ()
    assert all(0 <= i < BUCKETS for i in ngram_ids("whatever", BUCKETS, 3, 5))


def test_subword_batch_gives_one_bag_per_grid_position() -> None:
    flat, offsets = subword_batch([[(1, 2), (3,)], [(4,)]], width=3)
    assert flat.tolist() == [1, 2, 3, 4]
    assert offsets.tolist() == [0, 2, 3, 3, 4, 4]  # padding: empty bags


def unknown_word_model() -> tuple[Classifier, Vocab]:
    torch.manual_seed(0)
    vocab = Vocab.build([["you", "are", "a"]], min_freq=1)  # neither spelling known
    config = ModelConfig(
        vocab_size=len(vocab), num_labels=2, embed_dim=8, hidden_dim=6, subword_buckets=BUCKETS
    )
    return Classifier(config).eval(), vocab


def test_unknown_obfuscated_word_scores_like_its_plain_spelling() -> None:
    """Both spellings are UNK as words, but their sub-words make them identical inputs,
    while a different unknown word scores differently."""
    model, vocab = unknown_word_model()
    a, b, c = (
        encode_tokens(vocab, model.config, tokenize(text))
        for text in ("you are a m0r0n", "you are a moron", "you are a prize")
    )
    assert a.ids == b.ids == c.ids  # all UNK at the last position
    assert a.ids[-1] == UNK_ID
    assert a.subwords == b.subwords != c.subwords
    engine = Engine.from_model(model, vocab, ("insult", "spam"), device="cpu")
    scores = engine.score(["you are a m0r0n", "you are a moron", "you are a prize"])
    assert torch.allclose(
        torch.from_numpy(scores.probabilities[0]), torch.from_numpy(scores.probabilities[1])
    )
    assert not torch.allclose(
        torch.from_numpy(scores.probabilities[0]), torch.from_numpy(scores.probabilities[2])
    )


def test_subword_model_batched_equals_one_by_one() -> None:
    model, vocab = unknown_word_model()
    engine = Engine.from_model(model, vocab, ("insult", "spam"), device="cpu", bucket_width=2)
    texts = ["", "you", "you are a m0r0n!!!", "f*ck off 1diot", "a " * 40, "<url> hi"]
    batched = engine.score(texts).probabilities
    reference = engine.score_one_by_one(texts)
    assert abs(batched - reference).max() < 1e-5
