"""Reading a user's training file (model/user_formats.py): JSONL and CSV, hostile input.

Through the loader where the result is clearest as splits; `iter_user_rows` where the
streaming itself is the point."""

from __future__ import annotations

import csv
import json
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from model.errors import ExitCode, ModstreamError
from model.user_data import SOURCE_USER, load_user_data
from model.user_data_errors import (
    BadCsvError,
    BadJsonError,
    BadLabelNameError,
    DuplicateFieldError,
    EmptyDataError,
    FileEncodingError,
    LineTooLongError,
    TextTooLongError,
    UnknownFieldError,
    UnsupportedFormatError,
    UserDataError,
    WrongTypeError,
)
from model.user_formats import iter_user_rows
from model.user_rows import MAX_LINE_BYTES, MAX_TEXT_CHARS, DataLayout


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


# ------------------------------------------------------------------- formats and labels


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


def test_labels_object_with_other_label_fields_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path, [{"text": "x", "labels": {"threat": True}, "scam": True}])
    with pytest.raises(UnknownFieldError) as caught:
        load_user_data(path)
    assert caught.value.field == "scam"
    path = write_jsonl(tmp_path, [{"text": "x", "labels": ["threat"]}])
    with pytest.raises(WrongTypeError) as caught_type:
        load_user_data(path)
    assert caught_type.value.field == "labels"


def test_csv_header_names_are_stripped_json_keys_are_not(tmp_path: Path) -> None:
    data = load_user_data(write_csv(tmp_path, [[" text", "threat "], ["x", "1"]]))
    assert data.splits.labels == ("threat",)
    with pytest.raises(BadLabelNameError):
        load_user_data(write_jsonl(tmp_path, [{"text": "x", "threat ": True}]))


def test_unsupported_formats_say_what_is_read(tmp_path: Path) -> None:
    for name in ("data.parquet", "data.json", "data"):
        with pytest.raises(UnsupportedFormatError, match="JSONL"):
            load_user_data(write_bytes(tmp_path, b"PAR1", name))


def test_ndjson_and_upper_case_suffixes(tmp_path: Path) -> None:
    path = write_bytes(tmp_path, b'{"text": "x", "threat": true}\n', "data.NDJSON")
    assert load_user_data(path).rows == 1


def test_longest_text_spelled_as_escaped_astral_characters_fits(tmp_path: Path) -> None:
    text = "\U0001f600" * MAX_TEXT_CHARS  # each a 12-byte surrogate pair escape
    line = json.dumps({"text": text, "threat": True})  # ensure_ascii, as json.dumps writes
    assert len(line) > 12 << 20
    path = write_bytes(tmp_path, line.encode() + b"\n", "emoji.jsonl")
    assert next(iter_user_rows(path)).text == text


# ---------------------------------------------------------------------------- bad files


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
