"""What the model trains on: the examples, the vocabulary, and their batches.

- `training_examples`: the training split as the model sees it, capped by
  `TrainConfig.limit` with a seeded random subset (so a capped run still mixes both
  sources), and with `comments_spam_negative` the insult-corpus comments also labelled
  "not spam". Assumption: the Kaggle comments are user comments on news/social sites,
  not bulk advertising, so none is spam. Without it the spam head never sees
  comment-style text and scores abusive comments as spam (it only learned "not SMS
  ham"). Only the training split changes: spam validation/test metrics stay SMS-only,
  and the cross-domain flag rates (spam on comments) are reported separately. With
  `short_benign`, reviewed short SMS ham and the curated chat lines of the training
  split are negatives for every label (`model.short_chat`), a user's labels included.
  Both rules need the bundled `spam` label and do nothing without it (`retrain
  --no-bundled` trains on the user's files alone).
- `context_examples`: each epoch, a share of the insult-corpus comments again, each
  placed among clean training comments (`model.long_messages`), so the model learns
  that one abusive part makes a long message abusive and that clean context does not.
- `build_vocab`: the training tokens, plus (optionally) GloVe's most frequent words,
  so words first seen at serving time keep their pre-trained meaning (`model.glove`).
- `encode_examples`: each example's windows as model rows, through the same function
  that serves (`model.encoding.encode_windows`); training takes a label's maximum over
  an example's windows, as serving does.
- `length_bucketed_batches`: shuffled batches of similar-length examples.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from model.data import SOURCE_INSULTS, DataSplits, Example
from model.encoding import Encoded, TokenCache, encode_windows, window_planner
from model.glove import GloveVectors, load_glove
from model.long_messages import assemble, place
from model.network import ModelConfig
from model.progress import Progress
from model.short_chat import curated, with_short_ham_negative
from model.subword import lookup_forms
from model.vocab import SPECIAL_TOKENS, UNK_ID, Vocab

if TYPE_CHECKING:  # train_config.py imports this module
    from model.train_config import TrainConfig


def length_bucketed_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator, pool_batches: int = 50
) -> list[np.ndarray]:
    """Shuffled batches of similar-length examples.

    Shuffle, sort within pools of `pool_batches` batches, cut, shuffle batch order:
    little padding, yet every epoch sees different batch compositions.
    """
    order = rng.permutation(len(lengths))
    pool = batch_size * pool_batches
    batches: list[np.ndarray] = []
    for start in range(0, len(order), pool):
        chunk = order[start : start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


def subset(examples: Sequence[Example], limit: int | None, seed: int) -> list[Example]:
    """Deterministic random subset, so a capped run still mixes both sources."""
    if limit is None or limit >= len(examples):
        return list(examples)
    keep = np.random.default_rng(seed).permutation(len(examples))[:limit]
    return [examples[i] for i in sorted(keep)]


def label_arrays(examples: Sequence[Example]) -> tuple[np.ndarray, np.ndarray]:
    targets = np.asarray([ex.targets for ex in examples], dtype=np.float32)
    mask = np.asarray([ex.mask for ex in examples], dtype=np.float32)
    return targets, mask


def training_examples(config: TrainConfig, splits: DataSplits) -> list[Example]:
    """The training split as the model sees it (subset, spam-negative comments,
    short benign chat)."""
    examples = subset(splits.train, config.limit, config.seed)
    if config.comments_spam_negative and "spam" in splits.labels:
        examples = [spam_negative(ex, splits.labels) for ex in examples]
    if config.short_benign and "spam" in splits.labels:
        examples = with_short_ham_negative(examples, splits.labels)
        examples += curated("train", splits.labels)
    return examples


def context_examples(
    examples: Sequence[Example],
    labels: Sequence[str],
    rng: random.Random,
    share: float,
    max_fillers: int,
) -> list[Example]:
    """About `share` of the insult-corpus comments knowing "insult", each placed at a
    random position among 1 to `max_fillers` other such comments that are not insults;
    each result keeps its placed comment's labels (`model.long_messages`)."""
    if share <= 0 or "insult" not in labels:
        return []
    j = list(labels).index("insult")
    known = [i for i, ex in enumerate(examples) if ex.source == SOURCE_INSULTS and ex.mask[j] > 0]
    clean = [i for i in known if examples[i].targets[j] <= 0.5]
    if len(clean) <= max_fillers:
        return []
    chosen = [i for i in known if rng.random() < share]
    return [assemble(examples, i, place(i, clean, rng, 1, max_fillers)).example for i in chosen]


