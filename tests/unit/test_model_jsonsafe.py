"""model/jsonsafe.py: metrics become strict JSON."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from model.jsonsafe import json_safe


def test_non_finite_numbers_become_null_at_any_depth() -> None:
    value = {
        "auc": math.nan,
        "inf": math.inf,
        "nested": [{"x": -math.inf, "y": 0.5}, (1, math.nan)],
        3: "key becomes a string",
    }
    safe = json_safe(value)
    assert safe == {
        "auc": None,
        "inf": None,
        "nested": [{"x": None, "y": 0.5}, [1, None]],
        "3": "key becomes a string",
    }
    assert json.loads(json.dumps(safe, allow_nan=False)) == safe


def test_numpy_and_torch_scalars_become_python_numbers() -> None:
    safe = json_safe([np.float32(0.25), np.float64(math.nan), np.int64(7), torch.tensor(1.5)])
    assert safe == [0.25, None, 7, 1.5]
    assert [type(v) for v in safe] == [float, type(None), int, float]


def test_other_values_pass_unchanged() -> None:
    for value in ("text", None, True, 3, 0.0):
        assert json_safe(value) == value
