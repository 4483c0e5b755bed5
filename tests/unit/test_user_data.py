"""A user's training file (model/user_data.py): formats, labels, splits, hostile input."""

from __future__ import annotations

import csv
import json
import tracemalloc
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from model.data import hash_split
from model.errors import ExitCode, ModstreamError
from model.tokenizer import normalize
from model.user_data import (
    MAX_LINE_BYTES,
    MAX_TEXT_CHARS,
    SOURCE_USER,
    DataLayout,
    canonical_text,
    iter_user_rows,
    load_user_data,
)
from model.user_data_errors import (
    BadCsvError,
    BadJsonError,
    BadLabelNameError,
    DuplicateFieldError,
    EmptyDataError,
    EmptyTextError,
    FileEncodingError,
    LineTooLongError,
    MissingTextError,
    MixedSplitError,
    SplitDuplicateError,
    TextTooLongError,
    TooManyLabelsError,
    UnknownFieldError,
    UnknownLabelFieldError,
    UnknownSplitError,
    UnsupportedFormatError,
    UserDataError,
    WrongTypeError,
)
from schemas.request import MAX_TEXT_CHARS as REQUEST_MAX_TEXT_CHARS


def write_jsonl(tmp_path: Path, rows: Sequence[Any], name: str = "data.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_bytes(tmp_path: Path, data: bytes, name: str) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def write_csv(tmp_path: Path, rows: Sequence[Sequence[str]], name: str = "data.csv") -> Path:
    path = tmp_path / name
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def by_text(data_splits: Any) -> dict[str, tuple[tuple[float, ...], tuple[float, ...]]]:
    examples = data_splits.train + data_splits.validation + data_splits.test
    return {ex.text: (ex.targets, ex.mask) for ex in examples}


# ------------------------------------------------------------------ formats and labels


def test_jsonl_flat_and_object_forms_mask_missing_labels(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path,
        [
            {"text": "i will find you", "threat": True},
            {"text": "buy cheap pills", "labels": {"scam": True, "threat": False}},
            {"text": "nice weather", "threat": False, "scam": None},
        ],
    )
    data = load_user_data(path)
    assert data.splits.labels == ("scam", "threat")  # sorted without a spec
    assert data.rows == 3 and not data.declared_splits
    got = by_text(data.splits)
    assert got["i will find you"] == ((0.0, 1.0), (0.0, 1.0))  # scam unknown, not negative
    assert got["buy cheap pills"] == ((1.0, 0.0), (1.0, 1.0))
    assert got["nice weather"] == ((0.0, 0.0), (0.0, 1.0))  # null = unknown
    examples = data.splits.train + data.splits.validation + data.splits.test
    assert {ex.source for ex in examples} == {SOURCE_USER}


@pytest.mark.parametrize(
    ("value", "known"),
    [(True, True), (False, False), (1, True), (0, False), (1.0, True), (0.0, False)],
)
def test_jsonl_boolean_spellings(tmp_path: Path, value: object, known: bool) -> None:
    path = write_jsonl(tmp_path, [{"text": "hello", "threat": value}])
    (row,) = list(iter_user_rows(path))
    assert row.labels == {"threat": known}


@pytest.mark.parametrize("value", ["true", "yes", 2, -1, 0.5, [], {}])
def test_jsonl_label_of_wrong_type_names_line_and_field(tmp_path: Path, value: object) -> None:
    path = write_jsonl(tmp_path, [{"text": "ok", "threat": True}, {"text": "x", "threat": value}])
    with pytest.raises(WrongTypeError) as caught:
        load_user_data(path)
    assert (caught.value.line, caught.value.field) == (2, "threat")
    assert f"{path}:2: field 'threat'" in str(caught.value)
    assert "ignored fields" in str(caught.value)  # a flat field may be an export's id


def test_jsonl_label_in_labels_object_is_named_with_its_path(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [{"text": "x", "labels": {"threat": "no"}}])
    with pytest.raises(WrongTypeError) as caught:
        load_user_data(path)
    assert caught.value.field == "labels.threat"


@pytest.mark.parametrize(
    ("cell", "known"),
    [
        ("true", True),
        ("TRUE", True),
        (" Yes ", True),
        ("1", True),
        ("1.0", True),
        ("false", False),
        ("No", False),
        ("0", False),
        ("0.0", False),
        ("", None),
        ("   ", None),
    ],
)
def test_csv_boolean_spellings(tmp_path: Path, cell: str, known: bool | None) -> None:
    path = write_csv(tmp_path, [["text", "threat"], ["hello", cell]])
    (row,) = list(iter_user_rows(path))
    assert row.labels == ({} if known is None else {"threat": known})


@pytest.mark.parametrize("cell", ["maybe", "2", "y", "n", "t", "on", "1.5", "nan"])
def test_csv_other_cells_are_wrong_type_with_row_and_column(tmp_path: Path, cell: str) -> None:
    path = write_csv(tmp_path, [["text", "threat"], ["fine", "0"], ["bad", cell]])
    with pytest.raises(WrongTypeError) as caught:
        load_user_data(path)
    assert (caught.value.line, caught.value.field) == (3, "threat")


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


def test_labels_object_with_other_label_fields_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [{"text": "x", "labels": {"threat": True}, "scam": True}])
    with pytest.raises(UnknownFieldError) as caught:
        load_user_data(path)
    assert caught.value.field == "scam"
    path = write_jsonl(tmp_path, [{"text": "x", "labels": ["threat"]}])
    with pytest.raises(WrongTypeError) as caught_type:
        load_user_data(path)
    assert caught_type.value.field == "labels"


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


