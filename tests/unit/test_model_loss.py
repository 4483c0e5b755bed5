"""model/loss.py: the masked loss and the window-max logits."""

from __future__ import annotations

import pytest
import torch

from model.encoding import encode_tokens, forward_batch
from model.loss import example_logits, masked_bce
from tests.helpers import tiny_model


def test_masked_bce_matches_mean_over_known_labels() -> None:
    logits = torch.tensor([[0.3, -1.2], [2.0, 0.5]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[mask > 0], targets[mask > 0]
    )
    assert torch.allclose(masked_bce(logits, targets, mask), expected)


@pytest.mark.parametrize("masked_value", [-50.0, 0.0, 7.0, float("inf"), float("-inf")])
def test_masked_logits_contribute_no_loss_and_no_gradient(masked_value: float) -> None:
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    reference = torch.tensor([[0.4, 0.0], [0.0, -0.3]], requires_grad=True)
    changed_values = reference.detach().clone()
    changed_values[0, 1] = masked_value
    changed_values[1, 0] = masked_value
    changed = changed_values.requires_grad_(True)

    loss_a = masked_bce(reference, targets, mask)
    loss_b = masked_bce(changed, targets, mask)
    torch.autograd.backward(loss_a)
    torch.autograd.backward(loss_b)
    assert torch.isfinite(loss_b)
    assert torch.allclose(loss_a, loss_b)
    assert reference.grad is not None and changed.grad is not None
    assert changed.grad[0, 1] == 0 and changed.grad[1, 0] == 0
    assert torch.allclose(reference.grad, changed.grad)


def test_fully_masked_batch_gives_zero_loss() -> None:
    logits = torch.randn(3, 2, requires_grad=True)
    loss = masked_bce(logits, torch.ones(3, 2), torch.zeros(3, 2))
    assert loss.item() == 0.0


def test_an_examples_logit_is_the_maximum_over_its_windows() -> None:
    model, vocab = tiny_model(["you are an idiot the budget of the city council"], 4)
    model.eval()
    config = model.config
    rows = [
        encode_tokens(vocab, config, tokens)
        for tokens in (["you", "idiot"], ["the", "budget"], ["city", "council", "of"])
    ]
    device = torch.device("cpu")
    with torch.no_grad():
        separately = forward_batch(model, rows, device)
        windowed = example_logits(model, [rows[:2], rows[2:]], device)
        one_each = example_logits(model, [[row] for row in rows], device)
    torch.testing.assert_close(windowed[0], separately[:2].max(dim=0).values)
    torch.testing.assert_close(windowed[1], separately[2])
    assert torch.equal(one_each, separately)  # one window each: the plain forward


def test_the_gradient_reaches_only_the_deciding_window() -> None:
    model, vocab = tiny_model(["you are an idiot the budget"], 4)
    model.eval()
    rows = [encode_tokens(vocab, model.config, t) for t in (["you", "idiot"], ["budget"])]
    logits = example_logits(model, [rows], torch.device("cpu"))
    (grad,) = torch.autograd.grad(logits[0, 0], [model.head.weight])
    assert grad[1].abs().sum() == 0 and grad[0].abs().sum() > 0
