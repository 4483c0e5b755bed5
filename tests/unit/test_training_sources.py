"""model/training_sources.py: the bundled corpora and a user's files as one label set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from model.data import SOURCE_SMS, DataSplits
from model.label_spec import parse_label_spec
from model.training_sources import BundledLabelsError, DataRequest, in_order, load_training_data
from model.user_data import SOURCE_USER
from model.user_data_errors import SplitDuplicateError, UnknownLabelFieldError
from model.user_rows import DataLayout
from tests.helpers import synthetic_splits
from tests.user_files import LABEL_SPEC, USER_LABELS, user_rows, write_jsonl

BUNDLED = synthetic_splits()


def bundled() -> DataSplits:
    return BUNDLED


def test_without_files_the_bundled_splits_come_back_unchanged() -> None:
    data = load_training_data(DataRequest(), bundled)
    assert data.splits is BUNDLED and data.splits.fingerprint == "synthetic"
    assert data.where == "bundled corpora" and data.warnings == ()


def test_files_join_the_bundled_corpora_bundled_labels_first(tmp_path: Path) -> None:
    rows = user_rows()
    path = write_jsonl(tmp_path / "u.jsonl", rows)
    data = load_training_data(DataRequest(files=(path,)), bundled)
    splits = data.splits
    assert splits.labels == ("insult", "spam", *USER_LABELS)
    assert len(splits.train) == len(BUNDLED.train) + 400
    assert len(splits.validation) == len(BUNDLED.validation) + 120
    user = [ex for ex in splits.validation if ex.source == SOURCE_USER]
    assert all(ex.mask[:2] == (0.0, 0.0) for ex in user), "insult, spam unknown in user rows"
    assert all(ex.mask[2:] == (0.0,) * 3 for ex in splits.train if ex.source != SOURCE_USER)
    # The fingerprint covers the file: another byte, another fingerprint.
    assert splits.fingerprint not in ("synthetic", data.files[0].splits.fingerprint)
    path.write_text(
        path.read_text()
        + json.dumps({"text": "one more", "harassment": False, "split": "test"})
        + "\n"
    )
    again = load_training_data(DataRequest(files=(path,)), bundled)
    assert again.splits.fingerprint != splits.fingerprint
    assert data.where == f"bundled corpora + {path}"


def test_a_user_text_replaces_its_bundled_copy_and_keeps_its_labels(tmp_path: Path) -> None:
    """Like feedback: the bundled copy leaves its split (validation here), the user's
    row keeps its own (train), the user's value wins per label, and a label only the
    bundled copy knew is kept."""
    copied = next(ex for ex in BUNDLED.validation if ex.source == SOURCE_SMS and ex.targets[1] > 0)
    copies = sum(
        ex.text == copied.text
        for part in (BUNDLED.train, BUNDLED.validation, BUNDLED.test)
        for ex in part
    )
    rows = [
        {"text": copied.text.upper(), "insult": True, "harassment": False, "split": "train"},
        {"text": "you worthless creep", "harassment": True, "split": "train"},
    ]
    path = tmp_path / "u.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    data = load_training_data(DataRequest(files=(path,)), bundled)
    assert sum(data.superseded.values()) == copies and data.superseded["validation"] >= 1
    assert all(ex.text != copied.text for ex in data.splits.validation)
    (mine,) = [ex for ex in data.splits.train if ex.text == copied.text.upper()]
    labels = data.splits.labels
    assert mine.source == SOURCE_USER
    assert dict(zip(labels, mine.mask, strict=True)) == {
        "insult": 1.0,
        "spam": 1.0,
        "harassment": 1.0,
    }
    assert mine.targets[labels.index("spam")] == 1.0, "the bundled copy's spam label is kept"
    assert mine.targets[labels.index("insult")] == 1.0, "the user's insult label wins"


def test_the_label_spec_orders_the_labels_and_must_name_the_bundled_ones(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "u.jsonl", user_rows())
    spec = parse_label_spec(LABEL_SPEC)
    with pytest.raises(
        BundledLabelsError,
        match=r"insult, spam, which the label spec x\.toml does not name.*--no-bundled",
    ):
        load_training_data(DataRequest(files=(path,), spec=spec, spec_path=Path("x.toml")), bundled)
    reordered = parse_label_spec(
        "[labels.self_harm]\n[labels.spam]\n[labels.harassment]\n[labels.scam]\n[labels.insult]\n"
    )
    data = load_training_data(DataRequest(files=(path,), spec=reordered), bundled)
    assert data.splits.labels == ("self_harm", "spam", "harassment", "scam", "insult")
    alone = load_training_data(DataRequest(files=(path,), bundled=False, spec=spec), bundled)
    assert alone.splits.labels == USER_LABELS and not alone.bundled
    assert alone.where == str(path)


def test_with_a_spec_a_data_field_it_does_not_name_is_an_error_with_file_line_and_field(
    tmp_path: Path,
) -> None:
    path = write_jsonl(tmp_path / "u.jsonl", user_rows()[:5])
    with path.open("a") as f:
        f.write(json.dumps({"text": "i will find you", "threat": True, "split": "train"}) + "\n")
    spec = parse_label_spec(LABEL_SPEC)
    with pytest.raises(UnknownLabelFieldError) as raised:
        load_training_data(DataRequest(files=(path,), bundled=False, spec=spec), bundled)
    assert str(raised.value).startswith(f"{path}:6: field 'threat': not a label of the label spec")


def test_a_text_two_files_put_in_different_splits_is_refused_or_warned(tmp_path: Path) -> None:
    first = tmp_path / "a.jsonl"
    second = tmp_path / "b.csv"
    first.write_text(
        json.dumps({"text": "Same  Text", "harassment": True, "split": "train"}) + "\n"
    )
    second.write_text("text,harassment,split\nsame text,1,validation\nother text,0,train\n")
    request = DataRequest(files=(first, second), bundled=False)
    with pytest.raises(SplitDuplicateError) as raised:
        load_training_data(request, bundled)
    assert str(raised.value).startswith(
        f"{second}: 1 text(s) of this file are in another split in {first}"
    )
    allowed = load_training_data(
        DataRequest(files=(first, second), bundled=False, allow_split_duplicates=True), bundled
    )
    assert allowed.warnings == (f"{second}: {str(raised.value).split(': ', 1)[1]}",)
    same_split = tmp_path / "c.jsonl"
    same_split.write_text(
        json.dumps({"text": "same text", "harassment": True, "split": "train"}) + "\n"
    )
    kept = load_training_data(DataRequest(files=(first, same_split), bundled=False), bundled)
    assert len(kept.splits.train) == 2, "duplicates within a split both stay, as in one file"


def test_the_layout_reaches_the_reader(tmp_path: Path) -> None:
    path = tmp_path / "u.csv"
    path.write_text(
        "id,message,harassment,part\n1,you worthless creep,1,train\n2,hello there,0,validation\n"
    )
    layout = DataLayout(text_field="message", split_field="part", ignore_fields=frozenset({"id"}))
    data = load_training_data(DataRequest(files=(path,), bundled=False, layout=layout), bundled)
    assert data.splits.labels == ("harassment",)
    assert [ex.text for ex in data.splits.train] == ["you worthless creep"]
    assert data.summary()["files"][0] | {"path": "-"} == {
        "path": "-",
        "rows": 2,
        "labels": ["harassment"],
        "declared_splits": True,
        "examples": {"train": 1, "validation": 1, "test": 0},
    }


def test_in_order_permutes_and_widens() -> None:
    reordered = in_order(BUNDLED, ("spam", "threat", "insult"))
    assert reordered.labels == ("spam", "threat", "insult")
    for before, after in zip(BUNDLED.train, reordered.train, strict=True):
        assert after.targets == (before.targets[1], 0.0, before.targets[0])
        assert after.mask == (before.mask[1], 0.0, before.mask[0])
    assert reordered.fingerprint != BUNDLED.fingerprint
    assert in_order(BUNDLED, BUNDLED.labels) is BUNDLED
