"""The long-message construction and the short benign chat set."""

from __future__ import annotations

import re

import pytest

from model.data import SOURCE_INSULTS, SOURCE_SMS, DataNotFoundError, DataSplits, Example
from model.data import load_splits as load_real_splits
from model.long_messages import SEPARATOR, long_messages
from model.short_chat import (
    CURATED_FILE,
    EXCLUDED_FILE,
    SHORT_HAM_CHARS,
    SOURCE_SHORT_CHAT,
    curated,
    read_lines,
    short_benign,
    with_short_ham_negative,
)

LABELS = ("insult", "spam")


def comment(text: str, insult: int | None) -> Example:
    if insult is None:
        return Example(text, (0.0, 0.0), (0.0, 1.0), SOURCE_SMS)
    return Example(text, (float(insult), 0.0), (1.0, 0.0), SOURCE_INSULTS)


def corpus(n: int = 40) -> list[Example]:
    return [comment(f"comment number {i}", int(i % 4 == 0)) for i in range(n)] + [
        comment("an sms", None)
    ]


def test_every_labelled_comment_is_embedded_once_among_clean_ones() -> None:
    examples = corpus()
    built = long_messages(examples, 0, seed=5)
    assert len(built) == 40  # the SMS knows no insult label
    for i, message in zip(range(40), built, strict=True):
        text = message.example.text
        assert text[message.embedded_start : message.embedded_end] == examples[i].text
        assert message.example.targets == examples[i].targets
        assert i in message.parts
        fillers = [j for j in message.parts if j != i]
        assert 2 <= len(fillers) <= 5
        assert all(examples[j].targets[0] == 0.0 and examples[j].mask[0] == 1.0 for j in fillers)
        assert text == SEPARATOR.join(examples[j].text for j in message.parts)


def test_the_construction_is_fixed_by_its_seed() -> None:
    examples = corpus()
    assert long_messages(examples, 0, seed=5) == long_messages(examples, 0, seed=5)
    assert long_messages(examples, 0, seed=5) != long_messages(examples, 0, seed=6)
    positions = {m.parts.index(i) for i, m in enumerate(long_messages(examples, 0, seed=5))}
    assert len(positions) > 2  # the embedded comment is not always in the same place


def test_too_few_clean_fillers_is_an_error() -> None:
    with pytest.raises(ValueError, match="negative examples"):
        long_messages([comment("a", 1), comment("b", 0), comment("c", 0)], 0)


# ---------------------------------------------------------------- short benign chat


def test_the_curated_set_leaves_out_the_reported_examples() -> None:
    lines = read_lines(CURATED_FILE)
    assert len(lines) == len(set(lines)) >= 300
    canonical = {re.sub(r"[^\w ]", "", line.lower()).strip() for line in lines}
    assert not canonical & {"hello", "yup", "okie", "thank you"}
    assert all(len(line) <= SHORT_HAM_CHARS for line in lines)


def test_curated_lines_split_80_10_10_and_are_negative_for_every_label() -> None:
    parts = {name: curated(name, LABELS) for name in ("train", "validation", "test")}
    assert sum(len(p) for p in parts.values()) == len(read_lines(CURATED_FILE))
    assert len(parts["train"]) > 4 * len(parts["test"])
    for examples in parts.values():
        assert all(ex.targets == (0.0, 0.0) and ex.mask == (1.0, 1.0) for ex in examples)
        assert all(ex.source == SOURCE_SHORT_CHAT for ex in examples)


def test_short_ham_becomes_an_insult_negative_unless_excluded() -> None:
    excluded = read_lines(EXCLUDED_FILE)[0]
    examples = [
        comment("see you at 6", None),
        comment(excluded, None),
        comment("x" * (SHORT_HAM_CHARS + 1), None),
        Example("WIN A PRIZE", (0.0, 1.0), (0.0, 1.0), SOURCE_SMS),
        comment("you idiot", 1),
    ]
    out = with_short_ham_negative(examples, LABELS)
    assert out[0].mask == (1.0, 1.0) and out[0].targets == (0.0, 0.0)
    assert out[1:] == examples[1:]


@pytest.fixture(scope="module")
def real_splits() -> DataSplits:
    try:
        return load_real_splits()
    except DataNotFoundError as e:
        pytest.skip(f"training data not installed: {e}")


def test_every_excluded_text_is_a_short_ham_message(real_splits: DataSplits) -> None:
    ham = {
        ex.text
        for part in (real_splits.train, real_splits.validation, real_splits.test)
        for ex in part
        if ex.source == SOURCE_SMS and ex.targets[1] == 0.0
    }
    for text in read_lines(EXCLUDED_FILE):
        assert text in ham and len(text) <= SHORT_HAM_CHARS


def test_short_benign_sets_hold_reviewed_ham_and_curated_lines(real_splits: DataSplits) -> None:
    excluded = set(read_lines(EXCLUDED_FILE))
    for split in ("validation", "test"):
        examples = short_benign(real_splits, split)
        sources = {ex.source for ex in examples}
        assert sources == {SOURCE_SMS, SOURCE_SHORT_CHAT}
        assert not {ex.text for ex in examples} & excluded
        assert all(ex.mask == (1.0, 1.0) and ex.targets == (0.0, 0.0) for ex in examples)
