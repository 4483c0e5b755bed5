"""Label names (model/label_names.py): the one rule every label field and key follows."""

from __future__ import annotations

import pytest

from model.errors import ExitCode
from model.label_names import (
    MAX_LABEL_CHARS,
    MAX_LABELS,
    LabelNameError,
    check_label_names,
    label_name_problem,
)


@pytest.mark.parametrize("name", ["insult", "spam", "self_harm", "a", "x9", "a" * MAX_LABEL_CHARS])
def test_valid_names(name: str) -> None:
    assert label_name_problem(name) is None


@pytest.mark.parametrize(
    "name",
    [
        "",
        "__proto__",
        "_private",
        "constructor ",
        "with space",
        "Spam",
        "9lives",
        "self-harm",
        "a=b",
        "a,b",
        "é",
        "a\n",
        "a" * (MAX_LABEL_CHARS + 1),
        "text",
        "split",
        "labels",
        None,
        3,
    ],
)
def test_invalid_names(name: object) -> None:
    assert label_name_problem(name) is not None


def test_check_label_names_order_repeats_and_bounds() -> None:
    assert check_label_names(["b", "a"], "spec") == ("b", "a")
    with pytest.raises(LabelNameError, match="spec: label 'a' appears twice"):
        check_label_names(["a", "b", "a"], "spec")
    with pytest.raises(LabelNameError, match="no labels"):
        check_label_names([], "spec")
    names = [f"l{i}" for i in range(MAX_LABELS)]
    assert len(check_label_names(names, "spec")) == MAX_LABELS
    with pytest.raises(LabelNameError, match=f"more than {MAX_LABELS}") as caught:
        check_label_names((f"l{i}" for i in range(10**9)), "spec")  # stops at 65
    assert caught.value.exit_code == ExitCode.USAGE
    with pytest.raises(LabelNameError, match="__proto__"):
        check_label_names(["ok", "__proto__"], "spec")
