"""Several data sets as one: the union of their labels, each example's mask widened.

Training on a user's file beside the bundled corpora (`model.data.load_splits`) means
one label set for both: the bundled examples know `insult` or `spam` and nothing of
`threat`; the user's rows know `threat` (and maybe `insult`) and nothing of `spam`.
Widening is exact: a label a part lacks is unknown (mask 0) in its examples, never
negative, so the masked loss leaves it alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from model.data import DataSplits, Example
from model.label_names import MAX_LABELS


def union_labels(parts: Sequence[DataSplits]) -> tuple[str, ...]:
    """Every part's labels, in order of first appearance (the first part's first)."""
    labels: dict[str, None] = {}
    for part in parts:
        labels.update(dict.fromkeys(part.labels))
    return tuple(labels)


def widen(example: Example, own: Sequence[str], labels: Sequence[str]) -> Example:
    """`example` (targets in `own`'s order) over `labels`, unknown where it lacks one."""
    return _widen(example, _positions(own, labels))


def _positions(own: Sequence[str], labels: Sequence[str]) -> list[int | None]:
    index = {label: j for j, label in enumerate(own)}
    return [index.get(label) for label in labels]


def _widen(example: Example, positions: Sequence[int | None]) -> Example:
    return Example(
        text=example.text,
        targets=tuple(0.0 if j is None else example.targets[j] for j in positions),
        mask=tuple(0.0 if j is None else example.mask[j] for j in positions),
        source=example.source,
    )


def combine_splits(parts: Sequence[DataSplits]) -> DataSplits:
    """One `DataSplits` over `union_labels(parts)`, each split the parts' examples in
    order; the fingerprint covers every part's fingerprint and labels. Raises
    `ValueError` without parts, or past `MAX_LABELS` labels in all."""
    if not parts:
        raise ValueError("nothing to combine")
    labels = union_labels(parts)
    if len(labels) > MAX_LABELS:
        raise ValueError(f"{len(labels)} labels in all, at most {MAX_LABELS}")
    digest = hashlib.sha256(b"modstream-combined-v1")
    for part in parts:
        digest.update(f"\0{part.fingerprint}\0{','.join(part.labels)}".encode())
    combined: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}
    for part in parts:
        positions = _positions(part.labels, labels)
        for name, examples in combined.items():
            if part.labels == labels:
                examples.extend(getattr(part, name))
            else:
                examples.extend(_widen(example, positions) for example in getattr(part, name))
    return DataSplits(
        train=combined["train"],
        validation=combined["validation"],
        test=combined["test"],
        fingerprint=digest.hexdigest(),
        labels=labels,
    )
