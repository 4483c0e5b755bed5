"""model/label_change.py: the one rule for a taxonomy that changes at run time."""

from __future__ import annotations

import pytest

from model.errors import ExitCode
from model.label_change import LabelChangeRefusedError, check_label_change, classify


@pytest.mark.parametrize(
    ("old", "new", "kind", "added", "removed"),
    [
        (("insult", "spam"), ("insult", "spam"), "unchanged", (), ()),
        (("insult", "spam"), ("spam", "insult"), "unchanged", (), ()),  # order is no change
        (("insult", "spam"), ("insult", "spam", "threat"), "added", ("threat",), ()),
        (("insult", "spam"), ("threat", "insult", "spam"), "added", ("threat",), ()),
        (("insult", "spam"), ("insult",), "removed", (), ("spam",)),
        # A rename is a removal plus an addition: nothing says the meaning carried over.
        (("insult", "spam"), ("harassment", "spam"), "removed", ("harassment",), ("insult",)),
        (("insult",), ("spam",), "removed", ("spam",), ("insult",)),
    ],
)
def test_classify(
    old: tuple[str, ...],
    new: tuple[str, ...],
    kind: str,
    added: tuple[str, ...],
    removed: tuple[str, ...],
) -> None:
    change = classify(old, new)
    assert change.kind == kind
    assert (change.added, change.removed) == (added, removed)
    assert set(change.shared) == set(old) & set(new)
    assert change.needs_permission is bool(removed)


def test_describe_names_both_directions() -> None:
    assert classify(("a", "b"), ("a", "b")).describe() == ""
    assert classify(("a", "b"), ("a", "c", "d")).describe() == "adds c, d; removes b"
    assert classify(("a", "b"), ("a", "c")).to_dict() == {"added": ["c"], "removed": ["b"]}


def test_only_a_removal_needs_permission() -> None:
    assert check_label_change(("a",), ("a", "b"), False, "v2").kind == "added"
    with pytest.raises(LabelChangeRefusedError) as caught:
        check_label_change(("insult", "spam"), ("harassment", "spam"), False, "version v2")
    message = str(caught.value)
    assert message.startswith("version v2 removes label(s) insult and adds harassment")
    assert "--allow-label-change" in message
    assert caught.value.exit_code == ExitCode.USAGE
    allowed = check_label_change(("insult", "spam"), ("spam",), True, "v2")
    assert allowed.removed == ("insult",)
