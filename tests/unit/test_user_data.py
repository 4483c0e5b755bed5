"""A user's training file, loaded (model/user_data.py): splits, duplicates, fingerprint."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from model.data import hash_split
from model.tokenizer import normalize
from model.user_data import canonical_text, load_user_data
from model.user_data_errors import MixedSplitError, SplitDuplicateError
from model.user_rows import DataLayout
from tests.unit.test_user_formats import write_jsonl

# ------------------------------------------------------------------------------- splits


def test_declared_splits_are_honoured(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path,
        [
            {"text": "a", "split": "train", "threat": True},
            {"text": "b", "split": "validation", "threat": False},
            {"text": "c", "split": "test", "threat": True},
        ],
    )
    data = load_user_data(path)
    assert data.declared_splits
    texts = [[ex.text for ex in part] for part in (data.splits.train, data.splits.validation)]
    assert texts == [["a"], ["b"]]
    assert [ex.text for ex in data.splits.test] == ["c"]


def test_mixed_declared_and_undeclared_splits(tmp_path: Path) -> None:
    rows = [
        {"text": "a", "split": "train", "x": True},
        {"text": "b", "x": True},
    ]
    with pytest.raises(MixedSplitError) as caught:
        load_user_data(write_jsonl(tmp_path, rows))
    assert caught.value.line == 2
    rows = [{"text": "a", "x": True}, {"text": "b", "split": None, "x": True}]
    assert not load_user_data(write_jsonl(tmp_path, rows)).declared_splits  # null = none


def test_hashed_split_is_the_bundled_rule_and_keeps_duplicates_together(tmp_path: Path) -> None:
    texts = [f"message number {i} about things" for i in range(3000)]
    variants = [t.upper().replace(" ", "   ") for t in texts[:300]]  # same text, other form
    rows = [{"text": t, "x": i % 2 == 0} for i, t in enumerate(texts + variants)]
    data = load_user_data(write_jsonl(tmp_path, rows))
    where = {
        ex.text: name
        for name in ("train", "validation", "test")
        for ex in getattr(data.splits, name)
    }
    for text in texts:
        assert where[text] == hash_split(text)  # the SMS corpus' rule, same buckets
    for text, variant in zip(texts, variants, strict=False):
        assert where[variant] == where[text]
    shares = Counter(hash_split(t) for t in texts)
    assert 0.77 < shares["train"] / len(texts) < 0.83  # 80/10/10
    assert 0.08 < shares["validation"] / len(texts) < 0.12
    assert data.warnings == ()  # hashed duplicates never straddle, and agree here


def test_canonical_text_is_the_tokenizers_normalisation() -> None:
    for text in [
        "Hello  World",
        "\uff26\uff35\uff2c\uff2c width",
        "\ufb01ne\u00a0print",
        "Ünïcödé\tTabs",
        "İstanbul",
    ]:
        assert canonical_text(text) == " ".join(normalize(text).split())


def test_canonical_text_is_bounded_on_combining_marks() -> None:
    # One letter with 200,000 marks of four classes: hash_split's unbounded NFKC sorts
    # them by insertion (34 s for 100,000 when measured); the bounded path is linear.
    import time

    marks = "\u0301\u0316\u0334\u0345" * 50_000
    started = time.perf_counter()
    canonical_text("a" + marks)
    assert time.perf_counter() - started < 10.0  # bounded path: about 0.1 s


def test_text_declared_in_two_splits_is_an_error_or_a_warning(tmp_path: Path) -> None:
    rows = [
        {"text": "Same Text", "split": "train", "x": True},
        {"text": "other", "split": "train", "x": False},
        {"text": "same   text", "split": "test", "x": True},
    ]
    path = write_jsonl(tmp_path, rows)
    with pytest.raises(SplitDuplicateError) as caught:
        load_user_data(path)
    assert caught.value.line == 3 and "line 1" in str(caught.value)
    data = load_user_data(path, allow_split_duplicates=True)
    assert len(data.warnings) == 1 and "another split" in data.warnings[0]
    assert len(data.splits.test) == 1  # kept where declared


def test_duplicates_that_disagree_and_rows_without_labels_are_warned(tmp_path: Path) -> None:
    rows = [
        {"text": "you again", "x": True},
        {"text": "YOU AGAIN", "x": False},
        {"text": "no labels here"},
    ]
    data = load_user_data(write_jsonl(tmp_path, rows))
    assert any("disagree" in w for w in data.warnings)
    assert any("1 row(s) know no label" in w for w in data.warnings)


# --------------------------------------------------------------------- fingerprint


def test_fingerprint_follows_bytes_layout_and_labels(tmp_path: Path) -> None:
    rows = [{"text": "a", "x": True, "id": "1"}]
    layout = DataLayout(ignore_fields=frozenset({"id"}))
    first = load_user_data(write_jsonl(tmp_path, rows), layout).splits.fingerprint
    assert load_user_data(write_jsonl(tmp_path, rows), layout).splits.fingerprint == first
    rows[0]["id"] = "2"  # an ignored field still changes the bytes
    assert load_user_data(write_jsonl(tmp_path, rows), layout).splits.fingerprint != first
    spec = DataLayout(ignore_fields=frozenset({"id"}), labels=("x", "y"))
    assert load_user_data(write_jsonl(tmp_path, rows), spec).splits.fingerprint != first
