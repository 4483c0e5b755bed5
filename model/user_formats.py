"""Reading a user's training file into rows: JSONL or CSV, as a stream, bounded.

Kept apart from the loader (`model.user_data`, splits and duplicates) because this is
where hostile bytes meet the project: every bound below is enforced here, one row at a
time, before the loader sees a `model.user_rows.UserRow`.

Format, by file name: `.jsonl` / `.ndjson` is one JSON object per line; `.csv` is a
header row then one record per row (RFC 4180 quoting; a quoted field may span lines).
Parquet is not read: it would add pyarrow (tens of MB) to the training image for a
format that one line of pandas (`df.to_json(path, orient="records", lines=True)`)
turns into JSONL, and its row groups are read whole, which defeats the per-row bound.
What a row holds and how its cells are spelled: `model.user_rows`.

Hostile input, bounded:
1. The file is read line by line with `readline(limit)`, never whole: a line (JSONL)
   or record (CSV) over `MAX_LINE_BYTES` (16 MiB, its line ends included) is a
   `LineTooLongError` naming the line, raised after reading at most that many bytes.
   16 MiB holds the longest text the cap admits however it is spelled (1,048,576
   astral characters written as 12-byte `\\ud83d\\ude00` escapes take 12 MiB) plus
   its labels.
2. The CSV field size limit is set explicitly to that bound while reading (the
   module's default, 131,072 characters, would reject valid texts), and restored after.
3. A UTF-8 byte order mark is skipped; a UTF-16/32 one, or invalid UTF-8, is a
   `FileEncodingError` naming the line. CRLF line ends are accepted.
4. JSON's `NaN`/`Infinity`, a key repeated in one object, and nesting too deep for
   the parser are each a `BadJsonError`, as is any syntax error.
5. A row with more than `MAX_LABELS` label fields, or a file with more distinct
   labels (counted by the loader), is a `TooManyLabelsError`.
Memory: one row at a time while reading, at most about twice `MAX_LINE_BYTES` for
the row in hand (the buffered reader joins a long line's pieces: refusing a 64 MiB
line at the 16 MiB bound peaked at 34 MB under tracemalloc). One CSV record is the
exception to "about twice": the csv module makes a list entry per field before the
row can be checked, so a 16 MiB record of nothing but commas peaked at 160 MB (still
bounded).
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from model.label_names import MAX_LABELS
from model.strict_json import STRICT_DECODER
from model.user_data_errors import (
    BadCsvError,
    BadJsonError,
    DuplicateFieldError,
    EmptyDataError,
    FileEncodingError,
    LineTooLongError,
    MissingTextError,
    TooManyLabelsError,
    UnknownFieldError,
    UnsupportedFormatError,
    WrongTypeError,
)
from model.user_rows import (
    DEFAULT_LAYOUT,
    DataLayout,
    UserRow,
    check_label_field,
    checked_text,
    declared_split,
)

JSONL_SUFFIXES = (".jsonl", ".ndjson")
CSV_SUFFIXES = (".csv",)
TRUE_CELLS = frozenset({"true", "1", "1.0", "yes"})
FALSE_CELLS = frozenset({"false", "0", "0.0", "no"})
_UTF8_BOM = b"\xef\xbb\xbf"
_WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")  # UTF-16 LE/BE, UTF-32 (LE: ff fe)
_MISSING = object()
_NOT_A_LABEL_HINT = " (if this field is not a label, list it in the ignored fields)"


class Digest(Protocol):
    """What the reader feeds every byte it reads (a `hashlib` object)."""

    def update(self, data: bytes, /) -> None: ...


# ------------------------------------------------------------------------- reading


class _Lines:
    """A binary file's lines, each decoded as UTF-8, read with a byte bound per record.

    Feeds the fingerprint every byte it reads. `start_record` marks where a record (a
    JSONL line, a CSV record of one or more lines) begins; the bound is on the bytes
    read since then.
    """

    def __init__(self, file: BinaryIO, path: Path, limit: int, digest: Digest) -> None:
        self._file, self._path, self._limit, self._digest = file, path, limit, digest
        self.number = 0  # lines read so far
        self.record_start = 1
        self._record_bytes = 0

    def start_record(self) -> None:
        self.record_start = self.number + 1
        self._record_bytes = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        raw = self._file.readline(self._limit - self._record_bytes + 1)
        if not raw:
            raise StopIteration
        self.number += 1
        self._digest.update(raw)
        if self.number == 1:
            raw = self._without_bom(raw)
        self._record_bytes += len(raw)
        if self._record_bytes > self._limit:
            what = "line" if self.record_start == self.number else "record from this line"
            raise LineTooLongError(
                self._path, f"{what} is over {self._limit} bytes", line=self.record_start
            )
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FileEncodingError(
                self._path, f"not UTF-8 (byte {e.start + 1} of the line)", line=self.number
            ) from None

    def _without_bom(self, raw: bytes) -> bytes:
        if raw.startswith(_UTF8_BOM):
            return raw[len(_UTF8_BOM) :]
        if raw.startswith(_WIDE_BOMS):
            raise FileEncodingError(
                self._path, "UTF-16 or UTF-32 byte order mark: save the file as UTF-8", line=1
            )
        return raw


def iter_user_rows(
    path: str | Path, layout: DataLayout = DEFAULT_LAYOUT, digest: Digest | None = None
) -> Iterator[UserRow]:
    """The file's data rows, one at a time, each checked (this module's docstring and
    `model.user_rows`); raises the first `UserDataError`. `digest` (a hashlib object),
    if given, is fed every byte read."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in JSONL_SUFFIXES + CSV_SUFFIXES:
        raise UnsupportedFormatError(
            path,
            f"unsupported file type {suffix or '(none)'!r}: "
            f"use JSONL ({', '.join(JSONL_SUFFIXES)}) or CSV (.csv)",
        )
    sink = digest if digest is not None else hashlib.sha256()
    with open(path, "rb") as file:
        lines = _Lines(file, path, layout.max_line_bytes, sink)
        if suffix in CSV_SUFFIXES:
            yield from _csv_rows(lines, path, layout)
        else:
            yield from _jsonl_rows(lines, path, layout)


