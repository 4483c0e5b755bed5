"""The "wide" input: a hashed bag of n-grams of the whole message.

A linear model over word n-grams and character n-grams (what the TF-IDF baseline in
`model.baseline` is) catches lexical cues the recurrent path can miss or smooth over,
while the LSTM handles word order and context. The network adds a linear function of
this bag to the LSTM head's logits and both train jointly (wide & deep).

Features, all from the tokenizer's output (so training and serving agree, and
`model.tokenizer.TOKENIZER_VERSION` covers them):
- word 1- to `word_max_n`-grams of the token sequence;
- character `char_min_n`- to `char_max_n`-grams of every token, with boundary
  markers (`<you>` → `<y`, `yo`, `ou`, `u>`, `<yo` …), like scikit-learn's `char_wb`,
  plus the whole marked token.

Each feature is hashed with CRC-32 (with a prefix per kind, so a word and a character
n-gram never share a bucket by construction of the string) into one of `buckets` rows.
A message is the set of its distinct buckets, each weighted 1/√n (n distinct buckets):
an L2-normalised binary bag, the shape of the baseline's sublinear TF-IDF rows.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import lru_cache

import torch

_CACHE_SIZE = 1 << 18


def _bucket(text: str, buckets: int) -> int:
    return zlib.crc32(text.encode("utf-8")) % buckets


@lru_cache(maxsize=_CACHE_SIZE)
def token_features(token: str, buckets: int, min_n: int, max_n: int) -> tuple[int, ...]:
    """Buckets of one token's own features: the word itself and its character n-grams."""
    if buckets < 1:
        return ()
    found = {_bucket("w " + token, buckets)}
    if max_n >= 1:
        marked = f"<{token}>"
        found.add(_bucket("c " + marked, buckets))
        for n in range(max(min_n, 1), max_n + 1):
            found.update(
                _bucket("c " + marked[i : i + n], buckets) for i in range(len(marked) - n + 1)
            )
    return tuple(found)


def text_features(
    tokens: Sequence[str],
    per_token: Sequence[tuple[int, ...]],
    buckets: int,
    word_max_n: int,
) -> tuple[int, ...]:
    """Sorted distinct buckets of a message: each token's features (`per_token[i]`,
    from `token_features`) plus its word 2- to `word_max_n`-grams."""
    if buckets < 1:
        return ()
    found: set[int] = set()
    for grams in per_token:
        found.update(grams)
    for n in range(2, word_max_n + 1):
        for i in range(len(tokens) - n + 1):
            found.add(_bucket("w " + " ".join(tokens[i : i + n]), buckets))
    return tuple(sorted(found))


def wide_batch(
    rows: Sequence[tuple[int, ...]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`EmbeddingBag` input for a batch: (flat ids, offsets, per-id weights 1/√n)."""
    flat: list[int] = []
    offsets: list[int] = []
    weights: list[float] = []
    for ids in rows:
        offsets.append(len(flat))
        flat.extend(ids)
        if ids:
            weights.extend([len(ids) ** -0.5] * len(ids))
    return (
        torch.tensor(flat, dtype=torch.long),
        torch.tensor(offsets, dtype=torch.long),
        torch.tensor(weights, dtype=torch.float32),
    )
