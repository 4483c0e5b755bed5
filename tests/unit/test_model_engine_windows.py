"""The engine reads every text as windows: the worst part decides, spans point back."""

from __future__ import annotations

from itertools import chain

import numpy as np
import pytest
import torch

from model.data import SOURCE_INSULTS, Example
from model.engine import Engine
from model.network import Classifier, ModelConfig
from model.robustness import long_section
from model.scores import EncodedBatch
from model.tokenizer import tokenize
from model.vocab import UNK_TOKEN, Vocab
from model.windows import STRATEGY_SAMPLED, STRATEGY_WHOLE
from tests.helpers import tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NEUTRAL = (
    "The city council met on Tuesday to discuss the new budget for the public library. "
    "Officials said the repairs to the bridge will be finished before the end of summer. "
    "Rain is expected across the region tomorrow, with sunshine returning on Friday. "
)
WORDS = sorted(set(tokenize(NEUTRAL * 2 + " you are an idiot", None)))


def keyword_engine(keyword: str = "idiot", **engine_options: int) -> Engine:
    """A hand-set model whose insult score is high exactly when a row holds `keyword`:
    its embedding is the only non-zero one, the LSTM forgets at once and max pooling
    keeps any step that saw it, so the score does not fade with the row's length."""
    vocab = Vocab(["<pad>", "<unk>", *WORDS])
    config = ModelConfig(
        vocab_size=len(vocab),
        num_labels=2,
        embed_dim=1,
        hidden_dim=1,
        bidirectional=False,
        dropout=0.0,
        pooling="max",
    )
    model = Classifier(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.embedding.weight[vocab.id_of(keyword), 0] = 1.0
        # LSTM gates (input, forget, cell, output): open input and output, close forget.
        model.rnn.bias_ih_l0.copy_(torch.tensor([10.0, -10.0, 0.0, 10.0]))
        model.rnn.weight_ih_l0[2, 0] = 5.0  # the cell input follows the keyword
        model.head.weight[0, 0] = 20.0  # insult
        model.head.bias[0] = -10.0
        model.head.bias[1] = -10.0  # spam: never
    return Engine.from_model(model, vocab, ("insult", "spam"), device="cpu", **engine_options)


def test_one_window_texts_score_exactly_as_before_windows() -> None:
    """ "Before" is the path windows replaced: each text tokenised whole (cut at 256
    tokens) into one row. For texts that fit a window the rows and scores are equal."""
    model, vocab = tiny_model(WORDS, 3, subword_buckets=50, subword_dim=4, pooling="meanmax")
    engine = Engine.from_model(model, vocab, ("insult", "spam"), device="cpu")
    texts = [
        "",
        "  you are an idiot  ",
        "\uff39\uff2f\uff35 are an \ufb01ne idiot!!!!",
        "the budget, the bridge & the rain\n\nyou idiot",
        " ".join(NEUTRAL.split()[:50]),
    ]
    assert all(len(engine.plan(t).windows) == 1 for t in texts)
    rows = [tokenize(text, 256) or [UNK_TOKEN] for text in texts]
    for text, row in zip(texts, rows, strict=True):
        assert list(engine.plan(text).windows[0].tokens or [UNK_TOKEN]) == row
    windowed = engine.score(texts)
    slots, table = engine._vectors.assign(list(chain.from_iterable(rows)), engine._describe)
    lengths = np.array([len(row) for row in rows], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    before = engine.score_encoded(
        EncodedBatch(
            lengths,
            engine.version,
            0.0,
            slots,
            starts,
            table,
            windowed.plans,
            np.arange(len(texts), dtype=np.int64),
        )
    )
    assert np.array_equal(windowed.probabilities, before.probabilities)
    assert windowed.num_windows == len(texts)


@pytest.mark.parametrize("where", ["start", "middle", "end"])
def test_abuse_anywhere_in_a_long_text_drives_its_score(where: str) -> None:
    engine = keyword_engine()
    context = NEUTRAL * 20  # ~900 tokens: past the old 256-token cut
    abuse = "you are an idiot"
    text = {
        "start": f"{abuse}. {context}",
        "middle": f"{context}{abuse}. {context}",
        "end": f"{context}{abuse}",
    }[where]
    scores = engine.score([text, context, abuse])
    insult = scores.probabilities[:, 0]
    assert insult[1] < 0.01 < 0.99 < insult[2]
    assert insult[0] == pytest.approx(insult[2], abs=1e-5)
    assert scores.num_windows > 10
    np.testing.assert_allclose(
        scores.probabilities, engine.score_one_by_one([text, context, abuse]), atol=1e-5
    )
    # The evidence is the window holding the abuse, and nothing else.
    (span,) = scores.evidence(0, 0, threshold=0.5)
    start = text.index(abuse)
    assert span.start <= start and start + len(abuse) <= span.end
    assert span.end - span.start < 800 and span.score == pytest.approx(insult[0])
    assert scores.evidence(1, 0, threshold=0.5) == []


def test_a_message_score_is_the_maximum_over_its_windows() -> None:
    model, vocab = tiny_model(WORDS, 5, pooling="meanmax")
    engine = Engine.from_model(model, vocab, ("insult", "spam"), device="cpu")
    texts = [NEUTRAL * 5, "you are an idiot", NEUTRAL * 9 + " you idiot"]
    scores = engine.score(texts)
    for i, text in enumerate(texts):
        windows = scores.window_scores(i)
        assert len(windows) == len(engine.plan(text).windows)
        assert np.array_equal(scores.probabilities[i], windows.max(axis=0))
        separately = engine.score([text[w.start : w.end] for w in scores.plans[i].windows])
        np.testing.assert_allclose(windows, separately.probabilities, atol=1e-5)


def test_coverage_is_complete_within_the_budget_and_stated_beyond_it() -> None:
    engine = keyword_engine(max_chars=2_000, max_windows=64)
    short, long = NEUTRAL * 4, NEUTRAL * 200 + "you idiot"
    scores = engine.score([short, long])
    whole, sampled = scores.plans
    assert whole.strategy == STRATEGY_WHOLE
    assert whole.chars_scored == whole.chars_total == len(short)
    assert sampled.strategy == STRATEGY_SAMPLED
    assert sampled.chars_total == len(long) and sampled.chars_scored < 2_000 + 400
    # The tail is always read: abuse at the very end of a 50,000-character text counts.
    assert scores.probabilities[1, 0] > 0.99
    assert max(w.end for w in sampled.windows) == len(long)


def test_the_window_cap_bounds_the_rows_of_a_text() -> None:
    engine = keyword_engine(max_windows=4, max_chars=100_000)
    scores = engine.score([NEUTRAL * 40])
    assert scores.num_windows == 4 and len(scores.plans[0].windows) == 4
    assert scores.real_tokens <= 4 * engine.max_tokens
    assert not scores.plans[0].complete


def test_evidence_points_at_the_original_characters_after_normalisation() -> None:
    # NFKC turns the full-width letters into "idiot" and the ligatures into two
    # letters each, so the normalised text is longer: spans must still index the input.
    engine = keyword_engine()
    prefix = "\ufb01ne \ufb02owers in the \uff30\uff21\uff32\uff2b. " * 60
    full_width = "\uff29\uff24\uff29\uff2f\uff34"
    text = f"{prefix}you are an {full_width}! {prefix}"
    assert len(tokenize(text, None)) > 3 * 128
    scores = engine.score([text])
    (span,) = scores.evidence(0, 0, threshold=0.5)
    assert full_width in text[span.start : span.end]
    assert text.index(full_width) >= span.start
    assert span.end - span.start < len(text) // 2


def test_a_short_text_is_its_own_evidence() -> None:
    engine = keyword_engine()
    text = "  you idiot\n"
    (span,) = engine.score([text]).evidence(0, 0, threshold=0.5)
    assert (span.start, span.end) == (2, 11) and text[span.start : span.end] == "you idiot"


def test_the_long_message_section_finds_the_embedded_abuse() -> None:
    engine = keyword_engine()
    sentences = [s.strip() + "." for s in NEUTRAL.split(".") if s.strip()]
    clean = [f"{a} {b}" for a in sentences for b in sentences]  # 9 clean comments
    abusive = [f"{s} you are an idiot" for s in sentences]
    examples = [
        Example(text, (float(label), 0.0), (1.0, 0.0), SOURCE_INSULTS)
        for text, label in [*((t, 0) for t in clean), *((t, 1) for t in abusive)]
    ]
    thresholds = {"insult": 0.5, "spam": 0.5}
    models = {"lstm": (lambda texts: engine.score(texts).probabilities, thresholds)}
    section = long_section(engine, examples, models)
    assert section["messages"] == 12 and section["positives"] == 3
    lstm = section["lstm"]
    assert lstm["roc_auc"] == lstm["plain_roc_auc"] == lstm["ceiling_roc_auc"] == 1.0
    assert lstm["recall"] == 1.0 and lstm["negative_flag_rate"] == 0.0
    assert section["evidence_hit_rate"] == 1.0
