"""A user's labelled training file: JSONL or CSV, read as a stream, checked row by row.

Format, by file name: `.jsonl` / `.ndjson` is one JSON object per line; `.csv` is a
header row then one record per row (RFC 4180 quoting; a quoted field may span lines).
Parquet is not read: it would add pyarrow (tens of MB) to the training image for a
format that one line of pandas (`df.to_json(path, orient="records", lines=True)`)
turns into JSONL, and its row groups are read whole, which defeats the per-row bound.

A row (`DataLayout` names the fields; defaults shown):
- `text`: the message, a non-empty string of at most `MAX_TEXT_CHARS` (1,048,576)
  characters, the same hard cap as a request's text (`schemas.request`).
- labels: one field per label (`{"text": …, "threat": true}`, a CSV column `threat`),
  or, in JSONL, one `labels` object (`{"text": …, "labels": {"threat": true}}`). A
  label a row does not give is unknown, not negative: its loss is masked.
  JSONL values: `true`/`false`, `1`/`0` (or `1.0`/`0.0`), `null` = unknown.
  CSV cells, case and surrounding spaces ignored: `true`/`false`, `1`/`0`,
  `1.0`/`0.0` (pandas writes float columns so), `yes`/`no`; empty = unknown.
  Anything else is a `WrongTypeError`. Names follow `model.label_names`.
- `split` (optional): `train`, `validation` or `test`, exactly; anything else is an
  `UnknownSplitError`. Either every row declares one or none does (`MixedSplitError`);
  null or an empty cell counts as not declared.
- Fields listed in `DataLayout.ignore_fields` (an export's `id`, `author`, …) are
  skipped; with a label spec (`DataLayout.labels`), any other field must be one of its
  labels (`UnknownLabelFieldError`).

Without a label spec, the labels are every label field the file has (sorted by name),
even one whose values are all unknown: `model.label_support.check_trainable` then says
it has nothing to train on, rather than the label silently disappearing.

Splits: without a split field, each row goes where the SHA-1 of its normalised text
says, 80/10/10, the rule and proportions of the bundled SMS corpus
(`model.data.split_of_canonical`), so the same text (up to case, spacing and NFKC) is
always in one split. The text is normalised on the tokenizer's bounded path
(`normalize(text, MAX_TEXT_CHARS)`): `hash_split`'s one unbounded NFKC call took 34 s
on a letter carrying 100,000 combining marks, the bounded path 0.34 s on 1,000,000
(measured here); both agree except on runs of more than 32 joining characters. With a
split field, a text declared in two splits is a `SplitDuplicateError` naming both
lines (train/test leakage would inflate every metric the promotion gate reads), unless
`allow_split_duplicates` turns it into a warning. Duplicates whose labels disagree are
counted in a warning either way.

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
   labels, is a `TooManyLabelsError`.
Memory: one row at a time while reading, at most about twice `MAX_LINE_BYTES` for
the row in hand (the buffered reader joins a long line's pieces: refusing a 64 MiB
line at the 16 MiB bound peaked at 34 MB under tracemalloc); the loader then keeps
the rows it returns, as training needs them. One CSV record is the exception to
"about twice": the csv module makes a list entry per field before the row can be
checked, so a 16 MiB record of nothing but commas peaked at 160 MB (still bounded).

Every failure is a `model.user_data_errors.UserDataError` with the file, line and
field, raised before anything is trained or written.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

from model.data import DataSplits, Example, split_of_canonical
from model.label_names import MAX_LABELS, RESERVED_LABELS, label_name_problem
from model.tokenizer import normalize
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
    WrongTypeError,
)

MAX_TEXT_CHARS = 1 << 20  # = schemas.request.MAX_TEXT_CHARS (a unit test keeps them equal)
MAX_LINE_BYTES = 1 << 24  # 16 MiB per JSONL line or CSV record (module docstring, 1)
Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
_SPLIT_NAMES: dict[str, Split] = {split: split for split in SPLITS}
SOURCE_USER = "user"  # `Example.source` of every row read here
USER_DATA_RULE_VERSION = "modstream-user-data-v1"  # in the fingerprint; bump on rule changes
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


@dataclass(frozen=True)
class DataLayout:
    """Where a row keeps its text, split and labels (see the module docstring)."""

    text_field: str = "text"
    split_field: str = "split"
    ignore_fields: frozenset[str] = frozenset()
    labels: tuple[str, ...] | None = None  # the label spec's labels; None: any valid name
    max_line_bytes: int = MAX_LINE_BYTES

    def __post_init__(self) -> None:
        named = [self.text_field, self.split_field]
        if self.text_field == self.split_field or set(named) & self.ignore_fields:
            raise ValueError("text, split and ignored fields must all differ")
        if "labels" in (*named, *self.ignore_fields):
            raise ValueError("'labels' is the JSONL labels object, not a field name")
        if self.max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be >= 1, got {self.max_line_bytes}")

    def describe(self) -> str:
        """The layout as text for the fingerprint (no set order leaks in)."""
        labels = ",".join(self.labels) if self.labels is not None else "*"
        ignored = ",".join(sorted(self.ignore_fields))
        return f"text={self.text_field};split={self.split_field};ignore={ignored};labels={labels}"


@dataclass(frozen=True)
class UserRow:
    """One data row as read: its labels are the known ones only."""

    line: int  # JSONL: its line; CSV: the first line of its record
    text: str
    labels: dict[str, bool]
    split: Split | None  # as declared; None when the file declares none
    fields: tuple[str, ...] = ()  # every label field the row has, unknown ones included


@dataclass(frozen=True)
class UserData:
    """A training file as splits (`labels`: the spec's order, else sorted names)."""

    path: Path
    splits: DataSplits
    rows: int
    declared_splits: bool
    warnings: tuple[str, ...]


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
    path: str | Path, layout: DataLayout = DataLayout(), digest: Digest | None = None
) -> Iterator[UserRow]:
    """The file's data rows, one at a time, each checked (module docstring); raises
    the first `UserDataError`. `digest` (a hashlib object), if given, is fed every
    byte read."""
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


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_reject_constant)


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
            value = _DECODER.decode(line)
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
        _check_label_field(name, path, line, layout, prefix + name)
        known = _json_label(cell, path, line, prefix + name, flat=not prefix)
        if known is not None:
            labels[name] = known
    return UserRow(
        line=line,
        text=_checked_text(text, path, line, layout.text_field),
        labels=labels,
        split=_split(split_value, path, line, layout.split_field),
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
        _check_label_field(name, path, 1, layout, name)
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
        text=_checked_text(record[columns.text], path, line, layout.text_field),
        labels=labels,
        split=_split(split_cell, path, line, layout.split_field),
        fields=columns.names,
    )


