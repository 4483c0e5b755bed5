"""JSON as the user meant it: a repeated key or NaN/Infinity is an error, not a guess.

`json.loads` keeps the last of two equal keys and accepts `NaN`, `Infinity`, both of
which would silently change a label or a threshold; files a person writes (training
rows, threshold policies) are decoded by `STRICT_DECODER` instead. Its errors are
`ValueError`s, so callers wrap them like any other JSON error.
"""

from __future__ import annotations

import json
from typing import Any


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


STRICT_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
