"""The training objective: window-max logits, the masked BCE, and per-label class weights.

Why its own module: these are the numbers the optimiser minimises, kept apart from the
loop that drives it (`model.train`) so each can be read and tested alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from model.encoding import Encoded, forward_batch
from model.network import Classifier
from model.train_config import PosWeight


def example_logits(
    model: Classifier, examples: Sequence[Sequence[Encoded]], device: torch.device
) -> torch.Tensor:
    """Logits [examples, labels]: each label's maximum over an example's windows, as
    serving takes it (the gradient reaches the deciding window). A batch of one-window
    examples is one forward, exactly as before windows."""
    rows = [row for windows in examples for row in windows]
    logits = forward_batch(model, rows, device)
    if len(rows) == len(examples):
        return logits
    owners = torch.repeat_interleave(
        torch.arange(len(examples), device=logits.device),
        torch.tensor([len(windows) for windows in examples], device=logits.device),
    )
    return logits.new_zeros((len(examples), logits.shape[1])).scatter_reduce(
        0, owners[:, None].expand_as(logits), logits, "amax", include_self=False
    )


def masked_bce(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean BCE-with-logits over known (mask=1) entries only.

    `torch.where` rather than multiplying by the mask, so even an infinite masked logit
    contributes exactly zero loss and zero gradient. `pos_weight` [labels] scales the
    positive term per label (class weighting); the mean is still over known entries.
    """
    known = mask > 0
    losses = F.binary_cross_entropy_with_logits(
        logits, targets, reduction="none", pos_weight=pos_weight
    )
    losses = torch.where(known, losses, torch.zeros_like(losses))
    return losses.sum() / known.sum().clamp_min(1)


def positive_weights(
    rule: PosWeight, targets: np.ndarray, mask: np.ndarray, device: torch.device
) -> torch.Tensor | None:
    """The loss weight of each label's positives: none, √(negatives/positives) or the
    ratio itself, counted on the known entries of the training set."""
    if rule == "none":
        return None
    known = mask > 0
    positives = ((targets > 0.5) & known).sum(axis=0).clip(min=1)
    negatives = ((targets <= 0.5) & known).sum(axis=0).clip(min=1)
    ratio = negatives / positives
    weights = np.asarray(np.sqrt(ratio) if rule == "sqrt" else ratio, np.float32)
    return torch.from_numpy(weights).to(device)