def test_csv_header_names_are_stripped_json_keys_are_not(tmp_path: Path) -> None:
    data = load_user_data(write_csv(tmp_path, [[" text", "threat "], ["x", "1"]]))
    assert data.splits.labels == ("threat",)
    with pytest.raises(BadLabelNameError):
        load_user_data(write_jsonl(tmp_path, [{"text": "x", "threat ": True}]))


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


def test_unsupported_formats_say_what_is_read(tmp_path: Path) -> None:
    for name in ("data.parquet", "data.json", "data"):
        with pytest.raises(UnsupportedFormatError, match="JSONL"):
            load_user_data(write_bytes(tmp_path, b"PAR1", name))


def test_ndjson_and_upper_case_suffixes(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, b'{"text": "x", "threat": true}\n', "data.NDJSON")
    assert load_user_data(path).rows == 1


# ---------------------------------------------------------------------------- text


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


def test_longest_text_spelled_as_escaped_astral_characters_fits(tmp_path: Path) -> None:
    text = "\U0001f600" * MAX_TEXT_CHARS  # each a 12-byte surrogate pair escape
    line = json.dumps({"text": text, "threat": True})  # ensure_ascii, as json.dumps writes
    assert len(line) > 12 << 20
    path = write_bytes(tmp_path, line.encode() + b"\n", "emoji.jsonl")
    assert next(iter_user_rows(path)).text == text


# -------------------------------------------------------------------------- splits


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


# ----------------------------------------------------------------------- bad files


def test_empty_files(tmp_path: Path) -> None:
    for name, data in [
        ("a.jsonl", b""),
        ("b.jsonl", b"\n\n  \r\n"),
        ("c.csv", b""),
        ("d.csv", b"text,threat\r\n"),
        ("e.csv", b"text,threat\n\n,\n"),
        ("f.jsonl", b"\xef\xbb\xbf"),
    ]:
        with pytest.raises(EmptyDataError):
            load_user_data(write_bytes(tmp_path, data, name))


def test_bad_json_lines(tmp_path: Path) -> None:
    cases = [
        b'{"text": "a", "x": NaN}',
        b'{"text": "a", "x": Infinity}',
        b'{"text": "a", "x": -Infinity}',
        b'{"text": "a", "text": "b", "x": true}',
        b'{"text": "a", "x": true',
        b"{'text': 'a'}",
        b'{"text": "a", "x": 1' + b"1" * 5000 + b"}",  # more digits than int() takes
        b"[" * 100_000 + b"]" * 100_000,
    ]
    for body in cases:
        path = write_bytes(tmp_path, b'{"text": "ok", "x": true}\n' + body + b"\n", "bad.jsonl")
        with pytest.raises(BadJsonError) as caught:
            load_user_data(path)
        assert caught.value.line == 2


def test_json_values_that_are_not_objects(tmp_path: Path) -> None:
    for body in [b"[1, 2]", b'"text"', b"null", b"3"]:
        path = write_bytes(tmp_path, body + b"\n", "rows.jsonl")
        with pytest.raises(WrongTypeError, match="JSON object"):
            load_user_data(path)


def test_huge_json_number_is_not_a_boolean(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, b'{"text": "a", "x": 1e400}\n', "inf.jsonl")
    with pytest.raises(WrongTypeError):
        load_user_data(path)


def test_bom_and_crlf(tmp_path: Path) -> None:
    bom = b"\xef\xbb\xbf"
    jsonl = bom + b'{"text": "a", "x": true}\r\n{"text": "b", "x": false}\r\n'
    assert load_user_data(write_bytes(tmp_path, jsonl, "bom.jsonl")).rows == 2
    table = bom + b'text,x\r\n"multi\r\nline",yes\r\nb,no\r\n'
    data = load_user_data(write_bytes(tmp_path, table, "bom.csv"))
    assert set(by_text(data.splits)) == {"multi\r\nline", "b"}


