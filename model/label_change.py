"""What a new checkpoint does to the taxonomy, and when that needs an operator's word.

One rule, used by the retrain gate (`model.gate`), `checkpoints promote`
(`model.store.CheckpointStore.promote`) and the worker's reload (worker/engine_slot.py):

1. Labels are compared as sets of names; order does not matter (results key their
   categories by name).
2. `unchanged`: the same names. `added`: every serving label is still there, and new
   ones come with it. `removed`: at least one serving label is gone, whether or not
   others came (a rename is a removal plus an addition: nothing says that `harassment`
   means what `insult` meant).
3. Adding is safe: consumers of the results see new keys in `categories` and
   `category_scores` from one offset on, and nothing they read before goes away. So
   the gate compares the shared labels and only reports the new ones, `checkpoints
   promote` takes it, and a worker reloads it.
4. Removing takes something away from every consumer (a dashboard panel, a rule keyed
   on `categories.spam`): the gate holds and `checkpoints promote` refuses (exit 2,
   naming the labels) unless told `--allow-label-change` (retrain: or `--force`). A
   worker reloads a version that removes labels once it is current (the promotion was
   the decision), and logs and counts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from model.errors import ExitCode, ModstreamError

ChangeKind = Literal["unchanged", "added", "removed"]
ALLOW_FLAG = "--allow-label-change"


class LabelChangeRefusedError(ModstreamError):
    """A version would remove (or rename) labels, and nobody allowed it."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class LabelChange:
    """How `new` differs from `old` (rule 2 of the module docstring)."""

    old: tuple[str, ...]
    new: tuple[str, ...]
    added: tuple[str, ...]  # in `new`'s order
    removed: tuple[str, ...]  # in `old`'s order

    @property
    def kind(self) -> ChangeKind:
        if self.removed:
            return "removed"
        return "added" if self.added else "unchanged"

    @property
    def shared(self) -> tuple[str, ...]:
        """The labels both have, in `new`'s order."""
        kept = set(self.old)
        return tuple(label for label in self.new if label in kept)

    @property
    def needs_permission(self) -> bool:
        """Rule 4: a removal (or rename) needs `--allow-label-change`."""
        return bool(self.removed)

    def describe(self) -> str:
        """`adds threat; removes spam` (empty when unchanged)."""
        parts = []
        if self.added:
            parts.append(f"adds {', '.join(self.added)}")
        if self.removed:
            parts.append(f"removes {', '.join(self.removed)}")
        return "; ".join(parts)

    def to_dict(self) -> dict[str, list[str]]:
        return {"added": list(self.added), "removed": list(self.removed)}


def classify(old: Sequence[str], new: Sequence[str]) -> LabelChange:
    """The change from a model serving `old` to one serving `new`."""
    old_set, new_set = set(old), set(new)
    return LabelChange(
        old=tuple(old),
        new=tuple(new),
        added=tuple(label for label in new if label not in old_set),
        removed=tuple(label for label in old if label not in new_set),
    )


def check_label_change(
    old: Sequence[str], new: Sequence[str], allowed: bool, what: str
) -> LabelChange:
    """The change, or `LabelChangeRefusedError` naming `what` and the labels it would
    remove when it needs permission (rule 4) and `allowed` is False."""
    change = classify(old, new)
    if change.needs_permission and not allowed:
        gone = ", ".join(change.removed)
        came = f" and adds {', '.join(change.added)}" if change.added else ""
        raise LabelChangeRefusedError(
            f"{what} removes label(s) {gone}{came} (a rename counts as a removal plus an "
            f"addition): results would lose those categories; pass {ALLOW_FLAG} if that "
            "is intended"
        )
    return change