# --------------------------------------------------------------------------- JSONL


def _jsonl_rows(lines: _Lines, path: Path, layout: DataLayout) -> Iterator[UserRow]:
    while True:
        lines.start_record()
        try:
            line = next(lines)
        except StopIteration:
            return
        if not line.strip():
            continue  # blank lines (a trailing newline, spacing) carry nothing
        try:
            value = STRICT_DECODER.decode(line)
        except RecursionError:
            raise BadJsonError(path, "nested too deeply", line=lines.number) from None
        except ValueError as e:  # JSONDecodeError, our hooks, int digits over the limit
            raise BadJsonError(path, f"not JSON: {e}", line=lines.number) from None
        yield _json_row(value, path, lines.number, layout)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def _json_row(value: Any, path: Path, line: int, layout: DataLayout) -> UserRow:
    if not isinstance(value, dict):
        raise WrongTypeError(path, f"a row must be a JSON object, got {_json_type(value)}", line)
    text = value.get(layout.text_field, _MISSING)
    if text is _MISSING:
        raise MissingTextError(path, "missing", line, layout.text_field)
    if not isinstance(text, str):
        raise WrongTypeError(
            path, f"must be a string, got {_json_type(text)}", line, layout.text_field
        )
    split_value = value.get(layout.split_field)
    if split_value is not None and not isinstance(split_value, str):
        raise WrongTypeError(
            path, f"must be a string, got {_json_type(split_value)}", line, layout.split_field
        )
    skipped = {layout.text_field, layout.split_field, *layout.ignore_fields}
    if "labels" in value:
        others = sorted(set(value) - skipped - {"labels"})
        if others:
            raise UnknownFieldError(
                path, "a row with a 'labels' object has no other label fields", line, others[0]
            )
        raw = value["labels"]
        if not isinstance(raw, dict):
            raise WrongTypeError(path, f"must be an object, got {_json_type(raw)}", line, "labels")
        prefix = "labels."
    else:
        raw = {key: cell for key, cell in value.items() if key not in skipped}
        prefix = ""
    if len(raw) > MAX_LABELS:
        raise TooManyLabelsError(path, f"{len(raw)} label fields, at most {MAX_LABELS}", line)
    labels: dict[str, bool] = {}
    for name, cell in raw.items():
        check_label_field(name, path, line, layout, prefix + name)
        known = _json_label(cell, path, line, prefix + name, flat=not prefix)
        if known is not None:
            labels[name] = known
    return UserRow(
        line=line,
        text=checked_text(text, path, line, layout.text_field),
        labels=labels,
        split=declared_split(split_value, path, line, layout.split_field),
        fields=tuple(raw),
    )