def test_wide_encodings_and_invalid_utf8(tmp_path: Path) -> None:
    utf16 = '{"text": "a", "x": true}\n'.encode("utf-16")
    with pytest.raises(FileEncodingError, match="UTF-16"):
        load_user_data(write_bytes(tmp_path, utf16, "wide.jsonl"))
    with pytest.raises(FileEncodingError, match="UTF-16"):
        load_user_data(write_bytes(tmp_path, "text,x\na,1\n".encode("utf-16"), "wide.csv"))
    latin1 = b'{"text": "a", "x": true}\n{"text": "b", "x": true}\n{"text": "caf\xe9", "x": 1}\n'
    with pytest.raises(FileEncodingError) as caught:
        load_user_data(write_bytes(tmp_path, latin1, "latin1.jsonl"))
    assert caught.value.line == 3


def test_csv_structure_errors_name_the_record(tmp_path: Path) -> None:
    with pytest.raises(BadCsvError) as caught:
        load_user_data(write_bytes(tmp_path, b'text,x\n"a\nb",1\nc,1,extra\n', "w.csv"))
    assert caught.value.line == 4  # the record after a two-line one
    with pytest.raises(BadCsvError):
        load_user_data(write_bytes(tmp_path, b'text,x\n"ab"c,1\n', "q.csv"))  # strict quoting
    with pytest.raises(BadCsvError):
        load_user_data(write_bytes(tmp_path, b'text,x\n"never closed,1\n', "open.csv"))
    with pytest.raises(DuplicateFieldError) as duplicate:
        load_user_data(write_bytes(tmp_path, b"text,x, x\na,1,0\n", "dup.csv"))
    assert duplicate.value.field == "x"


def test_csv_field_size_limit_is_restored(tmp_path: Path) -> None:
    before = csv.field_size_limit()
    load_user_data(write_csv(tmp_path, [["text", "x"], ["a" * 200_000, "1"]]))
    assert csv.field_size_limit() == before
    with pytest.raises(WrongTypeError):
        load_user_data(write_csv(tmp_path, [["text", "x"], ["a", "?"]]))
    assert csv.field_size_limit() == before


def test_line_over_the_bound_names_its_line(tmp_path: Path) -> None:
    layout = DataLayout(max_line_bytes=1000)
    fine = b'{"text": "ok", "x": true}\n'
    long_line = b'{"text": "' + b"a" * 2000 + b'", "x": true}\n'
    path = write_bytes(tmp_path, fine * 2 + long_line + fine, "long.jsonl")
    with pytest.raises(LineTooLongError) as caught:
        load_user_data(path, layout)
    assert caught.value.line == 3 and "over 1000 bytes" in str(caught.value)
    multi = b"text,x\n" + b'"' + b"a\n" * 600 + b'",1\n'  # one record over many lines
    with pytest.raises(LineTooLongError) as record:
        load_user_data(write_bytes(tmp_path, multi, "long.csv"), layout)
    assert record.value.line == 2


def test_a_64_mib_line_is_refused_after_reading_at_most_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    with open(path, "wb") as f:
        f.write(b'{"text": "ok", "x": true}\n{"text": "')
        chunk = b"a" * (1 << 20)
        for _ in range(64):
            f.write(chunk)
        f.write(b'", "x": true}\n')
    bound = 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(LineTooLongError) as caught:
            load_user_data(path, DataLayout(max_line_bytes=bound))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert caught.value.line == 2
    assert peak < 3 * bound  # about twice the bound (readline joins its pieces), not 64 MiB


def test_default_bound_refuses_a_line_one_byte_over(tmp_path: Path) -> None:
    prefix = b'{"x": true, "text": "'
    suffix = b'"}\n'
    body = b"a" * (MAX_LINE_BYTES - len(prefix) - len(suffix))
    exact = write_bytes(tmp_path, prefix + body + suffix, "exact.jsonl")
    with pytest.raises(TextTooLongError):  # read whole: the text is what is too long
        load_user_data(exact)
    over = write_bytes(tmp_path, prefix + body + b"a" + suffix, "over.jsonl")
    with pytest.raises(LineTooLongError, match=f"over {MAX_LINE_BYTES} bytes"):
        load_user_data(over)


def test_rows_stream_one_at_a_time(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, b'{"text": "first", "x": true}\n{broken\n', "stream.jsonl")
    rows = iter_user_rows(path)
    assert next(rows).text == "first"  # read before the broken line is reached
    with pytest.raises(BadJsonError):
        next(rows)


def test_errors_are_usage_errors_with_place(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [{"text": "a", "x": "?"}])
    with pytest.raises(ModstreamError) as caught:
        load_user_data(path)
    assert caught.value.exit_code == ExitCode.USAGE
    assert isinstance(caught.value, UserDataError)
    assert caught.value.path == path


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
