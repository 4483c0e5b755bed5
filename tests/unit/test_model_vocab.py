from __future__ import annotations

import json

import pytest

from model.vocab import PAD_ID, PAD_TOKEN, UNK_ID, UNK_TOKEN, Vocab


def test_special_ids_are_fixed() -> None:
    vocab = Vocab.build([["a", "b", "a"]], min_freq=1)
    assert (PAD_ID, UNK_ID) == (0, 1)
    assert vocab.tokens[PAD_ID] == PAD_TOKEN
    assert vocab.tokens[UNK_ID] == UNK_TOKEN
    assert vocab.encode(["never-seen"]) == [UNK_ID]


def test_min_freq_and_max_size() -> None:
    corpus = [["a"] * 5 + ["b"] * 3 + ["c"] * 2 + ["d"]]
    assert Vocab.build(corpus, min_freq=2).tokens[2:] == ("a", "b", "c")
    assert Vocab.build(corpus, min_freq=1).tokens[2:] == ("a", "b", "c", "d")
    assert Vocab.build(corpus, min_freq=1, max_size=4).tokens[2:] == ("a", "b")
    assert Vocab.build(corpus, min_freq=3).encode(["a", "c", "d"]) == [2, UNK_ID, UNK_ID]


def test_order_is_deterministic_count_then_token() -> None:
    one = Vocab.build([["z", "y", "x", "y"], ["x", "z"]], min_freq=1)
    two = Vocab.build([["x", "z"], ["z", "x", "y", "y"]], min_freq=1)
    assert one == two
    assert one.tokens[2:] == ("x", "y", "z")


def test_special_tokens_in_data_are_not_duplicated() -> None:
    vocab = Vocab.build([[PAD_TOKEN, UNK_TOKEN, "a", "a"]], min_freq=1)
    assert vocab.tokens == (PAD_TOKEN, UNK_TOKEN, "a")


def test_round_trip_through_json() -> None:
    vocab = Vocab.build([["héllo", "<url>", "don't", "héllo"]], min_freq=1)
    restored = Vocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert restored == vocab
    assert restored.encode(["don't", "?"]) == vocab.encode(["don't", "?"])


@pytest.mark.parametrize(
    "data",
    [{}, {"tokens": "abc"}, {"tokens": ["a", "b"]}, {"tokens": [PAD_TOKEN, UNK_TOKEN, "a", "a"]}],
)
def test_from_dict_rejects_invalid(data: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Vocab.from_dict(data)
