"""What a retrain trains on: the bundled corpora, a user's files (`--data`), or both.

1. The label set is the label spec's when there is one (`--label-spec`,
   `model.label_spec`), in its order; with the bundled corpora in, the spec must name
   their labels (`insult`, `spam`), else `BundledLabelsError`: keeping them would
   train labels the spec does not define, dropping them silently would waste them.
2. Each file is read, checked and split (`model.user_data.load_user_data`; with a
   spec, a label field it does not name is an error naming file, line and field).
3. Across files, as within one: a text (normalised, `model.user_data.canonical_text`)
   that two files put in different splits is a `SplitDuplicateError` naming both
   files, or a warning with `allow_split_duplicates`.
4. The bundled corpora (`model.data.load_splits`), unless `bundled` is off. A bundled
   example whose text a user file also holds leaves whichever split held it, as a
   feedback text's does (`model.data.merge_feedback`): the user's row keeps its own
   split, and per label the user's value wins; a label only the bundled copy knows is
   kept (`superseded` counts them per split).
5. One `DataSplits` over the union of the labels (`model.label_union`): bundled first,
   then each file's, in order of first appearance; the spec's order with a spec.
   Without files the bundled splits come back unchanged, fingerprint included, so a
   plain retrain names its data as before. With files the fingerprint covers each
   file's bytes, the layout and labels it was read with, and the bundled corpora.

Support (both classes of every label in train and validation) is checked later, on
the final splits with feedback merged (`model.label_support.check_trainable`, with
`TrainingData.where`). Nothing here writes anything.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from model import data as corpora
from model.data import LABELS, DataSplits, Example
from model.errors import ExitCode, ModstreamError
from model.label_spec import LabelSpec
from model.label_union import combine_splits, widen
from model.user_data import SOURCE_USER, UserData, canonical_text, load_user_data
from model.user_data_errors import SplitDuplicateError
from model.user_rows import SPLITS, DataLayout

BUNDLED = "bundled corpora"


class BundledLabelsError(ModstreamError):
    """A label spec that leaves out labels of the bundled corpora (rule 1)."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class DataRequest:
    """Where the training data comes from and how the files are read."""

    files: tuple[Path, ...] = ()
    bundled: bool = True
    layout: DataLayout = field(default_factory=DataLayout)
    allow_split_duplicates: bool = False
    spec: LabelSpec | None = None
    spec_path: Path | None = None  # named in errors


@dataclass(frozen=True)
class TrainingData:
    """The splits to train on, the warnings met reading them, and what they came from."""

    splits: DataSplits
    warnings: tuple[str, ...] = ()
    files: tuple[UserData, ...] = ()
    bundled: bool = True
    superseded: dict[str, int] = field(default_factory=dict)  # split → bundled copies removed

    @property
    def where(self) -> str:
        """The data's sources, for errors about the whole (`check_trainable`)."""
        parts = ([BUNDLED] if self.bundled else []) + [str(f.path) for f in self.files]
        return " + ".join(parts) or "no data"

    def summary(self) -> dict[str, Any]:
        """For the retrain summary line."""
        return {
            "bundled": self.bundled,
            "files": [
                {
                    "path": str(f.path),
                    "rows": f.rows,
                    "labels": list(f.splits.labels),
                    "declared_splits": f.declared_splits,
                    "examples": {name: len(getattr(f.splits, name)) for name in SPLITS},
                }
                for f in self.files
            ],
            "labels": list(self.splits.labels),
            "examples": {name: len(getattr(self.splits, name)) for name in SPLITS},
            "superseded_bundled": self.superseded,
            "fingerprint": self.splits.fingerprint,
        }


def load_training_data(
    request: DataRequest, bundled_loader: Callable[[], DataSplits] | None = None
) -> TrainingData:
    """Steps 1-5 of the module docstring; raises the first problem, writes nothing.
    `bundled_loader` (default `model.data.load_splits`, looked up when called)."""
    spec_labels = request.spec.names if request.spec is not None else None
    if spec_labels is not None and request.bundled:
        _check_spec_names_bundled(spec_labels, LABELS, request.spec_path)
    layout = replace(request.layout, labels=spec_labels)
    files = tuple(
        load_user_data(path, layout, request.allow_split_duplicates) for path in request.files
    )
    warnings = [w for f in files for w in f.warnings]
    warnings += _cross_file_duplicates(files, request.allow_split_duplicates)
    bundled = (bundled_loader or corpora.load_splits)() if request.bundled else None
    if bundled is not None and spec_labels is not None:
        _check_spec_names_bundled(spec_labels, bundled.labels, request.spec_path)
    if not files:
        if bundled is None:
            raise ValueError("no data: give files, or keep the bundled corpora")
        splits = bundled if spec_labels is None else in_order(bundled, spec_labels)
        return TrainingData(splits, tuple(warnings), (), True, {})
    parts = [f.splits for f in files]
    superseded: dict[str, int] = {}
    if bundled is not None:
        parts.insert(0, bundled)
    combined = combine_splits(parts)
    if bundled is not None:
        combined, superseded = _user_texts_win(combined)
    if spec_labels is not None:
        combined = in_order(combined, spec_labels)
    return TrainingData(combined, tuple(warnings), files, bundled is not None, superseded)


