"""A user's labelled training file, loaded: its rows checked, split, and fingerprinted.

The rows come from `model.user_formats.iter_user_rows` (formats and the bounds on hostile
input live there; what a row is, in `model.user_rows`); this module turns them into
`model.data.DataSplits` and checks what only the whole file shows: that every row or
none declares a split, at most `MAX_LABELS` distinct labels (`model.user_formats`, note
5), and duplicates.

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

Memory: the reader holds one row at a time (`model.user_formats`); the loader keeps the
rows it returns, as training needs them.

Every failure is a `model.user_data_errors.UserDataError` with the file, line and
field, raised before anything is trained or written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from model.data import DataSplits, Example, split_of_canonical
from model.label_names import MAX_LABELS
from model.tokenizer import normalize
from model.user_data_errors import (
    EmptyDataError,
    MixedSplitError,
    SplitDuplicateError,
    TooManyLabelsError,
)
from model.user_formats import iter_user_rows
from model.user_rows import (
    DEFAULT_LAYOUT,
    MAX_TEXT_CHARS,
    SPLIT_NAMES,
    SPLITS,
    DataLayout,
    Split,
    UserRow,
)

SOURCE_USER = "user"  # `Example.source` of every row read here
USER_DATA_RULE_VERSION = "modstream-user-data-v1"  # in the fingerprint; bump on rule changes


@dataclass(frozen=True)
class UserData:
    """A training file as splits (`labels`: the spec's order, else sorted names)."""

    path: Path
    splits: DataSplits
    rows: int
    declared_splits: bool
    warnings: tuple[str, ...]


# ------------------------------------------------------------------------- loading


def canonical_text(text: str) -> str:
    """A text's identity for splitting and duplicates: NFKC, lower-cased, whitespace
    runs collapsed, on the tokenizer's bounded path (module docstring)."""
    return " ".join(normalize(text, MAX_TEXT_CHARS).split())


def load_user_data(
    path: str | Path, layout: DataLayout = DEFAULT_LAYOUT, allow_split_duplicates: bool = False
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
    return SPLIT_NAMES[split_of_canonical(canonical)]


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