def spam_negative(example: Example, labels: Sequence[str]) -> Example:
    """An insult-corpus comment that also says "not spam" (see the module docstring)."""
    if example.source != SOURCE_INSULTS:
        return example
    j = list(labels).index("spam")
    targets = tuple(0.0 if i == j else t for i, t in enumerate(example.targets))
    mask = tuple(1.0 if i == j else m for i, m in enumerate(example.mask))
    return replace(example, targets=targets, mask=mask)


def build_vocab(
    config: TrainConfig, token_lists: Sequence[Sequence[str]], glove: GloveVectors | None
) -> Vocab:
    """`Vocab.build` rules, plus (with `glove_min_freq` > 0) rarer tokens GloVe knows,
    plus (with `glove_vocab` = N) GloVe's N most frequent words, which the training
    data need not contain: with `freeze_glove` they keep their pre-trained meaning, so
    words first seen at serving time are not all UNK. Those N come from GloVe's own
    frequency order, never from validation or test text."""
    glove_words = set(glove.words) if glove is not None else set()
    if config.glove_min_freq <= 0 or not glove_words:
        vocab = Vocab.build(token_lists, min_freq=config.min_freq, max_size=config.max_vocab)
    else:
        vocab = _glove_aware_vocab(config, token_lists, glove_words)
    if glove is None or config.glove_vocab <= 0:
        return vocab
    extra = [w for w in glove.words[: config.glove_vocab] if vocab.id_of(w) == UNK_ID]
    room = max(config.max_vocab - len(vocab), 0)
    return Vocab([*vocab.tokens, *[w for w in extra if w not in SPECIAL_TOKENS][:room]])


def _glove_aware_vocab(
    config: TrainConfig, token_lists: Sequence[Sequence[str]], glove_words: set[str]
) -> Vocab:
    def keep(token: str, count: int) -> bool:
        if count >= config.min_freq:
            return True
        in_glove = any(form in glove_words for form in lookup_forms(token))
        return count >= config.glove_min_freq and in_glove

    return Vocab.build(token_lists, max_size=config.max_vocab, keep=keep)


def glove_rows(vocab: Vocab, glove: GloveVectors) -> torch.Tensor:
    """Bool [len(vocab)]: rows whose embedding came from GloVe (see `embedding_matrix`)."""
    known = set(glove.words)
    return torch.tensor(
        [any(form in known for form in lookup_forms(token)) for token in vocab.tokens]
    )


def glove_for(config: TrainConfig, progress: Progress) -> GloveVectors | None:
    """The cached GloVe vectors when `config.glove` asks for them and their size fits
    `embed_dim`; otherwise None, with a line saying why."""
    if not config.glove:
        return None
    glove = load_glove(Path(config.glove_dir) if config.glove_dir else None)
    if glove is None:
        progress(
            "GloVe: no converted vectors found (run `make glove`); word embeddings start random"
        )
    elif glove.dimensions != config.embed_dim:
        progress(f"GloVe: {glove.dimensions}d vectors but embed_dim {config.embed_dim}; unused")
        glove = None
    return glove


def encode_examples(
    vocab: Vocab,
    config: ModelConfig,
    examples: Sequence[Example],
    cache: TokenCache | None = None,
) -> tuple[list[list[Encoded]], np.ndarray]:
    """Each example's rows (one per window), and its token count (int64) for batching."""
    planner = window_planner(config)
    cache = {} if cache is None else cache
    encoded = [encode_windows(vocab, config, planner, ex.text, cache) for ex in examples]
    lengths = np.asarray([sum(len(row.ids) for row in rows) for rows in encoded], np.int64)
    return encoded, lengths
