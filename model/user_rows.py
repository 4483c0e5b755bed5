"""What a row of a user's training file is: its layout, its fields, their checks.

Kept apart from the reader (`model.user_formats`, JSONL and CSV) and the loader
(`model.user_data`) because both use it: the reader builds a `UserRow` and checks
its cells here, the loader fingerprints the `DataLayout` and splits the rows.

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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from model.label_names import RESERVED_LABELS, label_name_problem
from model.user_data_errors import (
    BadLabelNameError,
    EmptyTextError,
    TextTooLongError,
    UnknownLabelFieldError,
    UnknownSplitError,
)

MAX_TEXT_CHARS = 1 << 20  # = schemas.request.MAX_TEXT_CHARS (a unit test keeps them equal)
MAX_LINE_BYTES = 1 << 24  # 16 MiB a JSONL line or CSV record (model.user_formats, note 1)
Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
SPLIT_NAMES: dict[str, Split] = {split: split for split in SPLITS}


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


DEFAULT_LAYOUT = DataLayout()  # frozen, so one shared default is safe


# ----------------------------------------------------------------- field checks


def check_label_field(name: str, path: Path, line: int, layout: DataLayout, field: str) -> None:
    """Refuse a label field the spec does not name, or a name `model.label_names` rejects."""
    if layout.labels is not None and name not in layout.labels:
        raise UnknownLabelFieldError(
            path, f"not a label of the label spec ({', '.join(layout.labels)})", line, field
        )
    why = label_name_problem(name)
    if why is not None:
        hint = "" if name in RESERVED_LABELS else "; or list it in the ignored fields"
        raise BadLabelNameError(path, why + hint, line, field)


def checked_text(text: str, path: Path, line: int, field: str) -> str:
    """The text, if it is within `MAX_TEXT_CHARS` and not blank."""
    if len(text) > MAX_TEXT_CHARS:
        raise TextTooLongError(
            path, f"{len(text)} characters, at most {MAX_TEXT_CHARS}", line, field
        )
    if not text.strip():
        raise EmptyTextError(path, "empty or only whitespace", line, field)
    return text


def declared_split(value: str | None, path: Path, line: int, field: str) -> Split | None:
    """A declared split, exactly as named; None (or empty) is not declared."""
    if value is None or value == "":
        return None
    if value in SPLIT_NAMES:
        return SPLIT_NAMES[value]
    raise UnknownSplitError(
        path, f"must be train, validation or test, got {value[:40]!r}", line, field
    )
