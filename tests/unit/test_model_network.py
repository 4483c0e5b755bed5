from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch

from model.network import POOLINGS, Classifier, ModelConfig

VARIANTS = list(itertools.product(("lstm", "gru"), (True, False), POOLINGS))


def make_model(rnn: str, bidirectional: bool, pooling: str, layers: int = 2) -> Classifier:
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=50,
        num_labels=2,
        embed_dim=8,
        hidden_dim=6,
        num_layers=layers,
        rnn=rnn,  # type: ignore[arg-type]
        bidirectional=bidirectional,
        dropout=0.1,
        pooling=pooling,  # type: ignore[arg-type]
    )
    return Classifier(config).eval()


@pytest.mark.parametrize(("rnn", "bidirectional", "pooling"), VARIANTS)
def test_extra_padding_does_not_change_output(rnn: str, bidirectional: bool, pooling: str) -> None:
    model = make_model(rnn, bidirectional, pooling)
    lengths = torch.tensor([5, 1, 3, 7])
    ids = torch.zeros(4, 7, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        ids[row, :n] = torch.randint(2, 50, (n,))
    wider = torch.cat([ids, torch.zeros(4, 6, dtype=torch.long)], dim=1)
    # Garbage in the padded area must not matter either: packing skips it.
    garbage = wider.clone()
    for row, n in enumerate(lengths.tolist()):
        garbage[row, n:] = torch.randint(2, 50, (garbage.shape[1] - n,))
    with torch.no_grad():
        base = model(ids, lengths)
        assert torch.allclose(base, model(wider, lengths), atol=1e-6)
        assert torch.allclose(base, model(garbage, lengths), atol=1e-6)
        for row, n in enumerate(lengths.tolist()):
            alone = model(ids[row : row + 1, :n], lengths[row : row + 1])
            assert torch.allclose(base[row], alone[0], atol=1e-5)
    assert base.shape == (4, 2)


def test_last_pooling_uses_both_directions() -> None:
    model = make_model("lstm", True, "last", layers=1)
    assert model.head.in_features == 2 * model.config.hidden_dim
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        # Changing the first token changes the forward direction's final state only
        # through the whole sequence, but the backward one directly: both must matter.
        a = model(ids, torch.tensor([3]))
        b = model(torch.tensor([[6, 4, 5]]), torch.tensor([3]))
    assert not torch.allclose(a, b)


def test_dropout_only_in_training_mode() -> None:
    model = make_model("lstm", True, "max")
    ids, lengths = torch.randint(2, 50, (3, 5)), torch.tensor([5, 5, 5])
    with torch.no_grad():
        assert torch.equal(model(ids, lengths), model(ids, lengths))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"rnn": "transformer"}, "rnn"),
        ({"pooling": "sum"}, "pooling"),
        ({"hidden_dim": 0}, "hidden_dim"),
        ({"dropout": 1.5}, "dropout"),
        ({"bidirectional": "yes"}, "bidirectional"),
        ({"subword_buckets": -1}, "subword_buckets"),
        ({"subword_buckets": 10, "subword_min_n": 4, "subword_max_n": 3}, "subword"),
        ({"window_tokens": 0}, "window_tokens"),
        ({"window_tokens": 16, "window_stride": 17}, "window_stride"),
    ],
)
def test_config_validation_names_the_field(changes: dict[str, Any], message: str) -> None:
    data = ModelConfig(vocab_size=10, num_labels=2).to_dict() | changes
    with pytest.raises(ValueError, match=message):
        ModelConfig.from_dict(data)


def test_config_round_trip_and_strict_keys() -> None:
    config = ModelConfig(vocab_size=10, num_labels=2, rnn="gru", pooling="last")
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="unknown"):
        ModelConfig.from_dict(config.to_dict() | {"extra": 1})
    with pytest.raises(ValueError, match="missing"):
        ModelConfig.from_dict({"vocab_size": 10})


def test_a_config_written_before_windows_reads_with_the_default_windows() -> None:
    config = ModelConfig(vocab_size=10, num_labels=2, window_tokens=32, window_stride=16)
    older = {k: v for k, v in config.to_dict().items() if not k.startswith("window_")}
    assert ModelConfig.from_dict(older) == ModelConfig(vocab_size=10, num_labels=2)
    assert ModelConfig.from_dict(config.to_dict()).window_tokens == 32


def test_meanmax_pooling_concatenates_mean_and_max() -> None:
    model = make_model("lstm", True, "meanmax", layers=1)
    assert model.head.in_features == 4 * model.config.hidden_dim


def test_subword_model_needs_its_inputs() -> None:
    config = ModelConfig(vocab_size=10, num_labels=2, embed_dim=4, hidden_dim=3, subword_buckets=7)
    model = Classifier(config).eval()
    assert model.rnn.input_size == 4 + config.subword_dim
    with pytest.raises(ValueError, match="subword"):
        model(torch.tensor([[2, 3]]), torch.tensor([2]))
