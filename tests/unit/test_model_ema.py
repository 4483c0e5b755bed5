"""model/ema.py: the weight average validation and checkpoints use."""

from __future__ import annotations

import pytest
import torch

from model.ema import Ema
from model.train_config import TrainConfig


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def set_weights(model: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(value)


def test_applied_swaps_the_average_in_and_the_raw_weights_back() -> None:
    model = make_model()
    ema = Ema(model, decay=0.5)
    set_weights(model, 1.0)
    ema.update(model)
    set_weights(model, 3.0)
    ema.update(model)
    raw = snapshot(model)
    # Bias-corrected: (0.25 * 1 + 0.5 * 3) / (1 - 0.5**2) = 7/3, never pulled toward 0.
    with ema.applied(model):
        for value in model.state_dict().values():
            assert torch.allclose(value, torch.full_like(value, 7 / 3))
    for name, value in model.state_dict().items():
        assert torch.equal(value, raw[name]), name


def test_one_update_gives_back_the_weights_themselves() -> None:
    model = make_model()
    ema = Ema(model, decay=0.995)
    expected = snapshot(model)
    ema.update(model)
    set_weights(model, 0.0)
    with ema.applied(model):
        for name, value in model.state_dict().items():
            assert torch.allclose(value, expected[name], atol=1e-5), name


def test_raw_weights_come_back_after_an_exception_or_break() -> None:
    model = make_model()
    ema = Ema(model, decay=0.9)
    ema.update(model)
    set_weights(model, 5.0)
    raw = snapshot(model)
    with pytest.raises(RuntimeError), ema.applied(model):
        raise RuntimeError("validation failed")
    for name, value in model.state_dict().items():
        assert torch.equal(value, raw[name]), name
    for _ in range(3):
        with ema.applied(model):
            break
    for name, value in model.state_dict().items():
        assert torch.equal(value, raw[name]), name


@pytest.mark.parametrize("decay", [0.0, -1.0])
def test_decay_zero_is_off_and_leaves_the_weights_untouched(decay: float) -> None:
    model = make_model()
    ema = Ema(model, decay=decay)
    assert not ema.enabled and not ema.state
    raw = snapshot(model)
    ema.update(model)
    assert ema.steps == 0
    with ema.applied(model):
        for name, value in model.state_dict().items():
            assert torch.equal(value, raw[name]), name


def test_a_decay_of_one_is_refused_when_configured() -> None:
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)
    assert TrainConfig(ema_decay=0.0).ema_decay == 0.0