# ------------------------------------------------------------------- shared checks


def _check_label_field(name: str, path: Path, line: int, layout: DataLayout, field: str) -> None:
    if layout.labels is not None and name not in layout.labels:
        raise UnknownLabelFieldError(
            path, f"not a label of the label spec ({', '.join(layout.labels)})", line, field
        )
    why = label_name_problem(name)
    if why is not None:
        hint = "" if name in RESERVED_LABELS else "; or list it in the ignored fields"
        raise BadLabelNameError(path, why + hint, line, field)


def _checked_text(text: str, path: Path, line: int, field: str) -> str:
    if len(text) > MAX_TEXT_CHARS:
        raise TextTooLongError(
            path, f"{len(text)} characters, at most {MAX_TEXT_CHARS}", line, field
        )
    if not text.strip():
        raise EmptyTextError(path, "empty or only whitespace", line, field)
    return text


def _split(value: str | None, path: Path, line: int, field: str) -> Split | None:
    if value is None or value == "":
        return None
    if value in _SPLIT_NAMES:
        return _SPLIT_NAMES[value]
    raise UnknownSplitError(
        path, f"must be train, validation or test, got {value[:40]!r}", line, field
    )


# ------------------------------------------------------------------------- loading


def canonical_text(text: str) -> str:
    """A text's identity for splitting and duplicates: NFKC, lower-cased, whitespace
    runs collapsed, on the tokenizer's bounded path (module docstring)."""
    return " ".join(normalize(text, MAX_TEXT_CHARS).split())


