"""What a label may be called, and how many a model may have.

A label's name travels far: it is a key of every result's `categories` and
`category_scores`, the value of the `category` label of the worker's Prometheus metrics,
a dashboard variable, a key of the checkpoint's `thresholds`, a field of a training file
and of a runtime threshold override (`insult=0.8`). So the rule is the narrowest one that
still spells a taxonomy: lower-case ASCII letters, digits and underscores, starting with
a letter, at most `MAX_LABEL_CHARS` (32) characters (`self_harm`, `hate_speech`,
`sexual_minors`). That rules out, with no further checks downstream:

- case twins (`Spam` and `spam` would be two metric series and one in most dashboards);
- spaces, `=`, `,` (the override syntax), quotes and braces (PromQL, JSON paths);
- `__proto__`, `constructor`-style dunders (a leading letter is required) and the empty name.

`MAX_LABELS` (64) bounds the output head, each result's size (every label adds a key to
two objects) and the metric series per worker; moderation taxonomies name a few tens of
categories. `RESERVED_LABELS` are the field names of a training row (`model.user_rows`):
a column called `text` is the text, never a label.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from model.errors import ExitCode, ModstreamError

MAX_LABELS = 64
MAX_LABEL_CHARS = 32
LABEL_NAME_RULE = "lower-case letters, digits and '_', starting with a letter, at most 32 long"
_LABEL_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
RESERVED_LABELS = frozenset({"text", "split", "labels"})


class LabelNameError(ModstreamError):
    """A label name breaks the rule, repeats, is reserved, or there are too many labels."""

    exit_code = ExitCode.USAGE


def label_name_problem(name: object) -> str | None:
    """Why `name` cannot be a label, or None when it can."""
    if not isinstance(name, str):
        return f"label names are strings, got {type(name).__name__}"
    if name in RESERVED_LABELS:
        return f"{name!r} is reserved (a field of a training row)"
    if _LABEL_NAME.fullmatch(name) is None:
        shown = name if len(name) <= 40 else name[:40] + "…"
        return f"{shown!r} is not a label name ({LABEL_NAME_RULE})"
    return None


def check_label_names(names: Iterable[object], where: str) -> tuple[str, ...]:
    """`names` as a tuple, or `LabelNameError` naming `where` and the first problem:
    an invalid or reserved name, a repeat, none at all, or more than `MAX_LABELS`."""
    seen: list[str] = []
    for count, name in enumerate(names, start=1):
        if count > MAX_LABELS:
            raise LabelNameError(f"{where}: more than {MAX_LABELS} labels")
        why = label_name_problem(name)
        if why is not None:
            raise LabelNameError(f"{where}: {why}")
        assert isinstance(name, str)
        if name in seen:
            raise LabelNameError(f"{where}: label {name!r} appears twice")
        seen.append(name)
    if not seen:
        raise LabelNameError(f"{where}: no labels")
    return tuple(seen)


def checked_label_keys(value: Any) -> Any:
    """A pydantic "before" validator's body for a dict keyed by label: at most
    `MAX_LABELS` keys, each following the rule; raises ValueError naming the first
    problem, else returns `value` (other shapes are left to the field's type)."""
    if isinstance(value, dict):
        if len(value) > MAX_LABELS:
            raise ValueError(f"{len(value)} labels, at most {MAX_LABELS}")
        for name in value:
            why = label_name_problem(name)
            if why is not None:
                raise ValueError(why)
    return value
