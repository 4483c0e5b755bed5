"""How many examples know each label, and whether a label can be trained and measured.

Counted on the examples that know the label (mask = 1): a user's file, or the bundled
corpora, say nothing about the labels they lack.

Rules (`check_trainable`, run on the final splits before training):
1. Every label needs at least one positive and one negative in train, else the head
   never sees one class: a `LabelSupportError` naming the label and the split.
2. The same in validation: thresholds are chosen there and early stopping reads its
   ROC AUC, which one class leaves undefined.
3. A label with fewer than `MIN_EVAL_POSITIVES` (30) positives or `MIN_EVAL_NEGATIVES`
   (30) negatives in validation or test is "too rare to evaluate": a warning, carried
   into the report. Why 30: at n positives the 95 % interval of a recall is up to
   ±1.96·√(0.25/n) wide, ±0.18 at 30 (±0.31 at 10), about as loose as a number can be
   and still tell a good model from a bad one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.data import DataSplits, Example
from model.user_data_errors import LabelSupportError

MIN_EVAL_POSITIVES = 30
MIN_EVAL_NEGATIVES = 30


@dataclass(frozen=True)
class Support:
    """One label on one split: examples that know it, and how many are positive."""

    known: int
    positives: int

    @property
    def negatives(self) -> int:
        return self.known - self.positives

    @property
    def too_rare(self) -> bool:
        """Too few of either class to evaluate (module docstring, rule 3)."""
        return self.positives < MIN_EVAL_POSITIVES or self.negatives < MIN_EVAL_NEGATIVES

    def as_dict(self) -> dict[str, int | bool]:
        return {
            "known": self.known,
            "positives": self.positives,
            "negatives": self.negatives,
            "too_rare": self.too_rare,
        }


def support_of(examples: Sequence[Example], labels: Sequence[str]) -> dict[str, Support]:
    """label → `Support` over `examples` (whose targets follow `labels`' order)."""
    known = [0] * len(labels)
    positives = [0] * len(labels)
    for example in examples:
        for j in range(len(labels)):
            if example.mask[j] > 0:
                known[j] += 1
                positives[j] += example.targets[j] > 0.5
    return {label: Support(known[j], positives[j]) for j, label in enumerate(labels)}


def support_from_arrays(
    targets: np.ndarray, mask: np.ndarray, labels: Sequence[str]
) -> dict[str, Support]:
    """label → `Support` from `[n, labels]` target and mask arrays."""
    known = mask > 0
    positive = (targets > 0.5) & known
    return {
        label: Support(int(known[:, j].sum()), int(positive[:, j].sum()))
        for j, label in enumerate(labels)
    }


def rarity_warnings(support: Mapping[str, Support], split: str) -> list[str]:
    """One line per label too rare to evaluate on `split` (rule 3)."""
    return [
        f"{label}: only {s.positives} positive(s) and {s.negatives} negative(s) known in "
        f"{split}; its {split} metrics are too uncertain to compare models "
        f"(at least {MIN_EVAL_POSITIVES} and {MIN_EVAL_NEGATIVES} wanted)"
        for label, s in support.items()
        if s.too_rare
    ]


def check_trainable(splits: DataSplits, where: str | Path) -> tuple[str, ...]:
    """Rules 1 and 2 (`LabelSupportError` with `where`, the label and counts), then
    rule 3's warnings for validation and test."""
    counted = {
        name: support_of(getattr(splits, name), splits.labels)
        for name in ("train", "validation", "test")
    }
    for name in ("train", "validation"):
        for label, s in counted[name].items():
            if s.positives == 0 or s.negatives == 0:
                missing = "positive" if s.positives == 0 else "negative"
                raise LabelSupportError(
                    where,
                    f"no {missing} example in {name} ({s.known} known, {s.positives} "
                    f"positive): a label needs both classes in train and validation",
                    field=label,
                )
    return tuple(
        warning
        for name in ("validation", "test")
        for warning in rarity_warnings(counted[name], name)
    )