def load_user_data(
    path: str | Path, layout: DataLayout = DataLayout(), allow_split_duplicates: bool = False
) -> UserData:
    """Read, check and split a training file (module docstring); `UserDataError` on
    the first problem."""
    path = Path(path)
    digest = hashlib.sha256(f"{USER_DATA_RULE_VERSION}\0{layout.describe()}\0".encode())
    rows: list[UserRow] = []
    splits: list[Split] = []
    first_of_text: dict[bytes, int] = {}  # text identity → index of its first row
    seen_labels: set[str] = set()
    straddling: list[tuple[int, int]] = []  # (first line, line) declared in two splits
    conflicting = 0  # texts whose rows disagree on a label
    declared: bool | None = None
    for row in iter_user_rows(path, layout, digest):
        if declared is None:
            declared = row.split is not None
        elif declared != (row.split is not None):
            state = "declares no split" if declared else "declares a split"
            raise MixedSplitError(
                path,
                f"this row {state}, unlike line {rows[0].line}: every row or none",
                row.line,
                layout.split_field,
            )
        seen_labels.update(row.fields)
        if len(seen_labels) > MAX_LABELS:
            raise TooManyLabelsError(path, f"more than {MAX_LABELS} distinct labels", row.line)
        canonical = canonical_text(row.text)
        key = hashlib.sha1(canonical.encode("utf-8")).digest()
        split: Split = row.split if row.split is not None else _hashed_split(canonical)
        first = first_of_text.setdefault(key, len(rows))
        if first != len(rows):
            if splits[first] != split:
                straddling.append((rows[first].line, row.line))
            if _disagree(rows[first].labels, row.labels):
                conflicting += 1
        rows.append(row)
        splits.append(split)
    if not rows:
        raise EmptyDataError(path, "no data rows")
    warnings = _warnings(path, rows, straddling, conflicting, allow_split_duplicates)
    labels = layout.labels if layout.labels is not None else tuple(sorted(seen_labels))
    digest.update(f"\0labels={','.join(labels)}".encode())
    parts: dict[Split, list[Example]] = {name: [] for name in SPLITS}
    for row, split in zip(rows, splits, strict=True):
        parts[split].append(_example(row, labels))
    return UserData(
        path=path,
        splits=DataSplits(
            train=parts["train"],
            validation=parts["validation"],
            test=parts["test"],
            fingerprint=digest.hexdigest(),
            labels=labels,
        ),
        rows=len(rows),
        declared_splits=bool(declared),
        warnings=warnings,
    )


def _hashed_split(canonical: str) -> Split:
    return _SPLIT_NAMES[split_of_canonical(canonical)]


def _disagree(first: Mapping[str, bool], other: Mapping[str, bool]) -> bool:
    return any(first[label] != value for label, value in other.items() if label in first)


def _warnings(
    path: Path,
    rows: Sequence[UserRow],
    straddling: Sequence[tuple[int, int]],
    conflicting: int,
    allow_split_duplicates: bool,
) -> tuple[str, ...]:
    warnings: list[str] = []
    if straddling:
        first, line = straddling[0]
        message = (
            f"{len(straddling)} row(s) repeat a text declared in another split, "
            f"first line {line} (same text as line {first})"
        )
        if not allow_split_duplicates:
            raise SplitDuplicateError(path, message, line)
        warnings.append(f"{path}: {message}")
    if conflicting:
        warnings.append(f"{path}: {conflicting} repeated text(s) disagree on a label")
    unlabelled = sum(1 for row in rows if not row.labels)
    if unlabelled:
        warnings.append(f"{path}: {unlabelled} row(s) know no label (they train nothing)")
    return tuple(warnings)


def _example(row: UserRow, labels: Sequence[str]) -> Example:
    return Example(
        text=row.text,
        targets=tuple(1.0 if row.labels.get(label) else 0.0 for label in labels),
        mask=tuple(1.0 if label in row.labels else 0.0 for label in labels),
        source=SOURCE_USER,
    )
