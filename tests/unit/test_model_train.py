"""model/train.py: the training loop."""

from __future__ import annotations

import pytest
import torch

from model.train import train
from model.train_config import TrainConfig
from tests.helpers import synthetic_splits


@pytest.mark.parametrize("extra", [{}, {"ema_decay": 0.9}])
def test_training_is_deterministic_with_a_seed(extra: dict[str, float]) -> None:
    splits = synthetic_splits()
    config = TrainConfig.tiny(limit=120, epochs=2, min_freq=1, **extra)
    first, second = train(config, splits), train(config, splits)
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name

    def without_timing(history: list[dict[str, float]]) -> list[dict[str, float]]:
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert without_timing(first.history) == without_timing(second.history)