def in_order(splits: DataSplits, labels: Sequence[str]) -> DataSplits:
    """`splits` over `labels` (the same set, or a superset: unknown where missing)."""
    labels = tuple(labels)
    if splits.labels == labels:
        return splits
    digest = hashlib.sha256(f"{splits.fingerprint}\0order\0{','.join(labels)}".encode())
    train, validation, test = (
        [widen(ex, splits.labels, labels) for ex in getattr(splits, name)] for name in SPLITS
    )
    return DataSplits(train, validation, test, digest.hexdigest(), labels)


def _check_spec_names_bundled(
    spec_labels: Sequence[str], bundled_labels: Sequence[str], spec_path: Path | None
) -> None:
    missing = [label for label in bundled_labels if label not in spec_labels]
    if missing:
        where = f"the label spec {spec_path}" if spec_path is not None else "the label spec"
        raise BundledLabelsError(
            f"the {BUNDLED} label {', '.join(missing)}, which {where} does not name: "
            f"add them to the spec, or train on your files alone (--no-bundled)"
        )


def text_identity(text: str) -> bytes:
    """A text's identity across sources, as `model.user_data` keys duplicates."""
    return hashlib.sha1(canonical_text(text).encode("utf-8")).digest()


def _cross_file_duplicates(files: Sequence[UserData], allow: bool) -> list[str]:
    """Step 3: texts two files put in different splits."""
    seen: dict[bytes, tuple[str, int]] = {}  # identity → (split, file index)
    straddling: list[tuple[int, int, str, str]] = []  # (first file, file, split, split)
    for index, data in enumerate(files):
        for name in SPLITS:
            for example in getattr(data.splits, name):
                first = seen.setdefault(text_identity(example.text), (name, index))
                if first[1] != index and first[0] != name:
                    straddling.append((first[1], index, first[0], name))
    if not straddling:
        return []
    first_file, file, first_split, split = straddling[0]
    message = (
        f"{len(straddling)} text(s) of this file are in another split in "
        f"{files[first_file].path}, first one here in {split}, there in {first_split}"
    )
    if not allow:
        raise SplitDuplicateError(files[file].path, message)
    return [f"{files[file].path}: {message}"]


def _user_texts_win(splits: DataSplits) -> tuple[DataSplits, dict[str, int]]:
    """Step 4 on the combined splits: bundled copies of user texts leave, their
    labels fill what the user's rows leave unknown."""
    user_texts = {
        text_identity(ex.text)
        for name in SPLITS
        for ex in getattr(splits, name)
        if ex.source == SOURCE_USER
    }
    bundled_labels: dict[bytes, dict[int, float]] = {}  # identity → label index → target
    kept: dict[str, list[Example]] = {}
    superseded: dict[str, int] = {}
    for name in SPLITS:
        kept[name], superseded[name] = [], 0
        for example in getattr(splits, name):
            identity = text_identity(example.text) if example.source != SOURCE_USER else b""
            if identity in user_texts:
                superseded[name] += 1
                known = bundled_labels.setdefault(identity, {})
                for j, m in enumerate(example.mask):
                    if m > 0:
                        known.setdefault(j, example.targets[j])
            else:
                kept[name].append(example)
    if not bundled_labels:
        return splits, superseded
    for name in SPLITS:
        kept[name] = [_fill(ex, bundled_labels) for ex in kept[name]]
    return (
        replace(splits, train=kept["train"], validation=kept["validation"], test=kept["test"]),
        superseded,
    )


def _fill(example: Example, bundled_labels: dict[bytes, dict[int, float]]) -> Example:
    """A user's example with the labels only its bundled copy knew."""
    if example.source != SOURCE_USER:
        return example
    known = bundled_labels.get(text_identity(example.text))
    if not known:
        return example
    targets, mask = list(example.targets), list(example.mask)
    for j, value in known.items():
        if mask[j] <= 0:
            targets[j], mask[j] = value, 1.0
    return replace(example, targets=tuple(targets), mask=tuple(mask))
