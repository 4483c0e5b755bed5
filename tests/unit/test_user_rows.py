"""What a row is (model/user_rows.py): the layout, label fields, text and split cells."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from model.user_data import load_user_data
from model.user_data_errors import (
    BadLabelNameError,
    EmptyTextError,
    MissingTextError,
    TextTooLongError,
    TooManyLabelsError,
    UnknownLabelFieldError,
    UnknownSplitError,
    UserDataError,
    WrongTypeError,
)
from model.user_formats import iter_user_rows
from model.user_rows import MAX_TEXT_CHARS, DataLayout
from schemas.request import MAX_TEXT_CHARS as REQUEST_MAX_TEXT_CHARS
from tests.unit.test_user_formats import by_text, write_csv, write_jsonl

# ------------------------------------------------------------------------- label fields


def test_a_label_field_with_no_known_value_is_still_a_label(tmp_path: Path) -> None:
    data = load_user_data(write_csv(tmp_path, [["text", "hate", "x"], ["a", "", "1"]]))
    assert data.splits.labels == ("hate", "x")
    assert by_text(data.splits)["a"] == ((0.0, 1.0), (0.0, 1.0))
    rows = [{"text": "a", "x": True, "hate": None}]
    assert load_user_data(write_jsonl(tmp_path, rows)).splits.labels == ("hate", "x")


def test_label_spec_order_and_unknown_label_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [{"text": "a", "threat": True, "scam": False}])
    data = load_user_data(path, DataLayout(labels=("threat", "scam", "hate")))
    assert data.splits.labels == ("threat", "scam", "hate")
    assert by_text(data.splits)["a"] == ((1.0, 0.0, 0.0), (1.0, 1.0, 0.0))
    with pytest.raises(UnknownLabelFieldError) as caught:
        load_user_data(path, DataLayout(labels=("threat",)))
    assert caught.value.field == "scam"
    csv_path = write_csv(tmp_path, [["text", "threat", "scam"], ["a", "1", "0"]])
    with pytest.raises(UnknownLabelFieldError) as caught:
        load_user_data(csv_path, DataLayout(labels=("threat",)))
    assert (caught.value.line, caught.value.field) == (1, "scam")


def test_ignored_fields_and_custom_field_names(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path,
        [["id", "body", "fold", "threat"], ["7", "hello", "test", "1"], ["8", "bye", "train", ""]],
    )
    layout = DataLayout(text_field="body", split_field="fold", ignore_fields=frozenset({"id"}))
    data = load_user_data(path, layout)
    assert data.declared_splits
    assert [ex.text for ex in data.splits.test] == ["hello"]
    assert [ex.text for ex in data.splits.train] == ["bye"]
    assert data.splits.labels == ("threat",)
    with pytest.raises(WrongTypeError) as caught:
        load_user_data(path, DataLayout(text_field="body", split_field="fold"))
    assert caught.value.field == "id"


def test_layout_refuses_overlapping_fields() -> None:
    with pytest.raises(ValueError, match="differ"):
        DataLayout(text_field="x", split_field="x")
    with pytest.raises(ValueError, match="labels"):
        DataLayout(text_field="labels")
    with pytest.raises(ValueError, match="max_line_bytes"):
        DataLayout(max_line_bytes=0)


@pytest.mark.parametrize(
    "name", ["__proto__", "with space", "Spam", "1st", "a-b", "", "é", "x" * 33, "a\u200b"]
)
def test_unsafe_label_names_are_refused(tmp_path: Path, name: str) -> None:
    path = write_jsonl(tmp_path, [{"text": "x", name: True}])
    with pytest.raises(BadLabelNameError) as caught:
        load_user_data(path)
    assert caught.value.field == name
    csv_path = write_csv(tmp_path, [["text", name], ["x", "1"]])
    with pytest.raises(BadLabelNameError):
        load_user_data(csv_path)


def test_reserved_names_inside_labels_object_are_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [{"text": "x", "labels": {"text": True}}])
    with pytest.raises(BadLabelNameError, match="reserved"):
        load_user_data(path)


def test_longest_valid_label_name_and_most_labels(tmp_path: Path) -> None:
    names = [f"l{i:02d}_" + "x" * 28 for i in range(64)]  # 64 names of 32 characters
    path = write_jsonl(tmp_path, [{"text": "x", **dict.fromkeys(names, True)}])
    data = load_user_data(path)
    assert data.splits.labels == tuple(sorted(names))


def test_ten_thousand_labels_are_refused_row_header_and_union(tmp_path: Path) -> None:
    many = {f"label_{i}": True for i in range(10_000)}
    with pytest.raises(TooManyLabelsError) as caught:
        load_user_data(write_jsonl(tmp_path, [{"text": "x", **many}]))
    assert caught.value.line == 1
    header = ["text", *many]
    with pytest.raises(TooManyLabelsError):
        load_user_data(write_csv(tmp_path, [header, ["x", *["1"] * len(many)]]))
    rows = [{"text": f"text {i}", f"label_{i}": True} for i in range(65)]
    with pytest.raises(TooManyLabelsError) as caught:
        load_user_data(write_jsonl(tmp_path, rows, "union.jsonl"))
    assert caught.value.line == 65


# --------------------------------------------------------------------------------- text


def test_text_missing_empty_wrong_type(tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], type[UserDataError]]] = [
        ({"threat": True}, MissingTextError),
        ({"text": "", "threat": True}, EmptyTextError),
        ({"text": " \n\t ", "threat": True}, EmptyTextError),
        ({"text": 5, "threat": True}, WrongTypeError),
        ({"text": None, "threat": True}, WrongTypeError),
        ({"text": ["a"], "threat": True}, WrongTypeError),
    ]
    for row, error in cases:
        path = write_jsonl(tmp_path, [{"text": "fine", "threat": False}, row])
        with pytest.raises(error) as caught:
            load_user_data(path)
        assert (caught.value.line, caught.value.field) == (2, "text")
    with pytest.raises(MissingTextError) as missing:
        load_user_data(write_csv(tmp_path, [["message", "threat"], ["x", "1"]]))
    assert (missing.value.line, missing.value.field) == (1, "text")
    assert "'message'" in str(missing.value)  # lists the columns it found
    with pytest.raises(EmptyTextError):
        load_user_data(write_csv(tmp_path, [["text", "threat"], ["", "1"]]))


def test_text_cap_matches_requests_and_is_inclusive(tmp_path: Path) -> None:
    assert MAX_TEXT_CHARS == REQUEST_MAX_TEXT_CHARS
    longest = "a" * MAX_TEXT_CHARS  # a 1 MiB line
    path = write_jsonl(tmp_path, [{"text": longest, "threat": True}])
    assert len(next(iter_user_rows(path)).text) == MAX_TEXT_CHARS
    csv_path = write_csv(tmp_path, [["text", "threat"], [longest, "1"]])
    assert len(next(iter_user_rows(csv_path)).text) == MAX_TEXT_CHARS  # over csv's default
    with pytest.raises(TextTooLongError) as caught:
        load_user_data(write_jsonl(tmp_path, [{"text": longest + "b", "threat": True}]))
    assert (caught.value.line, caught.value.field) == (1, "text")
    with pytest.raises(TextTooLongError):
        load_user_data(write_csv(tmp_path, [["text", "threat"], [longest + "b", "1"]]))


# -------------------------------------------------------------------------- split cells


@pytest.mark.parametrize("split", ["dev", "Train", "valid", "val", " test", "TEST", "training"])
def test_unknown_split_names_line_and_field(tmp_path: Path, split: str) -> None:
    path = write_jsonl(tmp_path, [{"text": "a", "split": split, "threat": True}])
    with pytest.raises(UnknownSplitError) as caught:
        load_user_data(path)
    assert (caught.value.line, caught.value.field) == (1, "split")


def test_split_of_wrong_type(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [{"text": "a", "split": 1, "threat": True}])
    with pytest.raises(WrongTypeError) as caught:
        load_user_data(path)
    assert caught.value.field == "split"


def test_csv_split_cells_are_stripped_but_exact(tmp_path: Path) -> None:
    path = write_csv(tmp_path, [["text", "split", "x"], ["a", " test ", "1"], ["b", "Dev", "1"]])
    with pytest.raises(UnknownSplitError) as caught:
        load_user_data(path)
    assert caught.value.line == 3
