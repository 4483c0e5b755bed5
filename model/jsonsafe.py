"""Strict JSON from metrics: NaN and infinities become null.

Metrics hold NaN where a number is undefined (the ROC AUC of a one-class split), and
JSON has no NaN: `json.dumps(..., allow_nan=False)` refuses it, and the default
writes `NaN`, which strict parsers reject. Checkpoint metadata (`model.checkpoint`)
and the evaluation report (`model.report`) go through `json_safe` first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float as None, tuples as lists, mapping keys as
    strings, and numpy/torch scalars as Python numbers; anything else unchanged."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        return json_safe(value.item())
    return value
