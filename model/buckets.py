"""How the engine cuts a batch of rows into buckets for the packed LSTM.

Why its own module: the bucketing rule bounds serving memory whatever the mix of
lengths, and the benchmark (`bench/run.py`) measures its padding; it needs no model.

Rows are sorted by token count and cut into buckets at most `bucket_width` tokens
apart and at most `max_batch_tokens` rows x longest row, so memory is bounded whatever
the mix of lengths.
"""

from __future__ import annotations

import numpy as np

from model.tokenizer import DEFAULT_MAX_TOKENS

DEFAULT_BUCKET_WIDTH = DEFAULT_MAX_TOKENS  # no split by length spread (see model.engine)
DEFAULT_MAX_BATCH_TOKENS = 16_384


def length_buckets(
    lengths: np.ndarray, bucket_width: int, max_batch_tokens: int
) -> list[np.ndarray]:
    """Input indices grouped by similar length, shortest first: a bucket closes when
    its lengths would spread `bucket_width` or more, or its rows x longest row would
    pass `max_batch_tokens` (a row longer than that still gets a bucket of its own)."""
    order = np.argsort(lengths, kind="stable")
    buckets: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        shortest = int(lengths[order[start]])
        end = start + 1
        while end < n:
            longest = int(lengths[order[end]])
            if longest - shortest >= bucket_width:
                break
            if (end - start + 1) * longest > max_batch_tokens:
                break
            end += 1
        buckets.append(order[start:end])
        start = end
    return buckets
