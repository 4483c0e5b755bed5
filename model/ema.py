"""An exponential moving average of a model's weights (`TrainConfig.ema_decay`).

Validation, early stopping and the saved checkpoint use the averaged weights rather
than the last step's: less noise, same architecture, so the same serving cost
(README "What was tried": +0.005 insult validation AUC, E16).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class Ema:
    """Exponential moving average of a model's floating-point state with a constant
    `decay` per optimizer step (a horizon of about 1 / (1 - decay) steps), started at
    zero and bias-corrected like Adam's moments, so the starting weights never linger.

    `decay` 0 (or less) switches it off: `update` does nothing and `applied` leaves the raw
    weights in place (no copy, so training runs exactly as without it).
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay, self.steps = decay, 0
        self.state = (
            {k: torch.zeros_like(v) for k, v in model.state_dict().items() if v.is_floating_point()}
            if decay > 0
            else {}
        )

    @property
    def enabled(self) -> bool:
        return self.decay > 0

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Folds the model's current weights into the average (once per optimizer step)."""
        if not self.enabled:
            return
        self.steps += 1
        current = model.state_dict()
        for name, average in self.state.items():
            average.lerp_(current[name].detach(), 1.0 - self.decay)

    @contextmanager
    def applied(self, model: torch.nn.Module) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its raw weights
        again after it (also on `break` or an exception), so training goes on from
        the raw weights while validation and snapshots see the average."""
        if not self.enabled:
            yield
            return
        with torch.no_grad():
            raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
            self._copy_to(model)
        try:
            yield
        finally:
            model.load_state_dict(raw)

    @torch.no_grad()
    def _copy_to(self, model: torch.nn.Module) -> None:
        correction = 1.0 / (1.0 - self.decay**self.steps) if self.steps else 1.0
        current = model.state_dict()
        for name, average in self.state.items():
            current[name].copy_(average * correction)
