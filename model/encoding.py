"""Text → model rows: the one encoding shared by training and serving.

Why its own module: training (`model.training_data`, `model.loss`) and serving
(`model.engine`) must turn a text into exactly the same rows, windows included; keeping
the function here, apart from the `Engine`, lets training use it without the serving
machinery.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from model.network import Classifier, ModelConfig
from model.subword import ngram_ids, subword_batch, token_id
from model.tokenizer import spelled_words
from model.vocab import PAD_ID, UNK_TOKEN, Vocab
from model.windows import WindowPlanner, WindowSettings


@dataclass(frozen=True)
class Encoded:
    """One text as model input: token ids (never empty); for models with sub-words,
    each token's n-gram bucket ids (else an empty tuple)."""

    ids: list[int]
    subwords: tuple[tuple[int, ...], ...]


TOKEN_CACHE_SIZE = 200_000
# token → (vocabulary id, sub-word buckets)
TokenCache = dict[str, tuple[int, tuple[int, ...]]]


def window_planner(config: ModelConfig, settings: WindowSettings | None = None) -> WindowPlanner:
    """How a model with `config` reads texts: its window shape, and the budget of
    `settings` (the defaults without)."""
    budget = settings or WindowSettings()
    return WindowPlanner(
        WindowSettings(
            window_tokens=config.window_tokens,
            stride=config.window_stride,
            max_chars=budget.max_chars,
            max_windows=budget.max_windows,
        )
    )


def serving_windows(
    config: ModelConfig, max_tokens: int, max_chars: int, max_windows: int, tokenizer: str
) -> WindowSettings:
    """How the engine reads texts for a model with `config`: the model's own window
    shape, cut to `max_tokens` tokens if that is lower, with the scoring budget
    `max_chars` and `max_windows` per text (`model.windows`, rules 1 and 4); rule 6
    applies only from tokenizer v3 on. Raises `WindowError` for impossible settings."""
    window = min(config.window_tokens, max_tokens)
    return WindowSettings(
        window_tokens=window,
        stride=min(config.window_stride, window),
        max_chars=max_chars,
        max_windows=max_windows,
        spelled_words=spelled_words(tokenizer),
    )


def encode_windows(
    vocab: Vocab,
    config: ModelConfig,
    planner: WindowPlanner,
    text: str,
    cache: TokenCache | None = None,
) -> list[Encoded]:
    """The one text → input function, shared by training and serving: one row per
    window (`model.windows`), never empty.

    `cache` (see `TokenCache`) must belong to this vocab and config; it saves the
    fallback lookups and hashing for tokens seen before (most of them).
    """
    return [
        encode_tokens(vocab, config, row_tokens(window.tokens), cache)
        for window in planner.plan(text).windows
    ]


def row_tokens(tokens: Sequence[str]) -> Sequence[str]:
    """A window's tokens as a model row: never empty, so every row has length ≥ 1."""
    return tokens or (UNK_TOKEN,)


def encode_tokens(
    vocab: Vocab, config: ModelConfig, tokens: Sequence[str], cache: TokenCache | None = None
) -> Encoded:
    if cache is None:
        cache = {}
    elif len(cache) > TOKEN_CACHE_SIZE:
        cache.clear()
    buckets, low, high = config.subword_buckets, config.subword_min_n, config.subword_max_n
    ids: list[int] = []
    grams: list[tuple[int, ...]] = []
    for token in tokens:
        known = cache.get(token)
        if known is None:
            subwords = ngram_ids(token, buckets, low, high) if buckets else ()
            known = cache[token] = (token_id(vocab, token), subwords)
        ids.append(known[0])
        grams.append(known[1])
    return Encoded(ids, tuple(grams) if buckets else ())


def forward_batch(model: Classifier, rows: Sequence[Encoded], device: torch.device) -> torch.Tensor:
    """Logits for encoded rows, padded to the longest (packing ignores the padding).
    Training's path; serving packs cached token vectors instead (`Engine.score_encoded`)."""
    width = max(len(row.ids) for row in rows)
    ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row.ids)] = row.ids
    lengths = torch.tensor([len(row.ids) for row in rows], dtype=torch.long)
    token_ids = torch.from_numpy(ids)
    if device.type == "cuda":
        token_ids = token_ids.pin_memory().to(device, non_blocking=True)
    subword_ids = subword_offsets = None
    if model.config.subword_buckets:
        flat, offsets = subword_batch([row.subwords for row in rows], width)
        subword_ids, subword_offsets = flat.to(device), offsets.to(device)
    result: torch.Tensor = model(token_ids, lengths, subword_ids, subword_offsets)
    return result
