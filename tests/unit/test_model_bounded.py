"""Byte-bounded caches (`model.bounded`) and the caches built on them."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest

from model import subword
from model.bounded import TOKEN_CACHE_BYTES, BoundedDict, sizeof_entry
from model.engine import Engine
from tests.helpers import tiny_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def entry(i: int, width: int) -> tuple[str, tuple[int, tuple[int, ...], tuple[int, ...]]]:
    """A token-cache entry whose ints are objects of their own (>= 257)."""
    return f"token{i}".ljust(12, "x"), (1000 + i, tuple(range(10_000 + i, 10_000 + i + width)), ())


def test_evicts_oldest_first_and_counts_every_write() -> None:
    cache: BoundedDict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = BoundedDict(
        10 * sizeof_entry(*entry(0, 20)), sizeof_entry
    )
    for i in range(25):
        key, value = entry(i, 20)
        cache[key] = value
        assert cache.bytes == sum(sizeof_entry(k, v) for k, v in cache.items())
        assert cache.bytes <= cache.max_bytes
    assert list(cache) == [entry(i, 20)[0] for i in range(15, 25)]  # the newest ten
    assert cache.evictions == 15
    key, value = entry(20, 40)  # replacing an entry with a bigger one evicts one more
    cache[key] = value
    assert entry(15, 20)[0] not in cache and cache[key] == value
    assert cache.get(entry(3, 20)[0]) is None
    del cache[key]
    cache.pop(entry(16, 20)[0])
    cache.popitem()
    assert cache.bytes == sum(sizeof_entry(k, v) for k, v in cache.items())
    cache.clear()
    assert cache.bytes == 0 and not cache


def test_a_hit_is_the_plain_dict_lookup() -> None:
    """Ordinary traffic hits: the bound must not put Python code on that path."""
    assert BoundedDict.get is dict.get
    assert BoundedDict.__getitem__ is dict.__getitem__
    assert BoundedDict.__contains__ is dict.__contains__


def test_the_size_estimate_errs_high() -> None:
    """What the count says an entry holds is at least what Python allocated for it."""
    entries = [entry(i, 60) for i in range(3000)]
    cache: BoundedDict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = BoundedDict(
        1 << 30, sizeof_entry
    )
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fresh = [(k + "!", (v[0] + 1, tuple(x + 1 for x in v[1]), ())) for k, v in entries]
        for key, value in fresh:
            cache[key] = value
        del fresh
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held <= cache.bytes <= 2 * held


def test_threads_sharing_one_cache_keep_the_count_right() -> None:
    cache: BoundedDict[str, tuple[int, tuple[int, ...], tuple[int, ...]]] = BoundedDict(
        200 * sizeof_entry(*entry(0, 20)), sizeof_entry
    )

    def fill(offset: int) -> None:
        for i in range(offset, offset + 3000):
            key, value = entry(i % 500, 20)
            cache[key] = value

    threads = [threading.Thread(target=fill, args=(n * 1000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.bytes == sum(sizeof_entry(k, v) for k, v in cache.items()) <= cache.max_bytes


def test_the_subword_cache_stays_within_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    budget = 200_000
    monkeypatch.setattr(subword, "_NGRAM_CACHE", BoundedDict(budget, sizeof_entry))
    reference = subword._ngram_ids("m0r0n", 20_000, 3, 5)
    for i in range(2000):  # unique 64-character words: ~6 KB each
        word = f"{i:05d}".join(["abcdefghij"] * 7)[:64]
        assert subword.ngram_ids(word, 20_000, 3, 5) == subword._ngram_ids(word, 20_000, 3, 5)
        assert subword._NGRAM_CACHE.bytes <= budget
    assert subword._NGRAM_CACHE.evictions > 1000
    assert subword.ngram_ids("m0r0n", 20_000, 3, 5) == reference


def test_the_engine_token_cache_is_bounded_and_changes_no_score() -> None:
    words = ["you", "are", "an", "idiot", "win", "cash", "now"]
    model, vocab = tiny_model(words, 5, subword_buckets=500, subword_dim=4)
    engine = Engine.from_model(model, vocab, ("insult", "spam"), device="cpu")
    cache = engine._token_cache
    assert isinstance(cache, BoundedDict) and cache.max_bytes == TOKEN_CACHE_BYTES
    texts = ["you are an idiot", "win cash now", "you m0r0n"]
    reference = engine.score_one_by_one(texts)
    budget = 100_000
    engine._token_cache = BoundedDict(budget, sizeof_entry)
    for n in range(40):  # 40 x 100 never-seen 64-character words
        engine.score([" ".join(f"{n:02d}{i:02d}".ljust(64, "z") for i in range(100))])
        assert engine._token_cache.bytes <= budget
    np.testing.assert_allclose(engine.score(texts).probabilities, reference, atol=1e-6, rtol=0)
    np.testing.assert_allclose(engine.score_one_by_one(texts), reference, atol=1e-6, rtol=0)
