"""The serving engine's token-vector cache and direct packing (`model.vectors`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

from model.engine import Engine
from model.vectors import SLOT_OVERHEAD, TokenVectors, pack_rows
from tests.helpers import tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = [
    "you",
    "are",
    "a",
    "total",
    "idiot",
    "m0r0n",
    "stuuupid",
    "free",
    "prize",
    "call",
    "now",
    "win",
    "cash",
]


def make_engine() -> Engine:
    model, vocab = tiny_model(WORDS, 3, subword_buckets=64, subword_dim=4, pooling="meanmax")
    return Engine.from_model(model, vocab, ("insult", "spam"), device="cpu")


def test_pack_rows_matches_pack_padded_sequence() -> None:
    table = torch.randn(20, 3)
    lengths = np.array([4, 4, 2, 1], dtype=np.int64)  # longest first
    starts = np.array([0, 4, 8, 10], dtype=np.int64)
    slots = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 19], dtype=np.int64)
    padded = torch.zeros(4, 4, 3)
    for row, (start, length) in enumerate(zip(starts, lengths, strict=True)):
        padded[row, :length] = table[torch.from_numpy(slots[start : start + length])]
    expected = pack_padded_sequence(padded, torch.from_numpy(lengths), batch_first=True)
    packed = pack_rows(table, slots, starts, lengths)
    assert torch.equal(packed.batch_sizes, expected.batch_sizes)
    assert torch.equal(packed.data, expected.data)


def test_a_token_gets_one_slot_and_new_tokens_get_new_rows() -> None:
    engine = make_engine()
    first = engine.encode_batch(["you idiot", "you m0r0n you"])
    assert first.slots.tolist() == [0, 1, 0, 2, 0]
    assert first.starts.tolist() == [0, 2] and first.lengths.tolist() == [2, 3]
    second = engine.encode_batch(["cash you"])
    assert second.slots.tolist() == [3, 0]
    # The rows equal the model's own embedding of each token.
    with torch.inference_mode():
        (m0r0n,) = engine.encode_text("m0r0n")
        subwords = engine.model.subword
        assert subwords is not None
        expected = torch.cat(
            [
                engine.model.embedding(torch.tensor(m0r0n.ids)),
                subwords(torch.tensor(m0r0n.subwords[0]), torch.tensor([0])),
            ],
            dim=-1,
        )
    torch.testing.assert_close(second.table[2:3], expected, rtol=0, atol=1e-6)


def test_growth_and_reset_keep_batches_in_flight_correct() -> None:
    """A batch encoded before the table grows or starts afresh still scores as if
    alone: it keeps the table it was encoded against."""
    engine = make_engine()
    vectors = engine._vectors = TokenVectors(
        engine.model, engine.device, max_bytes=80_000, initial_slots=8
    )
    texts = ["you are a total idiot", "stuuupid m0r0n", "free prize call now"]
    reference = engine.score_one_by_one(texts)
    in_flight = engine.encode_batch(texts)
    letters = "abcdefghijklmnopqrstuvwxyz"
    sizes, tables, held = [], [], []
    for n in range(4):  # 200 new tokens a batch: grow, grow, reset, grow
        held.append(vectors.bytes)
        words = [f"q{letters[n]}{letters[i // 26]}{letters[i % 26]}" for i in range(200)]
        engine.encode_batch([" ".join(words[k : k + 20]) for k in range(0, 200, 20)])
        sizes.append(len(vectors._slots))
        tables.append(vectors._table)
    assert sizes == [211, 411, 200, 400]
    assert held[2] >= 80_000 > held[1]  # the reset came once the budget was reached
    assert vectors.resets == 1
    assert tables[0].shape[0] >= 211 and tables[1].shape[0] >= 411 and tables[1] is not tables[0]
    np.testing.assert_allclose(
        engine.score_encoded(in_flight).probabilities, reference, atol=1e-6, rtol=0
    )
    np.testing.assert_allclose(engine.score(texts).probabilities, reference, atol=1e-6, rtol=0)


def test_warm_up_caches_the_vocabulary_and_changes_no_score() -> None:
    engine = make_engine()
    texts = ["you are a total idiot", "stuuupid m0r0n", "free prize call now", ""]
    before = engine.score_one_by_one(texts)
    assert engine.warm_up() > 0
    assert set(engine.vocab.tokens) <= set(engine._vectors._slots)
    encoded = engine.encode_batch(["you idiot"])
    assert encoded.slots.tolist() == [engine._vectors._slots[t] for t in ("you", "idiot")]
    np.testing.assert_allclose(engine.score(texts).probabilities, before, atol=1e-6, rtol=0)


def test_growth_stops_at_the_byte_budget() -> None:
    engine = make_engine()
    budget = 18_500
    vectors = engine._vectors = TokenVectors(
        engine.model, engine.device, max_bytes=budget, initial_slots=8
    )
    engine.encode_batch([" ".join(f"qz{chr(97 + i // 26)}{chr(97 + i % 26)}" for i in range(90))])
    assert vectors._table.shape[0] == 90  # what the batch needed
    assert vectors.bytes == 90 * vectors.row_bytes + vectors._key_bytes < budget
    engine.encode_batch(["qzzz qzzy"])  # doubling would give 180 rows
    assert vectors._table.shape[0] == (budget - vectors._key_bytes) // vectors.row_bytes < 180
    assert vectors.bytes <= budget and vectors.resets == 0


def test_unique_long_tokens_keep_the_cache_within_its_budget() -> None:
    """Batches of never-seen 64-character tokens: the cache starts afresh whenever it
    reaches the budget, so it never holds more than the budget plus one batch."""
    engine = make_engine()
    budget = 200_000
    vectors = engine._vectors = TokenVectors(engine.model, engine.device, max_bytes=budget)
    per_batch = 50
    one_batch = per_batch * (vectors.row_bytes + 49 + 64 + SLOT_OVERHEAD)
    highest = 0
    for n in range(40):
        words = [f"{n:03d}{i:03d}".ljust(64, "q") for i in range(per_batch)]
        engine.encode_batch([" ".join(words)])
        highest = max(highest, vectors.bytes)
    assert vectors.resets >= 5
    assert highest <= budget + one_batch + vectors.initial_slots * vectors.row_bytes


def test_a_failed_fill_leaves_no_slot_without_its_row() -> None:
    engine = make_engine()
    engine.encode_batch(["you idiot"])
    held = engine._vectors.bytes

    def failing(tokens: Sequence[str]) -> tuple[list[int], tuple[tuple[int, ...], ...]]:
        raise RuntimeError("describe failed")

    with pytest.raises(RuntimeError, match="describe failed"):
        engine._vectors.assign(["you", "cash", "prize"], failing)
    assert set(engine._vectors._slots) == {"you", "idiot"}
    assert engine._vectors.bytes == held  # the keys it never kept are not counted
    texts = ["you win cash", "free prize"]
    np.testing.assert_allclose(
        engine.score(texts).probabilities, engine.score_one_by_one(texts), atol=1e-6, rtol=0
    )