def _json_label(cell: Any, path: Path, line: int, field: str, flat: bool) -> bool | None:
    if cell is None:
        return None
    if isinstance(cell, bool):
        return cell
    if isinstance(cell, int | float) and cell in (0, 1):
        return bool(cell)
    shown = repr(cell) if not isinstance(cell, dict | list) else _json_type(cell)
    hint = _NOT_A_LABEL_HINT if flat else ""
    raise WrongTypeError(
        path, f"must be true, false, 1, 0 or null, got {shown[:40]}{hint}", line, field
    )


# ----------------------------------------------------------------------------- CSV


@contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    """The csv module's field size limit is process-wide: set it, then restore it."""
    before = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(before)


@dataclass(frozen=True)
class _Columns:
    text: int
    split: int | None
    labels: tuple[tuple[int, str], ...]  # (column, label)
    width: int

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.labels)


def _csv_rows(lines: _Lines, path: Path, layout: DataLayout) -> Iterator[UserRow]:
    with _csv_field_limit(layout.max_line_bytes):
        reader = csv.reader(lines, strict=True)
        header = _next_record(reader, lines, path)
        if header is None:
            raise EmptyDataError(path, "empty file: no header, no rows")
        columns = _csv_columns([name.strip() for name in header], path, layout)
        while (record := _next_record(reader, lines, path)) is not None:
            if not any(cell.strip() for cell in record):
                continue  # blank lines
            line = lines.record_start
            if len(record) != columns.width:
                raise BadCsvError(
                    path, f"{len(record)} fields, the header has {columns.width}", line
                )
            yield _csv_row(record, columns, path, line, layout)


def _next_record(reader: Iterator[list[str]], lines: _Lines, path: Path) -> list[str] | None:
    lines.start_record()
    try:
        return next(reader)
    except StopIteration:
        return None
    except csv.Error as e:
        raise BadCsvError(path, f"not CSV: {e}", lines.record_start) from None


def _csv_columns(header: Sequence[str], path: Path, layout: DataLayout) -> _Columns:
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise DuplicateFieldError(path, "the header names this column twice", 1, name)
        seen.add(name)
    if layout.text_field not in seen:
        shown = ", ".join(repr(n) for n in header[:20])
        raise MissingTextError(
            path, f"no such column; the header has {shown}", 1, layout.text_field
        )
    label_columns = [
        (i, name)
        for i, name in enumerate(header)
        if name not in (layout.text_field, layout.split_field) and name not in layout.ignore_fields
    ]
    if len(label_columns) > MAX_LABELS:
        raise TooManyLabelsError(
            path, f"{len(label_columns)} label columns, at most {MAX_LABELS}", 1
        )
    for _, name in label_columns:
        check_label_field(name, path, 1, layout, name)
    return _Columns(
        text=header.index(layout.text_field),
        split=header.index(layout.split_field) if layout.split_field in seen else None,
        labels=tuple(label_columns),
        width=len(header),
    )


def _csv_row(
    record: Sequence[str], columns: _Columns, path: Path, line: int, layout: DataLayout
) -> UserRow:
    labels: dict[str, bool] = {}
    for i, name in columns.labels:
        cell = record[i].strip().casefold()
        if cell in TRUE_CELLS:
            labels[name] = True
        elif cell in FALSE_CELLS:
            labels[name] = False
        elif cell:
            raise WrongTypeError(
                path,
                f"must be true/false/1/0/yes/no or empty, got {record[i][:40]!r}"
                + _NOT_A_LABEL_HINT,
                line,
                name,
            )
    split_cell = record[columns.split].strip() if columns.split is not None else ""
    return UserRow(
        line=line,
        text=checked_text(record[columns.text], path, line, layout.text_field),
        labels=labels,
        split=declared_split(split_cell, path, line, layout.split_field),
        fields=columns.names,
    )
